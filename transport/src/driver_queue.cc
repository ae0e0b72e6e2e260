#include "canopy/transport/driver_queue.h"

#include <atomic>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"

namespace canopy::transport {

namespace {

std::optional<uint64_t> align_up(uint64_t v, uint64_t align) {
  auto r = checked_add(v, align - 1);
  if (!r) return std::nullopt;
  return *r & ~(align - 1);
}

bool valid_size(uint16_t size) { return size != 0 && size <= kMaxQueueSize && is_power_of_two(size); }

}  // namespace

Result<SplitRingLayout> layout_split_ring(uint16_t size, uint64_t base, uint64_t len) {
  if (!valid_size(size))
    return make_error(Errc::kInvalidArgument, "ring layout: size not a power of two in [1, 32768]");
  auto desc = align_up(base, kDescTableAlign);
  if (!desc) return make_error(Errc::kOverflow, "ring layout: address overflow");
  auto avail = checked_add(*desc, desc_table_bytes(size));
  if (!avail) return make_error(Errc::kOverflow, "ring layout: address overflow");
  auto avail_end = checked_add(*avail, avail_ring_bytes(size));
  if (!avail_end) return make_error(Errc::kOverflow, "ring layout: address overflow");
  auto used = align_up(*avail_end, kUsedRingAlign);
  if (!used) return make_error(Errc::kOverflow, "ring layout: address overflow");
  auto end = checked_add(*used, used_ring_bytes(size));
  if (!end) return make_error(Errc::kOverflow, "ring layout: address overflow");
  if (*end - base > len) return make_error(Errc::kOutOfRange, "ring layout: area too small for the ring");
  SplitRingLayout l;
  l.addrs = VringAddrs{*desc, *avail, *used};
  l.end = *end;
  return l;
}

// ---------------------------------------------------------------------------------------------

Status DriverQueue::init(GuestMemory* mem, const Config& cfg) {
  reset();
  if (!mem) return make_error(Errc::kInvalidArgument, "driver queue: no guest memory");
  if (!valid_size(cfg.size))
    return make_error(Errc::kInvalidArgument, "driver queue: size not a power of two in [1, 32768]");
  const VringAddrs& a = cfg.addrs;
  if ((a.desc & (kDescTableAlign - 1)) || (a.avail & (kAvailRingAlign - 1)) || (a.used & (kUsedRingAlign - 1)))
    return make_error(Errc::kInvalidArgument, "driver queue: ring address misaligned");
  if (!mem->contains(a.desc, desc_table_bytes(cfg.size)) || !mem->contains(a.avail, avail_ring_bytes(cfg.size)) ||
      !mem->contains(a.used, used_ring_bytes(cfg.size)))
    return make_error(Errc::kOutOfRange, "driver queue: ring outside guest memory");

  uint32_t slot_entries = 0;
  if ((cfg.features & kVirtioFIndirectDesc) && cfg.indirect_len != 0) {
    if (cfg.indirect_gpa & (kDescTableAlign - 1))
      return make_error(Errc::kInvalidArgument, "driver queue: indirect area misaligned");
    if (!mem->contains(cfg.indirect_gpa, cfg.indirect_len))
      return make_error(Errc::kOutOfRange, "driver queue: indirect area outside guest memory");
    uint64_t per_slot = cfg.indirect_len / cfg.size / sizeof(VirtqDesc);
    // A chain may not be longer than the queue (§2.7.5.3.1), indirect or not.
    if (per_slot > cfg.size) per_slot = cfg.size;
    if (per_slot >= 2) slot_entries = uint32_t(per_slot);
  }

  // §4.2.3.2 / §3.1.1: the driver zeroes the queue memory before handing it to the device.
  CANOPY_TRY(mem->fill(a.desc, 0, desc_table_bytes(cfg.size)));
  CANOPY_TRY(mem->fill(a.avail, 0, avail_ring_bytes(cfg.size)));
  CANOPY_TRY(mem->fill(a.used, 0, used_ring_bytes(cfg.size)));

  next_.resize(cfg.size);
  for (uint32_t i = 0; i < cfg.size; ++i) next_[i] = uint16_t(i + 1 < cfg.size ? i + 1 : 0);
  heads_.assign(cfg.size, HeadState{});
  mem_ = mem;
  size_ = cfg.size;
  addrs_ = a;
  event_idx_ = cfg.features & kVirtioFEventIdx;
  indirect_gpa_ = cfg.indirect_gpa;
  indirect_slot_entries_ = slot_entries;
  free_head_ = 0;
  num_free_ = cfg.size;
  return {};
}

void DriverQueue::reset() {
  mem_ = nullptr;
  size_ = 0;
  addrs_ = {};
  event_idx_ = false;
  indirect_gpa_ = 0;
  indirect_slot_entries_ = 0;
  broken_ = false;
  interrupts_enabled_ = true;
  next_.clear();
  heads_.clear();
  free_head_ = num_free_ = in_flight_ = 0;
  avail_idx_ = published_idx_ = kicked_idx_ = last_used_ = 0;
  len_capped_ = 0;
}

Error DriverQueue::fail(const char* what) {
  broken_ = true;
  CANOPY_WARN_RL("driver queue: %s (queue broken until reset)", what);
  return make_error(Errc::kProtocol, what);
}

Status DriverQueue::write_desc(uint64_t table, uint32_t index, uint64_t addr, uint32_t len, uint16_t flags,
                               uint16_t next) {
  VirtqDesc d;
  d.addr = addr;
  d.len = len;
  d.flags = flags;
  d.next = next;
  return mem_->write_obj(table + uint64_t(index) * sizeof(VirtqDesc), d);
}

Result<uint16_t> DriverQueue::add(std::span<const Segment> readable, std::span<const Segment> writable,
                                  uint64_t token) {
  if (!mem_) return make_error(Errc::kState, "driver queue: not initialised");
  if (broken_) return make_error(Errc::kProtocol, "driver queue: broken by a device error");
  const size_t n = readable.size() + writable.size();
  if (n == 0) return make_error(Errc::kInvalidArgument, "driver queue: chain without segments");
  if (n > size_) return make_error(Errc::kLimit, "driver queue: chain longer than the queue");

  uint32_t rbytes = 0, wbytes = 0;
  for (size_t i = 0; i < n; ++i) {
    const bool w = i >= readable.size();
    const Segment& s = w ? writable[i - readable.size()] : readable[i];
    if (s.len == 0) return make_error(Errc::kInvalidArgument, "driver queue: zero-length segment");
    if (!mem_->contains(s.gpa, s.len))
      return make_error(Errc::kOutOfRange, "driver queue: segment outside guest memory");
    uint32_t& total = w ? wbytes : rbytes;
    auto t = checked_add(total, s.len);
    if (!t) return make_error(Errc::kOverflow, "driver queue: chain length overflows 32 bits");
    total = *t;
  }
  if (!checked_add(rbytes, wbytes)) return make_error(Errc::kOverflow, "driver queue: chain length overflows 32 bits");

  const bool use_indirect = indirect_slot_entries_ != 0 && n > 1 && n <= indirect_slot_entries_;
  const uint16_t needed = use_indirect ? 1 : uint16_t(n);
  if (num_free_ < needed) return make_error(Errc::kLimit, "driver queue: not enough free descriptors");

  const uint16_t head = free_head_;
  uint16_t last = head;
  if (use_indirect) {
    const uint64_t table = indirect_gpa_ + uint64_t(head) * indirect_slot_entries_ * sizeof(VirtqDesc);
    for (size_t i = 0; i < n; ++i) {
      const bool w = i >= readable.size();
      const Segment& s = w ? writable[i - readable.size()] : readable[i];
      const bool more = i + 1 < n;
      CANOPY_TRY(write_desc(table, uint32_t(i), s.gpa, s.len,
                            uint16_t((w ? kVirtqDescFWrite : 0) | (more ? kVirtqDescFNext : 0)),
                            uint16_t(more ? i + 1 : 0)));
    }
    CANOPY_TRY(write_desc(addrs_.desc, head, table, uint32_t(n * sizeof(VirtqDesc)), kVirtqDescFIndirect, 0));
  } else {
    uint16_t idx = head;
    for (size_t i = 0; i < n; ++i) {
      const bool w = i >= readable.size();
      const Segment& s = w ? writable[i - readable.size()] : readable[i];
      const bool more = i + 1 < n;
      CANOPY_TRY(write_desc(addrs_.desc, idx, s.gpa, s.len,
                            uint16_t((w ? kVirtqDescFWrite : 0) | (more ? kVirtqDescFNext : 0)),
                            more ? next_[idx] : 0));
      last = idx;
      if (more) idx = next_[idx];
    }
  }
  // The avail ring entry; the device sees it once publish() stores the index.
  CANOPY_TRY(mem_->store_relaxed_u16(addrs_.avail + 4 + 2ull * (avail_idx_ & (size_ - 1)), head));

  free_head_ = next_[last];
  num_free_ = uint16_t(num_free_ - needed);
  heads_[head] = HeadState{token, wbytes, needed, true};
  ++in_flight_;
  ++avail_idx_;
  return head;
}

Status DriverQueue::publish() {
  if (!mem_) return make_error(Errc::kState, "driver queue: not initialised");
  if (published_idx_ == avail_idx_) return {};
  // Release: descriptors and ring entries are visible before the index that publishes them.
  CANOPY_TRY(mem_->store_release_u16(addrs_.avail + 2, avail_idx_));
  published_idx_ = avail_idx_;
  return {};
}

bool DriverQueue::kick_needed() {
  if (!mem_) return false;
  const uint16_t old_idx = kicked_idx_;
  const uint16_t new_idx = published_idx_;
  kicked_idx_ = new_idx;
  if (old_idx == new_idx) return false;
  // Order the avail idx store before reading the device's suppression state (§2.7.10).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (event_idx_) {
    auto avail_event = mem_->load_relaxed_u16(addrs_.used + 4 + 8ull * size_);
    if (!avail_event.ok()) return true;
    return vring_need_event(*avail_event, new_idx, old_idx);
  }
  auto flags = mem_->load_relaxed_u16(addrs_.used);
  return !flags.ok() || !(*flags & kVirtqUsedFNoNotify);
}

Result<bool> DriverQueue::has_used() const {
  if (!mem_) return make_error(Errc::kState, "driver queue: not initialised");
  CANOPY_ASSIGN_OR_RETURN(uint16_t used_idx, mem_->load_acquire_u16(addrs_.used + 2));
  return used_idx != last_used_;
}

void DriverQueue::free_chain(uint16_t head) {
  const uint16_t n = heads_[head].ndesc;
  uint16_t last = head;
  for (uint16_t i = 1; i < n; ++i) last = next_[last];
  next_[last] = free_head_;
  free_head_ = head;
  num_free_ = uint16_t(num_free_ + n);
  heads_[head] = HeadState{};
  --in_flight_;
}

Result<std::optional<UsedBuffer>> DriverQueue::get_used() {
  if (!mem_) return make_error(Errc::kState, "driver queue: not initialised");
  if (broken_) return make_error(Errc::kProtocol, "driver queue: broken by a device error");
  // Acquire: the used element the device wrote before publishing idx is visible.
  CANOPY_ASSIGN_OR_RETURN(uint16_t used_idx, mem_->load_acquire_u16(addrs_.used + 2));
  const uint16_t pending = uint16_t(used_idx - last_used_);
  if (pending == 0) return std::optional<UsedBuffer>{};
  if (pending > in_flight_) return fail("used idx runs ahead of the buffers in flight");
  // Copy the element once; everything below uses the copy (no TOCTOU).
  CANOPY_ASSIGN_OR_RETURN(VirtqUsedElem e,
                          mem_->read_obj<VirtqUsedElem>(addrs_.used + 4 + 8ull * (last_used_ & (size_ - 1))));
  const uint32_t id = e.id;
  uint32_t len = e.len;
  if (id >= size_) return fail("used id out of range");
  if (!heads_[id].in_flight) return fail("used id is not a chain in flight");
  if (len > heads_[id].writable_bytes) {
    CANOPY_WARN_RL("driver queue: device reported %u bytes written to a chain of %u writable bytes", len,
                   heads_[id].writable_bytes);
    len = heads_[id].writable_bytes;
    ++len_capped_;
  }
  UsedBuffer out{heads_[id].token, len};
  free_chain(uint16_t(id));
  ++last_used_;
  if (event_idx_ && interrupts_enabled_) {
    // Ask for an interrupt at the next used entry; order the store before the caller's next idx load.
    CANOPY_TRY(mem_->store_relaxed_u16(addrs_.avail + 4 + 2ull * size_, last_used_));
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  return std::optional<UsedBuffer>{out};
}

Status DriverQueue::disable_interrupts() {
  if (!mem_) return make_error(Errc::kState, "driver queue: not initialised");
  interrupts_enabled_ = false;
  if (event_idx_) {
    // Half the index space away from what the device can reach with at most `size` buffers in flight.
    return mem_->store_relaxed_u16(addrs_.avail + 4 + 2ull * size_, uint16_t(last_used_ + 0x8000u));
  }
  return mem_->store_relaxed_u16(addrs_.avail, kVirtqAvailFNoInterrupt);
}

Result<bool> DriverQueue::enable_interrupts() {
  if (!mem_) return make_error(Errc::kState, "driver queue: not initialised");
  interrupts_enabled_ = true;
  if (event_idx_) CANOPY_TRY(mem_->store_relaxed_u16(addrs_.avail + 4 + 2ull * size_, last_used_));
  else CANOPY_TRY(mem_->store_relaxed_u16(addrs_.avail, 0));
  // Order the re-enable before re-checking the used idx: either the device sees it or we see its entry.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return has_used();
}

std::vector<uint64_t> DriverQueue::detach_unused() {
  std::vector<uint64_t> tokens;
  for (uint32_t i = 0; i < heads_.size(); ++i) {
    if (!heads_[i].in_flight) continue;
    tokens.push_back(heads_[i].token);
    free_chain(uint16_t(i));
  }
  return tokens;
}

}  // namespace canopy::transport
