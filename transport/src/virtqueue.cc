#include "canopy/transport/virtqueue.h"

#include <algorithm>
#include <atomic>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"

namespace canopy::transport {

// ---------------------------------------------------------------------------------------------
// DescriptorChain

void DescriptorChain::reset(uint16_t head) {
  head_ = head;
  readable_.clear();
  writable_.clear();
  readable_bytes_ = 0;
  writable_bytes_ = 0;
}

Status DescriptorChain::parse(const GuestMemory& mem, uint64_t desc_table, uint16_t queue_size, uint16_t head,
                              bool indirect_allowed, DescriptorChain& out) {
  out.reset(head);
  if (queue_size == 0 || head >= queue_size) return make_error(Errc::kOutOfRange, "chain: head index out of range");

  uint64_t table = desc_table;
  uint32_t table_size = queue_size;  // entries in the table being walked
  uint32_t index = head;
  uint32_t visited = 0;  // descriptors walked in the current table: bounded by its size (no loops)
  bool in_indirect = false;

  for (;;) {
    if (++visited > table_size) return make_error(Errc::kLimit, "chain: longer than its table (loop)");
    // Copy the descriptor once; every field below comes from this copy (no TOCTOU).
    CANOPY_ASSIGN_OR_RETURN(VirtqDesc d, mem.read_obj<VirtqDesc>(table + uint64_t(index) * sizeof(VirtqDesc)));
    const uint16_t flags = d.flags;
    const uint64_t addr = d.addr;
    const uint32_t len = d.len;
    const uint16_t next = d.next;

    if (flags & kVirtqDescFIndirect) {
      if (!indirect_allowed) return make_error(Errc::kProtocol, "chain: indirect descriptor not negotiated");
      if (in_indirect) return make_error(Errc::kProtocol, "chain: indirect descriptor inside indirect table");
      if (flags & kVirtqDescFNext) return make_error(Errc::kProtocol, "chain: indirect descriptor with NEXT");
      if (len == 0 || len % sizeof(VirtqDesc) != 0)
        return make_error(Errc::kInvalidArgument, "chain: indirect table length not a multiple of 16");
      if (len / sizeof(VirtqDesc) > kMaxQueueSize)
        return make_error(Errc::kLimit, "chain: indirect table larger than 32768 entries");
      if (!mem.contains(addr, len)) return make_error(Errc::kOutOfRange, "chain: indirect table outside guest memory");
      table = addr;
      table_size = len / sizeof(VirtqDesc);
      index = 0;
      visited = 0;
      in_indirect = true;
      continue;
    }

    if (len == 0) return make_error(Errc::kInvalidArgument, "chain: zero-length descriptor");
    if (!mem.contains(addr, len)) return make_error(Errc::kOutOfRange, "chain: buffer outside guest memory");
    if (flags & kVirtqDescFWrite) {
      auto total = checked_add(out.writable_bytes_, len);
      if (!total) return make_error(Errc::kOverflow, "chain: writable length overflows 32 bits");
      out.writable_bytes_ = *total;
      out.writable_.push_back(Segment{addr, len});
    } else {
      if (!out.writable_.empty()) return make_error(Errc::kProtocol, "chain: readable descriptor after writable");
      auto total = checked_add(out.readable_bytes_, len);
      if (!total) return make_error(Errc::kOverflow, "chain: readable length overflows 32 bits");
      out.readable_bytes_ = *total;
      out.readable_.push_back(Segment{addr, len});
    }
    if (!checked_add(out.readable_bytes_, out.writable_bytes_))
      return make_error(Errc::kOverflow, "chain: total length overflows 32 bits");

    if (!(flags & kVirtqDescFNext)) return {};
    if (next >= table_size) return make_error(Errc::kOutOfRange, "chain: next index out of range");
    index = next;
  }
}

// ---------------------------------------------------------------------------------------------
// DescriptorReader / DescriptorWriter

namespace {
size_t total_bytes(std::span<const Segment> segs) {
  size_t n = 0;
  for (const Segment& s : segs) n += s.len;
  return n;
}
}  // namespace

DescriptorReader::DescriptorReader(const GuestMemory& mem, const DescriptorChain& chain)
    : mem_(mem), segs_(chain.readable()), remaining_(chain.readable_bytes()) {}

DescriptorReader::DescriptorReader(const GuestMemory& mem, std::span<const Segment> segments)
    : mem_(mem), segs_(segments), remaining_(total_bytes(segments)) {}

template <typename Fn>
Status DescriptorReader::walk(size_t len, Fn&& fn) {
  if (len > remaining_) return make_error(Errc::kOutOfRange, "descriptor reader: not enough readable bytes");
  size_t done = 0;
  while (done < len) {
    const Segment& s = segs_[index_];
    size_t n = std::min<size_t>(len - done, s.len - offset_);
    CANOPY_TRY(fn(s.gpa + offset_, done, n));
    done += n;
    offset_ += uint32_t(n);
    if (offset_ == s.len) {
      ++index_;
      offset_ = 0;
    }
  }
  remaining_ -= len;
  consumed_ += len;
  return {};
}

Status DescriptorReader::read(void* dst, size_t len) {
  auto* out = static_cast<uint8_t*>(dst);
  return walk(len, [&](uint64_t gpa, size_t done, size_t n) { return mem_.read(gpa, out + done, n); });
}

Status DescriptorReader::skip(size_t len) {
  return walk(len, [](uint64_t, size_t, size_t) { return Status{}; });
}

Status DescriptorReader::take_segments(size_t len, std::vector<Segment>& out) {
  return walk(len, [&](uint64_t gpa, size_t, size_t n) {
    out.push_back(Segment{gpa, uint32_t(n)});
    return Status{};
  });
}

DescriptorWriter::DescriptorWriter(GuestMemory& mem, const DescriptorChain& chain)
    : mem_(mem), segs_(chain.writable()), remaining_(chain.writable_bytes()) {}

DescriptorWriter::DescriptorWriter(GuestMemory& mem, std::span<const Segment> segments)
    : mem_(mem), segs_(segments), remaining_(total_bytes(segments)) {}

template <typename Fn>
Status DescriptorWriter::walk(size_t len, Fn&& fn) {
  if (len > remaining_) return make_error(Errc::kOutOfRange, "descriptor writer: not enough writable bytes");
  size_t done = 0;
  while (done < len) {
    const Segment& s = segs_[index_];
    size_t n = std::min<size_t>(len - done, s.len - offset_);
    CANOPY_TRY(fn(s.gpa + offset_, done, n));
    done += n;
    offset_ += uint32_t(n);
    if (offset_ == s.len) {
      ++index_;
      offset_ = 0;
    }
  }
  remaining_ -= len;
  written_ += uint32_t(len);  // cannot overflow: the chain's writable total fits 32 bits
  return {};
}

Status DescriptorWriter::write(const void* src, size_t len) {
  const auto* in = static_cast<const uint8_t*>(src);
  return walk(len, [&](uint64_t gpa, size_t done, size_t n) { return mem_.write(gpa, in + done, n); });
}

Status DescriptorWriter::skip(size_t len) {
  return walk(len, [](uint64_t, size_t, size_t) { return Status{}; });
}

Status DescriptorWriter::fill(uint8_t byte, size_t len) {
  return walk(len, [&](uint64_t gpa, size_t, size_t n) { return mem_.fill(gpa, byte, n); });
}

// ---------------------------------------------------------------------------------------------
// DeviceQueue

Status DeviceQueue::configure(GuestMemory* mem, uint16_t size, const VringAddrs& addrs, uint64_t features) {
  reset();
  if (!mem) return make_error(Errc::kInvalidArgument, "queue: no guest memory");
  if (size == 0 || size > kMaxQueueSize || !is_power_of_two(size))
    return make_error(Errc::kInvalidArgument, "queue: size not a power of two in [1, 32768]");
  if ((addrs.desc & 15) || (addrs.avail & 1) || (addrs.used & 3))
    return make_error(Errc::kInvalidArgument, "queue: ring address misaligned");
  if (!mem->contains(addrs.desc, desc_table_bytes(size)) || !mem->contains(addrs.avail, avail_ring_bytes(size)) ||
      !mem->contains(addrs.used, used_ring_bytes(size)))
    return make_error(Errc::kOutOfRange, "queue: ring outside guest memory");
  // Overlapping parts would let the device's own used-ring writes republish avail entries (an endless
  // loop driven by the guest): refuse them.
  const uint64_t start[3] = {addrs.desc, addrs.avail, addrs.used};
  const uint64_t len[3] = {desc_table_bytes(size), avail_ring_bytes(size), used_ring_bytes(size)};
  for (int i = 0; i < 3; ++i) {
    for (int j = i + 1; j < 3; ++j) {
      if (start[i] < start[j] + len[j] && start[j] < start[i] + len[i])
        return make_error(Errc::kInvalidArgument, "queue: ring parts overlap");
    }
  }
  mem_ = mem;
  size_ = size;
  addrs_ = addrs;
  in_flight_.assign(size, false);
  in_flight_count_ = 0;
  event_idx_ = features & kVirtioFEventIdx;
  indirect_ = features & kVirtioFIndirectDesc;
  return {};
}

void DeviceQueue::reset() {
  mem_ = nullptr;
  size_ = 0;
  addrs_ = {};
  event_idx_ = indirect_ = broken_ = false;
  last_avail_ = used_idx_ = signalled_used_ = 0;
  signalled_valid_ = false;
  pushed_since_notify_ = 0;
  rejected_ = 0;
  in_flight_.clear();
  in_flight_count_ = 0;
}

Result<bool> DeviceQueue::pop(DescriptorChain& out) {
  if (!mem_) return make_error(Errc::kState, "queue: not configured");
  if (broken_) return make_error(Errc::kProtocol, "queue: broken by an earlier driver error");
  // Acquire: the ring entries and descriptors the driver wrote before publishing idx are visible.
  CANOPY_ASSIGN_OR_RETURN(uint16_t avail_idx, mem_->load_acquire_u16(addrs_.avail + 2));
  uint16_t pending = uint16_t(avail_idx - last_avail_);
  if (pending == 0) return false;
  if (pending > size_) {
    broken_ = true;
    return make_error(Errc::kProtocol, "queue: driver published more entries than the queue holds");
  }
  CANOPY_ASSIGN_OR_RETURN(uint16_t head, mem_->load_relaxed_u16(addrs_.avail + 4 + 2ull * (last_avail_ & (size_ - 1))));
  if (head < size_ && in_flight_[head]) {
    // Taking it again would hand the device a second copy of a request it is still serving (and let a
    // driver make a back-end hold without bound): the ring is corrupt.
    broken_ = true;
    return make_error(Errc::kProtocol, "queue: driver published a head the device still holds");
  }
  ++last_avail_;
  Status s = DescriptorChain::parse(*mem_, addrs_.desc, size_, head, indirect_, out);
  if (!s.ok()) {
    ++rejected_;
    // Give a well-formed head back so the driver can reclaim its descriptors; an out-of-range head
    // cannot be named in the used ring at all.
    if (head < size_) CANOPY_TRY(push_used(head, 0));
    return s.error();
  }
  in_flight_[head] = true;
  ++in_flight_count_;
  return true;
}

void DeviceQueue::forget_in_flight() {
  std::fill(in_flight_.begin(), in_flight_.end(), false);
  in_flight_count_ = 0;
}

Result<bool> DeviceQueue::has_available() const {
  if (!mem_) return make_error(Errc::kState, "queue: not configured");
  CANOPY_ASSIGN_OR_RETURN(uint16_t avail_idx, mem_->load_acquire_u16(addrs_.avail + 2));
  return avail_idx != last_avail_;
}

Status DeviceQueue::sync_used_idx() {
  if (!mem_) return make_error(Errc::kState, "queue: not configured");
  CANOPY_ASSIGN_OR_RETURN(uint16_t idx, mem_->load_acquire_u16(addrs_.used + 2));
  used_idx_ = idx;
  signalled_valid_ = false;
  return {};
}

Status DeviceQueue::push_used(uint16_t head, uint32_t written) {
  if (!mem_) return make_error(Errc::kState, "queue: not configured");
  if (head >= size_) return make_error(Errc::kInvalidArgument, "queue: used id out of range");
  if (in_flight_[head]) {
    in_flight_[head] = false;
    --in_flight_count_;
  }
  VirtqUsedElem e;
  e.id = head;
  e.len = written;
  CANOPY_TRY(mem_->write_obj(addrs_.used + 4 + 8ull * (used_idx_ & (size_ - 1)), e));
  ++used_idx_;
  ++pushed_since_notify_;
  // Release: the element is visible before the index that publishes it.
  return mem_->store_release_u16(addrs_.used + 2, used_idx_);
}

bool DeviceQueue::should_notify() {
  if (!mem_) return false;
  // Order our used idx store before reading the driver's suppression state (§2.7.7.2 / §2.7.10).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (pushed_since_notify_ == 0) return false;  // nothing new since the last decision
  pushed_since_notify_ = 0;
  const uint16_t old = signalled_used_;
  const uint16_t now = used_idx_;
  const bool first = !signalled_valid_;
  signalled_used_ = now;
  signalled_valid_ = true;
  if (event_idx_) {
    auto used_event = mem_->load_relaxed_u16(addrs_.avail + 4 + 2ull * size_);
    if (!used_event.ok()) return true;
    return first || vring_need_event(*used_event, now, old);
  }
  auto flags = mem_->load_relaxed_u16(addrs_.avail);
  return !flags.ok() || !(*flags & kVirtqAvailFNoInterrupt);
}

Status DeviceQueue::enable_notification(bool enable) {
  if (!mem_) return make_error(Errc::kState, "queue: not configured");
  if (event_idx_) {
    if (enable) CANOPY_TRY(mem_->store_relaxed_u16(addrs_.used + 4 + 8ull * size_, last_avail_));
  } else {
    CANOPY_TRY(mem_->store_relaxed_u16(addrs_.used, enable ? 0 : kVirtqUsedFNoNotify));
  }
  // The caller re-checks the avail ring after this: order the store before that load.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return {};
}

}  // namespace canopy::transport
