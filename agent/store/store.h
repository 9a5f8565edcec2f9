// SPDX-License-Identifier: Apache-2.0
// The attribution store: who owns each container, image and volume, kept in
// SQLite (WAL, versioned migrations) so nothing is lost across restarts, with
// the quota and enforcement state beside it. One database file and one
// connection (Db), split by concern into repositories: objects(), limits(),
// projectIds(), eventLog(), enforcement(). Whoever needs one concern takes that
// repository, not the whole store.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "agent/base/result.h"
#include "agent/store/action_repo.h"
#include "agent/store/db.h"
#include "agent/store/event_repo.h"
#include "agent/store/limit_repo.h"
#include "agent/store/object_repo.h"
#include "agent/store/project_repo.h"
#include "agent/store/records.h"

namespace dockquota {

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

class Store {
 public:
  static constexpr int kSchemaVersion = 6;

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

  ObjectRepo& objects() { return objects_; }
  const ObjectRepo& objects() const { return objects_; }
  LimitRepo& limits() { return limits_; }
  const LimitRepo& limits() const { return limits_; }
  ProjectRepo& projectIds() { return projects_; }
  const ProjectRepo& projectIds() const { return projects_; }
  EventRepo& eventLog() { return events_; }
  const EventRepo& eventLog() const { return events_; }
  ActionRepo& enforcement() { return actions_; }
  const ActionRepo& enforcement() const { return actions_; }

 private:
  Store(sqlite3* db, std::string path);
  Db db_;
  std::string path_;
  ObjectRepo objects_{db_};
  LimitRepo limits_{db_};
  ProjectRepo projects_{db_};
  EventRepo events_{db_};
  ActionRepo actions_{db_};
};

}  // namespace dockquota
