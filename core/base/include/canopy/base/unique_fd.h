// RAII owner of a file descriptor. Moved-from holds -1.
#pragma once

#include <utility>

#include "canopy/base/result.h"

namespace canopy {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);
  // A duplicate with O_CLOEXEC, or an invalid UniqueFd on failure.
  UniqueFd dup() const;

 private:
  int fd_ = -1;
};

// `fd` with O_NONBLOCK set (`on`) or cleared. Errors: kIo.
Status set_nonblocking(int fd, bool on = true);
// The file behind `fd` opened again read-only (through /proc/self/fd): a descriptor that can be neither
// written nor mapped writable, to hand to a process that must only read. Errors: kIo (no /proc, or it
// gave another file).
Result<UniqueFd> reopen_read_only(int fd);
// A memfd is made mode 0777: whoever holds a read-only descriptor of it may open it again read-write
// through /proc/self/fd (or /proc/PID/fd of a process of its uid). Mode 0444 stops that for every
// process but root (CAP_DAC_OVERRIDE), the file's owner included; descriptors already open keep their
// modes, and reopening read-only still works. For files handed out read-only: guest RAM, the audio
// policy board, copies of guest pixels. Errors: kIo (not the owner).
Status forbid_writable_reopen(int fd);

}  // namespace canopy
