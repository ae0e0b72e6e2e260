#include "canopy/base/capabilities.h"

#include <dirent.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>

#include "canopy/base/sanitizer.h"

namespace canopy {
namespace {

// The process's threads, from /proc/self/task (0 when it cannot be read).
int threads() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (const dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
  }
  return n;
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
  // (ThreadSanitizer's runtime has a thread of its own.)
  if (threads() > (kThreadSanitizer ? 2 : 1))
    return make_error(Errc::kInvalidArgument, "capabilities dropped with other threads running keep theirs");
  // Every capability the kernel knows: PR_CAPBSET_READ answers EINVAL past the last.
  for (int cap = 0; cap < 64; ++cap) {
    const int in = ::prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
    if (in < 0) break;
    if (in == 1 && !kept(keep, cap) && ::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EPERM)
      return make_error(Errc::kIo, "PR_CAPBSET_DROP", errno);
  }
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

}  // namespace canopy
