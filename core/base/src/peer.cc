#include "canopy/base/peer.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>

#include "canopy/base/proc_stat.h"
#include "canopy/base/unique_fd.h"

namespace canopy {

pid_t parent_of(pid_t pid) { return pid_t(proc_stat_field(pid, 4).value_or(0)); }

bool peer_descends_from(int sock, pid_t ancestor) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0) return true;
  int pidfd = -1;
#ifdef SO_PEERPIDFD
  len = sizeof pidfd;
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) pidfd = -1;
#endif
  const UniqueFd pinned(pidfd);
  bool descends = cred.pid == ancestor;
  pid_t p = cred.pid;
  for (int depth = 0; depth < 4096 && !descends && p > 1; ++depth) {
    const pid_t parent = parent_of(p);
    if (parent == 0) return true;  // unreadable on the way
    descends = parent == ancestor;
    p = parent;
  }
  // The walk read the parents of the process that connected, not of a successor with its pid: it still
  // lives (EPERM says so too: a Landlock domain may not signal outside itself, not even signal 0).
  if (pinned.valid() && ::syscall(SYS_pidfd_send_signal, pinned.get(), 0, nullptr, 0) != 0 && errno != EPERM)
    return true;
  return descends;
}

bool peer_is_operator(int sock, gid_t group) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  if (cred.uid == ::geteuid() || cred.uid == 0) return true;
  if (group == gid_t(-1)) return false;
  if (cred.gid == group) return true;
  gid_t groups[256];
  len = sizeof groups;
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups, &len) != 0) return false;
  for (size_t i = 0; i < len / sizeof(gid_t); ++i)
    if (groups[i] == group) return true;
  return false;
}

Result<gid_t> group_named(const char* name_or_number) {
  char* end = nullptr;
  const unsigned long n = std::strtoul(name_or_number, &end, 10);
  if (end != name_or_number && *end == '\0') return gid_t(n);
  if (const group* g = ::getgrnam(name_or_number)) return g->gr_gid;
  return make_error(Errc::kInvalidArgument, "no such group");
}

}  // namespace canopy
