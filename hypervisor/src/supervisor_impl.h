// canopy-vmm's supervisor inside (internal to hypervisor/src): its epoll tags, a VM's record and its
// state (Supervisor::Impl), shared by the files that hold its parts —
//   supervisor.cc            creation from the manifest, the event loop and the public API;
//   backend_args.cc          a VM's manifest entries as its back-ends' command lines;
//   supervisor_lifecycle.cc  starting and stopping VMs (partitions and KVM guests), exits, restarts, timers;
//   supervisor_messages.cc   a partition's messages and its device back-ends (the partition transport);
//   supervisor_control.cc    the control socket (canopyctl);
//   supervisor_broker.cc     the compositor service and the connection broker.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <sstream>

#include "canopy/base/log.h"
#include "canopy/config/policy_table.h"
#include "canopy/hypervisor/process.h"
#include "canopy/hypervisor/sandbox.h"
#include "canopy/hypervisor/supervisor.h"
#include "canopy/transport/virtio_msg.h"
#include "device_bridge.h"
#include "kvm/kvm_vm.h"

namespace canopy::hypervisor {

namespace msg = transport::msg;
using msg::Code;
using msg::Type;

namespace detail {

enum Kind : uint64_t {
  kVmSocket = 1,
  kVmProcess,
  kBackendProcess,
  kBackendRequest,
  kControlListen,
  kControlClient,
  kSignal,
  kDisplayLink,        // a back-end's device link to the broker
  kCompositorProcess,  // the compositor's pidfd
};
inline uint64_t tag(Kind k, uint64_t a = 0, uint64_t b = 0) { return (uint64_t(k) << 56) | (a << 24) | b; }
inline Kind tag_kind(uint64_t t) { return Kind(t >> 56); }
inline uint64_t tag_a(uint64_t t) { return (t >> 24) & 0xffffffff; }
inline uint64_t tag_b(uint64_t t) { return t & 0xffffff; }

constexpr size_t kMaxControlRequest = 4096;
constexpr size_t kMaxControlClients = 16;
constexpr size_t kMaxDeniedClients = 4;

inline std::string quoted(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += (c == '\n') ? ' ' : c;
  }
  return o + "\"";
}

}  // namespace detail

using namespace detail;  // NOLINT(google-build-using-namespace): the supervisor's own parts

struct Vm {
  VmConfig cfg;
  size_t index = 0;
  VmLifecycle life;
  UniqueFd ram;
  UniqueFd sock;
  Child proc;
  std::vector<std::unique_ptr<DeviceBridge>> devices;
  std::vector<std::vector<TimePoint>> backend_restarts;  // per device: recent restart times
  std::string program;
  bool hello = false;
  bool restart_after_stop = false;
  std::optional<TimePoint> kill_at;  // stopping: SIGKILL when still running then
  uint64_t progress = 0;
  uint64_t bad_messages = 0;
  std::string confinement;
  std::vector<std::vector<TimePoint>> link_requests;  // per device: recent connection requests (broker)

  Vm(VmConfig c, size_t i)
      : cfg(std::move(c)), index(i), life(cfg.restart, cfg.max_restarts, Millis(cfg.watchdog_ms)) {}
};

struct Supervisor::Impl {
  Supervisor* self = nullptr;
  Manifest manifest;
  SupervisorOptions opt;
  SteadyClock steady;
  const Clock* clock = nullptr;
  std::vector<std::unique_ptr<Vm>> vms;
  std::vector<sock_filter> filter;
  UniqueFd epoll;
  UniqueFd control;
  std::map<int, UniqueFd> clients;
  std::map<int, const char*> denied;  // clients refused at accept: the reason, sent for their request
  // The audio policy board (config/policy_table.h): the sealed table, and per VM of it its state
  // segment, writable (for its own canopy-snd) and read-only (for the others).
  UniqueFd policy_table;
  std::vector<std::string> policy_vms;
  std::vector<UniqueFd> policy_state_rw, policy_state_ro;
  Status make_policy_board();
  // canopy-snd's board arguments and descriptors for VM `name` (none when it has no sound device).
  void add_policy_board(const std::string& name, BackendSpec& spec) const;
  // Who VM `vm_index`'s back-end of `type` runs as: as root and confining, the VM's back-end uid (a GPU
  // back-end with the render group, for the GPU's render nodes; a sound back-end with a
  // PipeWire connection made here); else the VMM's own identity.
  BackendIdentity backend_identity(size_t vm_index, const std::string& type) const;

  // The compositor service and our end of its service link (supervisor_broker.cc).
  Child compositor;
  UniqueFd broker;
  std::string compositor_program;
  std::vector<TimePoint> compositor_starts;
  ServiceStatus compositor_status{"display"};
  int compositor_exit_code = 0;

  TimePoint now() const { return clock->now(); }

  void watch(int fd, uint64_t t);
  void unwatch(int fd);

  Vm* find(const std::string& name);

  // --- starting and stopping a VM -------------------------------------------------------------------------

  Status start(Vm& vm);

  // A KVM VM is a child canopy-vmm (`canopy-vmm boot`, docs/kvm.md) that runs the guest and starts its
  // device back-ends itself: its exit status says how the guest ended (0 power-off, 3 reboot).
  Status start_kvm(Vm& vm);

  // A path from the manifest: relative ones are relative to the manifest's folder.
  std::string resolve_path(const std::string& p) const;

  // Starts a VM and feeds a failure to start into its restart policy.
  void start_or_fail(Vm& vm);

  // Everything of a VM incarnation after its process is gone.
  void cleanup(Vm& vm);

  void on_vm_exit(Vm& vm, const ExitInfo& e);

  void begin_stop(Vm& vm);

  // --- back-ends -----------------------------------------------------------------------------------------

  void send_event(Vm& vm, DeviceBridge& d);

  void restart_backend(Vm& vm, DeviceBridge& d);

  // The back-end's process (its exit) and its request channel (config changes), if it has one.
  void watch_backend(Vm& vm, DeviceBridge& d);

  void on_backend_exit(Vm& vm, DeviceBridge& d);

  void after_device_request(Vm& vm, DeviceBridge& d);

  // --- the connection broker and the compositor (supervisor_broker.cc) -----------------------------------

  Status start_compositor();
  void on_compositor_exit();
  void stop_compositor(int grace_ms);
  // A back-end asks for a compositor connection on its device link.
  void on_display_link(Vm& vm, DeviceBridge& d);
  // Our end of a KVM VM's device links: given to its canopy-vmm, which hands them to the back-ends.
  void watch_display_link(Vm& vm, DeviceBridge& d);

  // --- partition messages --------------------------------------------------------------------------------

  void reply(Vm& vm, const msg::Message& req, Code code, std::span<const uint8_t> payload,
             std::span<const int> fds = {});

  void on_message(Vm& vm, msg::Message& m);

  void on_socket(Vm& vm);

  // --- control socket ------------------------------------------------------------------------------------

  Status open_control();

  void on_control_accept();

  std::string command(const std::string& line);

  void on_control_client(int fd);

  // With opt.subreaper: reaps orphans reparented to us that are none of our known children.
  void reap_orphans();
  // With opt.subreaper, at shutdown: kills and reaps what is left of them (no process outlives us).
  void kill_orphans();

  // --- the loop ------------------------------------------------------------------------------------------

  void due();

  int next_timeout_ms(int limit) const;

  void dispatch(uint64_t t);
};

}  // namespace canopy::hypervisor
