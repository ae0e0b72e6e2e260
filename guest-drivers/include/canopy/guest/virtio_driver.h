// Generic virtio driver core: the device initialisation sequence of virtio 1.2 §3.1.1 over any
// VirtioTransport, with split virtqueues (DriverQueue) laid out in a guest-memory area the app gives.
//
//   1. reset (write 0, wait for 0)         5. write the negotiated subset
//   2. ACKNOWLEDGE                          6. FEATURES_OK, re-read status: it must have stuck
//   3. DRIVER                               7. queues: size, rings, QueueReady; device-specific setup
//   4. read device features                 8. DRIVER_OK
// Any failure after step 1 sets FAILED and returns the error; the driver is then not initialised.
//
// Threading: a VirtioDriver and its queues are used by one thread at a time (see DriverQueue).
#pragma once

#include <cstdint>
#include <functional>
#include <type_traits>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/guest/virtio_transport.h"
#include "canopy/transport/driver_queue.h"
#include "canopy/transport/guest_memory.h"

namespace canopy::guest {

// A guest-physical range the driver may use for rings and indirect tables (zeroed as used).
struct GuestArea {
  uint64_t gpa = 0;
  uint64_t len = 0;
};

// Feature bits this kit never negotiates, whatever the app asks: packed rings (split only), in-order
// (the device could then return one used entry for several chains) and notification data (kicks
// carry no data here).
inline constexpr uint64_t kDriverUnsupportedFeatures =
    transport::kVirtioFRingPacked | transport::kVirtioFInOrder | transport::kVirtioFNotificationData;

class VirtioDriver;

struct DriverOptions {
  uint32_t device_id = 0;         // the device id expected; 0 = any
  uint64_t wanted_features = 0;   // what the app supports; VIRTIO_F_VERSION_1 is always asked for
  uint16_t num_queues = 0;        // queues 0 .. num_queues-1 are set up
  uint16_t max_queue_size = 256;  // per queue: min(this, QueueNumMax) rounded down to a power of two
  GuestArea ring_area;            // rings (and indirect tables) are laid out here, in queue order
  uint32_t indirect_entries = 0;  // indirect-table entries per chain with VIRTIO_F_INDIRECT_DESC (0: none)
  // Device-specific setup after the queues are live and before DRIVER_OK (§3.1.1 step 7): read the
  // config space, post receive buffers... An error aborts init (FAILED).
  std::function<Status(VirtioDriver&)> device_setup;
};

class VirtioDriver {
 public:
  VirtioDriver(VirtioTransport& transport, transport::GuestMemory& mem) : t_(transport), mem_(mem) {}
  VirtioDriver(const VirtioDriver&) = delete;
  VirtioDriver& operator=(const VirtioDriver&) = delete;

  // Runs the initialisation sequence. Errors: kUnsupported (not a virtio 1.x device, unexpected device
  // id, no VERSION_1, features refused, fewer queues than asked), kInvalidArgument (bad options),
  // kOutOfRange (ring area too small or outside guest memory), kTimeout (reset never completed),
  // kState (device needs reset after DRIVER_OK), or whatever device_setup / the transport returned.
  Status init(const DriverOptions& options);
  // Resets the device (write 0, wait for 0) and forgets the queues (in-flight tokens are dropped:
  // take them with queue(q).detach_unused() first).
  Status reset();

  bool initialised() const { return initialised_; }
  uint64_t features() const { return features_; }
  bool has_feature(uint64_t bit) const { return (features_ & bit) == bit; }
  uint16_t num_queues() const { return uint16_t(queues_.size()); }
  // Precondition: q < num_queues().
  transport::DriverQueue& queue(uint16_t q) { return queues_[q]; }
  // Bytes of the ring area in use after init.
  uint64_t ring_area_used() const { return area_used_; }

  // Publishes the chains added to queue q and notifies the device if it wants a kick (§2.7.13).
  // Returns whether a notification was sent.
  Result<bool> kick(uint16_t q);

  // Config space with a consistent snapshot (§2.5.1: re-read while ConfigGeneration changes).
  Status read_config(uint32_t offset, void* dst, uint32_t len);
  template <typename T>
  Result<T> read_config_obj(uint32_t offset) {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    CANOPY_TRY(read_config(offset, &v, sizeof v));
    return v;
  }
  Status write_config(uint32_t offset, const void* src, uint32_t len) { return t_.write_config(offset, src, len); }

  // Interrupts: causes as kInterrupt* bits.
  uint32_t poll_interrupt() { return t_.poll_interrupt(); }
  Result<uint32_t> wait_interrupt(int timeout_ms) { return t_.wait_interrupt(timeout_ms); }
  // Whether the device has set DEVICE_NEEDS_RESET (§2.1.2).
  bool needs_reset() { return t_.read_status() & transport::kStatusDeviceNeedsReset; }

  VirtioTransport& transport() { return t_; }
  transport::GuestMemory& memory() { return mem_; }

 private:
  Status reset_device();
  Status setup_queues(const DriverOptions& o);
  Error fail(Error e);

  VirtioTransport& t_;
  transport::GuestMemory& mem_;
  std::vector<transport::DriverQueue> queues_;
  uint64_t features_ = 0;
  uint64_t area_used_ = 0;
  bool initialised_ = false;
};

}  // namespace canopy::guest
