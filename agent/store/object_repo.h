// SPDX-License-Identifier: Apache-2.0
// Containers, images and volumes, their owners (the strongest evidence, or an
// admin override) and every piece of evidence; image layers and measured
// sizes. The attributor writes here from the ring-drain thread, so every
// write is one short transaction.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/result.h"
#include "agent/store/db.h"
#include "agent/store/records.h"

namespace dockquota {

class ObjectRepo {
 public:
  explicit ObjectRepo(Db& db) : db_(db) {}

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

 private:
  Result<bool> attributeTxn(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new);
  Status setOverrideTxn(ObjectKind kind, const std::string& id, const Evidence& ev, const std::string& resolver);
  Status clearOverrideTxn(ObjectKind kind, const std::string& id);
  void ownerChanged(ObjectKind kind, const std::string& id);
  Db& db_;
  std::mutex listener_mu_;
  ObjectListener on_owner_;  // under listener_mu_
};

}  // namespace dockquota
