// SPDX-License-Identifier: Apache-2.0
// prjquota-bench: what a kernel quota read saves over a walk, side by side in one run.
//
//   prjquota-bench [--ids 1000] [--files 20] [--file-kib 64] [--rounds 5]
//
// Needs root and a kernel with XFS quota support (run it in vmtest: the host
// here has none): makes an XFS image on a loop device mounted with prjquota,
// creates `ids` directories of `files` files each, tags each directory with its
// own project id, then alternates, `rounds` times:
//   read  one Q_XGETNEXTQUOTA pass over every id (what the agent does per sync)
//   walk  directoryBytes() of every directory (what usage without quotas costs)
// with the page cache dropped before each walk round is NOT done: the walk is
// measured warm, its best case. Prints medians and the ratio, and the cost of
// tagging a fresh container-sized tree (tagTree) per directory.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "agent/quota/prjquota.h"
#include "agent/usage/usage.h"

using namespace dockquota;
using Clock = std::chrono::steady_clock;

namespace {
double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
int sh(const std::string& cmd) { return system((cmd + " >/dev/null 2>&1").c_str()); }
}  // namespace

int main(int argc, char** argv) {
  int ids = 1000, files = 20, file_kib = 64, rounds = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    int v = atoi(argv[i + 1]);
    if (a == "--ids")
      ids = v;
    else if (a == "--files")
      files = v;
    else if (a == "--file-kib")
      file_kib = v;
    else if (a == "--rounds")
      rounds = v;
    else {
      fprintf(stderr, "usage: prjquota-bench [--ids N] [--files N] [--file-kib N] [--rounds N]\n");
      return 2;
    }
  }
  char tmpl[] = "/tmp/prjq-bench-XXXXXX";
  std::string dir = mkdtemp(tmpl), img = dir + "/fs.img", mnt = dir + "/mnt";
  mkdir(mnt.c_str(), 0755);
  uint64_t mib = std::max<uint64_t>(512, uint64_t(ids) * files * file_kib / 1024 * 2);
  if (sh("truncate -s " + std::to_string(mib) + "M " + img) || sh("mkfs.xfs -q " + img) ||
      sh("mount -o loop,prjquota " + img + " " + mnt)) {
    fprintf(stderr, "prjquota-bench: cannot mount XFS with prjquota (kernel without XFS quota support?)\n");
    return 1;
  }
  auto fs = probeQuotaFs(mnt);
  if (!fs || !fs->usable()) {
    fprintf(stderr, "prjquota-bench: %s\n", fs ? fs->reason.c_str() : fs.error().message.c_str());
    return 1;
  }
  std::string chunk(size_t(file_kib) * 1024, 'x');
  std::vector<std::string> dirs;
  std::vector<double> tag_ms;
  for (int i = 0; i < ids; i++) {
    std::string d = mnt + "/p" + std::to_string(i);
    mkdir(d.c_str(), 0755);
    mkdir((d + "/diff").c_str(), 0755);
    mkdir((d + "/work").c_str(), 0755);
    for (int f = 0; f < files; f++) std::ofstream(d + "/diff/f" + std::to_string(f)).write(chunk.data(), chunk.size());
    auto t0 = Clock::now();
    auto st = tagTree(d, 1000 + uint32_t(i));  // written before tagged: the re-tag path, the expensive one
    tag_ms.push_back(ms(Clock::now() - t0));
    if (!st) {
      fprintf(stderr, "prjquota-bench: %s\n", st.error().message.c_str());
      return 1;
    }
    dirs.push_back(d);
  }
  sh("sync");

  std::vector<double> read_ms, walk_ms;
  uint64_t read_total = 0, walk_total = 0;
  for (int r = 0; r < rounds; r++) {
    auto t0 = Clock::now();
    auto all = readProjects(*fs);
    read_ms.push_back(ms(Clock::now() - t0));
    if (!all) {
      fprintf(stderr, "prjquota-bench: %s\n", all.error().message.c_str());
      return 1;
    }
    read_total = 0;
    for (int i = 0; i < ids; i++) {
      auto it = all->find(1000 + uint32_t(i));
      if (it != all->end()) read_total += it->second.bytes;
    }
    t0 = Clock::now();
    walk_total = 0;
    for (const auto& d : dirs) walk_total += directoryBytes(d);
    walk_ms.push_back(ms(Clock::now() - t0));
  }
  double rm = median(read_ms), wm = median(walk_ms);
  printf("prjquota-bench: %d ids x %d files x %d KiB on XFS (%s)\n", ids, files, file_kib, fs->device.c_str());
  printf("  usage read, one Q_XGETNEXTQUOTA pass:  %9.2f ms  (%llu bytes allocated)\n", rm,
         (unsigned long long)read_total);
  printf("  walk of the same directories (warm):   %9.2f ms  (%llu bytes apparent)\n", wm,
         (unsigned long long)walk_total);
  printf("  ratio walk/read:                       %9.1fx\n", wm / rm);
  printf("  tagTree of one %d-file tree (re-tag):  %9.3f ms median\n", files, median(tag_ms));
  sh("umount " + mnt);
  sh("rm -rf " + dir);
  return 0;
}
