// Driver side of a split virtqueue (virtio 1.2 §2.7) over bounds-checked GuestMemory.
//
// The driver owns the descriptor table and the available ring; the device owns the used ring. Every
// ring access goes through GuestMemory (no raw pointers). The driver keeps its own shadow of what it
// put in the descriptor table (free list, chain links, tokens), so it never trusts what a device may
// have scribbled over the table: a buggy or malicious device can only make get_used() return an error
// value (the queue is then broken: kProtocol until init()/reset()).
//
// Ordering: descriptors and avail ring entries are written before the avail idx is published with a
// release store; the used idx is loaded with acquire before reading used elements; a full fence
// separates publishing from reading the device's suppression state (avail_event / NO_NOTIFY) and
// re-enabling interrupts from re-checking the used idx (§2.7.7, §2.7.10).
//
// Threading: a DriverQueue is not internally synchronised. One thread uses it at a time (callers that
// add from one thread and reap from another must serialise the calls themselves). The device side
// may run on another thread or in another process sharing the guest memory.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/transport/guest_memory.h"
#include "canopy/transport/virtio_ring.h"
#include "canopy/transport/virtqueue.h"

namespace canopy::transport {

// Alignment of the split ring parts (§2.7): descriptor table 16, driver (avail) area 2, device
// (used) area 4.
inline constexpr uint64_t kDescTableAlign = 16;
inline constexpr uint64_t kAvailRingAlign = 2;
inline constexpr uint64_t kUsedRingAlign = 4;

// Where the three parts of one split ring lie; `end` is the first byte after the used ring.
struct SplitRingLayout {
  VringAddrs addrs{};
  uint64_t end = 0;
};

// Bytes a split ring of `size` entries needs when it starts 16-byte aligned (event-idx trailers included).
constexpr uint64_t split_ring_bytes(uint16_t size) {
  const uint64_t used =
      (desc_table_bytes(size) + avail_ring_bytes(size) + (kUsedRingAlign - 1)) & ~(kUsedRingAlign - 1);
  return used + used_ring_bytes(size);
}

// Lays a ring of `size` entries (a power of two in [1, 32768]) out at the first 16-byte aligned address
// of [base, base+len): descriptor table, then avail ring, then used ring (4-aligned). Fails with
// kInvalidArgument for a bad size, kOutOfRange when it does not fit and kOverflow on address overflow.
Result<SplitRingLayout> layout_split_ring(uint16_t size, uint64_t base, uint64_t len);

// A buffer the device has finished with.
struct UsedBuffer {
  uint64_t token = 0;  // what add() was given
  uint32_t len = 0;    // bytes the device wrote (capped at the chain's writable total)
  void* ptr() const {
    return reinterpret_cast<void*>(static_cast<uintptr_t>(token));  // NOLINT(performance-no-int-to-ptr)
  }
};

class DriverQueue {
 public:
  struct Config {
    uint16_t size = 0;      // a power of two in [1, 32768]
    VringAddrs addrs{};     // aligned 16 / 2 / 4, inside guest memory
    uint64_t features = 0;  // negotiated features: EVENT_IDX and INDIRECT_DESC matter here
    // Area for indirect descriptor tables, used only when VIRTIO_F_INDIRECT_DESC is negotiated. It is
    // cut into `size` slots of equal size (a multiple of 16 bytes), one per possible head; a chain of
    // n > 1 segments goes indirect when n fits a slot. len 0 = no indirect tables.
    uint64_t indirect_gpa = 0;
    uint64_t indirect_len = 0;
  };

  DriverQueue() = default;
  DriverQueue(const DriverQueue&) = delete;
  DriverQueue& operator=(const DriverQueue&) = delete;
  DriverQueue(DriverQueue&&) noexcept = default;
  DriverQueue& operator=(DriverQueue&&) noexcept = default;

  // Validates the config, zeroes the three ring parts in guest memory and builds the free list.
  // `mem` must outlive the queue (or the next reset()).
  Status init(GuestMemory* mem, const Config& cfg);
  // Forgets everything (tokens of buffers in flight are dropped: call detach_unused() first to get them).
  void reset();
  bool ready() const { return mem_ != nullptr; }

  // Puts a chain of `readable` then `writable` segments on the ring (not yet visible to the device:
  // see publish()). Returns the head descriptor index. Errors: kState (not initialised), kProtocol
  // (broken), kInvalidArgument (no segments, or a zero-length segment), kOutOfRange (a segment outside
  // guest memory), kOverflow (total over 32 bits), kLimit (not enough free descriptors).
  Result<uint16_t> add(std::span<const Segment> readable, std::span<const Segment> writable, uint64_t token);
  // A pointer token (UsedBuffer::ptr() gives it back). A template so that a literal 0 stays a uint64_t token.
  template <typename T>
  Result<uint16_t> add(std::span<const Segment> readable, std::span<const Segment> writable, T* token) {
    return add(readable, writable, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(token)));
  }
  // Braced lists: q.add({{gpa, 16}}, {{gpa2, 64}}, token).
  Result<uint16_t> add(std::initializer_list<Segment> readable, std::initializer_list<Segment> writable,
                       uint64_t token) {
    return add(std::span<const Segment>(readable.begin(), readable.size()),
               std::span<const Segment>(writable.begin(), writable.size()), token);
  }
  // Makes every chain added so far visible to the device (release store of avail idx).
  Status publish();
  // Whether the device wants a notification for the chains published since the last call: follows
  // avail_event with VIRTIO_F_EVENT_IDX, otherwise the used ring's NO_NOTIFY flag. False when nothing
  // was published since the last call; true when the ring cannot be read (a spurious kick is harmless).
  bool kick_needed();

  // The next used buffer, or nullopt when there is none. A used id that is out of range or not a chain
  // in flight, or a used idx that runs ahead of what is in flight, is kProtocol and breaks the queue.
  Result<std::optional<UsedBuffer>> get_used();
  // Whether the device has returned buffers not yet taken by get_used() (acquire load of used idx).
  Result<bool> has_used() const;

  // Interrupt suppression (§2.7.7): without EVENT_IDX this sets / clears NO_INTERRUPT in the avail
  // ring; with EVENT_IDX it moves used_event (suppression is then only a hint the device may ignore).
  Status disable_interrupts();
  // Re-enables interrupts; returns true when used buffers are already pending, so the caller must poll
  // again instead of sleeping (the device may have returned them before it saw the re-enable).
  Result<bool> enable_interrupts();

  // After a device reset: the tokens of every chain still in flight, which are freed.
  std::vector<uint64_t> detach_unused();

  uint16_t size() const { return size_; }
  uint16_t num_free() const { return num_free_; }
  uint16_t in_flight() const { return in_flight_; }
  const VringAddrs& addrs() const { return addrs_; }
  bool event_idx() const { return event_idx_; }
  bool indirect() const { return indirect_slot_entries_ != 0; }
  uint32_t indirect_slot_entries() const { return indirect_slot_entries_; }
  bool broken() const { return broken_; }
  uint16_t avail_idx() const { return avail_idx_; }
  uint16_t last_used_idx() const { return last_used_; }
  // Used entries whose len exceeded the chain's writable bytes (capped, counted).
  uint64_t len_capped() const { return len_capped_; }

 private:
  struct HeadState {
    uint64_t token = 0;
    uint32_t writable_bytes = 0;
    uint16_t ndesc = 0;  // descriptors of the table this chain holds (1 when indirect)
    bool in_flight = false;
  };
  Status write_desc(uint64_t table, uint32_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next);
  void free_chain(uint16_t head);
  Error fail(const char* what);

  GuestMemory* mem_ = nullptr;
  uint16_t size_ = 0;
  VringAddrs addrs_{};
  bool event_idx_ = false;
  uint64_t indirect_gpa_ = 0;
  uint32_t indirect_slot_entries_ = 0;
  bool broken_ = false;
  bool interrupts_enabled_ = true;

  std::vector<uint16_t> next_;  // shadow of each descriptor's `next` (free list and chains)
  std::vector<HeadState> heads_;
  uint16_t free_head_ = 0;
  uint16_t num_free_ = 0;
  uint16_t in_flight_ = 0;
  uint16_t avail_idx_ = 0;      // driver's shadow of avail idx (entries added)
  uint16_t published_idx_ = 0;  // avail idx the device can see
  uint16_t kicked_idx_ = 0;     // avail idx at the last kick_needed()
  uint16_t last_used_ = 0;
  uint64_t len_capped_ = 0;
};

}  // namespace canopy::transport
