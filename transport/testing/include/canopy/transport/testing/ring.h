// Test support (canopy_transport_testing): guest memory from a memfd and a raw split ring a test writes
// by hand, with a fluent chain builder, so tests can publish any chain, including malformed ones. The
// ring is the driver's side: what a guest's driver writes and reads (vhost_user_rig.h puts a device
// behind it).
#pragma once

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "canopy/transport/guest_memory.h"
#include "canopy/transport/virtio_ring.h"

namespace canopy::transport::testing {

inline UniqueFd make_memfd(uint64_t size) {
  int fd = memfd_create("canopy-test-guest", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, off_t(size)) != 0) std::abort();
  return UniqueFd(fd);
}

// One region of `size` bytes at guest physical `base`.
inline GuestMemory make_memory(uint64_t base, uint64_t size) {
  GuestMemory mem;
  auto s = mem.add_region(RegionInfo{base, size, 0, 0}, make_memfd(size));
  if (!s.ok()) std::abort();
  return mem;
}

class RawRing {
 public:
  RawRing(GuestMemory& mem, uint64_t base, uint16_t size) : mem_(mem), size_(size) {
    addrs_.desc = base;
    addrs_.avail = base + desc_table_bytes(size);
    addrs_.used = (addrs_.avail + avail_ring_bytes(size) + 3) & ~uint64_t(3);
  }
  const VringAddrs& addrs() const { return addrs_; }
  uint64_t end() const { return addrs_.used + used_ring_bytes(size_); }

  void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    set_desc_at(addrs_.desc, i, addr, len, flags, next);
  }
  void set_desc_at(uint64_t table, uint32_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    VirtqDesc d;
    d.addr = addr;
    d.len = len;
    d.flags = flags;
    d.next = next;
    ASSERT_TRUE(mem_.write_obj(table + 16ull * i, d).ok());
  }
  // Publishes `head` on the avail ring.
  void publish(uint16_t head) {
    ASSERT_TRUE(mem_.write_obj<uint16_t>(addrs_.avail + 4 + 2ull * (avail_idx_ % size_), head).ok());
    ++avail_idx_;
    ASSERT_TRUE(mem_.store_release_u16(addrs_.avail + 2, avail_idx_).ok());
  }
  void set_avail_idx(uint16_t idx) {
    avail_idx_ = idx;
    ASSERT_TRUE(mem_.store_release_u16(addrs_.avail + 2, idx).ok());
  }
  void set_avail_flags(uint16_t f) { ASSERT_TRUE(mem_.store_release_u16(addrs_.avail, f).ok()); }
  void set_used_event(uint16_t v) { ASSERT_TRUE(mem_.store_release_u16(addrs_.avail + 4 + 2ull * size_, v).ok()); }
  uint16_t used_idx() const { return *mem_.load_acquire_u16(addrs_.used + 2); }
  uint16_t used_flags() const { return *mem_.load_acquire_u16(addrs_.used); }
  uint16_t avail_event() const { return *mem_.load_acquire_u16(addrs_.used + 4 + 8ull * size_); }
  VirtqUsedElem used(uint16_t i) const { return *mem_.read_obj<VirtqUsedElem>(addrs_.used + 4 + 8ull * (i % size_)); }

  // Fluent builder: ring.chain(0).out(a, 16).in(b, 64).publish();
  class Chain {
   public:
    Chain(RawRing& r, uint16_t first) : r_(r), first_(first) {}
    Chain& out(uint64_t addr, uint32_t len) { return add(addr, len, 0); }
    Chain& in(uint64_t addr, uint32_t len) { return add(addr, len, kVirtqDescFWrite); }
    Chain& add(uint64_t addr, uint32_t len, uint16_t flags) {
      descs_.push_back({addr, len, flags});
      return *this;
    }
    // Writes the descriptors at consecutive indexes and publishes the head; returns the head.
    uint16_t publish() {
      write();
      r_.publish(first_);
      return first_;
    }
    void write() {
      for (size_t k = 0; k < descs_.size(); ++k) {
        bool last = k + 1 == descs_.size();
        uint16_t idx = uint16_t((first_ + k) % r_.size_);
        r_.set_desc(idx, descs_[k].addr, descs_[k].len, uint16_t(descs_[k].flags | (last ? 0 : kVirtqDescFNext)),
                    uint16_t((idx + 1) % r_.size_));
      }
    }

   private:
    struct D {
      uint64_t addr;
      uint32_t len;
      uint16_t flags;
    };
    RawRing& r_;
    uint16_t first_;
    std::vector<D> descs_;
  };
  Chain chain(uint16_t first) { return Chain(*this, first); }

 private:
  GuestMemory& mem_;
  uint16_t size_;
  VringAddrs addrs_;
  uint16_t avail_idx_ = 0;
};

}  // namespace canopy::transport::testing
