#include "canopy/base/landlock.h"

#include <linux/landlock.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace canopy {

LandlockWrites landlock_writes(bool device_ioctls) {
  LandlockWrites w;
  const long abi = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  if (abi < 1) return w;
  w.dir_rights = LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REMOVE_DIR | LANDLOCK_ACCESS_FS_REMOVE_FILE |
                 LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG |
                 LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK |
                 LANDLOCK_ACCESS_FS_MAKE_SYM;
  w.file_rights = LANDLOCK_ACCESS_FS_WRITE_FILE;
  if (abi >= 2) w.dir_rights |= LANDLOCK_ACCESS_FS_REFER;
  if (abi >= 3) {
    w.dir_rights |= LANDLOCK_ACCESS_FS_TRUNCATE;
    w.file_rights |= LANDLOCK_ACCESS_FS_TRUNCATE;
  }
  if (abi >= 5 && device_ioctls) {
    w.dir_rights |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
    w.file_rights |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
  }
  w.attr[0] = w.dir_rights;
  w.attr_size = abi >= 4 ? 16 : 8;
  if (abi >= 6) {
    w.attr[2] = LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL;
    w.attr_size = 24;
  }
  return w;
}

int landlock_scope_self() {
  const long abi = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  if (abi < 1) return 0;
  uint64_t attr[3] = {LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_BLOCK, 0, 0};
  size_t size = abi >= 4 ? 16 : 8;
  if (abi >= 6) {
    attr[2] = LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL;
    size = 24;
  }
  const long rs = ::syscall(SYS_landlock_create_ruleset, attr, size, 0);
  if (rs < 0) return -1;
  const bool ok = ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && ::syscall(SYS_landlock_restrict_self, rs, 0) == 0;
  ::close(int(rs));
  return ok ? int(abi) : -1;
}

}  // namespace canopy
