// The driver side of a virtio transport (virtio 1.2 §4): what a driver needs from the bus to bring up a
// device and run its queues. Implementations: MmioDriverTransport (a virtio-mmio register model in the
// same process); others (vhost-user front-end, a partition message transport) implement the same calls.
//
// Threading: an implementation is used by one driver thread at a time, except that wait_interrupt()
// may block on one thread while nothing else is called (the usual "interrupt thread" pattern needs the
// driver to serialise its own calls).
#pragma once

#include <cstdint>

#include "canopy/base/result.h"
#include "canopy/transport/virtio_ring.h"

namespace canopy::guest {

// Interrupt causes (the virtio-mmio InterruptStatus bits, §4.2.2).
inline constexpr uint32_t kInterruptUsedBuffer = 1;
inline constexpr uint32_t kInterruptConfigChange = 2;

class VirtioTransport {
 public:
  virtual ~VirtioTransport() = default;

  // Transport-level identity check (for MMIO: magic, version 2, a non-zero device id).
  virtual Status probe() = 0;
  virtual uint32_t device_id() = 0;

  // Device status (§2.1). Writing 0 resets the device; the driver then waits for a 0 read back.
  virtual uint8_t read_status() = 0;
  virtual void write_status(uint8_t status) = 0;

  // Feature bits (§2.2), all 64 of them.
  virtual uint64_t read_device_features() = 0;
  virtual void write_driver_features(uint64_t features) = 0;

  // Device-specific configuration space (§2.5), as raw bytes; no generation check (VirtioDriver
  // loops on config_generation() for a consistent snapshot).
  virtual uint32_t config_generation() = 0;
  virtual Status read_config(uint32_t offset, void* dst, uint32_t len) = 0;
  virtual Status write_config(uint32_t offset, const void* src, uint32_t len) = 0;

  // Queues: the device's maximum size (0 = no such queue), size and ring addresses, enable.
  virtual uint16_t queue_max_size(uint16_t q) = 0;
  virtual Status set_queue(uint16_t q, uint16_t size, const transport::VringAddrs& addrs) = 0;
  virtual Status set_queue_ready(uint16_t q, bool ready) = 0;
  virtual bool queue_ready(uint16_t q) = 0;
  // Available buffer notification (a "kick").
  virtual void notify_queue(uint16_t q) = 0;

  // Reads and acknowledges the pending interrupt causes (kInterrupt* bits); 0 when there are none.
  virtual uint32_t poll_interrupt() = 0;
  // Waits up to timeout_ms (negative: no limit) for an interrupt, acknowledges it and returns its
  // causes; kTimeout when none came.
  virtual Result<uint32_t> wait_interrupt(int timeout_ms) = 0;
};

}  // namespace canopy::guest
