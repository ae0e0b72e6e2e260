// The partition side of the message transport (canopy/transport/virtio_msg.h, docs/partition-transport.md):
// what an app needs to run as a guest partition under canopy-vmm.
//
//   auto p = Partition::attach();               // fd from CANOPY_PARTITION_FD; HELLO maps the RAM
//   uint16_t dev = *p->find_device(4);           // the first virtio-rng device
//   auto t = p->transport(dev);                  // a VirtioTransport: hand it to VirtioDriver
//   VirtioDriver d(*t, p->memory());  d.init({...ring_area = *p->alloc(64 << 10)...});
//   p->heartbeat(progress);                      // at least every watchdog period
//
// The partition's RAM is guest-physical [0, ram_size): every address it gives a device (rings, buffers)
// is an offset in it. Kick and call eventfds go straight to the device back-end; the VMM only sees the
// control messages. Events from the VMM (config change, DEVICE_NEEDS_RESET after a back-end restart, a
// stop request) arrive on the same socket and are taken whenever the app waits for a reply or an
// interrupt, or calls poll_events().
//
// Threading: a Partition and its transports are used by one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/guest/virtio_driver.h"
#include "canopy/guest/virtio_transport.h"
#include "canopy/transport/guest_memory.h"
#include "canopy/transport/virtio_msg.h"

namespace canopy::guest {

using transport::msg::kPartitionFdEnv;

class Partition {
 public:
  // Connects over the socket named by CANOPY_PARTITION_FD.
  static Result<std::unique_ptr<Partition>> attach(int reply_timeout_ms = 5000);
  // Connects over `sock` (a SOCK_SEQPACKET socket to the VMM): HELLO, then maps the RAM.
  static Result<std::unique_ptr<Partition>> connect(UniqueFd sock, int reply_timeout_ms = 5000);
  ~Partition();
  Partition(const Partition&) = delete;
  Partition& operator=(const Partition&) = delete;

  uint64_t ram_size() const { return ram_size_; }
  transport::GuestMemory& memory() { return mem_; }
  uint16_t num_devices() const { return uint16_t(devices_.size()); }
  const transport::msg::DeviceInfo& device_info(uint16_t dev) const { return devices_[dev]; }
  // The first device with this virtio device id; kUnsupported when there is none.
  Result<uint16_t> find_device(uint32_t virtio_id) const;
  // A transport for device `dev` (precondition: dev < num_devices()); it must not outlive the Partition.
  std::unique_ptr<VirtioTransport> transport(uint16_t dev);

  // A bump allocator over RAM for rings and buffers (zeroed). kOutOfRange when RAM is used up.
  Result<GuestArea> alloc(uint64_t len, uint64_t align = 4096);

  // Tells the VMM's watchdog this partition is alive; progress is an app-defined counter shown by
  // canopyctl status.
  Status heartbeat(uint64_t progress);
  // Takes pending events without blocking. Returns kClosed when the VMM has gone away.
  Status poll_events();
  // Whether the VMM asked this partition to stop (EVENT_STOP).
  bool stop_requested() const { return stop_requested_; }
  int socket_fd() const { return sock_.get(); }

  // One request and its reply (events received meanwhile are taken). A reply with an error status
  // becomes an error value: kState, kOutOfRange, kUnsupported, kInvalidArgument or kIo (device error).
  Result<transport::msg::Message> request(transport::msg::Type type, uint16_t device, std::span<const uint8_t> payload,
                                          std::span<const int> fds = {});

  // Per-device event state, for the transports.
  struct DeviceEvents {
    bool config_changed = false;  // an EVENT_CONFIG not yet reported as an interrupt
    uint8_t status = 0;           // the status the last event carried
  };
  DeviceEvents& events(uint16_t dev) { return events_[dev]; }

 private:
  Partition(UniqueFd sock, int timeout_ms) : sock_(std::move(sock)), timeout_ms_(timeout_ms) {}
  Status hello();
  void take_event(const transport::msg::Message& m);

  UniqueFd sock_;
  int timeout_ms_;
  uint32_t next_id_ = 1;
  uint64_t heartbeat_seq_ = 0;
  uint64_t ram_size_ = 0;
  uint64_t alloc_next_ = 0;
  transport::GuestMemory mem_;
  std::vector<transport::msg::DeviceInfo> devices_;
  std::vector<DeviceEvents> events_;
  bool stop_requested_ = false;
};

}  // namespace canopy::guest
