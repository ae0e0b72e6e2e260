// One virtio device of a guest partition: the device side of the message transport (status, features,
// config, queue set-up, checked against the partition's RAM) bridged to an unchanged vhost-user device
// back-end, which canopy-vmm starts as its own process. Kick and call eventfds created by the partition
// go to the back-end as they are: the data path never passes through the VMM.
//
// When the back-end dies, the device sets DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2) and the VM is told
// with an EVENT_CONFIG; the supervisor starts a new back-end, and the driver's reset (status 0) and
// re-initialisation bring the device up on it. Requests that need the back-end while it is down get
// kDeviceError rather than waiting.
//
// Back-ends that speak BACKEND_REQ get a back-end request channel (a socketpair, SET_BACKEND_REQ_FD);
// the supervisor watches backend_request_fd() and calls on_backend_request(). A CONFIG_CHANGE_MSG on it
// (e.g. canopy-gpu's display change) bumps the config generation and becomes an EVENT_CONFIG for the
// guest, as a config-change interrupt would; other requests are refused.
//
// Threading: the supervisor's thread only.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/hypervisor/process.h"
#include "canopy/transport/vhost_user_frontend.h"
#include "canopy/transport/virtio_msg.h"
#include "canopy/transport/virtio_ring.h"

namespace canopy::hypervisor {

struct BackendSpec {
  std::string name;  // for logs and status ("rng", "gpu", ...)
  uint32_t virtio_id = 0;
  std::string program;  // resolved path
  std::vector<std::string> args;
  // The back-end gets a device link to canopy-vmm's connection broker (canopy/protocol/broker.h) as
  // descriptor kDisplayLinkFd, named by --display-fd: it asks there for compositor connections.
  bool display_link = false;
  // Descriptors the back-end inherits: (ours, its number); ours stay open as long as the spec is used.
  std::vector<std::pair<int, int>> inherit;
  BackendIdentity identity;  // its VM's back-end uid when canopy-vmm is root
};

inline constexpr int kDisplayLinkFd = 4;

// The guest's RAM as the back-ends get it.
struct RamInfo {
  int fd = -1;  // borrowed memfd
  uint64_t size = 0;
};

// Address the VMM gives the RAM region in vhost-user messages (the VMM never maps partition RAM).
inline constexpr uint64_t kRamUserAddr = 0x100000000000ull;
inline constexpr uint16_t kPartitionQueueSize = 256;
inline constexpr int kBackendReplyTimeoutMs = 2000;

class DeviceBridge {
 public:
  DeviceBridge(BackendSpec spec, uint16_t index) : spec_(std::move(spec)), index_(index) {}

  // Starts the back-end process and does the vhost-user handshake with the given RAM.
  Status start_backend(const RamInfo& ram);
  // The device model without a back-end process (fuzzing, tests): as after a handshake that offered
  // `features` with `queues` queues; requests that need the back-end get kDeviceError.
  void configure_offline(const RamInfo& ram, uint16_t queues, uint64_t features, uint32_t config_size);
  // Tests: the back-end request channel a back-end would have been given (our end of it).
  void adopt_backend_request_channel(UniqueFd sock) { backend_req_ = transport::vhost_user::Channel(std::move(sock)); }
  // Kills and reaps the back-end (VM stop / teardown).
  void stop_backend();
  // The back-end process exited or broke the protocol: forget it. Returns true when the guest must be told
  // (the device was in use: DEVICE_NEEDS_RESET is now set).
  bool backend_lost(const std::string& why);

  struct Reply {
    transport::msg::Code code = transport::msg::Code::kOk;
    std::vector<uint8_t> payload;
  };
  // Our end of the back-end's device link to the broker, -1 when it has none (watch it for readability).
  int display_link_fd() const { return display_link_.get(); }
  // A new device link (the old one closed): our end is kept, the back-end's end returned. start_backend
  // makes one itself; a KVM VM's back-ends, started by its own canopy-vmm, get theirs through it.
  Result<UniqueFd> open_display_link();
  // The back-end request channel, -1 when the back-end has none (watch it for readability).
  int backend_request_fd() const { return backend_req_.valid() ? backend_req_.fd() : -1; }
  // Takes the messages waiting on the back-end request channel (never blocks for long: a message is
  // read whole or the back-end is failed). Sets the pending-event flag on a config change.
  void on_backend_request();
  uint64_t config_changes() const { return config_changes_; }

  // A request for this device from the partition (already parsed; device index checked).
  Reply handle(transport::msg::Message& req);
  // Device reset: status 0, queues forgotten, the back-end's rings stopped. `by_driver`: the driver asked
  // (counted in driver_resets) rather than the VMM (partition restart).
  void reset(bool by_driver = false);

  // Set by handle() when the back-end failed (timeout, protocol error): it has been killed and forgotten;
  // the supervisor restarts it. Reading clears the flag.
  bool take_backend_failed() { return std::exchange(backend_failed_, false); }
  // Set when the guest must get an EVENT_CONFIG (status or config changed). Reading clears it.
  bool take_pending_event() { return std::exchange(pending_event_, false); }

  const BackendSpec& spec() const { return spec_; }
  uint16_t index() const { return index_; }
  Child& backend() { return backend_; }
  bool backend_up() const { return frontend_.has_value(); }
  uint8_t status() const { return status_; }
  uint32_t backend_starts() const { return backend_starts_; }
  uint64_t driver_resets() const { return driver_resets_; }
  uint32_t config_generation() const { return generation_; }
  transport::msg::DeviceInfo info() const;

 private:
  struct Queue {
    bool set = false;
    uint16_t size = 0;
    transport::VringAddrs addrs{};
    UniqueFd kick;
    UniqueFd call;
  };
  Reply set_status(uint32_t value);
  Reply set_vqueue(transport::msg::Message& req);
  Status activate();  // DRIVER_OK: program the back-end with the negotiated state
  void quiesce();     // stop the back-end's rings before a reset
  Status fail_backend(const Error& e, const char* step);

  BackendSpec spec_;
  uint16_t index_;
  RamInfo ram_{};
  Child backend_;
  std::optional<transport::vhost_user::Frontend> frontend_;
  transport::vhost_user::Channel backend_req_;
  UniqueFd display_link_;
  uint64_t offered_ = 0;           // device features, as the guest sees them
  uint64_t backend_features_ = 0;  // as the back-end offered them (incl. the vhost-user bit)
  uint64_t protocol_ = 0;
  uint16_t num_queues_ = 0;
  uint32_t config_size_ = 0;
  uint8_t status_ = 0;
  uint64_t driver_features_ = 0;
  bool active_ = false;  // the back-end runs the queues
  std::vector<Queue> queues_;
  uint32_t generation_ = 0;
  uint32_t backend_starts_ = 0;
  uint64_t driver_resets_ = 0;
  uint64_t config_changes_ = 0;
  bool backend_failed_ = false;
  bool pending_event_ = false;
};

// Config-space size of a virtio device type (virtio 1.2 §5); 0 for types without one or unknown.
uint32_t virtio_config_size(uint32_t virtio_id);
// Queue count of a virtio device type when the back-end cannot tell (no MQ protocol feature).
uint16_t virtio_default_queues(uint32_t virtio_id);

}  // namespace canopy::hypervisor
