#include "canopy/guest/mmio_driver_transport.h"

#include <chrono>

#include "canopy/base/checked.h"

namespace canopy::guest {

using namespace canopy::transport;

MmioDriverTransport::MmioDriverTransport(VirtioMmio& mmio) : mmio_(mmio) {
  mmio_.set_irq_line([this](bool asserted) { on_irq(asserted); });
}

MmioDriverTransport::~MmioDriverTransport() { mmio_.set_irq_line({}); }

void MmioDriverTransport::on_irq(bool asserted) {
  if (!asserted) return;
  {
    std::lock_guard lock(mu_);
    ++irq_count_;
  }
  cv_.notify_all();
}

uint64_t MmioDriverTransport::interrupts_raised() const {
  std::lock_guard lock(mu_);
  return irq_count_;
}

// Never called with mu_ held: the model calls on_irq() under its own lock.
uint32_t MmioDriverTransport::rd(uint32_t offset) { return uint32_t(mmio_.read(offset, 4)); }
void MmioDriverTransport::wr(uint32_t offset, uint32_t value) { mmio_.write(offset, 4, value); }

Status MmioDriverTransport::probe() {
  // §4.2.3.1.1: check MagicValue and Version; DeviceID 0 is a placeholder without a device.
  if (rd(mmio::kMagicValue) != mmio::kMagic) return make_error(Errc::kUnsupported, "mmio: bad magic value");
  if (rd(mmio::kVersion) != mmio::kVersion2)
    return make_error(Errc::kUnsupported, "mmio: version is not 2 (legacy devices are not supported)");
  if (rd(mmio::kDeviceId) == 0) return make_error(Errc::kUnsupported, "mmio: no device (DeviceID 0)");
  return {};
}

uint32_t MmioDriverTransport::device_id() { return rd(mmio::kDeviceId); }
uint8_t MmioDriverTransport::read_status() { return uint8_t(rd(mmio::kStatus)); }
void MmioDriverTransport::write_status(uint8_t status) { wr(mmio::kStatus, status); }

uint64_t MmioDriverTransport::read_device_features() {
  wr(mmio::kDeviceFeaturesSel, 0);
  uint64_t lo = rd(mmio::kDeviceFeatures);
  wr(mmio::kDeviceFeaturesSel, 1);
  uint64_t hi = rd(mmio::kDeviceFeatures);
  return lo | (hi << 32);
}

void MmioDriverTransport::write_driver_features(uint64_t features) {
  wr(mmio::kDriverFeaturesSel, 0);
  wr(mmio::kDriverFeatures, uint32_t(features));
  wr(mmio::kDriverFeaturesSel, 1);
  wr(mmio::kDriverFeatures, uint32_t(features >> 32));
}

uint32_t MmioDriverTransport::config_generation() { return rd(mmio::kConfigGeneration); }

namespace {
// The widest access (4, 2 or 1 bytes) that is aligned at `offset` and fits in `left` (§4.2.2.2).
uint32_t access_width(uint32_t offset, uint32_t left) {
  if (left >= 4 && !(offset & 3)) return 4;
  if (left >= 2 && !(offset & 1)) return 2;
  return 1;
}
}  // namespace

Status MmioDriverTransport::read_config(uint32_t offset, void* dst, uint32_t len) {
  if (!checked_add(offset, len)) return make_error(Errc::kOverflow, "mmio: config range overflows");
  auto* out = static_cast<uint8_t*>(dst);
  for (uint32_t done = 0; done < len;) {
    const uint32_t w = access_width(offset + done, len - done);
    const uint64_t v = mmio_.read(uint64_t(mmio::kConfig) + offset + done, w);
    for (uint32_t i = 0; i < w; ++i) out[done + i] = uint8_t(v >> (8 * i));
    done += w;
  }
  return {};
}

Status MmioDriverTransport::write_config(uint32_t offset, const void* src, uint32_t len) {
  if (!checked_add(offset, len)) return make_error(Errc::kOverflow, "mmio: config range overflows");
  const auto* in = static_cast<const uint8_t*>(src);
  for (uint32_t done = 0; done < len;) {
    const uint32_t w = access_width(offset + done, len - done);
    uint64_t v = 0;
    for (uint32_t i = 0; i < w; ++i) v |= uint64_t(in[done + i]) << (8 * i);
    mmio_.write(uint64_t(mmio::kConfig) + offset + done, w, v);
    done += w;
  }
  return {};
}

uint16_t MmioDriverTransport::queue_max_size(uint16_t q) {
  wr(mmio::kQueueSel, q);
  const uint32_t max = rd(mmio::kQueueNumMax);
  return uint16_t(max > kMaxQueueSize ? kMaxQueueSize : max);
}

Status MmioDriverTransport::set_queue(uint16_t q, uint16_t size, const VringAddrs& addrs) {
  // §4.2.3.2: select, check it is not in use, check the maximum, then size and ring addresses.
  wr(mmio::kQueueSel, q);
  if (rd(mmio::kQueueReady) != 0) return make_error(Errc::kState, "mmio: queue already in use");
  const uint32_t max = rd(mmio::kQueueNumMax);
  if (max == 0) return make_error(Errc::kUnsupported, "mmio: queue not available");
  if (size == 0 || size > max || !is_power_of_two(size))
    return make_error(Errc::kInvalidArgument, "mmio: queue size not a power of two <= QueueNumMax");
  wr(mmio::kQueueNum, size);
  wr(mmio::kQueueDescLow, uint32_t(addrs.desc));
  wr(mmio::kQueueDescHigh, uint32_t(addrs.desc >> 32));
  wr(mmio::kQueueDriverLow, uint32_t(addrs.avail));
  wr(mmio::kQueueDriverHigh, uint32_t(addrs.avail >> 32));
  wr(mmio::kQueueDeviceLow, uint32_t(addrs.used));
  wr(mmio::kQueueDeviceHigh, uint32_t(addrs.used >> 32));
  return {};
}

Status MmioDriverTransport::set_queue_ready(uint16_t q, bool ready) {
  wr(mmio::kQueueSel, q);
  wr(mmio::kQueueReady, ready ? 1 : 0);
  if ((rd(mmio::kQueueReady) != 0) != ready)
    return make_error(Errc::kProtocol, ready ? "mmio: device refused to enable the queue" : "mmio: queue stayed ready");
  return {};
}

bool MmioDriverTransport::queue_ready(uint16_t q) {
  wr(mmio::kQueueSel, q);
  return rd(mmio::kQueueReady) != 0;
}

void MmioDriverTransport::notify_queue(uint16_t q) { wr(mmio::kQueueNotify, q); }

uint32_t MmioDriverTransport::poll_interrupt() {
  const uint32_t bits = rd(mmio::kInterruptStatus);
  if (bits) wr(mmio::kInterruptAck, bits);
  return bits;
}

Result<uint32_t> MmioDriverTransport::wait_interrupt(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms < 0 ? 0 : timeout_ms);
  for (;;) {
    uint64_t seen;
    {
      std::lock_guard lock(mu_);
      seen = irq_count_;
    }
    // Check the register first: an interrupt raised before we started waiting is still latched there.
    if (uint32_t bits = poll_interrupt()) return bits;
    std::unique_lock lock(mu_);
    auto raised = [&] { return irq_count_ != seen; };
    if (timeout_ms < 0) {
      cv_.wait(lock, raised);
    } else if (!cv_.wait_until(lock, deadline, raised)) {
      lock.unlock();
      if (uint32_t bits = poll_interrupt()) return bits;
      return make_error(Errc::kTimeout, "mmio: no interrupt before the deadline");
    }
  }
}

}  // namespace canopy::guest
