// Child processes: clone3 + pidfd, confinement before exec (process.h).
#include "canopy/hypervisor/process.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/kcmp.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "canopy/base/landlock.h"
#include "canopy/base/log.h"
#include "canopy/base/proc_stat.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

namespace canopy::hypervisor {

namespace {

// Where the child failed before exec (sent back over the error pipe).
enum Stage : int {
  kStageSync = 1,
  kStageMount,
  kStageFds,
  kStageIds,
  kStageNoNewPrivs,
  kStageLandlock,
  kStageSeccomp,
  kStageExec
};
struct ChildError {
  int stage;
  int err;
};

const char* stage_name(int s) {
  switch (s) {
    case kStageSync: return "waiting for the user namespace set-up";
    case kStageMount: return "making mounts private";
    case kStageFds: return "setting up descriptors";
    case kStageIds: return "dropping to the partition uid";
    case kStageNoNewPrivs: return "setting no_new_privs";
    case kStageLandlock: return "entering the Landlock domain";
    case kStageSeccomp: return "installing the seccomp filter";
    case kStageExec: return "exec";
    default: return "?";
  }
}

constexpr uint64_t kNsAll = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;
constexpr int kFirstTempFd = 16;  // child descriptor numbers must be below this

// Whether "/" is a mount point in our view (not so in a chroot onto a plain folder): mountinfo's fifth
// field is each mount point, relative to our root.
bool root_is_mount_point() {
  std::FILE* f = std::fopen("/proc/self/mountinfo", "re");
  if (!f) return true;  // cannot tell: assume the usual case
  char line[4096];
  bool found = false;
  while (!found && std::fgets(line, sizeof line, f)) {
    char point[4096];
    if (std::sscanf(line, "%*s %*s %*s %*s %4095s", point) == 1 && std::strcmp(point, "/") == 0) found = true;
  }
  std::fclose(f);
  return found;
}

std::string ns_names(uint64_t flags) {
  std::string s;
  auto add = [&](uint64_t f, const char* n) {
    if (!(flags & f)) return;
    if (!s.empty()) s += ",";
    s += n;
  };
  add(CLONE_NEWUSER, "user");
  add(CLONE_NEWPID, "pid");
  add(CLONE_NEWNS, "mnt");
  add(CLONE_NEWNET, "net");
  add(CLONE_NEWIPC, "ipc");
  add(CLONE_NEWUTS, "uts");
  add(CLONE_NEWCGROUP, "cgroup");
  return s;
}

bool write_file(const std::string& path, const std::string& text) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return false;
  return write(fd.get(), text.data(), text.size()) == ssize_t(text.size());
}

[[noreturn]] void child_fail(int errfd, int stage) {
  ChildError e{stage, errno};
  ssize_t n = write(errfd, &e, sizeof e);
  (void)n;
  _exit(127);
}

// Everything the child needs, prepared before clone (the child must not allocate).
struct ChildPlan {
  const SpawnOptions* o;
  std::vector<char*> argv;
  std::vector<char*> envp;
  uint64_t ns = 0;
  bool drop_ids = false;
  int exe_fd = -1;
  int err_w = -1;
  int sync_r = -1;
  int devnull = -1;
  pid_t parent = 0;  // the VMM
  sock_fprog prog{};
  // Landlock (read_only_fs): the ruleset with no rule granting anything back; attr_size 0: none.
  LandlockWrites landlock;
};

[[noreturn]] void child_main(const ChildPlan& p) {
  const SpawnOptions& o = *p.o;
  int errfd = p.err_w;
  if (p.sync_r >= 0) {
    char c;
    if (read(p.sync_r, &c, 1) != 1) child_fail(errfd, kStageSync);
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);  // and again after a change of ids, which clears it
  if (p.ns & CLONE_NEWNS) {
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0) {
      // A /proc of the new PID namespace: other processes are not visible. Best effort (a read-only or
      // masked /proc in a container refuses it; the uid and seccomp still hold).
      if (p.ns & CLONE_NEWPID) (void)mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
    } else if (errno != EINVAL) {
      child_fail(errfd, kStageMount);
    }
    // EINVAL: "/" is not a mount point (canopy-vmm runs in a chroot). Its propagation cannot be changed,
    // so nothing is mounted here (it could show up outside); the partition's own mount calls are refused
    // by seccomp and its /proc stays the outer one (the uid, no_new_privs and seccomp still hold).
  }
  // Descriptors: move every source above the target numbers first, then into place.
  int tmp[kFirstTempFd];
  size_t n = o.fds.size();
  for (size_t i = 0; i < n; ++i) {
    tmp[i] = fcntl(o.fds[i].first, F_DUPFD_CLOEXEC, kFirstTempFd);
    if (tmp[i] < 0) child_fail(errfd, kStageFds);
  }
  errfd = fcntl(errfd, F_DUPFD_CLOEXEC, kFirstTempFd);
  const int exe = fcntl(p.exe_fd, F_DUPFD_CLOEXEC, kFirstTempFd);
  const int out = o.stdout_fd >= 0 ? fcntl(o.stdout_fd, F_DUPFD_CLOEXEC, kFirstTempFd) : 1;
  const int err = o.stderr_fd >= 0 ? fcntl(o.stderr_fd, F_DUPFD_CLOEXEC, kFirstTempFd) : 2;
  if (errfd < 0) _exit(127);
  if (exe < 0 || out < 0 || err < 0) child_fail(errfd, kStageFds);
  if (dup2(p.devnull, 0) < 0 || (out != 1 && dup2(out, 1) < 0) || (err != 2 && dup2(err, 2) < 0))
    child_fail(errfd, kStageFds);
  int max_target = 2;
  for (size_t i = 0; i < n; ++i) {
    if (dup2(tmp[i], o.fds[i].second) < 0) child_fail(errfd, kStageFds);
    if (o.fds[i].second > max_target) max_target = o.fds[i].second;
  }
  // Everything else closes at exec (errfd and exe are needed until then).
  if (syscall(SYS_close_range, unsigned(max_target + 1), ~0U, CLOSE_RANGE_CLOEXEC) != 0) child_fail(errfd, kStageFds);
  if (p.drop_ids) {
    // The system calls themselves: glibc's wrappers would change the ids of every thread the VMM had
    // (its list, copied at clone), taking a lock another thread may have held then.
    const uid_t id = o.uid;
    if (syscall(SYS_setgroups, o.groups.size(), o.groups.data()) != 0 || syscall(SYS_setresgid, id, id, id) != 0 ||
        syscall(SYS_setresuid, id, id, id) != 0)
      child_fail(errfd, kStageIds);
  }
  // After the ids change (a change of uid clears the parent-death signal).
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (!(p.ns & CLONE_NEWPID) && getppid() != p.parent) _exit(127);  // the VMM died before the line above
  if (o.confine) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_fail(errfd, kStageNoNewPrivs);
    if (p.landlock.attr_size != 0) {
      const long rs = syscall(SYS_landlock_create_ruleset, p.landlock.attr, p.landlock.attr_size, 0);
      if (rs < 0 || syscall(SYS_landlock_restrict_self, int(rs), 0) != 0) child_fail(errfd, kStageLandlock);
      close(int(rs));
    }
    if (o.seccomp != nullptr && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &p.prog) != 0)
      child_fail(errfd, kStageSeccomp);
  }
  syscall(SYS_execveat, exe, "", p.argv.data(), p.envp.data(), AT_EMPTY_PATH);
  child_fail(errfd, kStageExec);
}

}  // namespace

std::string ExitInfo::to_string() const {
  const std::string held = held_by_tracer ? " (not reaped yet: another process traces it)" : "";
  if (held_by_tracer && !status_known) return "exited, status unknown" + held;
  if (signaled) return std::string("killed by signal ") + std::to_string(code) + " (" + strsignal(code) + ")" + held;
  return "exited with status " + std::to_string(code) + held;
}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    if (running()) terminate(0);
    pid_ = o.pid_;
    pidfd_ = std::move(o.pidfd_);
    confinement_ = std::move(o.confinement_);
  }
  return *this;
}

Child::~Child() {
  if (running()) terminate(0);
}

Status Child::signal(int sig) {
  if (!running()) return make_error(Errc::kState, "child not running");
  if (syscall(SYS_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0) != 0)
    return make_error(Errc::kIo, "pidfd_send_signal failed", errno);
  return {};
}

namespace {

// What waitid said of a child it reaped.
ExitInfo exit_of(const siginfo_t& si) {
  ExitInfo e;
  e.signaled = si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED;
  e.code = si.si_status;
  return e;
}

}  // namespace

std::optional<ExitInfo> Child::try_reap() {
  if (!running()) return std::nullopt;
  siginfo_t si{};
  if (waitid(idtype_t(P_PIDFD), id_t(pidfd_.get()), &si, WEXITED | WNOHANG) != 0) {
    if (errno == ECHILD) {  // reaped elsewhere; treat as gone
      pidfd_.reset();
      return ExitInfo{};
    }
    return std::nullopt;
  }
  if (si.si_pid == 0) {
    // Running, or exited and traced by a process that has not taken its exit: its pidfd says which.
    // Exited is exited: waiting for the tracer would keep its VM down as long as the tracer likes, and
    // a readable pidfd woken on would spin every loop that watches it.
    pollfd p{pidfd_.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) != 1) return std::nullopt;
    // Readable: its exit is recorded by now, so a second look tells one that has just exited (reaped
    // here, its status true) from one its tracer holds.
    si = {};
    const int again = waitid(idtype_t(P_PIDFD), id_t(pidfd_.get()), &si, WEXITED | WNOHANG);
    if (again != 0 || si.si_pid != 0) {
      pidfd_.reset();
      return again != 0 ? ExitInfo{} : exit_of(si);  // ExitInfo{}: reaped elsewhere, gone
    }
    ExitInfo held;
    held.held_by_tracer = true;
    held.status_known = false;
    // Its status as the kernel keeps it for the zombie (/proc/PID/stat field 52, a wait status): its
    // pid stays ours until we reap it, so this is still the same process.
    // The kernel shows 0 to a process that may not trace it (kcmp answers EPERM then): unknown.
    const auto status = proc_stat_field(pid_, 52);
    if (status && (*status > 0 || (*status == 0 && syscall(SYS_kcmp, getpid(), pid_, KCMP_VM, 0, 0) >= 0))) {
      const int s = int(*status);
      held.signaled = WIFSIGNALED(s);
      held.code = WIFSIGNALED(s) ? WTERMSIG(s) : WEXITSTATUS(s);
      held.status_known = true;
    }
    pidfd_.reset();
    return held;
  }
  pidfd_.reset();
  return exit_of(si);
}

Result<ExitInfo> Child::wait(int timeout_ms) {
  if (!running()) return make_error(Errc::kState, "child not running");
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    if (auto e = try_reap()) return *e;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return make_error(Errc::kTimeout, "child still running");
    pollfd p{pidfd_.get(), POLLIN, 0};
    (void)poll(&p, 1, int(left));
  }
}

ExitInfo Child::terminate(int grace_ms) {
  if (!running()) return ExitInfo{};
  if (grace_ms > 0) {
    (void)signal(SIGTERM);
    if (auto e = wait(grace_ms); e.ok()) return *e;
  }
  (void)signal(SIGKILL);
  for (;;) {
    auto e = wait(10000);
    if (e.ok()) return *e;
    if (e.code() != Errc::kTimeout) return ExitInfo{true, SIGKILL};
    CANOPY_ERROR("pid %d survives SIGKILL for 10 s", int(pid_));
  }
}

Result<Child> spawn(const SpawnOptions& o) {
  if (o.argv.empty()) return make_error(Errc::kInvalidArgument, "spawn: empty argv");
  if (o.fds.size() >= kFirstTempFd) return make_error(Errc::kInvalidArgument, "spawn: too many descriptors");
  for (const auto& [src, dst] : o.fds) {
    if (dst < 3 || dst >= kFirstTempFd || src < 0)
      return make_error(Errc::kInvalidArgument, "spawn: child descriptor numbers must be 3..15");
  }
  UniqueFd exe(open(o.path.c_str(), O_PATH | O_CLOEXEC));
  if (!exe) return make_error(Errc::kIo, "spawn: cannot open the executable", errno);
  UniqueFd devnull(open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!devnull) return make_error(Errc::kIo, "spawn: cannot open /dev/null", errno);
  int ep[2];
  if (pipe2(ep, O_CLOEXEC) != 0) return make_error(Errc::kIo, "spawn: pipe2 failed", errno);
  UniqueFd err_r(ep[0]), err_w(ep[1]);

  ChildPlan plan;
  plan.o = &o;
  for (const auto& a : o.argv) plan.argv.push_back(const_cast<char*>(a.c_str()));
  plan.argv.push_back(nullptr);
  for (const auto& e : o.env) plan.envp.push_back(const_cast<char*>(e.c_str()));
  plan.envp.push_back(nullptr);
  plan.exe_fd = exe.get();
  plan.err_w = err_w.get();
  plan.devnull = devnull.get();
  plan.parent = getpid();
  if (o.seccomp != nullptr) {
    plan.prog.len = static_cast<unsigned short>(o.seccomp->size());
    plan.prog.filter = const_cast<sock_filter*>(o.seccomp->data());
  }
  const bool root = geteuid() == 0;
  if (o.confine && o.read_only_fs) plan.landlock = landlock_writes(true);

  // Namespace sets to try, strongest first.
  std::vector<uint64_t> tries;
  if (o.confine) {
    if (root) tries.push_back(kNsAll);
    tries.push_back(CLONE_NEWUSER | kNsAll);
  }
  tries.push_back(0);

  pid_t pid = -1;
  int pidfd = -1;
  uint64_t ns = 0;
  UniqueFd sync_w;
  int last_errno = 0;
  for (uint64_t flags : tries) {
    UniqueFd sync_r;
    if (flags & CLONE_NEWUSER) {
      int sp[2];
      if (pipe2(sp, O_CLOEXEC) != 0) return make_error(Errc::kIo, "spawn: pipe2 failed", errno);
      sync_r.reset(sp[0]);
      sync_w.reset(sp[1]);
    } else {
      sync_w.reset();
    }
    plan.ns = flags;
    plan.sync_r = sync_r.get();
    plan.drop_ids = root && o.uid != 0 && !(flags & CLONE_NEWUSER);
    clone_args args{};
    args.flags = CLONE_PIDFD | flags;
    args.pidfd = uint64_t(reinterpret_cast<uintptr_t>(&pidfd));
    args.exit_signal = SIGCHLD;
    long r = syscall(SYS_clone3, &args, sizeof args);
    if (r == 0) child_main(plan);  // never returns
    if (r > 0) {
      pid = pid_t(r);
      ns = flags;
      break;
    }
    last_errno = errno;
    if (errno != EPERM && errno != EINVAL && errno != ENOSPC && errno != EUSERS) break;
  }
  if (pid < 0) return make_error(Errc::kIo, "spawn: clone3 failed", last_errno);
  UniqueFd child_pidfd(pidfd);
  err_w.reset();
  if (ns & CLONE_NEWUSER) {
    // Map the child's root to our own ids, then let it go on.
    const std::string p = "/proc/" + std::to_string(pid) + "/";
    bool ok = write_file(p + "setgroups", "deny") &&
              write_file(p + "uid_map", "0 " + std::to_string(geteuid()) + " 1") &&
              write_file(p + "gid_map", "0 " + std::to_string(getegid()) + " 1");
    if (!ok) CANOPY_WARN("spawn: user namespace id maps for pid %d failed: %s", int(pid), strerror(errno));
    char go = 1;
    if (write(sync_w.get(), &go, 1) != 1) CANOPY_WARN("spawn: cannot release pid %d", int(pid));
    sync_w.reset();
  }
  ChildError ce{};
  ssize_t got;
  do {
    got = read(err_r.get(), &ce, sizeof ce);
  } while (got < 0 && errno == EINTR);
  if (got == ssize_t(sizeof ce)) {
    Child failed(pid, std::move(child_pidfd), "");
    (void)failed.wait(5000);
    CANOPY_WARN("spawn %s: %s failed: %s", o.path.c_str(), stage_name(ce.stage), strerror(ce.err));
    return make_error(ce.stage == kStageExec ? Errc::kIo : Errc::kState, "spawn: the child failed before exec", ce.err);
  }
  std::string conf;
  if (o.confine) {
    conf = ns ? "ns:" + ns_names(ns) : "ns:none";
    // In a chroot the child could not make its mounts private, so it kept the outer /proc (process.cc
    // child_main): say so.
    if ((ns & CLONE_NEWNS) && !root_is_mount_point()) conf += " mounts:outer";
    if (plan.drop_ids) conf += " uid:" + std::to_string(o.uid);
    conf += " no_new_privs";
    if (o.read_only_fs) conf += plan.landlock.attr_size ? " landlock:ro" : " landlock:unavailable";
    if (o.seccomp != nullptr) conf += " seccomp";
  }
  return Child(pid, std::move(child_pidfd), conf);
}

Result<std::string> resolve_program(const std::string& name, const std::string& base_dir) {
  if (name.empty()) return make_error(Errc::kInvalidArgument, "empty program name");
  auto executable = [](const std::string& p) { return access(p.c_str(), X_OK) == 0; };
  if (name.find('/') != std::string::npos) {
    std::string p = name[0] == '/' || base_dir.empty() ? name : base_dir + "/" + name;
    if (executable(p)) return p;
    return make_error(Errc::kInvalidArgument, "program not found or not executable", errno);
  }
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = '\0';
    std::string dir(self);
    dir.resize(dir.rfind('/'));
    if (executable(dir + "/" + name)) return dir + "/" + name;
  }
  const char* path = getenv("PATH");
  std::string ps = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= ps.size()) {
    size_t end = ps.find(':', start);
    if (end == std::string::npos) end = ps.size();
    std::string candidate = ps.substr(start, end - start);
    if (!candidate.empty()) {
      candidate += '/';
      candidate += name;
      if (executable(candidate)) return candidate;
    }
    start = end + 1;
  }
  return make_error(Errc::kInvalidArgument, "program not found beside canopy-vmm or in PATH");
}

Result<UniqueFd> connect_pipewire() {
  const char* remote = getenv("PIPEWIRE_REMOTE");
  std::string path = remote && *remote ? remote : "pipewire-0";
  if (path[0] != '/') {
    const char* dir = getenv("PIPEWIRE_RUNTIME_DIR");
    if (!dir || !*dir) dir = getenv("XDG_RUNTIME_DIR");
    if (!dir || !*dir) return make_error(Errc::kUnsupported, "no PipeWire socket named (XDG_RUNTIME_DIR unset)");
    path = std::string(dir) + "/" + path;
  }
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return make_error(Errc::kInvalidArgument, "PipeWire socket path too long");
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  // Non-blocking: a daemon whose backlog is full must not stall canopy-vmm (EAGAIN: no connection).
  UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s) return make_error(Errc::kIo, "socket failed", errno);
  if (connect(s.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
    return errno == ENOENT ? make_error(Errc::kUnsupported, "no PipeWire socket", errno)
                           : make_error(Errc::kIo, "connecting to PipeWire failed", errno);
  CANOPY_TRY(set_nonblocking(s.get(), false));
  return s;
}

void apply_identity(const BackendIdentity& who, SpawnOptions& o, std::vector<UniqueFd>& keep) {
  if (!who.scratch.empty()) {
    std::erase_if(o.env, [](const std::string& e) { return e.rfind("CANOPY_SCRATCH_DIR=", 0) == 0; });
    o.env.push_back("CANOPY_SCRATCH_DIR=" + who.scratch);
  }
  if (who.uid == 0 || geteuid() != 0) return;
  o.uid = who.uid;
  o.groups = who.groups;
  if (!who.pipewire) return;
  int n = 3;
  for (const auto& [ours, target] : o.fds) n = std::max(n, target + 1);
  auto pw = connect_pipewire();
  if (!pw.ok()) {
    CANOPY_INFO("%s: no PipeWire connection for it: %s", o.path.c_str(), pw.error().what);
    return;
  }
  if (n >= kFirstTempFd) {
    CANOPY_WARN("%s: no descriptor number left for its PipeWire connection", o.path.c_str());
    return;
  }
  o.fds.emplace_back(pw->get(), n);
  o.argv.push_back("--pipewire-fd=" + std::to_string(n));
  keep.push_back(std::move(*pw));
}

Result<std::string> make_scratch(const std::string& dir, const std::string& vm, uid_t owner) {
  if (dir.empty() || vm.empty() || vm.find('/') != std::string::npos || vm == "." || vm == "..")
    return make_error(Errc::kInvalidArgument, "scratch folder: an empty folder or a VM name that is not one name");
  bool made = mkdir(dir.c_str(), 0711) == 0;
  if (!made && errno != EEXIST) return make_error(Errc::kIo, "cannot make the scratch folder", errno);
  // DIR itself (not a link) must be this process's and writable by no one else: whoever else could
  // write it could swap a VM's folder for a link after the checks below, or plant one before.
  UniqueFd top(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!top) return make_error(Errc::kIo, "the scratch folder cannot be opened as a folder", errno);
  struct stat st{};
  if (fstat(top.get(), &st) != 0) return make_error(Errc::kIo, "the scratch folder", errno);
  if (st.st_uid != geteuid()) return make_error(Errc::kInvalidArgument, "the scratch folder belongs to another user");
  if (made) {
    // Whatever the umask made of it: the back-ends' uids pass through.
    if (fchmod(top.get(), 0711) != 0) return make_error(Errc::kIo, "the scratch folder's mode", errno);
  } else if (st.st_mode & 022) {
    // A folder that was there is not changed (it may be $XDG_RUNTIME_DIR or /tmp): it must suit.
    return make_error(Errc::kInvalidArgument, "the scratch folder is writable by others");
  } else if (owner != 0 && (st.st_mode & 011) != 011) {
    return make_error(Errc::kInvalidArgument, "the scratch folder does not let the back-ends' uids through (0711)");
  }
  // Its path, from the folder opened (not the name given, which a renamed parent could change).
  char real[4096];
  const ssize_t n = readlink(("/proc/self/fd/" + std::to_string(top.get())).c_str(), real, sizeof real - 1);
  if (n <= 0) return make_error(Errc::kIo, "the scratch folder's path", errno);
  std::string path = std::string(real, size_t(n)) + "/" + vm;
  if (mkdirat(top.get(), vm.c_str(), 0700) != 0 && errno != EEXIST)
    return make_error(Errc::kIo, "cannot make a VM's scratch folder", errno);
  // Whatever is there must be a folder (not a link to one elsewhere), this process's or already the
  // back-ends' (a folder of another uid, e.g. another VM's back-ends' after the manifest changed, or
  // of a confined run's when this one is not, is refused rather than taken over with what is in it).
  UniqueFd fd(openat(top.get(), vm.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return make_error(Errc::kIo, "a VM's scratch folder cannot be opened as a folder", errno);
  if (fstat(fd.get(), &st) != 0) return make_error(Errc::kIo, "a VM's scratch folder", errno);
  if (st.st_uid != geteuid() && (owner == 0 || st.st_uid != owner))
    return make_error(Errc::kInvalidArgument, "a VM's scratch folder belongs to another user: remove it");
  if (fchmod(fd.get(), 0700) != 0) return make_error(Errc::kIo, "a VM's scratch folder's mode", errno);
  if (owner != 0 && fchown(fd.get(), owner, owner) != 0)
    return make_error(Errc::kIo, "cannot give a VM's scratch folder to its back-ends", errno);
  return path;
}

}  // namespace canopy::hypervisor
