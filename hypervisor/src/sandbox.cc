// The partition seccomp policy, built with libseccomp (sandbox.h).
#include "canopy/hypervisor/sandbox.h"

#include <errno.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <termios.h>
#include <unistd.h>

#include <cstring>

#include "canopy/transport/backend_sandbox.h"

namespace canopy::hypervisor {

namespace {

// What running the app takes beyond what every confined program calls (basic_syscalls).
constexpr const char* kApp[] = {
    "execve",
    "execveat",
    "prlimit64",
    "wait4",
    "waitid",
    // signals to itself
    "tgkill",
    "tkill",
};

}  // namespace

Result<std::vector<sock_filter>> partition_seccomp_filter() {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
  if (ctx == nullptr) return make_error(Errc::kNoMemory, "seccomp_init failed");
  struct Guard {
    scmp_filter_ctx c;
    ~Guard() { seccomp_release(c); }
  } guard{ctx};
  int rc = 0;
  auto allow = [&](const char* name) {
    const int nr = seccomp_syscall_resolve_name(name);
    return nr == __NR_SCMP_ERROR ? 0 : seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);  // else not on this arch
  };
  for (const char* name : transport::basic_syscalls()) rc = rc != 0 ? rc : allow(name);
  for (const char* name : kApp) rc = rc != 0 ? rc : allow(name);
  if (rc != 0) return make_error(Errc::kIo, "seccomp_rule_add failed", -rc);
  // Threads only: a clone without CLONE_THREAD (fork) is refused.
  rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                        SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
  if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  // stdio asks whether stdout is a terminal; nothing else of ioctl.
  if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1, SCMP_A1(SCMP_CMP_EQ, TCGETS));
  if (rc != 0) return make_error(Errc::kIo, "seccomp_rule_add failed", -rc);

  // Export the BPF program through a memfd (libseccomp 2.5 exports to a descriptor).
  int fd = memfd_create("canopy-seccomp", MFD_CLOEXEC);
  if (fd < 0) return make_error(Errc::kIo, "memfd_create failed", errno);
  rc = seccomp_export_bpf(ctx, fd);
  if (rc != 0) {
    close(fd);
    return make_error(Errc::kIo, "seccomp_export_bpf failed", -rc);
  }
  off_t size = lseek(fd, 0, SEEK_END);
  if (size <= 0 || size % off_t(sizeof(sock_filter)) != 0) {
    close(fd);
    return make_error(Errc::kIo, "seccomp filter has an odd size");
  }
  std::vector<sock_filter> prog(size_t(size) / sizeof(sock_filter));
  ssize_t got = pread(fd, prog.data(), size_t(size), 0);
  close(fd);
  if (got != size) return make_error(Errc::kIo, "reading the seccomp filter back failed", errno);
  return prog;
}

}  // namespace canopy::hypervisor
