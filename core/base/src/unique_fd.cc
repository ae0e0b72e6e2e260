#include "canopy/base/unique_fd.h"

#include <fcntl.h>
#include <unistd.h>

namespace canopy {

void UniqueFd::reset(int fd) {
  if (fd_ >= 0 && fd_ != fd) ::close(fd_);
  fd_ = fd;
}

UniqueFd UniqueFd::dup() const {
  if (fd_ < 0) return UniqueFd();
  return UniqueFd(::fcntl(fd_, F_DUPFD_CLOEXEC, 0));
}

}  // namespace canopy
