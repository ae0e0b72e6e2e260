// Split virtqueue wire layout (virtio 1.2 §2.7) and common virtio constants.
#pragma once

#include <cstddef>
#include <cstdint>

#include "canopy/base/le.h"

namespace canopy::transport {

// Descriptor flags (§2.7.5).
inline constexpr uint16_t kVirtqDescFNext = 1;
inline constexpr uint16_t kVirtqDescFWrite = 2;
inline constexpr uint16_t kVirtqDescFIndirect = 4;
// Available ring flags (§2.7.6) and used ring flags (§2.7.8).
inline constexpr uint16_t kVirtqAvailFNoInterrupt = 1;
inline constexpr uint16_t kVirtqUsedFNoNotify = 1;

// Feature bits (§6).
inline constexpr uint64_t kVirtioFIndirectDesc = 1ull << 28;
inline constexpr uint64_t kVirtioFEventIdx = 1ull << 29;
inline constexpr uint64_t kVirtioFVersion1 = 1ull << 32;
inline constexpr uint64_t kVirtioFAccessPlatform = 1ull << 33;
inline constexpr uint64_t kVirtioFRingPacked = 1ull << 34;
inline constexpr uint64_t kVirtioFInOrder = 1ull << 35;
inline constexpr uint64_t kVirtioFNotificationData = 1ull << 38;
inline constexpr uint64_t kVirtioFRingReset = 1ull << 40;
inline constexpr uint64_t kVirtioFNotifyOnEmpty = 1ull << 24;
// vhost-user: VHOST_USER_F_PROTOCOL_FEATURES.
inline constexpr uint64_t kVhostUserFProtocolFeatures = 1ull << 30;

// Device status bits (§2.1).
inline constexpr uint8_t kStatusAcknowledge = 1;
inline constexpr uint8_t kStatusDriver = 2;
inline constexpr uint8_t kStatusDriverOk = 4;
inline constexpr uint8_t kStatusFeaturesOk = 8;
inline constexpr uint8_t kStatusDeviceNeedsReset = 64;
inline constexpr uint8_t kStatusFailed = 128;

// Largest queue size allowed by the split ring (§2.7).
inline constexpr uint16_t kMaxQueueSize = 32768;

struct VirtqDesc {
  le64 addr;
  le32 len;
  le16 flags;
  le16 next;
};
static_assert(sizeof(VirtqDesc) == 16);
static_assert(offsetof(VirtqDesc, len) == 8 && offsetof(VirtqDesc, flags) == 12 && offsetof(VirtqDesc, next) == 14);

struct VirtqUsedElem {
  le32 id;
  le32 len;
};
static_assert(sizeof(VirtqUsedElem) == 8);

// Ring sizes in bytes for a queue of `n` entries, with the event-idx trailer (always reserved).
constexpr uint64_t desc_table_bytes(uint32_t n) { return 16ull * n; }
constexpr uint64_t avail_ring_bytes(uint32_t n) { return 6ull + 2ull * n; }  // flags, idx, ring[n], used_event
constexpr uint64_t used_ring_bytes(uint32_t n) { return 6ull + 8ull * n; }   // flags, idx, ring[n], avail_event

// vring_need_event (§2.7.10): whether an event index `event` lies in (old, new].
constexpr bool vring_need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return uint16_t(new_idx - event - 1) < uint16_t(new_idx - old_idx);
}

constexpr bool is_power_of_two(uint32_t n) { return n && !(n & (n - 1)); }

// Guest physical addresses of a split ring's three parts.
struct VringAddrs {
  uint64_t desc = 0;
  uint64_t avail = 0;
  uint64_t used = 0;
};

}  // namespace canopy::transport
