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
// A device back-end is not confined here (it confines itself, backend_sandbox.h), but as root the VMM
// starts it under its VM's back-end uid (SpawnOptions::uid, with its supplementary groups), so that a
// taken-over back-end of one VM can neither signal, trace nor read the memory of another VM's.
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
  // The uid and gid to run as when the VMM is root (0: keep), confined or not, and its supplementary
  // groups then (none unless given: e.g. a GPU back-end's "render" group for the render node).
  uid_t uid = 0;
  std::vector<gid_t> groups;
  const std::vector<sock_filter>* seccomp = nullptr;
  // With `confine`: a Landlock domain in which the child can write, create, remove or truncate nothing
  // in any filesystem (descriptors it was given stay usable), nor signal outside it. Where the kernel
  // has no Landlock the child runs without it (its confinement string says so).
};

// A connection to the PipeWire daemon (PIPEWIRE_REMOTE, else pipewire-0 in PIPEWIRE_RUNTIME_DIR or
// XDG_RUNTIME_DIR, as PipeWire's clients look for it), made for a sound back-end that runs under an
// identity that cannot reach the operator's socket: it gets the connected descriptor (--pipewire-fd) and
// the daemon sees the operator. Errors: kUnsupported when no socket is named or it is not there, kIo.
Result<UniqueFd> connect_pipewire();

// Who a device back-end runs as and what it is given for that: as root, canopy-vmm starts each VM's
// back-ends under that VM's back-end uid (supervisor.h, kBackendUidBase).
struct BackendIdentity {
  uid_t uid = 0;              // 0: the VMM's own
  std::vector<gid_t> groups;  // its supplementary groups under `uid`
  bool pipewire = false;      // a sound back-end: under another uid it gets a PipeWire connection made here
  std::string scratch;        // its VM's scratch folder ($CANOPY_SCRATCH_DIR; make_scratch), "" none
};
// Applies `who` to the start of a back-end: its scratch folder in its environment, its ids, and with
// `pipewire` (when the ids change) a connection from connect_pipewire as the next free descriptor
// number, named by --pipewire-fd; `keep` holds it until spawn(). A daemon that cannot be reached is
// logged, and the back-end goes without.
void apply_identity(const BackendIdentity& who, SpawnOptions& o, std::vector<UniqueFd>& keep);
// A VM's scratch folder, DIR/VM: made or taken over (when it is this process's or already owner's),
// mode 0700 and, when `owner` is not 0, owned by owner:owner, so that only that VM's back-ends (and
// root) may enter it. DIR is made mode 0711 if missing; one that exists must be this process's, not
// writable by others, and (for an owner) let others through; it is not changed. The folder's absolute
// path. Errors: kInvalidArgument for a folder that does not suit, kIo.
Result<std::string> make_scratch(const std::string& dir, const std::string& vm, uid_t owner);

struct ExitInfo {
  bool signaled = false;
  int code = 0;  // exit status, or the signal number when signaled
  // It exited, but another process traces it and has not taken its exit yet (a debugger; or an
  // unconfined partition's ptrace): the status is the one the kernel keeps for the zombie, and the
  // zombie is left until the tracer lets go (canopy-vmm run, as its parent and subreaper, reaps it then
  // as it reaps orphans; an owner that is no subreaper leaves it until it exits).
  bool held_by_tracer = false;
  bool status_known = true;  // false: held by a tracer and its status could not be read
  bool clean() const { return !signaled && code == 0 && status_known; }
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
