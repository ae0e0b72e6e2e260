// The device back-ends' seccomp policy (backend_sandbox.h).
#include "canopy/transport/backend_sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "canopy/base/landlock.h"
#include "canopy/base/sanitizer.h"

namespace canopy::transport {

namespace {

// ASan's runtime signals its helper task and ptraces at exit: the policy keeps kill for it.
constexpr bool kSanitizer = kAddressSanitizer;

// Refused outright.
constexpr const char* kDenied[] = {
    "execve",
    "execveat",
    "fork",
    "vfork",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_open",
    "pidfd_getfd",
    "pidfd_send_signal",
    "mount",
    "umount2",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "setfsuid",
    "setfsgid",
    "capset",
    "iopl",
    "ioperm",
    "personality",
    "quotactl",
    "vhangup",
    "lookup_dcookie",
    "name_to_handle_at",
    "open_by_handle_at",
    "tkill",
};

}  // namespace

bool backend_sandbox_loosened() { return kSanitizer; }

Status confine_backend() {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == nullptr) return make_error(Errc::kNoMemory, "seccomp_init failed");
  struct Guard {
    scmp_filter_ctx c;
    ~Guard() { seccomp_release(c); }
  } guard{ctx};
  auto deny = [&](int nr, int err, unsigned n, const scmp_arg_cmp* args) {
    return seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(err), nr, n, args);
  };
  int rc = 0;
  for (const char* name : kDenied) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
    if ((rc = deny(nr, EPERM, 0, nullptr)) != 0) return make_error(Errc::kIo, "seccomp_rule_add failed", -rc);
  }
  // Signals only to this process's threads (raise and abort use tgkill on themselves); kill not at all
  // (sanitizers keep it: their runtime signals its helper task).
  const scmp_arg_cmp other_tgid[] = {SCMP_A0(SCMP_CMP_NE, uint64_t(getpid()))};
  rc = deny(SCMP_SYS(tgkill), EPERM, 1, other_tgid);
  if (rc == 0) rc = deny(SCMP_SYS(rt_sigqueueinfo), EPERM, 1, other_tgid);
  if (rc == 0) rc = deny(SCMP_SYS(rt_tgsigqueueinfo), EPERM, 1, other_tgid);
  // Limits: its own to read and set (pid 0), another process's only to read.
  const scmp_arg_cmp set_other_limits[] = {SCMP_A0(SCMP_CMP_NE, 0), SCMP_A2(SCMP_CMP_NE, 0)};
  if (rc == 0) rc = deny(SCMP_SYS(prlimit64), EPERM, 2, set_other_limits);
  if (rc == 0 && !kSanitizer) rc = deny(SCMP_SYS(kill), EPERM, 0, nullptr);
  // No sockets but unix ones.
  const scmp_arg_cmp not_unix[] = {SCMP_A0(SCMP_CMP_NE, AF_UNIX)};
  if (rc == 0) rc = deny(SCMP_SYS(socket), EAFNOSUPPORT, 1, not_unix);
  if (rc == 0) rc = deny(SCMP_SYS(socketpair), EAFNOSUPPORT, 1, not_unix);
  // Threads, not processes: clone must carry CLONE_THREAD; clone3's flags sit in memory the filter
  // cannot read, so it answers ENOSYS and glibc falls back to clone.
  if (!kSanitizer) {
    const scmp_arg_cmp no_thread[] = {SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0)};
    if (rc == 0) rc = deny(SCMP_SYS(clone), EPERM, 1, no_thread);
    if (rc == 0) rc = deny(SCMP_SYS(ptrace), EPERM, 0, nullptr);
  }
  if (rc == 0) rc = deny(SCMP_SYS(clone3), ENOSYS, 0, nullptr);
  if (rc != 0) return make_error(Errc::kIo, "seccomp_rule_add failed", -rc);
  // All threads (virglrenderer's, Mesa's) get it, and no new privileges.
  if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)) != 0)
    return make_error(Errc::kIo, "seccomp: cannot synchronise threads", -rc);
  if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1)) != 0)
    return make_error(Errc::kIo, "seccomp: cannot set no_new_privs", -rc);
  if ((rc = seccomp_load(ctx)) != 0) return make_error(Errc::kIo, "seccomp: the kernel refused the filter", -rc);
  return {};
}

Status restrict_backend_writes(const std::vector<std::string>& beneath) {
  // Every write right of the kernel's ABI (not IOCTL_DEV: a GPU driver's ioctls on its device files).
  const LandlockWrites w = landlock_writes(false);
  if (w.attr_size == 0) return make_error(Errc::kUnsupported, "the kernel has no Landlock");
  const uint64_t dir_rights = w.dir_rights, file_rights = w.file_rights;
  const int rs = int(syscall(SYS_landlock_create_ruleset, w.attr, w.attr_size, 0));
  if (rs < 0) return make_error(Errc::kIo, "landlock_create_ruleset failed", errno);
  auto add = [&](const std::string& path, uint64_t want) -> Status {
    const int fd = ::open(path.c_str(), O_PATH | O_CLOEXEC);
    if (fd < 0) return {};  // not there: nothing to allow
    struct stat st{};
    const bool dir = ::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
    landlock_path_beneath_attr pb{};
    pb.allowed_access = want & (dir ? dir_rights : file_rights);
    pb.parent_fd = fd;
    const long r = syscall(SYS_landlock_add_rule, rs, LANDLOCK_RULE_PATH_BENEATH, &pb, 0);
    const int e = errno;
    ::close(fd);
    if (r != 0) return make_error(Errc::kIo, "landlock_add_rule failed", e);
    return {};
  };
  Status st;
  for (const auto& p : beneath)
    if (st.ok()) st = add(p, dir_rights);
  if (st.ok()) st = add("/dev", file_rights);  // opening device files for writing
  if (st.ok()) st = add("/dev/shm", dir_rights);
  if (st.ok() && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) st = make_error(Errc::kIo, "no_new_privs failed", errno);
  if (st.ok() && syscall(SYS_landlock_restrict_self, rs, 0) != 0)
    st = make_error(Errc::kIo, "landlock_restrict_self failed", errno);
  ::close(rs);
  return st;
}

}  // namespace canopy::transport
