#include "canopy/base/unique_fd.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace canopy {

void UniqueFd::reset(int fd) {
  if (fd_ >= 0 && fd_ != fd) ::close(fd_);
  fd_ = fd;
}

UniqueFd UniqueFd::dup() const {
  if (fd_ < 0) return UniqueFd();
  return UniqueFd(::fcntl(fd_, F_DUPFD_CLOEXEC, 0));
}

Status set_nonblocking(int fd, bool on) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) != 0)
    return make_error(Errc::kIo, "fcntl O_NONBLOCK failed", errno);
  return {};
}

Result<UniqueFd> reopen_read_only(int fd) {
  UniqueFd ro(::open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDONLY | O_CLOEXEC));
  if (!ro.valid()) return make_error(Errc::kIo, "reopening a file read-only failed", errno);
  struct stat a{}, b{};
  if (::fstat(fd, &a) != 0 || ::fstat(ro.get(), &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev)
    return make_error(Errc::kIo, "reopening a file read-only gave another file");
  return ro;
}

Status forbid_writable_reopen(int fd) {
  if (::fchmod(fd, 0444) != 0) return make_error(Errc::kIo, "making a file read-only to reopening failed", errno);
  return {};
}

}  // namespace canopy
