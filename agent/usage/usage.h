// SPDX-License-Identifier: Apache-2.0
// Usage accounting: how many bytes each uid's Docker objects take.
//
//   UsageSource     measures raw figures (sizes per container, image layer and
//                   volume). DockerUsageSource reads Docker's own figures; a
//                   later issue swaps in kernel project-quota figures behind the
//                   same interface.
//   account()       pure: joins figures with the owners in the Store into a
//                   UsageSnapshot (per-uid sums, device totals, detail rows).
//   UsageAccountant measures on a thread (every `interval`, or refreshNow())
//                   and publishes an immutable snapshot; HTTP requests read it
//                   from memory, never Docker or SQLite.
//
// Rules: a container's writable layer (SizeRw) and a volume belong to their
// owner; an image layer (by chain id) is counted once on the host and belongs
// to the owner of the earliest-first_seen live image that contains it; if that
// image is unattributed (it was there before anyone we saw), so is the layer.
// Owners are billedUid() (root acting for a logged-in user bills that user).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "agent/base/result.h"
#include "agent/base/worker.h"
#include "agent/quota/kernel_usage.h"
#include "agent/runtime/docker_client.h"
#include "agent/store/store.h"

namespace dockquota {

// --- figures: what a source measures -------------------------------------------

// Text that many figures repeat: one copy, shared. A container's image id is
// 71 bytes; as a std::string in each of 10,000 containers it took an
// 80-byte heap block apiece, though a host has a few hundred images.
class SharedText {
 public:
  SharedText() = default;
  SharedText(std::string text) : text_(text.empty() ? nullptr : std::make_shared<const std::string>(std::move(text))) {}
  SharedText(const char* text) : SharedText(std::string(text)) {}
  std::string_view view() const { return text_ ? std::string_view(*text_) : std::string_view(); }
  operator std::string_view() const { return view(); }
  bool operator==(std::string_view other) const { return view() == other; }

 private:
  std::shared_ptr<const std::string> text_;
};

// Text kept for figures and a snapshot's rows: copied once into blocks that
// never move (views stay valid when the pool is moved), each distinct string
// once while the pool is open.
class TextPool {
 public:
  TextPool() = default;
  TextPool(TextPool&&) = default;
  TextPool& operator=(TextPool&&) = default;
  std::string_view add(std::string_view s);
  // Drops the index of what is in the pool (the text stays): add()s after it
  // still work, without finding what is already there.
  void seal();

 private:
  static constexpr size_t kBlock = 16 << 10;
  std::vector<std::unique_ptr<char[]>> blocks_;
  size_t used_ = kBlock;  // in the last block
  std::unordered_set<std::string_view> index_;
};

// Text in the figures' own pool (UsageFigures::addContainer): 10,000 ids as
// std::strings were an 80-byte heap block and a 32-byte string apiece.
struct ContainerFigure {
  std::string_view id;      // full id
  std::string_view name;    // without the leading '/'
  SharedText image_id;      // "sha256:...", shared by the image's containers (DockerUsageSource)
  std::string_view status;  // Docker's State ("running", "exited", ...)
  uint64_t size_rw = 0;     // writable layer bytes
};

struct ImageFigure {
  std::string id;                   // "sha256:..."
  std::vector<std::string> tags;    // RepoTags without "<none>:<none>"
  uint64_t size = 0;                // Docker's Size (all its layers)
  std::optional<double> created;    // Docker's Created, unix seconds
  std::vector<std::string> layers;  // chain ids, base first
};

struct VolumeFigure {
  std::string name;
  uint64_t size = 0;                 // bytes counted (Docker's figure, else our walk)
  std::optional<uint64_t> reported;  // Docker's UsageData.Size when it gave one
  uint64_t ref_count = 0;            // containers using it
  std::string mountpoint;
};

struct UsageFigures {
  UsageFigures() = default;
  UsageFigures(UsageFigures&&) = default;  // the pool's blocks do not move: the views stay valid
  UsageFigures& operator=(UsageFigures&&) = default;
  UsageFigures(const UsageFigures& other);  // the copy's containers point into its own pool
  UsageFigures& operator=(const UsageFigures& other);

  // A container, its text copied into the figures' pool.
  ContainerFigure& addContainer(std::string_view id, std::string_view name, SharedText image_id,
                                std::string_view status, uint64_t size_rw);
  // Once every container is in: the pool's index goes (MiBs at 10,000).
  void sealText() { text_.seal(); }

  std::vector<ContainerFigure> containers;      // filled with addContainer()
  std::vector<ImageFigure> images;              // every image (intermediate ones too)
  std::map<std::string, uint64_t> layer_sizes;  // chain id -> bytes of that layer alone
  std::vector<VolumeFigure> volumes;
  std::string data_root;   // DockerRootDir ("" unknown)
  double measured_at = 0;  // unix seconds

 private:
  TextPool text_;
};

class UsageSource {
 public:
  virtual ~UsageSource() = default;
  virtual const char* name() const = 0;  // for logs and /metrics
  virtual Result<UsageFigures> measure() = 0;
};

// Docker's own figures: /system/df (SizeRw, volume UsageData), /images/json?all=1,
// each new image's RootFS (chain ids), layer sizes from the layer store's
// `size` files (<root>/image/<driver>/layerdb/sha256/<chain>/size, what
// `docker system df` sums) or, when unreadable, /images/{id}/history. Volumes
// without a Docker size are walked (apparent bytes, hard links once).
class DockerUsageSource : public UsageSource {
 public:
  explicit DockerUsageSource(DockerClient& docker);
  const char* name() const override { return "docker"; }
  Result<UsageFigures> measure() override;

 private:
  Result<std::vector<std::string>> chainOf(const std::string& image_id);
  DockerClient& docker_;
  std::map<std::string, std::vector<std::string>> chains_;  // image id -> chain ids (images are immutable)
  std::map<std::string, std::map<std::string, uint64_t>> history_sizes_;  // image id -> chain -> bytes
};

// Chain id of a layer stack from its diff ids (image-spec: ChainID(L0) = DiffID(L0),
// ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))).
std::vector<std::string> chainIds(const std::vector<std::string>& diff_ids);
// Apparent bytes of the files under `dir` (hard links once), like Docker's directory.Size.
uint64_t directoryBytes(const std::string& dir);

// --- the snapshot ---------------------------------------------------------------

struct UserUsage {
  uint64_t container_bytes = 0;
  uint64_t image_layer_bytes = 0;
  uint64_t volume_bytes = 0;
  uint64_t total() const { return container_bytes + image_layer_bytes + volume_bytes; }
};

// One object as the Docker pages show it. Rows are served for as long as a
// snapshot lives, 10,000 and more of them: their text is not copied into
// each row but points into the snapshot's figures (Docker's fields) or its
// pool (the store's), so a row lives no longer than its snapshot.
struct UsageRow {
  std::string_view id;      // container id, image id, layer chain id, volume name
  std::string_view name;    // container name, first tag, volume name
  std::string_view parent;  // container: image id; image: ""; layer: owning image
  std::string_view status;  // container state
  std::string_view method;  // evidence method of the owner ("image_pull", ...)
  // Docker's figure of an image or volume row (null: Docker does not have
  // it), for the fields only those rows show; containers are most rows, so
  // the rows do not carry empty copies of them.
  const ImageFigure* image = nullptr;
  const VolumeFigure* volume = nullptr;
  uint64_t size_bytes = 0;
  std::optional<double> attributed_at;
  std::optional<double> first_seen;
  std::optional<uint32_t> uid;  // billed uid; nullopt = unattributed
  ObjectKind kind = ObjectKind::Container;
  Source source = Source::None;
  bool known = false;  // in the store (false: Docker has it, we never saw it)

  std::span<const std::string> tags() const { return image ? std::span(image->tags) : std::span<const std::string>(); }
  std::optional<double> created() const { return image ? image->created : std::nullopt; }  // Docker's Created
  uint64_t refCount() const { return volume ? volume->ref_count : 0; }
  std::optional<uint64_t> reportedSize() const {
    return volume ? volume->reported : std::nullopt;
  }  // Docker's own figure
};

struct UsageSnapshot {
  UsageSnapshot() = default;
  UsageSnapshot(UsageSnapshot&&) = default;  // moving keeps the rows' text where it is
  UsageSnapshot& operator=(UsageSnapshot&&) = default;
  UsageSnapshot(const UsageSnapshot&) = delete;  // a copy's rows would point into the original
  UsageSnapshot& operator=(const UsageSnapshot&) = delete;

  uint64_t generation = 0;  // bumps on every publish
  bool measured = false;    // false until the first successful measurement
  double measured_at = 0;
  std::string source;   // UsageSource::name(), "+prjquota" when kernel figures are joined in
  bool kernel = false;  // per-user/per-container bytes come from project-quota reads
  double kernel_read_at = 0;
  std::string error;  // last measurement error ("" ok)
  std::string data_root;

  std::map<uint32_t, UserUsage> users;  // every billed uid with bytes (filter at serve time)
  uint64_t total_bytes = 0;             // containers + unique layers + volumes
  uint64_t container_bytes = 0, layer_bytes = 0, volume_bytes = 0, image_bytes = 0;

  std::vector<UsageRow> containers, images, layers, volumes;
  // Attribution counts: kind -> source name -> live objects.
  std::map<std::string, std::map<std::string, uint64_t>> counts;

  // What the rows' text points into: the figures (shared with the accountant
  // and the other snapshots made from them) and the store's text.
  std::shared_ptr<const UsageFigures> figures;
  TextPool text;

  // Bytes billed to uids inside `managed` (the qman filter); the rest is U.
  uint64_t attributedTo(const std::function<bool(uint32_t)>& managed) const;
};

// The store's live objects for account(): calls `fn` for each live object of
// a kind, oldest first (first_seen, then id), as ObjectRepo::forEach() does. The
// objects are read one at a time: as a list, 10,000 containers are ~6 MiB.
using OwnerScan = std::function<Status(ObjectKind kind, const std::function<void(const ObjectRecord&)>& fn)>;

// `kernel` (may be null): project-quota figures that replace Docker's where they
// exist. A uid's kernel total is split so the three parts still sum to it: the
// layers and volumes Docker measured, and the rest as container bytes.
Result<UsageSnapshot> account(std::shared_ptr<const UsageFigures> figures, const OwnerScan& owners,
                              bool bill_root_to_login_uid, const KernelUsage* kernel = nullptr);

// The same from lists (each in ObjectRepo::list()'s order), for tests.
struct OwnerView {
  std::vector<ObjectRecord> containers, images, volumes;
};
UsageSnapshot account(std::shared_ptr<const UsageFigures> figures, const OwnerView& owners, bool bill_root_to_login_uid,
                      const KernelUsage* kernel = nullptr);

// --- the accountant ----------------------------------------------------------------

class UsageAccountant {
 public:
  struct Options {
    std::chrono::milliseconds interval = std::chrono::seconds(60);
    bool bill_root_to_login_uid = true;
    // Latest kernel figures (ProjectQuotas::usage()), joined in on every publish.
    std::function<std::shared_ptr<const KernelUsage>()> kernel;
    // Called on the publishing thread after every new snapshot (the enforcer
    // re-checks users); must not block.
    std::function<void()> on_publish;
  };

  UsageAccountant(Store& store, std::unique_ptr<UsageSource> source, Options options);
  ~UsageAccountant();  // stops

  void start();
  void stop();
  // Wakes the thread for a measurement now (returns at once).
  void refreshNow();
  // Measures and publishes on the caller's thread.
  Status refresh();
  // Re-reads owners from the store and publishes with the last figures (after
  // an admin override, so the answer that follows already shows it).
  Status rejoin();
  // rejoin() on the accountant's thread, soon (new kernel figures: the caller
  // must not wait for SQLite or a measurement in progress).
  void rejoinSoon();

  std::shared_ptr<const UsageSnapshot> snapshot() const;
  uint64_t measurements() const;
  uint64_t failures() const;

 private:
  Status publish(bool measured, const std::string& error);
  void run();
  void halt();  // sets stop_ and wakes run()

  Store& store_;
  std::unique_ptr<UsageSource> source_;
  Options opt_;

  std::mutex measure_mu_;  // one measurement at a time (sources keep caches)
  std::mutex work_mu_;     // one publish at a time; guards figures_
  std::shared_ptr<const UsageFigures> figures_ = std::make_shared<const UsageFigures>();  // the last ones
  bool have_figures_ = false;

  mutable std::mutex snap_mu_;
  std::shared_ptr<const UsageSnapshot> snap_;
  uint64_t measurements_ = 0, failures_ = 0;

  std::mutex cv_mu_;
  std::condition_variable cv_;
  bool stop_ = false, wake_ = false, rejoin_ = false;
  Worker worker_;
};

}  // namespace dockquota
