// SPDX-License-Identifier: Apache-2.0
// The attribution store: who owns each container, image and volume, kept in
// SQLite (WAL, versioned migrations) so nothing is lost across restarts.
//
// Join rules (decide()) are pure and live here too: kernel evidence outranks
// labels, an admin override outranks kernel evidence, and objects seen without
// evidence are "unattributed", never guessed.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/result.h"
#include "agent/store/events.h"

struct sqlite3;

namespace dockquota {

enum class ObjectKind { Container, Image, Volume };
const char* toString(ObjectKind k);  // "container", "image", "volume"
std::optional<ObjectKind> parseObjectKind(const std::string& s);

// Where an owner came from, strongest last. Stored as text.
enum class Source { None, Label, Audit, Bpf, Admin };
const char* toString(Source s);  // "unattributed", "label", "audit", "bpf", "admin"
std::optional<Source> parseSource(const std::string& s);

// Who asked Docker for something, as the kernel saw it.
struct Evidence {
  Source source = Source::Bpf;
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::optional<uint32_t> login_uid;  // unset when the kernel says (uid_t)-1
  uint32_t pid = 0;
  std::string comm;
  std::string exe;
  std::string method;       // "container_create", "image_pull", ... (ApiAction name) or "anonymous_volume"
  double request_time = 0;  // unix seconds: first byte of the request
  double time = 0;          // unix seconds: Docker's reply (attribution time)
};

struct ObjectRecord {
  ObjectKind kind = ObjectKind::Container;
  std::string id;                         // container id (64 hex), image id ("sha256:..."), volume name
  std::string name;                       // container name, first image tag, volume name
  std::string parent;                     // container: image id; volume: container that made it; image: ""
  std::optional<Evidence> owner;          // nullopt = unattributed
  std::optional<std::string> label_user;  // qman.user label as set by the creator: recorded, never trusted
  double first_seen = 0;                  // unix seconds the agent first knew of it
  std::optional<double> gone_at;          // set when Docker no longer has it
  uint64_t size_bytes = 0;                // last measured size (later issues)
  // Schema v5:
  std::optional<double> missed_at;  // created while the agent watched, no kernel evidence after the check delay
  uint64_t seq = 0;  // the store's change counter at this row's last insert, attribution, gone mark or revival

  bool attributed() const { return owner.has_value(); }
};

// Pure join rule: should `ev` become the owner of `existing` (nullptr = not in
// the store yet)? `brings_new` says the call can only have made a new object
// (container create, commit, build, import, volume create); for calls that may
// find the object already there (pull, load, tag), the object is credited only
// if it was unknown, or first seen no earlier than the request began.
enum class Decision { Attribute, Keep };
Decision decide(const ObjectRecord* existing, const Evidence& ev, bool brings_new);

// Schema v2: quotas and measured usage.

// One image layer as measured on the host: counted once, whoever shares it.
struct LayerRecord {
  std::string id;                     // chain id ("sha256:..."): the layer on disk, parent chain included
  uint64_t size_bytes = 0;            // Docker's DiffSize of this layer alone
  std::optional<uint32_t> owner_uid;  // billed uid of the image that brought it; nullopt = unattributed
  std::string owner_image;            // that image's id ("" when unattributed)
  double first_seen = 0;              // unix seconds the agent first measured it
};

// A device's default quota (qman DeviceDefaultQuota); limits in 1 KiB blocks.
struct DeviceDefault {
  std::string device;
  uint64_t block_soft_kib = 0;
  uint64_t block_hard_kib = 0;
  uint64_t inode_soft = 0;
  uint64_t inode_hard = 0;
};

// An object's owner split into its layers (the attribution-detail view).
struct AttributionDetail {
  ObjectRecord record;                // owner = the effective one
  std::optional<Evidence> automatic;  // best kernel/label evidence, nullopt = none
  std::optional<Evidence> override_;  // the admin override, if any
  std::string resolver;               // who set the override ("" unknown)
};

// One evidence row with its key (the events view).
struct EvidenceRow {
  int64_t seq = 0;  // insertion order, stable id
  ObjectKind kind = ObjectKind::Container;
  std::string id;
  Evidence ev;
};

struct ReconcileResult {
  size_t added = 0;        // present in Docker, unknown to the store: inserted unattributed
  size_t gone = 0;         // in the store, not in Docker: marked gone
  size_t revived = 0;      // a gone id that Docker has again (a volume name reused): reset, unattributed
  size_t restored = 0;     // a gone row whose object Docker still has (container ids are never reused, or the
                           // owner's reply came after the gone mark): live again, owner and evidence kept
  size_t kept_recent = 0;  // not in the list, but inserted/attributed/marked after the list began: untouched
  size_t stale = 0;        // gone after the list began, yet in it: the list predates the removal, left gone
  std::vector<std::string> kept_ids;  // the kept_recent rows (the caller checks them one by one)
};

// What noteSeen() did with a row.
enum class Seen {
  Inserted,  // unknown id: a new unattributed row
  Updated,   // a live row: names and label updated
  Reset,     // a gone id Docker has again, a new object with a reused name: owner and evidence forgotten
  Restored,  // a gone row whose object Docker still has: live again, owner and evidence kept
  Stale,     // a gone row, and the observation may predate the removal: left as it is
};
const char* toString(Seen s);

// Schema v3: a kernel project-quota id and what it is for.
struct ProjectRecord {
  uint32_t id = 0;
  std::string owner_kind;  // "user" (owner = uid) or "container" (owner = container id)
  std::string owner;
  std::optional<uint64_t> limit_bytes;  // container projects: own limit; nullopt = the default
  double created_at = 0;
};

// Schema v4: enforcement.

// A container the enforcer acted on. Written before each Docker call (the
// intent) and after it (the outcome, with its event in the same transaction),
// so a crash mid-enforcement is finished, not repeated or forgotten, at the
// next start.
enum class ActionState { Stopping, Stopped, Removing, Removed, Spared, Failed };
const char* toString(ActionState s);  // "stopping", "stopped", ...
std::optional<ActionState> parseActionState(const std::string& s);

struct EnforcementAction {
  std::string container_id;
  uint32_t uid = 0;
  std::string name;         // container name when acted on
  uint64_t size_bytes = 0;  // its writable layer when chosen
  ActionState state = ActionState::Stopping;
  double started_at = 0;  // when it was chosen (unix seconds)
  std::optional<double> stopped_at;
  std::optional<double> remove_after;  // stopped_at + grace
  std::optional<double> finished_at;   // removed, spared or failed
  std::string error;                   // last failure ("" none)
  bool open() const {
    return state == ActionState::Stopping || state == ActionState::Stopped || state == ActionState::Removing;
  }
};

// What an admin exempted from enforcement (never by a label users can set).
struct Exemption {
  std::string kind;  // "user" (id = uid) or "container" (id = full container id)
  std::string id;
  std::string reason;
  double set_at = 0;
};

// The events list of the agent's API: after `after` (the cursor), oldest first.
struct EventQuery {
  int64_t after = 0;
  size_t limit = 100;
  std::optional<uint32_t> uid;
  std::string type;  // "" any
};

// The channels an event is queued on when recorded.
struct EventRoute {
  bool master = false;
  bool mail = false;
};

// An event as listed, with where it went.
struct EventRow {
  Event event;
  std::string master;  // "pending", "delivered", "given_up", "not_sent"
  std::string mail;
};

// The database is the attribution ledger and the quota state: for the agent
// only, whatever umask the agent was started with (by hand, systemd,
// install.sh). Its directory is 0700, its files (the database, -wal, -shm,
// -journal, copies named after it) 0600.
constexpr mode_t kStateDirMode = 0700;
constexpr mode_t kStateFileMode = 0600;

// Creates the database's directory `dir` if it is missing: its parents with
// the usual modes (they are /var/lib and the like), `dir` itself with
// kStateDirMode set explicitly. An existing `dir` is left to Store::open.
Status makeStateDirectory(const std::string& dir);

class Store : public EventSpool {
 public:
  static constexpr int kSchemaVersion = 5;

  // Opens (creating if needed) and migrates. Refuses a file whose schema is
  // newer than this build knows, naming both versions. A new database file
  // is created kStateFileMode; an existing one, its -wal/-shm and a directory
  // that holds nothing but them, if readable by others, are tightened to
  // kStateFileMode/kStateDirMode with a warning.
  static Result<std::unique_ptr<Store>> open(const std::string& path);
  ~Store();

  // Schema migrations, in order: step i takes PRAGMA user_version from i to i+1,
  // in one transaction. A new schema version is one more string at the end of
  // the list in store.cpp (and kSchemaVersion + 1).
  static const std::vector<std::string>& migrations();
  // open() with an explicit step list instead of migrations(): "newer than this
  // build" then means newer than steps.size(). For tests of the migration runner.
  static Result<std::unique_ptr<Store>> open(const std::string& path, const std::vector<std::string>& steps);

  int schemaVersion() const;
  const std::string& path() const { return path_; }

  // The change counter: every insert, attribution, gone mark and revival of
  // an object row takes the next value into objects.seq. Read it before
  // asking Docker for something, and pass it as `observed_since`/`listed_after`
  // so that what changed meanwhile is not judged by the older answer.
  uint64_t sequence() const;

  // Docker has this object. Inserts an unattributed record if the id is unknown;
  // updates name/parent/label when given. For a gone row (see Seen):
  // `observed_since` nullopt = the observation is current (an event), else the
  // sequence() read before Docker was asked; a row marked gone after that is
  // left gone (Stale). Otherwise a container (ids are never reused) or a row
  // whose owner's reply came after the gone mark is Restored with its owner; an
  // image or volume is Reset (a new object with a reused name).
  // `observed_since` 0: never revive (a create reply: attribute() decides by time).
  Result<Seen> noteSeen(ObjectKind kind, const std::string& id, const std::string& name, const std::string& parent,
                        const std::optional<std::string>& label_user, double now,
                        std::optional<uint64_t> observed_since);
  // The same for a current observation, when the outcome does not matter.
  Status noteSeen(ObjectKind kind, const std::string& id, const std::string& name, const std::string& parent,
                  const std::optional<std::string>& label_user, double now);
  // Applies decide(); records the evidence row either way. Returns true if the owner changed.
  Result<bool> attribute(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new);
  // Admin override (Source::Admin) and its removal (back to the best automatic evidence).
  Status setOverride(ObjectKind kind, const std::string& id, const Evidence& ev);
  Status clearOverride(ObjectKind kind, const std::string& id);
  // Called after every committed change of an object's owner: an attribution
  // that changed it, an admin override set or cleared. On the writer's thread,
  // outside the store's lock (the listener may read the store). Whoever
  // changes an owner, the attributor or the API, the listeners hear it, so
  // project quotas re-tag at once, not at the next sync.
  using ObjectListener = std::function<void(ObjectKind, const std::string& id)>;
  void setOwnerListener(ObjectListener f);
  // Docker confirmed the object is gone (its destroy/delete event, a 404 after a
  // removal). With `unless_changed_after` (the sequence() read before asking
  // Docker), a row changed since is left live. True when the row was marked.
  Result<bool> markGone(ObjectKind kind, const std::string& id, double now,
                        std::optional<uint64_t> unless_changed_after = std::nullopt);
  // One transaction: `present` is every id Docker has of this kind in a list
  // started after sequence() was `listed_after`. Only rows not changed since
  // are marked gone (a create attributed while the list was read is not in it);
  // nullopt: every row is judged by the list.
  Result<ReconcileResult> reconcile(ObjectKind kind, const std::set<std::string>& present, double now,
                                    std::optional<uint64_t> listed_after = std::nullopt);
  // The missed-object check: flags the row (missed_at) when it has no kernel
  // or admin owner. True when flagged now; false when it has one, was already
  // flagged, or was first seen over a second before `created_at` (Docker's
  // create event time: a create that found an older object, e.g. a volume).
  // An unknown id is inserted, unattributed, and flagged.
  Result<bool> markMissed(ObjectKind kind, const std::string& id, double now, double created_at = 0);
  // Live objects flagged missed that still have no kernel or admin owner (the review queue's share of them).
  Result<size_t> unresolvedMissed() const;

  Result<std::optional<ObjectRecord>> get(ObjectKind kind, const std::string& id) const;
  // Live objects (gone_at unset), ordered by first_seen then id.
  Result<std::vector<ObjectRecord>> list(ObjectKind kind, bool include_gone = false) const;
  Result<size_t> count(ObjectKind kind, bool include_gone = false) const;
  // The same, one record at a time and none kept (10,000 containers are
  // ~6 MiB as a list). Read in batches, each under the store's lock; `fn`
  // runs without it. Objects changed meanwhile are seen as they are when
  // their batch is read (one added then comes last, by first_seen).
  Status forEach(ObjectKind kind, const std::function<void(const ObjectRecord&)>& fn, bool include_gone = false) const;
  // Resolves a name, a unique id prefix or a full id to the full id of a live object.
  Result<std::optional<std::string>> resolve(ObjectKind kind, const std::string& ref) const;

  // Every evidence row for an object, oldest first (the attribution-detail view).
  Result<std::vector<Evidence>> evidence(ObjectKind kind, const std::string& id) const;

  // --- v2: quotas and usage --------------------------------------------------
  // Per-uid Docker limit in 1 KiB blocks. 0 removes the row (0 = no limit).
  Status setUserLimit(uint32_t uid, uint64_t block_hard_kib, double now);
  // Every stored (non-zero) limit, by uid.
  Result<std::map<uint32_t, uint64_t>> userLimits() const;
  // Several limits in one transaction (batch, default application).
  Status setUserLimits(const std::map<uint32_t, uint64_t>& kib_by_uid, double now);

  Status setDeviceDefault(const DeviceDefault& d, double now);
  Result<std::optional<DeviceDefault>> deviceDefault(const std::string& device) const;

  // Replaces the layer table with `present` in one transaction: sizes and
  // owners are updated, first_seen is kept for known layers (now for new ones),
  // layers no image has any more are deleted. Returns the rows as stored.
  Result<std::vector<LayerRecord>> syncLayers(const std::vector<LayerRecord>& present, double now);
  Result<std::vector<LayerRecord>> layers() const;

  // Last measured size of live objects (objects.size_bytes), in one transaction.
  Status setSizes(ObjectKind kind, const std::vector<std::pair<std::string_view, uint64_t>>& bytes_by_id);

  Result<std::optional<AttributionDetail>> detail(ObjectKind kind, const std::string& id) const;
  // setOverride() plus who did it (the qman master's manual_resolver).
  Status setOverride(ObjectKind kind, const std::string& id, const Evidence& ev, const std::string& resolver);
  // Evidence rows, newest first: of one object when `id` is set, else of every
  // object of `kind` (all kinds when nullopt); at most `limit`.
  Result<std::vector<EvidenceRow>> evidenceRows(std::optional<ObjectKind> kind, const std::string& id,
                                                size_t limit) const;

  // --- v3: project-quota ids ---------------------------------------------------
  // The project of (kind, owner); a new one takes the lowest id in [lo, hi]
  // that no row holds and `usable` accepts (ENOSPC when none).
  Result<ProjectRecord> project(const std::string& kind, const std::string& owner, uint32_t lo, uint32_t hi, double now,
                                const std::function<bool(uint32_t)>& usable = {});
  // Frees the id (no-op when there is none).
  Status releaseProject(const std::string& kind, const std::string& owner);
  // The project keeps its id and limit under a new owner (a layer's project
  // becomes its container's once the create reply names it). ENOENT when
  // there is none; EEXIST when the new owner has one already.
  Status renameProject(const std::string& kind, const std::string& owner, const std::string& new_owner);
  Status setProjectLimit(const std::string& kind, const std::string& owner, std::optional<uint64_t> bytes);
  Result<std::vector<ProjectRecord>> projects() const;

  // --- v4: enforcement (store_enforcement.cpp) ------------------------------------
  // Records `e` (seq and detail.event_id are filled in) and queues it on the
  // channels given. With `conditions`, only if (uid, conditions[0]) is not
  // already announced; all of them are then recorded as held, in the same
  // transaction (the rest only if not held yet: an exceeded limit also holds
  // the warning, so a user coming down from over is not warned on the way).
  // Returns the seq, or nullopt when conditions[0] was already announced.
  using Route = EventRoute;
  Result<std::optional<int64_t>> addEvent(Event& e, Route route, const std::vector<std::string>& conditions = {});
  // The condition no longer holds: the next addEvent() with it announces again.
  Status clearCondition(uint32_t uid, const std::string& condition);
  // Every announced condition: uid -> conditions.
  Result<std::map<uint32_t, std::set<std::string>>> conditions() const;
  Result<std::vector<EventRow>> events(const EventQuery& q) const;
  // Deletes delivered (or never queued) events older than `before`; never a pending one.
  Result<size_t> pruneEvents(double before);

  // EventSpool, for MasterSink and MailNotifier.
  Result<std::vector<Event>> pending(Channel c, size_t max) override;
  Status delivered(Channel c, const std::vector<int64_t>& seqs, bool ok, double now) override;
  Result<size_t> pendingCount(Channel c) override;

  // An action's new state, with its events (in this order) in the same transaction.
  struct RoutedEvent {
    Event* event;
    Route route;
  };
  Status putAction(const EnforcementAction& a, const std::vector<RoutedEvent>& events = {});
  // Open ones (stopping, stopped, removing) or all (newest first, at most `limit`).
  Result<std::vector<EnforcementAction>> actions(bool open_only, size_t limit = 1000) const;

  Status setExemption(const Exemption& x);
  Result<bool> clearExemption(const std::string& kind, const std::string& id);  // false: there was none
  Result<std::vector<Exemption>> exemptions() const;

 private:
  Store(sqlite3* db, std::string path);
  uint64_t nextSeq() { return ++seq_; }  // under mu_
  Result<bool> attributeTxn(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new);
  Status setOverrideTxn(ObjectKind kind, const std::string& id, const Evidence& ev, const std::string& resolver);
  Status clearOverrideTxn(ObjectKind kind, const std::string& id);
  void ownerChanged(ObjectKind kind, const std::string& id);
  std::mutex listener_mu_;
  ObjectListener on_owner_;  // under listener_mu_
  sqlite3* db_;
  std::string path_;
  mutable std::mutex mu_;
  uint64_t seq_ = 0;  // max(objects.seq); under mu_
};

}  // namespace dockquota
