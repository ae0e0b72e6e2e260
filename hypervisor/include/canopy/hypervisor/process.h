// Child processes of canopy-vmm: device back-ends and guest partitions. A child is started with clone3
// (CLONE_PIDFD), so the VMM holds a pidfd for it from the first instant: it can poll for the exit, signal
// it and reap it without PID-reuse races, and nothing else in the VMM needs SIGCHLD.
//
// A confined child (guest partition) additionally gets, in this order, before exec:
//   - its own namespaces where the kernel allows (PID, mount, network, IPC, UTS, cgroup; as non-root a user
//     namespace too); a fresh /proc in the new PID namespace, so other processes are not even visible;
//   - when the VMM runs as root: its own uid/gid (no supplementary groups), so the kernel's ptrace and
//     /proc access checks keep it away from every other process, other partitions included;
//   - no_new_privs and a seccomp filter (Sandbox in sandbox.h);
//   - only the descriptors it is given (all others closed), and SIGKILL when the VMM dies.
// What was applied is reported in Child::confinement (e.g. "ns:pid,mnt,net,ipc,uts,cgroup uid:507904
// seccomp"), so an operator sees it in canopyctl status.
//
// Threading: spawn() may be called from any thread; the child only makes async-signal-safe calls
// between clone and exec. A Child is used by one thread.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

struct sock_filter;

namespace canopy::hypervisor {

struct SpawnOptions {
  std::string path;               // the executable (absolute or relative to the cwd)
  std::vector<std::string> argv;  // argv[0] included
  std::vector<std::string> env;   // the whole environment ("NAME=value")
  // Descriptors the child gets: (descriptor in the VMM, number in the child). Everything else is closed.
  std::vector<std::pair<int, int>> fds;
  // stdin is /dev/null; stdout/stderr are these (-1: inherit the VMM's).
  int stdout_fd = -1;
  int stderr_fd = -1;
  // Confinement (guest partitions).
  bool confine = false;
  bool read_only_fs = false;
  uid_t uid = 0;  // the uid/gid to run as when the VMM is root (0: keep)
  const std::vector<sock_filter>* seccomp = nullptr;
  // With `confine`: a Landlock domain in which the child can write, create, remove or truncate nothing
  // in any filesystem (descriptors it was given stay usable), nor signal outside it. Where the kernel
  // has no Landlock the child runs without it (its confinement string says so).
};

struct ExitInfo {
  bool signaled = false;
  int code = 0;  // exit status, or the signal number when signaled
  bool clean() const { return !signaled && code == 0; }
  std::string to_string() const;
};

class Child {
 public:
  Child() = default;
  Child(pid_t pid, UniqueFd pidfd, std::string confinement)
      : pid_(pid), pidfd_(std::move(pidfd)), confinement_(std::move(confinement)) {}
  Child(Child&& o) noexcept = default;
  Child& operator=(Child&& o) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  // Kills (SIGKILL) and reaps a child that is still running: no process outlives its owner.
  ~Child();

  bool running() const { return pidfd_.valid(); }
  pid_t pid() const { return pid_; }
  int pidfd() const { return pidfd_.get(); }  // readable when the child has exited
  const std::string& confinement() const { return confinement_; }

  Status signal(int sig);
  // Reaps the child if it has exited (non-blocking); nullopt while it runs.
  std::optional<ExitInfo> try_reap();
  // Waits up to timeout_ms for the exit; kTimeout when it is still running.
  Result<ExitInfo> wait(int timeout_ms);
  // SIGTERM, up to grace_ms for the exit, then SIGKILL; reaps.
  ExitInfo terminate(int grace_ms);

 private:
  pid_t pid_ = -1;
  UniqueFd pidfd_;
  std::string confinement_;
};

Result<Child> spawn(const SpawnOptions& options);

// Resolves a program name as canopy-vmm does: a name with a '/' is a path (relative names are taken
// relative to `base_dir`); a bare name is looked up first beside the running executable, then in PATH.
Result<std::string> resolve_program(const std::string& name, const std::string& base_dir);

}  // namespace canopy::hypervisor
