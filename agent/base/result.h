// SPDX-License-Identifier: Apache-2.0
// Result<T>: a value or an error with an errno and context, added per layer.
// libbpf and libc report -errno; we never throw across those boundaries.
#pragma once

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace dockquota {

struct Error {
  int code = 0;         // errno value, 0 when not an OS error
  std::string message;  // "subsystem: what failed: why"

  // Prefixes context: Error{ENOENT, "open x"}.context("store") -> "store: open x".
  Error context(const std::string& what) const { return Error{code, what + ": " + message}; }
};

// Builds an Error from an errno value: "what: strerror(err)".
inline Error osError(int err, const std::string& what) {
  if (err < 0) err = -err;
  return Error{err, what + ": " + std::strerror(err)};
}

// [[nodiscard]]: an error nobody looked at is an error lost. A call whose
// failure is really of no interest says so with (void) and a comment why.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit on purpose
  Result(Error error) : v_(std::move(error)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<0>(v_); }
  const T& value() const { return std::get<0>(v_); }
  T& operator*() { return value(); }
  const T& operator*() const { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : err_(std::move(error)) {}  // NOLINT
  bool ok() const { return !err_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return *err_; }

 private:
  std::optional<Error> err_;
};

using Status = Result<void>;

}  // namespace dockquota
