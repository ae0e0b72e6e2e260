// virtio-mmio register model, version 2 (virtio 1.2 §4.2.2), for a VMM's MMIO exits and for the
// in-process driver transport of the guest-drivers kit.
//
// The VMM calls read(offset, size) / write(offset, size, value) with the offset inside the device's
// MMIO window. The model keeps the transport registers and calls the device (MmioDevice) for what is
// device specific: features, config space, queue limits and the events (queue ready, notify, status
// change, reset). Every guest access is checked; a bad one (unaligned, wrong width for a 32-bit
// register, undefined offset, read of a write-only or write of a read-only register, queue register
// with an unavailable queue selected, queue set-up written while QueueReady=1, a status change that
// breaks §2.1.2 / §3.1.1) is ignored with a rate-limited log and reads as 0. Nothing aborts.
//
// Threading: every public method takes an internal recursive mutex, so vCPU threads and a device
// thread (raise_interrupt / config_changed / set_needs_reset) may call concurrently. Device callbacks
// and the IRQ line callback run with that mutex held: they may call back into this object on the same
// thread (a device that serves a queue inside on_queue_notify and raises the used-buffer interrupt
// there is fine), but must not block waiting for another thread that calls into it.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/transport/virtio_ring.h"

namespace canopy::transport {

// Register offsets (§4.2.2, table "MMIO Device Register Layout").
namespace mmio {
inline constexpr uint32_t kMagicValue = 0x000;
inline constexpr uint32_t kVersion = 0x004;
inline constexpr uint32_t kDeviceId = 0x008;
inline constexpr uint32_t kVendorId = 0x00c;
inline constexpr uint32_t kDeviceFeatures = 0x010;
inline constexpr uint32_t kDeviceFeaturesSel = 0x014;
inline constexpr uint32_t kDriverFeatures = 0x020;
inline constexpr uint32_t kDriverFeaturesSel = 0x024;
inline constexpr uint32_t kQueueSel = 0x030;
inline constexpr uint32_t kQueueNumMax = 0x034;
inline constexpr uint32_t kQueueNum = 0x038;
inline constexpr uint32_t kQueueReady = 0x044;
inline constexpr uint32_t kQueueNotify = 0x050;
inline constexpr uint32_t kInterruptStatus = 0x060;
inline constexpr uint32_t kInterruptAck = 0x064;
inline constexpr uint32_t kStatus = 0x070;
inline constexpr uint32_t kQueueDescLow = 0x080;
inline constexpr uint32_t kQueueDescHigh = 0x084;
inline constexpr uint32_t kQueueDriverLow = 0x090;
inline constexpr uint32_t kQueueDriverHigh = 0x094;
inline constexpr uint32_t kQueueDeviceLow = 0x0a0;
inline constexpr uint32_t kQueueDeviceHigh = 0x0a4;
inline constexpr uint32_t kShmSel = 0x0ac;
inline constexpr uint32_t kShmLenLow = 0x0b0;
inline constexpr uint32_t kShmLenHigh = 0x0b4;
inline constexpr uint32_t kShmBaseLow = 0x0b8;
inline constexpr uint32_t kShmBaseHigh = 0x0bc;
inline constexpr uint32_t kQueueReset = 0x0c0;
inline constexpr uint32_t kConfigGeneration = 0x0fc;
inline constexpr uint32_t kConfig = 0x100;

inline constexpr uint32_t kMagic = 0x74726976;  // "virt"
inline constexpr uint32_t kVersion2 = 2;
// Size of the MMIO window a VMM should map for a device with `config_size` bytes of config space.
constexpr uint64_t window_size(uint32_t config_size) { return ((kConfig + uint64_t(config_size) + 0xfff) & ~0xfffull); }
}  // namespace mmio

// InterruptStatus bits (§4.2.2).
enum class InterruptKind : uint32_t {
  kUsedBuffer = 1,    // "Used Buffer Notification"
  kConfigChange = 2,  // "Configuration Change Notification"
};

// What the device learns when the driver enables (or resets) a queue.
struct MmioQueueConfig {
  uint16_t size = 0;
  VringAddrs addrs{};
  bool ready = false;
};

// A shared memory region (§2.10) the device exposes through SHMSel.
struct ShmRegion {
  uint64_t base = 0;
  uint64_t len = 0;
};

// The device behind the register file. Callbacks run with the model's mutex held (see above).
class MmioDevice {
 public:
  virtual ~MmioDevice() = default;
  virtual uint32_t device_id() const = 0;
  virtual uint32_t vendor_id() const { return 0; }
  virtual uint64_t device_features() const = 0;

  // Device-specific configuration space; the model only calls these with [offset, offset+len) inside
  // [0, config_size()).
  virtual uint32_t config_size() const { return 0; }
  virtual void read_config(uint32_t offset, void* dst, uint32_t len) = 0;
  virtual void write_config(uint32_t offset, const void* src, uint32_t len) = 0;

  virtual uint16_t num_queues() const = 0;
  // QueueNumMax of queue q (< num_queues()); 0 = not available. Capped at 32768 by the model.
  virtual uint16_t queue_max_size(uint16_t q) const = 0;
  // Shared memory region `id`, if the device has one.
  virtual std::optional<ShmRegion> shm_region(uint32_t /*id*/) const { return std::nullopt; }

  // The driver set FEATURES_OK with `features` (already checked to be a subset of device_features()
  // with VERSION_1). Return false to refuse the combination: FEATURES_OK then stays clear.
  virtual bool on_features_ok(uint64_t /*features*/) { return true; }
  // QueueReady was written: cfg.ready true with the queue's size and addresses (aligned, size a power
  // of two <= QueueNumMax), or false when the queue is stopped (QueueReady=0 or QueueReset). Returning
  // an error for ready=true keeps QueueReady at 0.
  virtual Status on_queue_ready(uint16_t q, const MmioQueueConfig& cfg) = 0;
  // QueueNotify for a ready queue (the low 16 bits with VIRTIO_F_NOTIFICATION_DATA; `data` is then the
  // whole value, otherwise equal to q).
  virtual void on_queue_notify(uint16_t q, uint32_t data) = 0;
  // The status register changed to `status` (after the model's checks), other than by reset.
  virtual void on_status(uint8_t /*status*/) {}
  // The driver wrote 0 to Status: forget queues, features and interrupts (§2.4).
  virtual void on_reset() = 0;
};

class VirtioMmio {
 public:
  // The interrupt line: called with true on every raised interrupt (edge-style irqfd users inject each
  // one) and with false when InterruptStatus drops to 0 (ACK or reset), for level-triggered lines.
  using IrqLine = std::function<void(bool asserted)>;

  explicit VirtioMmio(MmioDevice& device, IrqLine irq = {});
  VirtioMmio(const VirtioMmio&) = delete;
  VirtioMmio& operator=(const VirtioMmio&) = delete;

  void set_irq_line(IrqLine irq);

  // An MMIO access at `offset` in the device window, `size` bytes (1, 2, 4 or 8). Reads return the
  // value zero-extended; a bad access returns 0 (and a write is ignored).
  uint64_t read(uint64_t offset, uint32_t size);
  void write(uint64_t offset, uint32_t size, uint64_t value);

  // Device side: sets the InterruptStatus bit and asserts the line.
  void raise_interrupt(InterruptKind kind);
  // Device side: the config space changed; bumps ConfigGeneration and raises the config interrupt.
  void config_changed();
  // Device side: sets DEVICE_NEEDS_RESET (§2.1.2) and, after DRIVER_OK, raises the config interrupt.
  void set_needs_reset();
  // For a VMM whose queues' used-buffer notifications reach the guest's interrupt line without passing
  // through this model (a back-end's call eventfd registered as a KVM irqfd): from DRIVER_OK on,
  // InterruptStatus reads with the used-buffer bit set, as §4.2.2.1 asks before each such notification,
  // and an InterruptACK of it changes nothing. The driver then looks at its queues on every interrupt;
  // one with nothing new is a spurious used-buffer interrupt, which drivers handle.
  void set_used_buffer_notifications_external(bool external);

  // Introspection for VMMs and tests.
  uint8_t status() const;
  uint64_t driver_features() const;
  uint32_t interrupt_status() const;
  uint32_t config_generation() const;
  uint16_t num_queues() const { return uint16_t(queues_.size()); }
  MmioQueueConfig queue(uint16_t q) const;  // a default (not ready) config for an unknown queue
  uint64_t bad_accesses() const;

 private:
  struct Queue {
    uint16_t num = 0;
    bool ready = false;
    bool reset_done = false;      // QueueReset reads 1 after a queue reset until QueueReady=1
    bool notify_pending = false;  // a kick before DRIVER_OK, delivered at DRIVER_OK
    uint32_t notify_data = 0;
    uint64_t desc = 0, driver = 0, device = 0;
  };
  uint32_t read_reg(uint32_t offset);
  void write_reg(uint32_t offset, uint32_t value);
  uint64_t read_config(uint32_t offset, uint32_t size);
  void write_config(uint32_t offset, uint32_t size, uint64_t value);
  void write_status(uint32_t value);
  void write_queue_ready(uint32_t value);
  void reset_locked();
  void load_device_limits();  // features, config size and queue maxima from the device
  void raise_locked(uint32_t bits);
  Queue* selected_queue();
  void bad(const char* what, uint64_t offset);

  MmioDevice& dev_;
  IrqLine irq_;
  mutable std::recursive_mutex mu_;
  std::vector<Queue> queues_;
  std::vector<uint16_t> queue_max_;
  uint64_t device_features_ = 0;
  uint32_t config_size_ = 0;
  uint32_t device_features_sel_ = 0;
  uint32_t driver_features_sel_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t queue_sel_ = 0;
  uint32_t shm_sel_ = 0;
  uint32_t interrupt_status_ = 0;
  bool external_used_ = false;
  uint8_t status_ = 0;
  uint32_t config_generation_ = 0;
  uint64_t bad_accesses_ = 0;
};

}  // namespace canopy::transport
