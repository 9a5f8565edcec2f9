// SPDX-License-Identifier: Apache-2.0
// The database's file modes: directory 0700, files 0600, whatever the umask of
// whoever started the agent (a shell's 022 by hand, systemd's UMask=0077,
// install.sh), and existing ones that are more open are tightened.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "agent/store/store.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;
namespace fs = std::filesystem;

namespace {

// Sets the process umask for one test, as a shell would have.
struct Umask {
  mode_t old;
  explicit Umask(mode_t m) : old(::umask(m)) {}
  ~Umask() { ::umask(old); }
};

mode_t modeOf(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// A write, so SQLite has made its -wal and -shm.
void writeSomething(Store& store) {
  REQUIRE(store.objects().noteSeen(ObjectKind::Volume, "v1", "v1", "", std::nullopt, 100));
}

}  // namespace

TEST_CASE("store modes: a new state directory and database are 0700/0600 under umask 022", "[store][modes]") {
  Umask u(022);
  TempDir tmp;
  const std::string dir = tmp.file("var/lib/dockquota");
  REQUIRE(makeStateDirectory(dir));
  CHECK(modeOf(dir) == 0700);
  CHECK(modeOf(tmp.file("var/lib")) == 0755);  // parents keep the usual modes
  const std::string db = dir + "/dockquota.db";
  {
    auto s = Store::open(db);
    REQUIRE(s);
    writeSomething(**s);
    CHECK(modeOf(db) == 0600);
    REQUIRE(fs::exists(db + "-wal"));
    REQUIRE(fs::exists(db + "-shm"));
    CHECK(modeOf(db + "-wal") == 0600);
    CHECK(modeOf(db + "-shm") == 0600);
  }
  CHECK(modeOf(dir) == 0700);
}

TEST_CASE("store modes: even a umask that takes every bit gives 0700/0600", "[store][modes]") {
  Umask u(0777);
  TempDir tmp;
  const std::string dir = tmp.file("state");
  REQUIRE(makeStateDirectory(dir));
  CHECK(modeOf(dir) == 0700);
  const std::string db = dir + "/dockquota.db";
  auto s = Store::open(db);
  REQUIRE(s);
  writeSomething(**s);
  CHECK(modeOf(db) == 0600);
  CHECK(modeOf(db + "-wal") == 0600);
}

TEST_CASE("store modes: an existing 0755 directory and 0644 files are tightened", "[store][modes]") {
  Umask u(022);
  TempDir tmp;
  const std::string dir = tmp.file("state");
  const std::string db = dir + "/dockquota.db";
  REQUIRE(fs::create_directory(dir));
  REQUIRE(::chmod(dir.c_str(), 0755) == 0);
  {  // as an older dockquotad left them: the database, its WAL files and a backup, 0644
    auto s = Store::open(db);
    REQUIRE(s);
    writeSomething(**s);
  }
  std::ofstream(db + ".bak") << "a copy";
  for (const std::string& f : {db, db + "-wal", db + "-shm", db + ".bak"}) {
    if (!fs::exists(f)) std::ofstream(f).flush();  // SQLite may have removed the -wal at close
    REQUIRE(::chmod(f.c_str(), 0644) == 0);
  }
  REQUIRE(::chmod(dir.c_str(), 0755) == 0);

  auto s = Store::open(db);
  REQUIRE(s);
  CHECK(modeOf(dir) == 0700);
  CHECK(modeOf(db) == 0600);
  CHECK(modeOf(db + "-wal") == 0600);
  CHECK(modeOf(db + "-shm") == 0600);
  CHECK(modeOf(db + ".bak") == 0600);
  writeSomething(**s);  // and it still works
  CHECK(modeOf(db + "-wal") == 0600);
}

TEST_CASE("store modes: a directory shared with other files keeps its mode; the database is 0600", "[store][modes]") {
  Umask u(022);
  TempDir tmp;
  const std::string dir = tmp.file("shared");
  REQUIRE(fs::create_directory(dir));
  REQUIRE(::chmod(dir.c_str(), 0755) == 0);
  std::ofstream(dir + "/somebody-elses.txt") << "not ours";
  const std::string db = dir + "/dockquota.db";
  auto s = Store::open(db);
  REQUIRE(s);
  writeSomething(**s);
  CHECK(modeOf(dir) == 0755);  // /var/lib or a home: not the agent's to close
  CHECK(modeOf(db) == 0600);
  CHECK(modeOf(db + "-wal") == 0600);
  CHECK(modeOf(dir + "/somebody-elses.txt") == 0644);
}

TEST_CASE("store modes: a file that is not a database keeps its mode too", "[store][modes]") {
  Umask u(022);
  TempDir tmp;
  const std::string db = tmp.file("dockquota.db");
  std::ofstream(db) << "this is not a SQLite database, not even close, and longer than a header";
  REQUIRE(::chmod(db.c_str(), 0644) == 0);
  auto s = Store::open(db);
  REQUIRE_FALSE(s);
  CHECK(modeOf(db) == 0644);
}
