// The seccomp allowlist of confined processes and their file system view (backend_sandbox.h).
#include "canopy/transport/backend_sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
#include <linux/udmabuf.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <span>

#include "canopy/base/landlock.h"
#include "canopy/base/log.h"
#include "canopy/base/sanitizer.h"

namespace canopy::transport {

namespace {

// ASan's runtime signals its helper task and ptraces at exit: the policy keeps kill for it.
constexpr bool kSanitizer = kAddressSanitizer;

// What every confined program calls for itself (basic_syscalls in backend_sandbox.h). Calls that exist
// on one architecture only (open, stat, poll, arch_prctl on x86-64) are skipped where they do not exist.
constexpr const char* kBasic[] = {
    // memory
    "brk",
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "madvise",
    "membarrier",
    // files it may open (its view of the file system and its uid decide which)
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "close",
    "openat",
    "open",
    "lseek",
    "fstat",
    "newfstatat",
    "stat",
    "lstat",
    "statx",
    "access",
    "faccessat",
    "faccessat2",
    "readlink",
    "readlinkat",
    "getdents64",
    "getcwd",
    "fcntl",
    "dup",
    "dup2",
    "dup3",
    "pipe2",
    "close_range",
    // this process and its threads (clone: threads only, in each list)
    "exit",
    "exit_group",
    "arch_prctl",
    "set_tid_address",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "getrlimit",
    "getpid",
    "gettid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getgroups",
    "getresuid",
    "getresgid",
    "uname",
    "sched_yield",
    "sched_getaffinity",
    "getcpu",
    "prctl",
    "futex",
    "futex_waitv",
    "getrandom",
    // signals (to itself; tgkill is conditional in each list)
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigtimedwait",
    "sigaltstack",
    "restart_syscall",
    // time
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    "time",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    // messages on the sockets it holds, eventfds, polling
    "sendmsg",
    "recvmsg",
    "sendto",
    "recvfrom",
    "shutdown",
    "getsockopt",
    "eventfd2",
    "poll",
    "ppoll",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "select",
    "pselect6",
};

// What a confined back-end or compositor may call beyond kBasic (GPU drivers, PipeWire, its sockets).
constexpr const char* kBackEnd[] = {
    // memory
    "mlock",
    "mlock2",
    "munlock",
    "mlockall",
    "munlockall",
    "mincore",
    "msync",
    // files (Landlock and the uid decide which), memfds, descriptors
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "openat2",
    "creat",
    "statfs",
    "fstatfs",
    "flock",
    "pipe",
    "ftruncate",
    "fallocate",
    "fadvise64",
    "fsync",
    "fdatasync",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "rename",
    "renameat",
    "renameat2",
    "fchmod",
    "memfd_create",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    // this process and its threads (clone: threads only, below)
    "capget",
    "sysinfo",
    "getrusage",
    "times",
    "sched_setaffinity",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_getattr",
    "sched_setattr",
    "sched_get_priority_min",
    "sched_get_priority_max",
    "getpriority",
    "setpriority",
    // signals (to itself: tgkill and friends below)
    "rt_sigsuspend",
    "rt_sigpending",
    "signalfd4",
    // time
    "timer_create",
    "timer_settime",
    "timer_gettime",
    "timer_getoverrun",
    "timer_delete",
    // sockets (socket and socketpair: unix only, below), events, polling
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "sendmmsg",
    "recvmmsg",
    "setsockopt",
    "getsockname",
    "getpeername",
    "epoll_create",
    "epoll_pwait2",
};

// Refused with EPERM, whatever a program adds: no other programs, processes, namespaces, mounts,
// kernel objects or system settings.
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

// Allowed with conditions (confine_syscalls): an addition cannot widen them.
constexpr const char* kConditional[] = {
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "kill",
    "prlimit64",
    "socket",
    "socketpair",
    "ioctl",
    "clone",
    "clone3",
    "ptrace",
    "wait4",
    "waitid",
    "pidfd_send_signal",
};

// Whether an addition may name `name`.
bool addable(std::string_view name) {
  for (const char* d : kDenied)
    if (name == d) return false;
  for (const char* c : kConditional)
    if (name == c) return false;
  return true;
}

// The SIGSYS handler's state: set before the filter is loaded, read in the handler (async-signal-safe:
// no allocation, one write(2) per line).
constexpr int kMaxNr = 1024;
const char* g_names[kMaxNr];  // syscall names by number (from libseccomp), nullptr where unknown
char g_tag[64] = "canopy";
std::atomic<uint64_t> g_refused{0};
constexpr uint64_t kLoggedRefusals = 32;

// Appends text or a decimal number to a line being built in the handler.
struct Line {
  char buf[256];
  size_t n = 0;
  void put(const char* s) {
    while (*s && n < sizeof buf - 1) buf[n++] = *s++;
  }
  void num(uint64_t v) {
    char d[24];
    int k = 0;
    do d[k++] = char('0' + v % 10);
    while ((v /= 10) != 0 && k < 24);
    while (k > 0 && n < sizeof buf - 1) buf[n++] = d[--k];
  }
};

// A call outside the allowlist (SECCOMP_RET_TRAP): logged (the first kLoggedRefusals of the process),
// and answered ENOSYS by writing the return register, as if the kernel had no such call.
void on_sigsys(int, siginfo_t* si, void* context) {
  constexpr int kSysSeccomp = 1;           // the si_code of a refused call (SYS_SECCOMP in the kernel's siginfo.h)
  if (si->si_code != kSysSeccomp) return;  // a SIGSYS sent by someone, not a refused call
  const int saved = errno;
  const uint64_t n = g_refused.fetch_add(1, std::memory_order_relaxed) + 1;
  const int nr = si->si_syscall;
  if (n <= kLoggedRefusals) {
    Line l;
    l.put(g_tag);
    l.put("[");
    l.num(uint64_t(getpid()));
    l.put("] error: seccomp: refused system call ");
    l.num(uint64_t(nr));
    l.put(" (");
    l.put(nr >= 0 && nr < kMaxNr && g_names[nr] ? g_names[nr] : "?");
    l.put("), not in the allowlist: it returns ENOSYS");
    if (n == kLoggedRefusals) l.put(" (later refusals are counted, not logged)");
    l.put("\n");
    ssize_t w = ::write(STDERR_FILENO, l.buf, l.n);
    (void)w;
  }
  auto* uc = static_cast<ucontext_t*>(context);
#if defined(__x86_64__)
  uc->uc_mcontext.gregs[REG_RAX] = -ENOSYS;
#elif defined(__aarch64__)
  uc->uc_mcontext.regs[0] = uint64_t(-ENOSYS);
#else
  (void)uc;
#endif
  errno = saved;
}

#if defined(__x86_64__) || defined(__aarch64__)
constexpr bool kCanTrap = true;
#else
constexpr bool kCanTrap = false;  // the return register is not written here: plain ENOSYS, unlogged
#endif

}  // namespace

bool backend_sandbox_loosened() { return kSanitizer; }

std::span<const char* const> basic_syscalls() { return kBasic; }

uint64_t seccomp_refusals() { return g_refused.load(std::memory_order_relaxed); }

Result<std::vector<std::string>> parse_syscall_names(std::string_view list) {
  std::vector<std::string> names;
  while (!list.empty()) {
    const size_t comma = list.find(',');
    const std::string name(list.substr(0, comma));
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    if (name.empty()) continue;
    if (seccomp_syscall_resolve_name(name.c_str()) == __NR_SCMP_ERROR)
      return make_error(Errc::kInvalidArgument, "not a system call of this architecture");
    if (!addable(name))
      return make_error(Errc::kInvalidArgument, "a system call the sandbox refuses or allows only with conditions");
    names.push_back(name);
  }
  return names;
}

Status allow_syscalls(std::string_view list, SyscallPolicy& policy) {
  auto names = parse_syscall_names(list);
  if (!names.ok()) return names.error();
  if (names->empty()) return make_error(Errc::kInvalidArgument, "needs system call names");
  policy.allow.insert(policy.allow.end(), names->begin(), names->end());
  return {};
}

bool sandbox_off_by_environment() {
  const char* e = std::getenv("CANOPY_NO_SANDBOX");
  return e != nullptr && std::strcmp(e, "1") == 0;
}

Status confine_syscalls(const SyscallPolicy& policy) {
  // Two filters, because libseccomp cannot say "allowed, except with these arguments": the allowlist
  // (anything not on it traps), and the refusals that depend on arguments (anything else passes). The
  // kernel takes the stricter answer of the two.
  const bool trap = kCanTrap && !policy.audit;
  scmp_filter_ctx list = seccomp_init(policy.audit ? SCMP_ACT_LOG : trap ? SCMP_ACT_TRAP : SCMP_ACT_ERRNO(ENOSYS));
  scmp_filter_ctx args = seccomp_init(SCMP_ACT_ALLOW);
  struct Guard {
    scmp_filter_ctx a, b;
    ~Guard() {
      if (a) seccomp_release(a);
      if (b) seccomp_release(b);
    }
  } guard{list, args};
  if (list == nullptr || args == nullptr) return make_error(Errc::kNoMemory, "seccomp_init failed");
  int rc = 0;
  auto add = [&](scmp_filter_ctx ctx, uint32_t action, const char* name, std::initializer_list<scmp_arg_cmp> cmp) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr != __NR_SCMP_ERROR && rc == 0)
      rc = seccomp_rule_add_array(ctx, action, nr, unsigned(cmp.size()), cmp.begin());
  };
  for (const char* name : kBasic) add(list, SCMP_ACT_ALLOW, name, {});
  for (const char* name : kBackEnd) add(list, SCMP_ACT_ALLOW, name, {});
  for (const std::string& name : policy.allow)
    if (addable(name)) add(list, SCMP_ACT_ALLOW, name.c_str(), {});
  for (const char* name : kDenied) add(list, SCMP_ACT_ERRNO(EPERM), name, {});
  // Through a pidfd it holds (a peer's from SO_PEERPIDFD; a child's): whether it lives (signal 0);
  // with children, also signals to them and waiting for them.
  // The kernel reads the signal as 32 bits (a caller through syscall() may leave the upper half
  // unset): so does the comparison. Another signal is outside the list.
  if (policy.children) add(list, SCMP_ACT_ALLOW, "pidfd_send_signal", {});
  else add(list, SCMP_ACT_ALLOW, "pidfd_send_signal", {SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, 0)});
  if (policy.children && !kSanitizer) add(list, SCMP_ACT_ALLOW, "waitid", {});
  for (const char* name : {"tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "kill", "prlimit64", "socket",
                           "socketpair", "ioctl", "clone"})
    add(list, SCMP_ACT_ALLOW, name, {});
  add(list, SCMP_ACT_ERRNO(ENOSYS), "clone3", {});  // its flags sit in memory: glibc falls back to clone
  const uint64_t self = uint64_t(getpid());
  // Signals only to this process and its threads (raise and abort use tgkill on themselves); kill only
  // to itself (sanitizers: to anyone, their runtime signals its helper task).
  for (const char* name : {"tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"})
    add(args, SCMP_ACT_ERRNO(EPERM), name, {SCMP_A0(SCMP_CMP_NE, self)});
  if (!kSanitizer) add(args, SCMP_ACT_ERRNO(EPERM), "kill", {SCMP_A0(SCMP_CMP_NE, self)});
  // Limits: its own to read and set (pid 0), another process's only to read.
  add(args, SCMP_ACT_ERRNO(EPERM), "prlimit64", {SCMP_A0(SCMP_CMP_NE, 0), SCMP_A2(SCMP_CMP_NE, 0)});
  // Sockets: unix ones only (no network, no netlink).
  for (const char* name : {"socket", "socketpair"})
    add(args, SCMP_ACT_ERRNO(EAFNOSUPPORT), name, {SCMP_A0(SCMP_CMP_NE, AF_UNIX)});
  // ioctl: a GPU driver's on its device files, a terminal's, a socket's; never one that pushes input into
  // a terminal (TIOCSTI) or TIOCLINUX. The kernel reads the command as 32 bits: so does the comparison.
  // Nor one that names a process to signal when a descriptor is ready (SIGIO, or any signal with
  // F_SETSIG): that would be kill() to anyone of its uid by another way.
  for (unsigned long cmd : {(unsigned long)TIOCSTI, (unsigned long)TIOCLINUX, (unsigned long)FIOSETOWN,
                            (unsigned long)SIOCSPGRP, (unsigned long)TIOCSPGRP})
    add(args, SCMP_ACT_ERRNO(EPERM), "ioctl", {SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, cmd)});
  if (policy.no_udmabuf)
    for (unsigned long cmd : {(unsigned long)UDMABUF_CREATE, (unsigned long)UDMABUF_CREATE_LIST})
      add(args, SCMP_ACT_ERRNO(EPERM), "ioctl", {SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, cmd)});
  // Refused in the argument filter, so that --seccomp-allow cannot add one back to the list.
  if (policy.no_mode_changes)
    for (const char* name : {"fchmod", "chmod", "fchmodat", "fchmodat2", "setxattr", "lsetxattr", "fsetxattr"})
      add(args, SCMP_ACT_ERRNO(EPERM), name, {});
  for (unsigned long cmd : {(unsigned long)F_SETOWN, (unsigned long)F_SETOWN_EX, (unsigned long)F_SETSIG})
    add(args, SCMP_ACT_ERRNO(EPERM), "fcntl", {SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, cmd)});
  // Threads, not processes: clone must carry CLONE_THREAD. Sanitizers keep processes, ptrace and wait
  // (LeakSanitizer's helper task).
  if (kSanitizer) {
    for (const char* name : {"ptrace", "wait4", "waitid"}) add(list, SCMP_ACT_ALLOW, name, {});
  } else {
    add(list, SCMP_ACT_ERRNO(EPERM), "ptrace", {});
    add(args, SCMP_ACT_ERRNO(EPERM), "clone", {SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0)});
  }
  if (rc != 0) return make_error(Errc::kIo, "seccomp_rule_add failed", -rc);
  // All threads (virglrenderer's, Mesa's, PipeWire's) get them, and no new privileges.
  for (scmp_filter_ctx ctx : {list, args}) {
    if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)) != 0)
      return make_error(Errc::kIo, "seccomp: cannot synchronise threads", -rc);
    if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1)) != 0)
      return make_error(Errc::kIo, "seccomp: cannot set no_new_privs", -rc);
  }
  if (trap) {
    for (int nr = 0; nr < kMaxNr; ++nr)
      if (g_names[nr] == nullptr) g_names[nr] = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    std::strncpy(g_tag, log_tag(), sizeof g_tag - 1);
    struct sigaction sa{};
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSYS, &sa, nullptr) != 0) return make_error(Errc::kIo, "cannot handle SIGSYS", errno);
  }
  // The argument filter first: once the allowlist is in, loading another is no longer on it.
  if ((rc = seccomp_load(args)) != 0 || (rc = seccomp_load(list)) != 0)
    return make_error(Errc::kIo, "seccomp: the kernel refused the filter", -rc);
  return {};
}

std::string writable_folder(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return path;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : slash == 0 ? std::string("/") : path.substr(0, slash);
}

std::vector<std::string> driver_cache_dirs() {
  // A VM's back-end keeps its cache in its VM's scratch folder, which its view grants already: no
  // VM's driver reads what another's compiled, nor its user's other caches.
  const char* scratch = std::getenv("CANOPY_SCRATCH_DIR");
  const char* set = std::getenv("MESA_SHADER_CACHE_DIR");
  if ((set == nullptr || *set == 0) && scratch && *scratch) {
    ::setenv("MESA_SHADER_CACHE_DIR", scratch, 1);
    return {scratch};  // a back-end's view has it already; a program that inherited the variable gets it
  }
  std::string base;
  if (set && *set) base = set;
  else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) base = x;
  else if (const char* h = std::getenv("HOME"); h && *h) base = std::string(h) + "/.cache";
  if (base.empty()) return {};
  // Mesa keeps its cache in a folder of its own beneath (by the cache's kind); made here, while the
  // process may still make folders there, so that only those are granted. Only in a folder of this
  // process's uid, and only real folders of its uid: a link planted in their place (by an earlier
  // instance of a taken-over back-end, say) would grant where it leads.
  auto ours = [](int dirfd, const char* name) {
    const int fd = ::openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st{};
    const bool ok = fd >= 0 && ::fstat(fd, &st) == 0 && st.st_uid == ::geteuid();
    if (fd >= 0) ::close(fd);
    return ok;
  };
  std::vector<std::string> out;
  (void)::mkdir(base.c_str(), 0700);
  const int top = ::open(base.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  struct stat st{};
  if (top < 0 || ::fstat(top, &st) != 0 || st.st_uid != ::geteuid()) {
    if (top >= 0) ::close(top);
    return {};
  }
  for (const char* name : {"mesa_shader_cache", "mesa_shader_cache_db", "mesa_shader_cache_sf"}) {
    (void)::mkdirat(top, name, 0700);
    if (ours(top, name)) out.push_back(base + "/" + name);
  }
  ::close(top);
  return out;
}

std::vector<std::string> driver_config_paths() {
  std::vector<std::string> out;
  const char* home = std::getenv("HOME");
  auto base = [&](const char* var, const char* fallback) -> std::string {
    if (const char* v = std::getenv(var); v && *v) return v;
    return home && *home ? std::string(home) + fallback : std::string();
  };
  for (const std::string& p : {base("XDG_CONFIG_HOME", "/.config"), base("XDG_DATA_HOME", "/.local/share")})
    if (!p.empty()) out.push_back(p + "/vulkan");
  if (home && *home) out.push_back(std::string(home) + "/.drirc");
  // What the operator's environment names for the drivers and their loaders: the Vulkan loader's
  // manifests and layers, Mesa's drivers, EGL's vendors, the library path of a driver built by hand,
  // and the vulkan folders of the system's data and configuration folders (Flatpak and snap add theirs).
  // Only what such a path is for: an absolute path that resolves below where software is installed
  // (/usr, /opt, /nix, /gnu, /snap, Flatpak's folders), or below a home folder but not in one of its
  // dot folders (a driver built by hand); the resolved path is what is granted. Never a device, /sys,
  // /proc, /etc, /var, /run, /tmp, a home folder itself or its keys: a "/" or "$HOME" in a list would
  // open everything.
  // The home folders: /root, where $HOME and the password file say, and /home/USER (below, per path).
  std::vector<std::string> known_homes = {"/root"};
  {
    char real[PATH_MAX];
    if (home && *home && ::realpath(home, real) != nullptr) known_homes.emplace_back(real);
    if (const passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_dir && ::realpath(pw->pw_dir, real) != nullptr)
      known_homes.emplace_back(real);
  }
  auto acceptable = [&](const std::string& path) -> std::string {
    char real[PATH_MAX];
    if (path.empty() || path[0] != '/' || ::realpath(path.c_str(), real) == nullptr) return {};
    std::string r = real;
    auto below = [&](const std::string& top) { return r.size() > top.size() + 1 && r.rfind(top + "/", 0) == 0; };
    for (const char* top : {"/usr", "/opt", "/nix", "/gnu", "/snap", "/app", "/var/lib/flatpak"})
      if (below(top)) return r;
    std::vector<std::string> homes = known_homes;
    if (r.rfind("/home/", 0) == 0 && r.find('/', 6) != std::string::npos) homes.push_back(r.substr(0, r.find('/', 6)));
    for (const std::string& h : homes) {
      if (!below(h)) continue;
      const std::string rest = r.substr(h.size());
      return rest.find("/.") == std::string::npos ? r : std::string();  // no dot folder, no dot file
    }
    return {};
  };
  auto each = [&](const char* var, const char* sub) {
    const char* v = std::getenv(var);
    for (std::string list = v ? v : ""; !list.empty();) {
      const size_t colon = list.find(':');
      const std::string item = list.substr(0, colon);
      if (const std::string granted = item.empty() ? std::string() : acceptable(item + sub); !granted.empty())
        out.push_back(granted);
      list = colon == std::string::npos ? "" : list.substr(colon + 1);
    }
  };
  for (const char* var : {"VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES", "VK_LAYER_PATH",
                          "VK_ADD_LAYER_PATH", "LIBGL_DRIVERS_PATH", "GBM_BACKENDS_PATH", "__EGL_VENDOR_LIBRARY_DIRS",
                          "__EGL_VENDOR_LIBRARY_FILENAMES", "LD_LIBRARY_PATH", "SPA_PLUGIN_DIR", "PIPEWIRE_MODULE_DIR"})
    each(var, "");
  each("XDG_DATA_DIRS", "/vulkan");
  each("XDG_CONFIG_DIRS", "/vulkan");
  std::erase_if(out, [](const std::string& p) { return ::access(p.c_str(), F_OK) != 0; });
  return out;
}

namespace {

// Character devices by which a process that may open them for writing writes disks: SCSI generic
// (sg0 ..., bsg/), NVMe generic (ng0n1 ...), MTD flash (mtd0 ...).
bool reaches_disks(const std::string& name) {
  auto numbered = [&](const char* prefix) {
    const size_t n = std::strlen(prefix);
    return name.size() > n && name.compare(0, n, prefix) == 0 && std::isdigit(static_cast<unsigned char>(name[n]));
  };
  return numbered("sg") || numbered("ng") || numbered("mtd") || name == "bsg";
}

}  // namespace

Status restrict_writes(const std::vector<std::string>& beneath, const std::vector<std::string>& refused_devices) {
  FileView view;
  view.writable = beneath;
  view.refused_devices = refused_devices;
  return restrict_files(view);
}

namespace {

// The device files a confined program may open: GPUs (DRM; NVIDIA's; Arm Mali, Qualcomm Adreno's
// kgsl, Vivante's galcore, Imagination's PowerVR as cockpit SoCs have them; compute accelerators),
// dma-buf heaps and udmabuf, and the pseudo devices. Not input devices, sound cards, cameras,
// terminals, consoles (vcs), hidraw, /dev/mem or the kernel log: a taken-over process cannot read
// keystrokes, a microphone or what a console shows.
bool device_for_confined(const std::string& name) {
  static const char* const kExact[] = {"dri",  "accel", "dma_heap", "udmabuf", "galcore", "kfd", "dxg",
                                       "null", "zero",  "full",     "random",  "urandom", "shm"};
  static const char* const kPrefix[] = {"nvidia", "mali", "kgsl", "pvr"};
  for (const char* e : kExact)
    if (name == e) return true;
  for (const char* p : kPrefix)
    if (name.rfind(p, 0) == 0) return true;
  return false;
}

// What /etc holds that a confined process never reads: passwords, keys, credentials.
bool secret_in_etc(const std::string& name) {
  // clang-format off
  static const char* const kSecrets[] = {
      "shadow", "shadow-", "gshadow", "gshadow-", "ssh", "ssl", "pki", "letsencrypt", "sudoers", "sudoers.d",
      "security", "krb5.keytab", "krb5kdc", "sssd", "NetworkManager", "netplan", "wpa_supplicant", "ppp",
      "systemd", "credstore", "credstore.encrypted", "cryptsetup-keys.d", "crypttab", "ipsec.secrets", "ipsec.d",
      "swanctl", "strongswan.d", "openvpn", "wireguard", "libvirt", "apt", "containers", "docker", "kubernetes",
      "rancher", "ceph", "iscsi", "mysql", "postfix", "exim4", "davfs2", "cups", ".pwd.lock"};
  // clang-format on
  for (const char* s : kSecrets)
    if (name == s) return true;
  return false;
}

// The entries of folder `dir` a rule may name: not "." and "..", not links (where they lead is not
// the folder's), and those `keep` accepts (the entry's name, whether it is a block device).
Status each_entry(const char* dir, const std::function<bool(const std::string&, bool)>& keep,
                  const std::function<Status(const std::string&)>& add) {
  DIR* d = ::opendir(dir);
  if (d == nullptr) return make_error(Errc::kIo, "cannot list /dev or /etc for the file system view", errno);
  Status st;
  while (st.ok()) {
    const dirent* e = ::readdir(d);
    if (e == nullptr) break;
    const std::string name = e->d_name;
    struct stat lst{};
    const bool unknown = e->d_type == DT_UNKNOWN && ::fstatat(::dirfd(d), e->d_name, &lst, AT_SYMLINK_NOFOLLOW) == 0;
    const bool link = e->d_type == DT_LNK || (unknown && S_ISLNK(lst.st_mode));
    const bool block = e->d_type == DT_BLK || (unknown && S_ISBLK(lst.st_mode));
    if (name == "." || name == ".." || link || !keep(name, block)) continue;
    st = add(std::string(dir) + "/" + name);
  }
  ::closedir(d);
  return st;
}

}  // namespace

Status restrict_files(const FileView& view) {
  // Every write right of the kernel's ABI (not IOCTL_DEV: a GPU driver's ioctls on its device files),
  // and with restrict_reads the read rights too.
  LandlockWrites w = landlock_writes(false);
  if (w.attr_size == 0) return make_error(Errc::kUnsupported, "the kernel has no Landlock");
  if (!view.scope) w.attr[2] = 0;
  constexpr uint64_t kReadDir = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
  constexpr uint64_t kReadFile = LANDLOCK_ACCESS_FS_READ_FILE;
  if (view.restrict_reads) {
    w.dir_rights |= kReadDir;
    w.file_rights |= kReadFile;
    w.attr[0] |= kReadDir;
  }
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
  for (const auto& p : view.writable)
    if (st.ok()) st = add(p, dir_rights);
  if (st.ok() && view.devices) {
    // Opening device files (for writing, and with restrict_reads for reading): each entry of /dev but
    // block devices (a process of root's uid, even without capabilities, owns the disks), those that
    // reach disks and the refused ones; links are skipped (where they lead is not /dev's:
    // /dev/disk/by-id/... reach a disk only through its refused entry).
    const auto& refused = view.refused_devices;
    st = each_entry(
        "/dev",
        [&](const std::string& name, bool block) {
          return !block && !reaches_disks(name) && device_for_confined(name) &&
                 std::find(refused.begin(), refused.end(), name) == refused.end();
        },
        [&](const std::string& path) { return add(path, file_rights | (view.restrict_reads ? kReadDir : 0)); });
  }
  if (st.ok() && view.devices) st = add("/dev/shm", dir_rights);
  if (st.ok() && view.restrict_reads) {
    // What every program reads: its libraries and their data, the kernel's views of itself and of
    // this process, the device database; /etc but its secrets; and what the caller adds.
    // /sys: devices and their classes (a GPU driver finds its PCI device there) and the cgroup
    // limits; not the kernel's debug and tracing files, nor the firmware's tables.
    for (const char* p : {"/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/opt", "/sys/devices",
                          "/sys/dev", "/sys/class", "/sys/bus", "/sys/fs/cgroup", "/proc", "/run/udev", "/nix/store",
                          "/gnu/store", "/run/opengl-driver"})
      if (st.ok()) st = add(p, kReadDir);
    // /dev's folders may be listed (a GPU driver looks for its render nodes in /dev/dri).
    if (st.ok()) st = add("/dev", LANDLOCK_ACCESS_FS_READ_DIR);
    if (st.ok())
      st = each_entry(
          "/etc", [](const std::string& name, bool) { return !secret_in_etc(name); },
          [&](const std::string& path) { return add(path, kReadDir); });
    for (const auto& p : view.readable)
      if (st.ok()) st = add(p, kReadDir);
  }
  if (st.ok() && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) st = make_error(Errc::kIo, "no_new_privs failed", errno);
  if (st.ok() && syscall(SYS_landlock_restrict_self, rs, 0) != 0)
    st = make_error(Errc::kIo, "landlock_restrict_self failed", errno);
  ::close(rs);
  return st;
}

}  // namespace canopy::transport
