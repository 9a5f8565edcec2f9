// SPDX-License-Identifier: Apache-2.0
// The store's records: objects and their owners (evidence), layers, limits,
// project ids, enforcement actions, exemptions and event rows. Plain data;
// the repositories (*_repo.h) read and write them.
//
// Join rules (decide()) are pure and live here too: kernel evidence outranks
// labels, an admin override outranks kernel evidence, and objects seen without
// evidence are "unattributed", never guessed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "agent/store/events.h"

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
  std::string type;           // "" any
  bool newest_first = false;  // the last `limit` events, newest first (a user's recent ones)
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

}  // namespace dockquota
