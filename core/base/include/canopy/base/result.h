// Result values for operations that can fail on outside input (guest, socket, file).
// Guest-caused failures are values, never exceptions or aborts (BRIEF conventions 6).
#pragma once

#include <cassert>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <utility>

namespace canopy {

// Error kinds. Device models map these to their spec's response codes.
enum class Errc {
  kOk = 0,
  kInvalidArgument,  // malformed input (a field out of range, a bad size)
  kOutOfRange,       // an address or length outside guest memory / a buffer
  kOverflow,         // arithmetic on input values overflowed
  kLimit,            // a documented cap was exceeded
  kNoMemory,         // host allocation failed
  kIo,               // a system call failed (errno in Error::sys_errno)
  kProtocol,         // a peer broke the protocol (vhost-user, virtio state machine)
  kUnsupported,      // a feature or request we do not implement
  kClosed,           // the peer went away / end of stream
  kTimeout,          // a deadline passed
  kProducerLost,     // a fence's producer died before signalling
  kState,            // request not valid in the current state
};

const char* errc_name(Errc e);

// An error: a kind, a static message (no allocation on hot paths) and an optional errno.
struct Error {
  Errc code = Errc::kOk;
  const char* what = "";
  int sys_errno = 0;
};

inline Error make_error(Errc code, const char* what, int sys_errno = 0) { return Error{code, what, sys_errno}; }

// Result<T>: either a T or an Error. Minimal std::expected stand-in (C++20 toolchains here lack it).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(const T& v) : ok_(true) { new (&storage_.value) T(v); }        // NOLINT: implicit by design
  Result(T&& v) : ok_(true) { new (&storage_.value) T(std::move(v)); }  // NOLINT
  Result(Error e) : ok_(false) { new (&storage_.error) Error(e); }      // NOLINT
  Result(const Result& o) : ok_(o.ok_) {
    if (ok_) new (&storage_.value) T(o.storage_.value);
    else new (&storage_.error) Error(o.storage_.error);
  }
  Result(Result&& o) noexcept : ok_(o.ok_) {
    if (ok_) new (&storage_.value) T(std::move(o.storage_.value));
    else new (&storage_.error) Error(o.storage_.error);
  }
  Result& operator=(Result o) noexcept {
    destroy();
    ok_ = o.ok_;
    if (ok_) new (&storage_.value) T(std::move(o.storage_.value));
    else new (&storage_.error) Error(o.storage_.error);
    return *this;
  }
  ~Result() { destroy(); }

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  T& value() & {
    check();
    return storage_.value;
  }
  const T& value() const& {
    check();
    return storage_.value;
  }
  T&& value() && {
    check();
    return std::move(storage_.value);
  }
  T* operator->() {
    check();
    return &storage_.value;
  }
  const T* operator->() const {
    check();
    return &storage_.value;
  }
  T& operator*() & {
    check();
    return storage_.value;
  }
  const T& operator*() const& {
    check();
    return storage_.value;
  }
  const Error& error() const {
    assert(!ok_);
    return storage_.error;
  }
  Errc code() const { return ok_ ? Errc::kOk : storage_.error.code; }

 private:
  void check() const {
    if (!ok_) std::abort();  // programming error: value() on an error
  }
  void destroy() {
    if (ok_) storage_.value.~T();
  }
  union Storage {
    Storage() {}
    ~Storage() {}
    T value;
    Error error;
  } storage_;
  bool ok_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error e) : err_(e) {}  // NOLINT
  bool ok() const { return err_.code == Errc::kOk; }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return err_; }
  Errc code() const { return err_.code; }

 private:
  Error err_{};
};

using Status = Result<void>;
inline Status ok_status() { return {}; }

}  // namespace canopy

// Propagate an error from an expression returning Result/Status.
#define CANOPY_TRY(expr)                                   \
  do {                                                     \
    auto canopy_try_r_ = (expr);                           \
    if (!canopy_try_r_.ok()) return canopy_try_r_.error(); \
  } while (0)

#define CANOPY_CONCAT_INNER(a, b) a##b
#define CANOPY_CONCAT(a, b) CANOPY_CONCAT_INNER(a, b)
// auto x = CANOPY_TRY_ASSIGN-like helper: CANOPY_ASSIGN_OR_RETURN(auto v, expr);
#define CANOPY_ASSIGN_OR_RETURN(lhs, expr)                                                         \
  auto CANOPY_CONCAT(canopy_r_, __LINE__) = (expr);                                                \
  if (!CANOPY_CONCAT(canopy_r_, __LINE__).ok()) return CANOPY_CONCAT(canopy_r_, __LINE__).error(); \
  lhs = std::move(CANOPY_CONCAT(canopy_r_, __LINE__)).value()
