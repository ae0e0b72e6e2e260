#include "canopy/transport/virtio_mmio.h"

#include <algorithm>
#include <cstring>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"

namespace canopy::transport {

namespace {

constexpr uint8_t kDriverStatusBits =
    kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk | kStatusFailed;

uint32_t lo32(uint64_t v) { return uint32_t(v); }
uint32_t hi32(uint64_t v) { return uint32_t(v >> 32); }
void set_lo32(uint64_t& v, uint32_t x) { v = (v & 0xffffffff00000000ull) | x; }
void set_hi32(uint64_t& v, uint32_t x) { v = (v & 0xffffffffull) | (uint64_t(x) << 32); }

}  // namespace

VirtioMmio::VirtioMmio(MmioDevice& device, IrqLine irq) : dev_(device), irq_(std::move(irq)) {
  std::lock_guard lock(mu_);
  load_device_limits();
}

void VirtioMmio::load_device_limits() {
  device_features_ = dev_.device_features();
  config_size_ = dev_.config_size();
  queue_max_.resize(dev_.num_queues());
  for (uint32_t q = 0; q < queue_max_.size(); ++q)
    queue_max_[q] = std::min(dev_.queue_max_size(uint16_t(q)), kMaxQueueSize);
  queues_.assign(queue_max_.size(), Queue{});
}

void VirtioMmio::set_irq_line(IrqLine irq) {
  std::lock_guard lock(mu_);
  irq_ = std::move(irq);
}

void VirtioMmio::bad(const char* what, uint64_t offset) {
  ++bad_accesses_;
  CANOPY_WARN_RL("virtio-mmio: %s (offset 0x%llx) ignored", what, static_cast<unsigned long long>(offset));
}

VirtioMmio::Queue* VirtioMmio::selected_queue() {
  if (queue_sel_ >= queues_.size() || queue_max_[queue_sel_] == 0) return nullptr;
  return &queues_[queue_sel_];
}

// ---------------------------------------------------------------------------------------------
// Access entry points

uint64_t VirtioMmio::read(uint64_t offset, uint32_t size) {
  std::lock_guard lock(mu_);
  if (offset >= mmio::kConfig)
    return read_config(offset - mmio::kConfig > UINT32_MAX ? UINT32_MAX : uint32_t(offset - mmio::kConfig), size);
  // §4.2.2.2: the driver MUST only use 32-bit wide and aligned reads and writes for the registers.
  if (size != 4 || (offset & 3)) {
    bad("register read not 32-bit wide and aligned", offset);
    return 0;
  }
  return read_reg(uint32_t(offset));
}

void VirtioMmio::write(uint64_t offset, uint32_t size, uint64_t value) {
  std::lock_guard lock(mu_);
  if (offset >= mmio::kConfig) {
    write_config(offset - mmio::kConfig > UINT32_MAX ? UINT32_MAX : uint32_t(offset - mmio::kConfig), size, value);
    return;
  }
  if (size != 4 || (offset & 3)) {
    bad("register write not 32-bit wide and aligned", offset);
    return;
  }
  write_reg(uint32_t(offset), uint32_t(value));
}

// ---------------------------------------------------------------------------------------------
// Device-specific configuration space (§4.2.2: 8-bit, 16-bit aligned or 32-bit aligned accesses; we also
// take aligned 64-bit ones).

uint64_t VirtioMmio::read_config(uint32_t offset, uint32_t size) {
  if ((size != 1 && size != 2 && size != 4 && size != 8) || (offset & (size - 1))) {
    bad("config read with a bad width or alignment", uint64_t(mmio::kConfig) + offset);
    return 0;
  }
  if (!range_within(offset, size, config_size_)) {
    bad("config read outside config space", uint64_t(mmio::kConfig) + offset);
    return 0;
  }
  uint8_t buf[8] = {};
  dev_.read_config(offset, buf, size);
  uint64_t v = 0;
  for (uint32_t i = 0; i < size; ++i) v |= uint64_t(buf[i]) << (8 * i);
  return v;
}

void VirtioMmio::write_config(uint32_t offset, uint32_t size, uint64_t value) {
  if ((size != 1 && size != 2 && size != 4 && size != 8) || (offset & (size - 1))) {
    bad("config write with a bad width or alignment", uint64_t(mmio::kConfig) + offset);
    return;
  }
  if (!range_within(offset, size, config_size_)) {
    bad("config write outside config space", uint64_t(mmio::kConfig) + offset);
    return;
  }
  uint8_t buf[8];
  for (uint32_t i = 0; i < size; ++i) buf[i] = uint8_t(value >> (8 * i));
  dev_.write_config(offset, buf, size);
}

// ---------------------------------------------------------------------------------------------
// Registers

uint32_t VirtioMmio::read_reg(uint32_t offset) {
  switch (offset) {
    case mmio::kMagicValue: return mmio::kMagic;
    case mmio::kVersion: return mmio::kVersion2;
    case mmio::kDeviceId: return dev_.device_id();
    case mmio::kVendorId: return dev_.vendor_id();
    case mmio::kDeviceFeatures:
      if (device_features_sel_ == 0) return lo32(device_features_);
      if (device_features_sel_ == 1) return hi32(device_features_);
      return 0;  // feature words beyond 64 bits: none offered
    case mmio::kQueueNumMax:
      // Reading 0 for an unavailable queue is how a driver discovers the queue count: not an error.
      return queue_sel_ < queue_max_.size() ? queue_max_[queue_sel_] : 0;
    case mmio::kQueueReady: {
      Queue* q = selected_queue();
      return q && q->ready ? 1 : 0;
    }
    case mmio::kQueueReset: {
      if (!(status_ & kStatusFeaturesOk) || !(driver_features_ & kVirtioFRingReset)) {
        bad("QueueReset read without VIRTIO_F_RING_RESET", offset);
        return 0;
      }
      Queue* q = selected_queue();
      return q && q->reset_done ? 1 : 0;
    }
    case mmio::kInterruptStatus:
      return interrupt_status_ |
             (external_used_ && (status_ & kStatusDriverOk) ? static_cast<uint32_t>(InterruptKind::kUsedBuffer) : 0u);
    case mmio::kStatus: return status_;
    case mmio::kShmLenLow:
    case mmio::kShmLenHigh: {
      auto r = dev_.shm_region(shm_sel_);
      if (!r) return 0xffffffffu;  // §4.2.2: a non-existent region reads as length -1
      return offset == mmio::kShmLenLow ? lo32(r->len) : hi32(r->len);
    }
    case mmio::kShmBaseLow:
    case mmio::kShmBaseHigh: {
      auto r = dev_.shm_region(shm_sel_);
      if (!r) return 0;
      return offset == mmio::kShmBaseLow ? lo32(r->base) : hi32(r->base);
    }
    case mmio::kConfigGeneration: return config_generation_;

    case mmio::kDeviceFeaturesSel:
    case mmio::kDriverFeatures:
    case mmio::kDriverFeaturesSel:
    case mmio::kQueueSel:
    case mmio::kQueueNum:
    case mmio::kQueueNotify:
    case mmio::kInterruptAck:
    case mmio::kQueueDescLow:
    case mmio::kQueueDescHigh:
    case mmio::kQueueDriverLow:
    case mmio::kQueueDriverHigh:
    case mmio::kQueueDeviceLow:
    case mmio::kQueueDeviceHigh:
    case mmio::kShmSel: bad("read of a write-only register", offset); return 0;
    default: bad("read of an undefined register", offset); return 0;
  }
}

void VirtioMmio::write_reg(uint32_t offset, uint32_t value) {
  switch (offset) {
    case mmio::kMagicValue:
    case mmio::kVersion:
    case mmio::kDeviceId:
    case mmio::kVendorId:
    case mmio::kDeviceFeatures:
    case mmio::kQueueNumMax:
    case mmio::kInterruptStatus:
    case mmio::kShmLenLow:
    case mmio::kShmLenHigh:
    case mmio::kShmBaseLow:
    case mmio::kShmBaseHigh:
    case mmio::kConfigGeneration: bad("write to a read-only register", offset); return;

    case mmio::kDeviceFeaturesSel: device_features_sel_ = value; return;
    case mmio::kDriverFeaturesSel: driver_features_sel_ = value; return;
    case mmio::kDriverFeatures:
      // §3.1.1: features are fixed once FEATURES_OK is set.
      if (status_ & kStatusFeaturesOk) {
        bad("DriverFeatures written after FEATURES_OK", offset);
        return;
      }
      if (driver_features_sel_ == 0) set_lo32(driver_features_, value);
      else if (driver_features_sel_ == 1) set_hi32(driver_features_, value);
      else if (value != 0) bad("DriverFeatures word beyond 64 bits", offset);
      return;

    case mmio::kQueueSel: queue_sel_ = value; return;  // any value; queue registers then check it
    case mmio::kQueueNum: {
      Queue* q = selected_queue();
      if (!q) return bad("QueueNum with no available queue selected", offset);
      if (q->ready) return bad("QueueNum written while QueueReady=1", offset);
      // §2.7: a split ring's size is a power of two; §4.2.2: at most QueueNumMax.
      if (value == 0 || value > queue_max_[queue_sel_] || !is_power_of_two(value))
        return bad("QueueNum not a power of two in [1, QueueNumMax]", offset);
      q->num = uint16_t(value);
      return;
    }
    case mmio::kQueueReady: write_queue_ready(value); return;
    case mmio::kQueueNotify: {
      const bool with_data = (status_ & kStatusFeaturesOk) && (driver_features_ & kVirtioFNotificationData);
      const uint32_t index = with_data ? (value & 0xffff) : value;
      if (index >= queues_.size() || queue_max_[index] == 0)
        return bad("QueueNotify for a queue that does not exist", offset);
      Queue& q = queues_[index];
      if (!q.ready) return bad("QueueNotify for a queue that is not ready", offset);
      // §3.1.1: the device does not consume buffers before DRIVER_OK; deliver the kick then.
      if (!(status_ & kStatusDriverOk)) {
        q.notify_pending = true;
        q.notify_data = value;
        return;
      }
      dev_.on_queue_notify(uint16_t(index), value);
      return;
    }
    case mmio::kInterruptAck: {
      const uint32_t before = interrupt_status_;
      interrupt_status_ &= ~value;
      if (before != 0 && interrupt_status_ == 0 && irq_) irq_(false);
      return;
    }
    case mmio::kStatus: write_status(value); return;

    case mmio::kQueueDescLow:
    case mmio::kQueueDescHigh:
    case mmio::kQueueDriverLow:
    case mmio::kQueueDriverHigh:
    case mmio::kQueueDeviceLow:
    case mmio::kQueueDeviceHigh: {
      Queue* q = selected_queue();
      if (!q) return bad("queue address with no available queue selected", offset);
      if (q->ready) return bad("queue address written while QueueReady=1", offset);
      uint64_t& a = offset < mmio::kQueueDriverLow ? q->desc : offset < mmio::kQueueDeviceLow ? q->driver : q->device;
      if (offset & 4) set_hi32(a, value);
      else set_lo32(a, value);
      return;
    }
    case mmio::kShmSel: shm_sel_ = value; return;
    case mmio::kQueueReset: {
      if (!(status_ & kStatusFeaturesOk) || !(driver_features_ & kVirtioFRingReset))
        return bad("QueueReset written without VIRTIO_F_RING_RESET", offset);
      Queue* q = selected_queue();
      if (!q) return bad("QueueReset with no available queue selected", offset);
      if (value != 1) return bad("QueueReset value other than 1", offset);
      const bool was_ready = q->ready;
      *q = Queue{};
      q->reset_done = true;
      if (was_ready) (void)dev_.on_queue_ready(uint16_t(queue_sel_), MmioQueueConfig{});
      return;
    }
    default: bad("write to an undefined register", offset); return;
  }
}

void VirtioMmio::write_queue_ready(uint32_t value) {
  const uint64_t offset = mmio::kQueueReady;
  Queue* q = selected_queue();
  if (!q) return bad("QueueReady with no available queue selected", offset);
  const uint16_t index = uint16_t(queue_sel_);
  if (value == 0) {
    if (!q->ready) return;
    q->ready = false;
    q->notify_pending = false;
    (void)dev_.on_queue_ready(index, MmioQueueConfig{q->num, VringAddrs{q->desc, q->driver, q->device}, false});
    return;
  }
  if (value != 1) return bad("QueueReady value other than 0 or 1", offset);
  if (q->ready) return;
  // §3.1.1: queues are set up after FEATURES_OK, before DRIVER_OK; not on a failed device.
  if (!(status_ & kStatusFeaturesOk) || (status_ & (kStatusFailed | kStatusDeviceNeedsReset)))
    return bad("QueueReady before FEATURES_OK or on a failed device", offset);
  if (q->num == 0) return bad("QueueReady with QueueNum unset", offset);
  // §2.7: descriptor table 16-, driver area 2-, device area 4-byte aligned.
  if ((q->desc & 15) || (q->driver & 1) || (q->device & 3)) return bad("QueueReady with misaligned rings", offset);
  MmioQueueConfig cfg{q->num, VringAddrs{q->desc, q->driver, q->device}, true};
  Status s = dev_.on_queue_ready(index, cfg);
  if (!s.ok()) return bad("QueueReady refused by the device", offset);
  q->ready = true;
  q->reset_done = false;
}

// §2.1.2 / §3.1.1: the driver sets status bits one step at a time and never clears one except by
// writing 0 (reset). DEVICE_NEEDS_RESET belongs to the device: the driver's copy of it is ignored.
void VirtioMmio::write_status(uint32_t value) {
  const uint64_t offset = mmio::kStatus;
  if (value > 0xff) return bad("Status value wider than 8 bits", offset);
  if (value == 0) {
    reset_locked();
    return;
  }
  const uint8_t old = status_;
  const uint8_t requested = uint8_t(value) & uint8_t(~kStatusDeviceNeedsReset);
  if (requested & ~kDriverStatusBits) return bad("Status with undefined bits", offset);
  if ((old & kDriverStatusBits) & ~requested) return bad("Status clears bits without a reset", offset);
  const uint8_t added = requested & ~old;
  if (added == 0) return;
  if ((old & kStatusFailed) && (added & ~kStatusFailed))
    return bad("Status progress after FAILED (reset first)", offset);

  uint8_t next = old;
  if (added & kStatusAcknowledge) next |= kStatusAcknowledge;
  if (added & kStatusDriver) {
    if (next & kStatusAcknowledge) next |= kStatusDriver;
    else bad("DRIVER before ACKNOWLEDGE", offset);
  }
  if (added & kStatusFeaturesOk) {
    if (!(next & kStatusDriver)) bad("FEATURES_OK before DRIVER", offset);
    else if (driver_features_ & ~device_features_) bad("FEATURES_OK with features the device does not offer", offset);
    else if (!(driver_features_ & kVirtioFVersion1)) bad("FEATURES_OK without VIRTIO_F_VERSION_1", offset);
    else if (!dev_.on_features_ok(driver_features_)) bad("FEATURES_OK refused by the device", offset);
    else next |= kStatusFeaturesOk;
  }
  if (added & kStatusDriverOk) {
    if (next & kStatusFeaturesOk) next |= kStatusDriverOk;
    else bad("DRIVER_OK before FEATURES_OK", offset);
  }
  if (added & kStatusFailed) next |= kStatusFailed;
  if (next == old) return;
  status_ = next;
  dev_.on_status(next);

  if ((next & kStatusDriverOk) && !(old & kStatusDriverOk)) {
    // Interrupts latched before DRIVER_OK reach the line now; kicks held back are delivered.
    if (interrupt_status_ && irq_) irq_(true);
    for (uint32_t i = 0; i < queues_.size(); ++i) {
      if (queues_[i].ready && queues_[i].notify_pending) {
        queues_[i].notify_pending = false;
        dev_.on_queue_notify(uint16_t(i), queues_[i].notify_data);
      }
    }
  }
}

void VirtioMmio::reset_locked() {
  status_ = 0;
  device_features_sel_ = driver_features_sel_ = 0;
  driver_features_ = 0;
  queue_sel_ = 0;
  shm_sel_ = 0;
  for (auto& q : queues_) q = Queue{};
  const bool was_asserted = interrupt_status_ != 0;
  interrupt_status_ = 0;
  if (was_asserted && irq_) irq_(false);
  dev_.on_reset();
  // A device may only change what it offers across a reset.
  load_device_limits();
}

// ---------------------------------------------------------------------------------------------
// Device side

void VirtioMmio::raise_locked(uint32_t bits) {
  interrupt_status_ |= bits;
  // §3.1.1: no notifications before DRIVER_OK; the bit stays latched and is signalled at DRIVER_OK.
  if ((status_ & kStatusDriverOk) && irq_) irq_(true);
}

void VirtioMmio::raise_interrupt(InterruptKind kind) {
  std::lock_guard lock(mu_);
  raise_locked(static_cast<uint32_t>(kind));
}

void VirtioMmio::config_changed() {
  std::lock_guard lock(mu_);
  ++config_generation_;
  raise_locked(static_cast<uint32_t>(InterruptKind::kConfigChange));
}

void VirtioMmio::set_needs_reset() {
  std::lock_guard lock(mu_);
  if (status_ & kStatusDeviceNeedsReset) return;
  status_ |= kStatusDeviceNeedsReset;
  // §2.1.2: after DRIVER_OK the device sends a configuration change notification.
  if (status_ & kStatusDriverOk) raise_locked(static_cast<uint32_t>(InterruptKind::kConfigChange));
}

void VirtioMmio::set_used_buffer_notifications_external(bool external) {
  std::lock_guard lock(mu_);
  external_used_ = external;
}

uint8_t VirtioMmio::status() const {
  std::lock_guard lock(mu_);
  return status_;
}

uint64_t VirtioMmio::driver_features() const {
  std::lock_guard lock(mu_);
  return driver_features_;
}

uint32_t VirtioMmio::interrupt_status() const {
  std::lock_guard lock(mu_);
  return interrupt_status_;
}

uint32_t VirtioMmio::config_generation() const {
  std::lock_guard lock(mu_);
  return config_generation_;
}

MmioQueueConfig VirtioMmio::queue(uint16_t q) const {
  std::lock_guard lock(mu_);
  if (q >= queues_.size()) return {};
  const Queue& s = queues_[q];
  return MmioQueueConfig{s.num, VringAddrs{s.desc, s.driver, s.device}, s.ready};
}

uint64_t VirtioMmio::bad_accesses() const {
  std::lock_guard lock(mu_);
  return bad_accesses_;
}

}  // namespace canopy::transport
