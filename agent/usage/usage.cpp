// SPDX-License-Identifier: Apache-2.0
#include "agent/usage/usage.h"

#include <malloc.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <set>
#include <tuple>

#include "agent/base/clock.h"
#include "agent/base/log.h"
#include "agent/quota/quotas.h"
#include "agent/store/billing.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "usage";
using json = nlohmann::json;

std::string sha256Hex(const std::string& in) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(in.data(), in.size(), md, &n, EVP_sha256(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; i++) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

// <root>/image/<driver>/layerdb/sha256/<hex>/size: the layer's DiffSize as
// the layer store recorded it (decimal text).
std::optional<uint64_t> layerDbSize(const std::string& root, const std::string& driver, const std::string& chain) {
  static const std::string kPrefix = "sha256:";
  if (root.empty() || driver.empty() || chain.compare(0, kPrefix.size(), kPrefix) != 0) return std::nullopt;
  std::ifstream f(root + "/image/" + driver + "/layerdb/sha256/" + chain.substr(kPrefix.size()) + "/size");
  uint64_t v = 0;
  if (!(f >> v)) return std::nullopt;
  return v;
}

}  // namespace

std::vector<std::string> chainIds(const std::vector<std::string>& diff_ids) {
  std::vector<std::string> out;
  out.reserve(diff_ids.size());
  for (const auto& d : diff_ids) out.push_back(out.empty() ? d : "sha256:" + sha256Hex(out.back() + " " + d));
  return out;
}

uint64_t directoryBytes(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::set<std::pair<dev_t, ino_t>> seen;
  uint64_t total = 0;
  for (fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
       !ec && it != end; it.increment(ec)) {
    struct stat st {};
    if (lstat(it->path().c_str(), &st) != 0 || S_ISDIR(st.st_mode) || st.st_size == 0) continue;
    if (!seen.emplace(st.st_dev, st.st_ino).second) continue;
    total += static_cast<uint64_t>(st.st_size);
  }
  return total;
}

// --- DockerUsageSource ---------------------------------------------------------

DockerUsageSource::DockerUsageSource(DockerClient& docker) : docker_(docker) {}

Result<std::vector<std::string>> DockerUsageSource::chainOf(const std::string& image_id) {
  if (auto it = chains_.find(image_id); it != chains_.end()) return it->second;
  auto inspect = docker_.inspectImage(image_id);
  if (!inspect) return inspect.error();
  std::vector<std::string> diffs;
  const json& layers = (*inspect)["RootFS"]["Layers"];
  if (layers.is_array()) {
    for (const auto& l : layers)
      if (l.is_string()) diffs.push_back(l.get<std::string>());
  }
  auto chain = chainIds(diffs);
  chains_[image_id] = chain;
  return chain;
}

Result<UsageFigures> DockerUsageSource::measure() {
  UsageFigures f;
  f.measured_at = unixNow();
  auto info = docker_.getJson("/info");
  if (!info) return info.error().context("usage: docker info");
  f.data_root = jsonText(*info, "DockerRootDir");
  const std::string driver = jsonText(*info, "Driver");

  {
    auto df = docker_.systemDf();
    if (!df) return df.error().context("usage");
    f.containers.reserve(df->containers.size());
    std::map<std::string, SharedText, std::less<>> image_ids;  // one copy of each image id
    for (auto& c : df->containers) {
      auto image = image_ids.find(c.image_id);
      if (image == image_ids.end()) image = image_ids.emplace(c.image_id, SharedText(c.image_id)).first;
      f.addContainer(c.id, c.name, image->second, c.state, c.size_rw.value_or(0));
    }
    f.sealText();
    f.volumes.reserve(df->volumes.size());
    for (auto& v : df->volumes) {
      VolumeFigure& vf = f.volumes.emplace_back();
      vf.name = std::move(v.name);
      vf.mountpoint = std::move(v.mountpoint);
      vf.reported = v.size;
      vf.ref_count = v.ref_count;
      vf.size = vf.reported ? *vf.reported : (vf.mountpoint.empty() ? 0 : directoryBytes(vf.mountpoint));
    }
  }  // the emptied records go before the image list comes

  auto images = docker_.listImages(/*all=*/true);
  if (!images) return images.error().context("usage");
  std::set<std::string> live;
  for (auto& i : *images) {
    ImageFigure& img = f.images.emplace_back();
    img.id = std::move(i.id);
    live.insert(img.id);
    for (auto& tag : i.tags)
      if (tag != "<none>:<none>") img.tags.push_back(std::move(tag));
    img.size = i.size.value_or(0);
    if (i.created) img.created = static_cast<double>(*i.created);
    auto chain = chainOf(img.id);
    if (!chain) {
      // Removed between the list and the inspect: measured next time.
      LOG_DEBUG(kSub, "%s", chain.error().message.c_str());
      f.images.pop_back();
      continue;
    }
    img.layers = *chain;
  }
  // Forget images Docker no longer has (ids are content hashes: never reused for other content).
  std::erase_if(chains_, [&](const auto& kv) { return !live.count(kv.first); });
  std::erase_if(history_sizes_, [&](const auto& kv) { return !live.count(kv.first); });

  for (const ImageFigure& img : f.images) {
    for (size_t i = 0; i < img.layers.size(); i++) {
      const std::string& chain = img.layers[i];
      if (f.layer_sizes.count(chain)) continue;
      if (auto size = layerDbSize(f.data_root, driver, chain)) {
        f.layer_sizes[chain] = *size;
        continue;
      }
      // Fallback: /images/{id}/history lists one entry per history step,
      // newest first, with the layer's DiffSize on steps that made a layer.
      // Empty steps are not flagged; a zero-size step is taken as empty only
      // when there are more steps than layers left.
      auto hs = history_sizes_.find(img.id);
      if (hs == history_sizes_.end()) {
        auto hist = docker_.getJson("/images/" + img.id + "/history");
        if (!hist) return hist.error().context("usage");
        std::vector<uint64_t> sizes;
        if (hist->is_array()) {
          for (auto it = hist->rbegin(); it != hist->rend(); ++it) sizes.push_back(jsonSize(*it, "Size").value_or(0));
        }
        std::map<std::string, uint64_t> by_chain;
        size_t layer = 0;
        for (size_t step = 0; step < sizes.size() && layer < img.layers.size(); step++) {
          const size_t steps_left = sizes.size() - step, layers_left = img.layers.size() - layer;
          if (sizes[step] == 0 && steps_left > layers_left) continue;
          by_chain[img.layers[layer++]] = sizes[step];
        }
        hs = history_sizes_.emplace(img.id, std::move(by_chain)).first;
      }
      auto s = hs->second.find(chain);
      f.layer_sizes[chain] = s == hs->second.end() ? 0 : s->second;
    }
  }
  return f;
}

// --- account ---------------------------------------------------------------------

uint64_t UsageSnapshot::attributedTo(const std::function<bool(uint32_t)>& managed) const {
  uint64_t sum = 0;
  for (const auto& [uid, u] : users)
    if (managed(uid)) sum = satAdd(sum, u.total());
  return sum;
}

std::string_view TextPool::add(std::string_view s) {
  if (s.empty()) return {};
  if (auto it = index_.find(s); it != index_.end()) return *it;
  char* p;
  if (s.size() > kBlock) {
    // A block of its own, put before the current one, which stays current.
    auto own = std::unique_ptr<char[]>(new char[s.size()]);
    p = own.get();
    blocks_.insert(blocks_.empty() ? blocks_.end() : blocks_.end() - 1, std::move(own));
  } else {
    if (s.size() > kBlock - used_) {
      blocks_.emplace_back(new char[kBlock]);
      used_ = 0;
    }
    p = blocks_.back().get() + used_;
    used_ += s.size();
  }
  std::copy(s.begin(), s.end(), p);
  return *index_.emplace(p, s.size()).first;
}

void TextPool::seal() { std::unordered_set<std::string_view>().swap(index_); }

ContainerFigure& UsageFigures::addContainer(std::string_view id, std::string_view name, SharedText image_id,
                                            std::string_view status, uint64_t size_rw) {
  return containers.emplace_back(
      ContainerFigure{text_.add(id), text_.add(name), std::move(image_id), text_.add(status), size_rw});
}

UsageFigures::UsageFigures(const UsageFigures& other) { *this = other; }

UsageFigures& UsageFigures::operator=(const UsageFigures& other) {
  if (this == &other) return *this;
  TextPool fresh;
  text_ = std::move(fresh);
  containers.clear();
  containers.reserve(other.containers.size());
  for (const auto& c : other.containers) addContainer(c.id, c.name, c.image_id, c.status, c.size_rw);
  images = other.images;
  layer_sizes = other.layer_sizes;
  volumes = other.volumes;
  data_root = other.data_root;
  measured_at = other.measured_at;
  return *this;
}

namespace {

template <typename Figure, typename Key>
std::map<std::string_view, const Figure*> indexBy(const std::vector<Figure>& v, Key Figure::*key) {
  std::map<std::string_view, const Figure*> m;
  for (const auto& f : v) m.emplace(f.*key, &f);
  return m;
}

}  // namespace

namespace {
// Makes `u` sum to `bytes` (a kernel figure): layers and volumes as measured,
// the rest is the writable layers'; if the kernel counts less than layers and
// volumes (sparse files, apparent vs allocated bytes), volumes give way first.
void fitTo(UserUsage& u, uint64_t bytes) {
  uint64_t fixed = satAdd(u.image_layer_bytes, u.volume_bytes);
  if (bytes >= fixed) {
    u.container_bytes = bytes - fixed;
    return;
  }
  u.container_bytes = 0;
  u.image_layer_bytes = std::min(u.image_layer_bytes, bytes);
  u.volume_bytes = bytes - u.image_layer_bytes;
}
}  // namespace

Result<UsageSnapshot> account(std::shared_ptr<const UsageFigures> figures, const OwnerScan& owners, bool bill_root,
                              const KernelUsage* kernel) {
  UsageSnapshot s;
  s.figures = figures ? std::move(figures) : std::make_shared<const UsageFigures>();
  const UsageFigures& f = *s.figures;
  s.measured_at = f.measured_at;
  s.data_root = f.data_root;
  // The store's text, kept by the snapshot: the figure's copy when it says the same.
  auto keep = [&](const std::string& text, std::string_view figure_text = {}) {
    return text == figure_text ? figure_text : s.text.add(text);
  };
  auto setOwner = [&](UsageRow& row, const ObjectRecord& rec) {
    row.known = true;
    row.first_seen = rec.first_seen;
    if (!rec.owner) return;
    row.uid = billedUid(*rec.owner, bill_root);
    row.source = rec.owner->source;
    row.method = keep(rec.owner->method);
    row.attributed_at = rec.owner->time;
  };
  auto count = [&](const ObjectRecord& rec) {
    s.counts[toString(rec.kind)][rec.owner ? toString(rec.owner->source) : "unattributed"]++;
  };
  // Rows for the store's objects of `kind`, each with its figure when Docker
  // has one, then for the figures of objects the store never saw.
  auto join = [&](ObjectKind kind, auto& figures, auto add) -> Status {
    if (auto st = owners(kind,
                         [&](const ObjectRecord& rec) {
                           count(rec);
                           auto it = figures.find(rec.id);
                           add(it == figures.end() ? nullptr : it->second, &rec);
                           if (it != figures.end()) figures.erase(it);
                         });
        !st)
      return st;
    for (const auto& [key, fig] : figures) add(fig, nullptr);
    return {};
  };

  // Containers: the store's, with Docker's sizes, plus any Docker has that we never saw.
  auto containers = indexBy(f.containers, &ContainerFigure::id);
  s.containers.reserve(f.containers.size());
  auto addContainer = [&](const ContainerFigure* fig, const ObjectRecord* rec) {
    UsageRow& r = s.containers.emplace_back();
    r.kind = ObjectKind::Container;
    r.id = fig ? std::string_view(fig->id) : keep(rec->id);
    const std::string_view fig_name = fig ? std::string_view(fig->name) : std::string_view();
    r.name = rec && !rec->name.empty() ? keep(rec->name, fig_name) : fig_name;
    r.parent = fig ? fig->image_id.view() : keep(rec->parent);
    r.status = fig ? std::string_view(fig->status) : std::string_view();
    r.size_bytes = fig ? fig->size_rw : 0;
    if (kernel) {
      auto k = kernel->containers.find(std::string(r.id));
      if (k != kernel->containers.end()) r.size_bytes = k->second;
    }
    if (rec) setOwner(r, *rec);
    s.container_bytes += r.size_bytes;
    if (r.uid) s.users[*r.uid].container_bytes += r.size_bytes;
  };
  if (auto st = join(ObjectKind::Container, containers, addContainer); !st) return st.error();

  // Volumes, the same way.
  auto volumes = indexBy(f.volumes, &VolumeFigure::name);
  s.volumes.reserve(f.volumes.size());
  auto addVolume = [&](const VolumeFigure* fig, const ObjectRecord* rec) {
    UsageRow& r = s.volumes.emplace_back();
    r.kind = ObjectKind::Volume;
    r.id = r.name = fig ? std::string_view(fig->name) : keep(rec->id);
    r.parent = rec ? keep(rec->parent) : std::string_view();
    r.size_bytes = fig ? fig->size : 0;
    r.volume = fig;
    if (rec) setOwner(r, *rec);
    s.volume_bytes += r.size_bytes;
    if (r.uid) s.users[*r.uid].volume_bytes += r.size_bytes;
  };
  if (auto st = join(ObjectKind::Volume, volumes, addVolume); !st) return st.error();

  // Images: the store's (live), plus tagged ones we never saw. Untagged
  // images unknown to the store are a build's intermediate images: their
  // layers are counted below, they are not listed.
  auto images = indexBy(f.images, &ImageFigure::id);
  auto addImage = [&](const ImageFigure* fig, const ObjectRecord* rec) {
    UsageRow& r = s.images.emplace_back();
    r.kind = ObjectKind::Image;
    r.id = fig ? std::string_view(fig->id) : keep(rec->id);
    r.image = fig;
    if (fig) r.size_bytes = fig->size;
    r.name = !r.tags().empty() ? std::string_view(r.tags().front()) : rec ? keep(rec->name) : std::string_view();
    if (rec) setOwner(r, *rec);
    s.image_bytes += r.size_bytes;
  };
  // Layers go to the earliest live image containing them (a layer first
  // brought by an unattributed image stays unattributed): the scan gives the
  // store's images oldest first.
  std::set<std::string_view> claimed;  // chain ids
  auto claimLayers = [&](const ImageFigure& fig, const UsageRow& owner) {
    for (const auto& chain : fig.layers) {
      if (!claimed.insert(chain).second) continue;
      UsageRow& l = s.layers.emplace_back();
      l.kind = ObjectKind::Image;
      l.id = chain;
      auto sz = f.layer_sizes.find(chain);
      l.size_bytes = sz == f.layer_sizes.end() ? 0 : sz->second;
      if (owner.known) {
        l.parent = owner.id;
        l.uid = owner.uid;
        l.source = owner.source;
        l.method = owner.method;
        l.known = true;
      }
    }
  };
  if (auto st = owners(ObjectKind::Image,
                       [&](const ObjectRecord& rec) {
                         count(rec);
                         auto it = images.find(rec.id);
                         const ImageFigure* fig = it == images.end() ? nullptr : it->second;
                         addImage(fig, &rec);
                         if (fig) claimLayers(*fig, s.images.back());
                         if (it != images.end()) images.erase(it);
                       });
      !st)
    return st.error();
  for (const auto& [id, fig] : images) {
    if (!fig->tags.empty()) addImage(fig, nullptr);
    claimLayers(*fig, UsageRow{});
  }
  for (const UsageRow& l : s.layers) {
    s.layer_bytes += l.size_bytes;
    if (l.uid) s.users[*l.uid].image_layer_bytes += l.size_bytes;
  }

  s.total_bytes = s.container_bytes + s.layer_bytes + s.volume_bytes;
  if (kernel) {
    s.kernel = true;
    s.kernel_read_at = kernel->read_at;
  }
  if (kernel && kernel->per_user) {
    // Each uid's project is the truth for that uid; what no uid owns keeps
    // Docker's figure. The device totals move by the same amounts.
    for (const auto& [uid, bytes] : kernel->users) {
      UserUsage& u = s.users[uid];
      UserUsage before = u;
      fitTo(u, bytes);
      s.container_bytes = s.container_bytes - before.container_bytes + u.container_bytes;
      s.layer_bytes = s.layer_bytes - before.image_layer_bytes + u.image_layer_bytes;
      s.volume_bytes = s.volume_bytes - before.volume_bytes + u.volume_bytes;
    }
    s.total_bytes = s.container_bytes + s.layer_bytes + s.volume_bytes;
  }
  // Zero rows are not users with usage.
  std::erase_if(s.users, [](const auto& kv) { return kv.second.total() == 0; });
  s.text.seal();
  return s;
}

UsageSnapshot account(std::shared_ptr<const UsageFigures> figures, const OwnerView& owners, bool bill_root,
                      const KernelUsage* kernel) {
  auto scan = [&](ObjectKind kind, const std::function<void(const ObjectRecord&)>& fn) -> Status {
    const auto& list = kind == ObjectKind::Container ? owners.containers
                       : kind == ObjectKind::Image   ? owners.images
                                                     : owners.volumes;
    for (const auto& rec : list) fn(rec);
    return {};
  };
  return std::move(*account(std::move(figures), scan, bill_root, kernel));
}

// --- UsageAccountant ------------------------------------------------------------

UsageAccountant::UsageAccountant(Store& store, std::unique_ptr<UsageSource> source, Options options)
    : store_(store), source_(std::move(source)), opt_(options), snap_(std::make_shared<const UsageSnapshot>()) {}

UsageAccountant::~UsageAccountant() { stop(); }

void UsageAccountant::start() {
  {
    std::lock_guard<std::mutex> l(cv_mu_);
    stop_ = false;
  }
  worker_.start(
      "dq-usage", [this] { run(); }, [this] { halt(); });
}

void UsageAccountant::stop() { worker_.stop(); }

void UsageAccountant::halt() {
  {
    std::lock_guard<std::mutex> l(cv_mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

void UsageAccountant::refreshNow() {
  {
    std::lock_guard<std::mutex> l(cv_mu_);
    wake_ = true;
  }
  cv_.notify_all();
}

void UsageAccountant::rejoinSoon() {
  {
    std::lock_guard<std::mutex> l(cv_mu_);
    rejoin_ = true;
  }
  cv_.notify_all();
}

void UsageAccountant::run() {
  std::unique_lock<std::mutex> l(cv_mu_);
  auto next = std::chrono::steady_clock::now();
  while (!stop_) {
    if (std::chrono::steady_clock::now() >= next || wake_) {
      wake_ = false;
      rejoin_ = false;  // a measurement publishes with the latest kernel figures too
      l.unlock();
      if (auto s = refresh(); !s) LOG_WARN(kSub, "%s", s.error().message.c_str());
      // A measurement parses Docker's lists (MBs of JSON on a big host) into
      // short-lived trees; glibc keeps the freed pages. Hand them back.
      malloc_trim(0);
      l.lock();
      next = std::chrono::steady_clock::now() + opt_.interval;
    } else if (rejoin_) {
      rejoin_ = false;
      l.unlock();
      if (auto s = rejoin(); !s) LOG_WARN(kSub, "%s", s.error().message.c_str());
      l.lock();
    }
    cv_.wait_until(l, next, [this] { return stop_ || wake_ || rejoin_; });
  }
}

Status UsageAccountant::refresh() {
  // Measuring may take minutes on a big host: do it outside work_mu_, so that
  // rejoin() (after an admin override) never waits for Docker.
  std::unique_lock<std::mutex> measuring(measure_mu_);
  auto figures = source_->measure();
  std::lock_guard<std::mutex> work(work_mu_);
  {
    std::lock_guard<std::mutex> l(snap_mu_);
    figures ? measurements_++ : failures_++;
  }
  if (!figures) {
    // Keep serving the last figures (with owners re-read), and say why they are old.
    if (auto s = publish(have_figures_, figures.error().message); !s) return s;
    return figures.error();
  }
  // Shared, not copied, by every snapshot made from them.
  figures_ = std::make_shared<const UsageFigures>(std::move(*figures));
  have_figures_ = true;
  // The store keeps each object's last size (for the listings): the ids are
  // the figures' own, not copies.
  std::vector<std::pair<std::string_view, uint64_t>> sizes;
  sizes.reserve(figures_->containers.size());
  for (const auto& c : figures_->containers) sizes.emplace_back(c.id, c.size_rw);
  if (auto s = store_.objects().setSizes(ObjectKind::Container, sizes); !s) return s;
  sizes.clear();
  for (const auto& v : figures_->volumes) sizes.emplace_back(v.name, v.size);
  if (auto s = store_.objects().setSizes(ObjectKind::Volume, sizes); !s) return s;
  sizes.clear();
  for (const auto& i : figures_->images) sizes.emplace_back(i.id, i.size);
  if (auto s = store_.objects().setSizes(ObjectKind::Image, sizes); !s) return s;
  return publish(true, "");
}

Status UsageAccountant::rejoin() {
  std::lock_guard<std::mutex> work(work_mu_);
  std::string error;
  {
    std::lock_guard<std::mutex> l(snap_mu_);
    error = snap_->error;
  }
  return publish(have_figures_, error);
}

Status UsageAccountant::publish(bool measured, const std::string& error) {
  auto kernel = opt_.kernel ? opt_.kernel() : nullptr;
  auto accounted = account(
      figures_, [this](ObjectKind kind, const auto& fn) { return store_.objects().forEach(kind, fn); },
      opt_.bill_root_to_login_uid, kernel.get());
  if (!accounted) return accounted.error().context(kSub);
  auto snap = std::make_shared<UsageSnapshot>(std::move(*accounted));
  snap->measured = measured;
  snap->error = error;
  snap->source = std::string(source_->name()) + (kernel ? "+prjquota" : "");
  if (measured) {
    // Remember each layer's first sighting (and owner) across restarts.
    std::vector<LayerRecord> rows;
    rows.reserve(snap->layers.size());
    for (const auto& l : snap->layers)
      rows.push_back({std::string(l.id), l.size_bytes, l.uid, std::string(l.parent), 0});
    auto stored = store_.objects().syncLayers(rows, figures_->measured_at);
    if (!stored) return stored.error().context(kSub);
    std::map<std::string_view, double> first;
    for (const auto& r : *stored) first[r.id] = r.first_seen;
    for (auto& l : snap->layers) {
      auto it = first.find(l.id);
      l.first_seen = it == first.end() ? 0 : it->second;
    }
  }
  {
    std::lock_guard<std::mutex> l(snap_mu_);
    snap->generation = snap_->generation + 1;
    snap_ = std::move(snap);
  }
  // The previous snapshot (MiBs at 10,000 containers) and the measurement's
  // scratch are free now; give the pages back rather than keep the peak.
  malloc_trim(0);
  if (opt_.on_publish) opt_.on_publish();
  return {};
}

std::shared_ptr<const UsageSnapshot> UsageAccountant::snapshot() const {
  std::lock_guard<std::mutex> l(snap_mu_);
  return snap_;
}

uint64_t UsageAccountant::measurements() const {
  std::lock_guard<std::mutex> l(snap_mu_);
  return measurements_;
}

uint64_t UsageAccountant::failures() const {
  std::lock_guard<std::mutex> l(snap_mu_);
  return failures_;
}

}  // namespace dockquota
