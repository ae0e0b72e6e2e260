// Device side of a split virtqueue (virtio 1.2 §2.7) over bounds-checked GuestMemory.
//
// Each available chain is validated once when popped (BRIEF conventions 3): bounded length (no
// loops), no zero-length descriptor, every buffer inside guest memory, readable before writable,
// indirect tables well formed and not nested, total length fits 32 bits. Device code then reads and
// writes the chain only through DescriptorReader / DescriptorWriter.
//
// Threading: one thread owns a DeviceQueue; the ring indexes use acquire/release (avail idx load is
// acquire, used idx store is release) so a driver on another CPU or process sees consistent rings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/transport/guest_memory.h"
#include "canopy/transport/virtio_ring.h"

namespace canopy::transport {

// One validated buffer of a chain.
struct Segment {
  uint64_t gpa = 0;
  uint32_t len = 0;
};

// A validated descriptor chain: readable segments then writable segments.
class DescriptorChain {
 public:
  uint16_t head() const { return head_; }
  const std::vector<Segment>& readable() const { return readable_; }
  const std::vector<Segment>& writable() const { return writable_; }
  uint32_t readable_bytes() const { return readable_bytes_; }
  uint32_t writable_bytes() const { return writable_bytes_; }
  size_t descriptor_count() const { return readable_.size() + writable_.size(); }

  // Validates the chain starting at `head` (BRIEF conventions 3). `indirect_allowed` reflects
  // VIRTIO_F_INDIRECT_DESC. The chain object is reused so its storage is not reallocated each time.
  static Status parse(const GuestMemory& mem, uint64_t desc_table, uint16_t queue_size, uint16_t head,
                      bool indirect_allowed, DescriptorChain& out);

 private:
  void reset(uint16_t head);
  uint16_t head_ = 0;
  std::vector<Segment> readable_;
  std::vector<Segment> writable_;
  uint32_t readable_bytes_ = 0;
  uint32_t writable_bytes_ = 0;
};

// Sequential reader over a chain's readable part (or over any list of validated segments: a device that
// holds a chain's pieces after the chain itself is gone).
class DescriptorReader {
 public:
  DescriptorReader(const GuestMemory& mem, const DescriptorChain& chain);
  DescriptorReader(const GuestMemory& mem, std::span<const Segment> segments);
  size_t remaining() const { return remaining_; }
  size_t consumed() const { return consumed_; }
  // Copies exactly len bytes or fails (kOutOfRange) without consuming.
  Status read(void* dst, size_t len);
  template <typename T>
  Result<T> read_obj() {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    CANOPY_TRY(read(&v, sizeof v));
    return v;
  }
  Status skip(size_t len);
  // The guest-memory pieces of the next len bytes (consumed), for zero-copy consumers.
  Status take_segments(size_t len, std::vector<Segment>& out);

 private:
  template <typename Fn>
  Status walk(size_t len, Fn&& fn);
  const GuestMemory& mem_;
  std::span<const Segment> segs_;
  size_t index_ = 0;
  uint32_t offset_ = 0;
  size_t remaining_ = 0;
  size_t consumed_ = 0;
};

// Sequential writer over a chain's writable part (or over any list of validated segments).
class DescriptorWriter {
 public:
  DescriptorWriter(GuestMemory& mem, const DescriptorChain& chain);
  DescriptorWriter(GuestMemory& mem, std::span<const Segment> segments);
  size_t remaining() const { return remaining_; }
  // Bytes written so far: the `len` to report in the used ring.
  uint32_t bytes_written() const { return written_; }
  Status write(const void* src, size_t len);
  template <typename T>
  Status write_obj(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    return write(&v, sizeof v);
  }
  Status skip(size_t len);
  Status fill(uint8_t byte, size_t len);

 private:
  template <typename Fn>
  Status walk(size_t len, Fn&& fn);
  GuestMemory& mem_;
  std::span<const Segment> segs_;
  size_t index_ = 0;
  uint32_t offset_ = 0;
  size_t remaining_ = 0;
  uint32_t written_ = 0;
};

// Device side of one split virtqueue.
class DeviceQueue {
 public:
  DeviceQueue() = default;
  // Configures the queue. Fails when the size is not a power of two in [1, 32768] or a ring part is
  // not (fully, aligned) in guest memory.
  Status configure(GuestMemory* mem, uint16_t size, const VringAddrs& addrs, uint64_t features);
  void reset();
  bool ready() const { return mem_ != nullptr; }
  uint16_t size() const { return size_; }

  // Pops the next available chain into `out`. Returns false when the ring is empty. A chain that fails
  // validation is returned to the driver as used with len 0 and reported as an error value; the queue
  // stays usable. A driver that publishes more than `size` new entries at once, or publishes a head the
  // device still holds (popped, not yet pushed used: §2.7.13.2 makes it the device's until then), is a
  // protocol error (the queue is then broken: kProtocol until reset). So at most `size` chains are
  // ever held, however the driver writes its ring.
  Result<bool> pop(DescriptorChain& out);
  // Whether the driver has published chains not popped yet (does not consume anything).
  Result<bool> has_available() const;
  // Resumes the used index from the ring itself (vhost-user ring start after SET_VRING_BASE).
  Status sync_used_idx();
  // Puts a chain back on the used ring with `written` bytes written.
  Status push_used(uint16_t head, uint32_t written);
  // Whether the driver wants an interrupt for the used entries pushed since the last call
  // (VIRTIO_F_EVENT_IDX or the NO_INTERRUPT flag). Resets the "pushed" counter.
  bool should_notify();
  // Publishes avail_event / the NO_NOTIFY flag so the driver kicks (or not) for new buffers.
  Status enable_notification(bool enable);

  uint16_t last_avail_idx() const { return last_avail_; }
  // vhost-user SET_VRING_BASE: resume at `idx` (used idx follows: no request is in flight then).
  void set_last_avail_idx(uint16_t idx) {
    last_avail_ = idx;
    used_idx_ = idx;
    signalled_valid_ = false;
    forget_in_flight();
  }
  uint16_t used_idx() const { return used_idx_; }
  bool broken() const { return broken_; }
  // Chains popped and not yet pushed used.
  uint32_t in_flight() const { return in_flight_count_; }
  uint64_t chains_rejected() const { return rejected_; }

 private:
  GuestMemory* mem_ = nullptr;
  uint16_t size_ = 0;
  VringAddrs addrs_{};
  bool event_idx_ = false;
  bool indirect_ = false;
  bool broken_ = false;
  uint16_t last_avail_ = 0;
  uint16_t used_idx_ = 0;
  uint16_t signalled_used_ = 0;
  bool signalled_valid_ = false;
  uint32_t pushed_since_notify_ = 0;
  uint64_t rejected_ = 0;
  std::vector<bool> in_flight_;  // by head
  uint32_t in_flight_count_ = 0;
  void forget_in_flight();
};

}  // namespace canopy::transport
