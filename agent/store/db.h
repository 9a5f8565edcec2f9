// SPDX-License-Identifier: Apache-2.0
// The SQLite connections every repository of the store shares: the writer
// (every write, and reads inside a write), the reader (every read-only call:
// lists, lookups, the API's pages) and the objects' change counter. Each
// handle is opened NOMUTEX and used only under its own mutex. In WAL mode a
// read on the reader never waits for a write, nor a write for a read: the
// ring-drain thread's attributions are not held up behind a listing of
// 10,000 containers (store-bench: p99 1.8 ms alone, 33 ms beside such
// readers on one connection).
#pragma once

#include <cstdint>
#include <mutex>

struct sqlite3;

namespace dockquota {

struct Db {
  sqlite3* handle = nullptr;  // the writer
  mutable std::mutex mu;
  uint64_t seq = 0;           // max(objects.seq); under mu
  sqlite3* reader = nullptr;  // read-only; sees every write committed before its read began
  mutable std::mutex read_mu;
  uint64_t nextSeq() { return ++seq; }  // under mu
};

}  // namespace dockquota
