#include "canopy/guest/virtio_driver.h"

#include <chrono>
#include <thread>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"

namespace canopy::guest {

using namespace canopy::transport;

namespace {

uint16_t floor_pow2(uint16_t v) {
  uint16_t p = 1;
  while (p <= v / 2) p = uint16_t(p * 2);
  return p;
}

// §2.4.2: after writing 0 the driver waits for status to read back 0. Polls a few times, then sleeps.
constexpr int kResetPolls = 1000;

}  // namespace

Error VirtioDriver::fail(Error e) {
  // §3.1.1: on an unrecoverable error the driver sets FAILED.
  t_.write_status(uint8_t(t_.read_status() | kStatusFailed));
  for (auto& q : queues_) q.reset();
  queues_.clear();
  initialised_ = false;
  CANOPY_WARN_RL("virtio driver: device %u init failed: %s (%s)", t_.device_id(), e.what, errc_name(e.code));
  return e;
}

Status VirtioDriver::reset_device() {
  t_.write_status(0);
  for (int i = 0; i < kResetPolls; ++i) {
    if (t_.read_status() == 0) return {};
    if (i >= 10) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return make_error(Errc::kTimeout, "virtio driver: device did not complete reset");
}

Status VirtioDriver::reset() {
  for (auto& q : queues_) q.reset();
  queues_.clear();
  initialised_ = false;
  features_ = 0;
  area_used_ = 0;
  return reset_device();
}

Status VirtioDriver::init(const DriverOptions& o) {
  if (o.num_queues != 0 && o.max_queue_size == 0)
    return make_error(Errc::kInvalidArgument, "virtio driver: max_queue_size is 0");
  CANOPY_TRY(t_.probe());
  if (o.device_id != 0 && t_.device_id() != o.device_id)
    return make_error(Errc::kUnsupported, "virtio driver: unexpected device id");
  // Step 1.
  CANOPY_TRY(reset());

  // Steps 2-3: the guest noticed the device and knows how to drive it.
  uint8_t status = kStatusAcknowledge;
  t_.write_status(status);
  status |= kStatusDriver;
  t_.write_status(status);

  // Steps 4-5: negotiate.
  const uint64_t offered = t_.read_device_features();
  if (!(offered & kVirtioFVersion1))
    return fail(make_error(Errc::kUnsupported, "virtio driver: device does not offer VIRTIO_F_VERSION_1"));
  features_ = offered & (o.wanted_features | kVirtioFVersion1) & ~kDriverUnsupportedFeatures;
  t_.write_driver_features(features_);

  // Step 6: FEATURES_OK must stick, otherwise the device refused this subset.
  status |= kStatusFeaturesOk;
  t_.write_status(status);
  if (!(t_.read_status() & kStatusFeaturesOk))
    return fail(make_error(Errc::kUnsupported, "virtio driver: device did not accept the features (FEATURES_OK)"));

  // Step 7: queues, then device-specific setup.
  if (Status s = setup_queues(o); !s.ok()) return fail(s.error());
  if (o.device_setup) {
    if (Status s = o.device_setup(*this); !s.ok()) return fail(s.error());
  }

  // Step 8.
  status |= kStatusDriverOk;
  t_.write_status(status);
  const uint8_t now = t_.read_status();
  if (now & kStatusDeviceNeedsReset) return fail(make_error(Errc::kState, "virtio driver: device needs reset"));
  if (!(now & kStatusDriverOk)) return fail(make_error(Errc::kProtocol, "virtio driver: DRIVER_OK did not stick"));
  initialised_ = true;
  return {};
}

Status VirtioDriver::setup_queues(const DriverOptions& o) {
  auto area_end = checked_add(o.ring_area.gpa, o.ring_area.len);
  if (!area_end) return make_error(Errc::kOverflow, "virtio driver: ring area overflows");
  if (o.num_queues != 0 && !mem_.contains(o.ring_area.gpa, o.ring_area.len))
    return make_error(Errc::kOutOfRange, "virtio driver: ring area outside guest memory");
  const bool indirect = (features_ & kVirtioFIndirectDesc) && o.indirect_entries >= 2;

  uint64_t cursor = o.ring_area.gpa;
  queues_.resize(o.num_queues);
  for (uint16_t q = 0; q < o.num_queues; ++q) {
    const uint16_t max = t_.queue_max_size(q);
    if (max == 0) return make_error(Errc::kUnsupported, "virtio driver: device has fewer queues than requested");
    const uint16_t size = floor_pow2(max < o.max_queue_size ? max : o.max_queue_size);

    CANOPY_ASSIGN_OR_RETURN(SplitRingLayout layout, layout_split_ring(size, cursor, *area_end - cursor));
    cursor = layout.end;
    DriverQueue::Config cfg;
    cfg.size = size;
    cfg.addrs = layout.addrs;
    cfg.features = features_;
    if (indirect) {
      // One table per possible head, each of min(indirect_entries, size) descriptors (§2.7.5.3.1).
      const uint64_t entries = o.indirect_entries < size ? o.indirect_entries : size;
      const uint64_t table_start = (cursor + 15) & ~uint64_t(15);
      const uint64_t bytes = uint64_t(size) * entries * sizeof(VirtqDesc);
      if (table_start < cursor || table_start > *area_end || bytes > *area_end - table_start)
        return make_error(Errc::kOutOfRange, "virtio driver: ring area too small for indirect tables");
      cfg.indirect_gpa = table_start;
      cfg.indirect_len = bytes;
      cursor = table_start + bytes;
    }
    CANOPY_TRY(queues_[q].init(&mem_, cfg));
    // §4.2.3.2 order: size and addresses, then QueueReady.
    CANOPY_TRY(t_.set_queue(q, size, layout.addrs));
    CANOPY_TRY(t_.set_queue_ready(q, true));
  }
  area_used_ = cursor - o.ring_area.gpa;
  return {};
}

Result<bool> VirtioDriver::kick(uint16_t q) {
  if (q >= queues_.size()) return make_error(Errc::kInvalidArgument, "virtio driver: no such queue");
  CANOPY_TRY(queues_[q].publish());
  if (!queues_[q].kick_needed()) return false;
  t_.notify_queue(q);
  return true;
}

Status VirtioDriver::read_config(uint32_t offset, void* dst, uint32_t len) {
  // §2.5.1: a read that spans a config change is retried until the generation is stable.
  for (int attempt = 0; attempt < 64; ++attempt) {
    const uint32_t before = t_.config_generation();
    CANOPY_TRY(t_.read_config(offset, dst, len));
    if (t_.config_generation() == before) return {};
  }
  return make_error(Errc::kState, "virtio driver: config space keeps changing");
}

}  // namespace canopy::guest
