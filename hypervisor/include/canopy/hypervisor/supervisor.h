// canopy-vmm's supervisor: runs the VMs of a manifest as guest partitions (processes; see process.h and
// docs/partition-transport.md), each with its vhost-user device back-ends, and keeps them running:
//   - start order from the manifest (boot_order: start_after, cluster first);
//   - per-VM restart policy and heartbeat watchdog (VmLifecycle, lifecycle.h);
//   - device back-ends restarted when they die, the VM told through DEVICE_NEEDS_RESET;
//   - a control socket (SOCK_SEQPACKET, mode 0600, same-uid peers that are not descendants of anything
//     it started) with status / stop / start / restart / shutdown, used by canopyctl; stopping or
//     restarting a safety-critical VM needs `force`;
//   - teardown of every process and descriptor it started.
// One event loop (epoll) serves every partition's control messages, process exits and the control
// socket. The data path (kicks, calls, guest memory) never passes through it. A VM that floods its socket
// is served at most kMessageBudget messages per turn; a malformed message is counted and dropped; a
// partition that does not read its replies loses them (the VMM never blocks on a partition).
//
// Threading: all calls on one thread (the one that created the Supervisor: children die with it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/config/manifest.h"
#include "canopy/hypervisor/lifecycle.h"

namespace canopy::hypervisor {

// The manifest and its types (canopy/config/manifest.h) are the VMM's vocabulary.
using namespace ::canopy::config;  // NOLINT(google-build-using-namespace)

inline constexpr uid_t kPartitionUidBase = 0x7c000;  // partition i runs as uid/gid base + i (VMM as root)
// VM i's device back-ends run as uid/gid base + i (VMM as root, confining): not the partition's, not
// another VM's back-ends', not the operator's.
inline constexpr uid_t kBackendUidBase = 0x7c800;
inline constexpr int kMessageBudget = 64;

struct SupervisorOptions {
  std::string control_path;  // empty: no control socket
  // The control socket refuses every process descending from one canopy-vmm started (VMs, back-ends,
  // the compositor, what they fork), whatever its uid. false: only the uid counts (tests' control runs).
  bool control_refuses_descendants = true;
  // The operator: canopy-vmm's uid (and root), and, when set, the members of this group too (the socket
  // is then mode 0660 and of this group). -1: none.
  gid_t control_group = gid_t(-1);
  // canopy-vmm is the child subreaper of what it starts (PR_SET_CHILD_SUBREAPER): a process that a
  // child orphans is reparented to it, so it stays a descendant, and canopy-vmm reaps it. For canopy-vmm
  // itself; a process that runs other children of its own (a test) leaves it off.
  bool subreaper = false;
  std::string base_dir;          // relative program paths are taken from here (the manifest's folder)
  int stop_grace_ms = 1000;      // EVENT_STOP + SIGTERM, then SIGKILL after this long
  const Clock* clock = nullptr;  // nullptr: the steady clock
  bool confine = true;           // namespaces + uid + seccomp for partitions
  // The compositor as a service canopy-vmm runs (start_services()): canopy-display MANIFEST
  // --broker-fd 3 ARGS, and every GPU back-end gets a device link to the connection broker
  // (canopy/protocol/broker.h): its compositor connections are made by canopy-vmm and bound to its VM.
  bool compositor = false;
  std::vector<std::string> compositor_args;
  std::string manifest_path;  // what the compositor is given
  // Without the broker: canopy-display's listening socket; GPU back-ends get --display-socket=PATH
  // --vm=NAME and the compositor believes the name (desktop use; docs/security.md).
  std::string display_socket;
  // Where each VM gets a scratch folder for its back-ends, DIR/VM (make_scratch: mode 0700, as root
  // owned by the VM's back-end uid), named to them by $CANOPY_SCRATCH_DIR and writable in their
  // Landlock view; "" none.
  std::string scratch_dir;
  // The cross-VM audio policy board from the manifest (canopy/audio/policy.h, from_vmm): the sealed
  // table and a state segment per VM, given to every canopy-snd. Off (tests' control runs): each
  // canopy-snd uses the shared file board its options name, as without canopy-vmm.
  bool policy_board = true;
};

struct ServiceStatus {
  std::string name;  // "display"
  int pid = -1;
  uint32_t starts = 0;
  uint64_t admitted = 0;  // connections the broker made for it
  uint64_t refused = 0;   // connection requests it refused (service down, too many)
};

struct DeviceStatus {
  uint16_t index = 0;
  std::string type;
  int backend_pid = -1;
  uid_t backend_uid = 0;  // what it runs as
  bool backend_up = false;
  uint32_t backend_starts = 0;
  uint8_t status = 0;
  uint64_t driver_resets = 0;
  uint64_t config_changes = 0;  // CONFIG_CHANGE_MSGs from the back-end (e.g. display changes)
};

struct VmStatus {
  std::string name;
  VmState state = VmState::kStopped;
  int pid = -1;
  Criticality criticality = Criticality::kNormal;
  uint32_t restarts = 0;
  uint64_t heartbeats = 0;
  uint64_t progress = 0;
  uint64_t watchdog_expiries = 0;
  uint64_t bad_messages = 0;
  std::string confinement;
  std::string last_exit;
  std::vector<DeviceStatus> devices;
};

class Supervisor {
 public:
  // Checks what the manifest needs to run here (programs exist, backends supported) without starting
  // anything. Errors name the VM.
  static Result<std::unique_ptr<Supervisor>> create(const Manifest& m, SupervisorOptions options);
  ~Supervisor();  // shutdown()
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts the services the options ask for (the compositor) before any VM, so that the cluster's first
  // frame has somewhere to go. Errors: the service could not be started.
  Status start_services();
  // Starts every VM in boot order. A VM that fails to start is handled by its restart policy; the
  // others start regardless.
  void start_all();
  // Serves events for up to timeout_ms (negative: until one arrives) and then does what is due.
  void run_once(int timeout_ms);
  // Runs until shutdown is requested (control `shutdown`, or `signal_fd` readable: a signalfd).
  void run(int signal_fd = -1);
  bool shutdown_requested() const { return shutdown_requested_; }
  // Stops every VM (reverse boot order, with the grace period) and every back-end; closes all.
  void shutdown();

  Status stop_vm(const std::string& name);
  Status start_vm(const std::string& name);
  Status restart_vm(const std::string& name);
  std::vector<VmStatus> status() const;
  std::vector<ServiceStatus> services() const;
  // The exit status of a compositor that ended itself (0 when it ended well or is still running).
  int compositor_exit_code() const;
  std::string status_text() const;

  // Observers (benchmarks, tests): a heartbeat arrived; a VM process started.
  std::function<void(const std::string& vm, uint64_t progress)> on_heartbeat;
  std::function<void(const std::string& vm)> on_vm_started;

  struct Impl;

 private:
  explicit Supervisor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  bool shutdown_requested_ = false;
  friend struct Impl;
};

}  // namespace canopy::hypervisor
