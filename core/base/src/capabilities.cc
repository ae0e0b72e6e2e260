#include "canopy/base/capabilities.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>

namespace canopy {
namespace {

int last_cap() {
  int last = CAP_LAST_CAP;
  if (FILE* f = std::fopen("/proc/sys/kernel/cap_last_cap", "re")) {
    if (std::fscanf(f, "%d", &last) != 1 || last < 0 || last > 63) last = CAP_LAST_CAP;
    std::fclose(f);
  }
  return last;
}

bool kept(std::initializer_list<int> keep, int cap) {
  for (int k : keep)
    if (k == cap) return true;
  return false;
}

}  // namespace

Status drop_capabilities(std::initializer_list<int> keep) {
  // The bounding set first, while CAP_SETPCAP is still there to allow it (EPERM without it: a thread
  // that may not drop from it has nothing it could regain from it either but file capabilities, which
  // no_new_privs, set by every confinement here, ignores).
  const int last = last_cap();
  for (int cap = 0; cap <= last; ++cap)
    if (!kept(keep, cap) && ::prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1 &&
        ::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EPERM)
      return make_error(Errc::kIo, "PR_CAPBSET_DROP", errno);
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
    return make_error(Errc::kIo, "PR_CAP_AMBIENT_CLEAR_ALL", errno);
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct now[2] = {};
  if (::syscall(SYS_capget, &hdr, now) != 0) return make_error(Errc::kIo, "capget", errno);
  __user_cap_data_struct want[2] = {};
  for (int cap : keep) {
    if (cap < 0 || cap > 63) continue;
    const uint32_t bit = 1u << (cap % 32);
    // Only what it has: a capability cannot be added, only kept.
    if (now[cap / 32].permitted & bit) {
      want[cap / 32].permitted |= bit;
      want[cap / 32].effective |= now[cap / 32].effective & bit;
    }
  }
  if (::syscall(SYS_capset, &hdr, want) != 0) return make_error(Errc::kIo, "capset", errno);
  return {};
}

bool has_capability(int cap) {
  if (cap < 0 || cap > 63) return false;
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct now[2] = {};
  if (::syscall(SYS_capget, &hdr, now) != 0) return false;
  return (now[cap / 32].effective & (1u << (cap % 32))) != 0;
}

}  // namespace canopy
