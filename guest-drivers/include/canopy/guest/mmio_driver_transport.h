// VirtioTransport over a virtio-mmio register model in the same process: every call becomes the
// 32-bit register reads and writes a guest kernel would do (virtio 1.2 §4.2.3), so a userspace app
// drives a device model exactly as a guest would, and unit tests run a device without a VM.
//
// The transport installs itself as the model's interrupt line (VirtioMmio::set_irq_line) and removes
// itself on destruction; the model must outlive it.
//
// Threading: as VirtioTransport. The interrupt line may be raised from any thread (a device thread);
// wait_interrupt() wakes on it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "canopy/guest/virtio_transport.h"
#include "canopy/transport/virtio_mmio.h"

namespace canopy::guest {

class MmioDriverTransport final : public VirtioTransport {
 public:
  explicit MmioDriverTransport(transport::VirtioMmio& mmio);
  ~MmioDriverTransport() override;
  MmioDriverTransport(const MmioDriverTransport&) = delete;
  MmioDriverTransport& operator=(const MmioDriverTransport&) = delete;

  Status probe() override;
  uint32_t device_id() override;
  uint8_t read_status() override;
  void write_status(uint8_t status) override;
  uint64_t read_device_features() override;
  void write_driver_features(uint64_t features) override;
  uint32_t config_generation() override;
  Status read_config(uint32_t offset, void* dst, uint32_t len) override;
  Status write_config(uint32_t offset, const void* src, uint32_t len) override;
  uint16_t queue_max_size(uint16_t q) override;
  Status set_queue(uint16_t q, uint16_t size, const transport::VringAddrs& addrs) override;
  Status set_queue_ready(uint16_t q, bool ready) override;
  bool queue_ready(uint16_t q) override;
  void notify_queue(uint16_t q) override;
  uint32_t poll_interrupt() override;
  Result<uint32_t> wait_interrupt(int timeout_ms) override;

  // Times the model asserted the interrupt line.
  uint64_t interrupts_raised() const;

 private:
  uint32_t rd(uint32_t offset);
  void wr(uint32_t offset, uint32_t value);
  void on_irq(bool asserted);

  transport::VirtioMmio& mmio_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t irq_count_ = 0;
};

}  // namespace canopy::guest
