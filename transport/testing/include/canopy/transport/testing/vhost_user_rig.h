// Test support (canopy_transport_testing): a vhost-user device under test, driven the way a front-end
// and a guest drive it. The device's Backend runs on its own thread over a socketpair; the test is the
// front-end (a Frontend: features, memory table, rings) and the guest's driver (RawRing in a memfd the
// back-end maps too). Queue-level device tests publish chains, kick, and read the used ring.
//
//   VhostUserRig rig(device);
//   rig.handshake();
//   rig.start_ring(0, 0x1000, 64);
//   const uint16_t head = rig.post(0, {request_bytes}, 24);   // copied into guest memory, kicked
//   ASSERT_TRUE(rig.wait_used(0, 1));
//   ... rig.answer_at(0, head): where the device wrote its answer
// (or RawRing's chain builder for chains post() cannot make: loops, odd flags.)
#pragma once

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <initializer_list>
#include <map>
#include <memory>
#include <span>
#include <thread>

#include "canopy/transport/testing/ring.h"
#include "canopy/transport/vhost_user_backend.h"
#include "canopy/transport/vhost_user_frontend.h"

namespace canopy::transport::testing {

class VhostUserRig {
 public:
  static constexpr uint64_t kUvaBase = 0x7f0000000000;  // the front-end's "virtual address" of guest memory

  explicit VhostUserRig(vhost_user::Device& device, uint64_t mem_size = 16u << 20)
      : backend_(device), mem_size_(mem_size) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
    fe_ = vhost_user::Frontend(UniqueFd(sv[0]), 30000);  // reply hang guard
    thread_ = std::thread([this, fd = sv[1]] { status_ = backend_.run(UniqueFd(fd)); });
    fd_ = make_memfd(mem_size);
    if (!guest_.add_region({0, mem_size, 0, 0}, fd_.dup()).ok()) std::abort();
  }
  ~VhostUserRig() { (void)stop(); }
  VhostUserRig(const VhostUserRig&) = delete;
  VhostUserRig& operator=(const VhostUserRig&) = delete;

  // The front-end's side of the start-up: every feature the device offers but `without`, the protocol
  // features, SET_OWNER, the memory table (the one region).
  void handshake(uint64_t without = 0) {
    auto f = fe_.get_features();
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(fe_.set_features(*f & ~without).ok());
    auto pf = fe_.get_protocol_features();
    ASSERT_TRUE(pf.ok());
    ASSERT_TRUE(fe_.set_protocol_features(*pf).ok());
    ASSERT_TRUE(fe_.set_owner().ok());
    vhost_user::FrontendRegion r{{0, mem_size_, kUvaBase, 0}, fd_.get()};
    ASSERT_TRUE(fe_.set_mem_table(std::span<const vhost_user::FrontendRegion>(&r, 1)).ok());
  }

  // Lays out ring `index` at guest address `base` and starts it (NUM, BASE, ADDR, CALL, KICK, ENABLE).
  RawRing& start_ring(uint32_t index, uint64_t base, uint16_t size) {
    layout_ring(index, base, size);
    start(index);
    return *queues_.at(index).ring;
  }
  // The ring alone, not started: chains published on it now are served when start() enables it, before
  // the ENABLE is acknowledged (an order a test can rely on, unlike two kicks).
  RawRing& layout_ring(uint32_t index, uint64_t base, uint16_t size) {
    Queue& q = queues_[index];
    q.ring = std::make_unique<RawRing>(guest_, base, size);
    q.size = size;
    q.next_head = 0;
    q.answers.clear();
    q.kick = UniqueFd(::eventfd(0, EFD_CLOEXEC));
    q.call = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    return *q.ring;
  }
  void start(uint32_t index) {
    Queue& q = queues_.at(index);
    const uint16_t size = q.size;
    const VringAddrs& a = q.ring->addrs();
    EXPECT_TRUE(fe_.set_vring_num(index, size).ok());
    EXPECT_TRUE(fe_.set_vring_base(index, 0).ok());
    EXPECT_TRUE(fe_.set_vring_addr(index, kUvaBase + a.desc, kUvaBase + a.avail, kUvaBase + a.used).ok());
    EXPECT_TRUE(fe_.set_vring_call(index, q.call.get()).ok());
    EXPECT_TRUE(fe_.set_vring_kick(index, q.kick.get()).ok());
    EXPECT_TRUE(fe_.set_vring_enable(index, true).ok());
  }
  RawRing& ring(uint32_t index) { return *queues_.at(index).ring; }

  // One chain as a guest driver posts it: each non-empty readable part copied into guest memory, then
  // `writable` bytes of room, at the ring's next free descriptors (the rig's scratch slots: the upper
  // half of guest memory, reused round robin); kicked unless `kick` is false (a ring not started yet).
  // Returns the chain's head.
  uint16_t post(uint32_t index, std::initializer_list<std::span<const uint8_t>> readable, uint32_t writable,
                bool kick_it = true) {
    Queue& q = queues_.at(index);
    const uint16_t head = q.next_head;
    auto chain = q.ring->chain(head);
    uint16_t n = 0;
    for (const auto& part : readable) {
      if (part.empty()) continue;
      const uint64_t at = scratch(part.size());
      EXPECT_TRUE(guest_.write(at, part.data(), part.size()).ok());
      chain.out(at, uint32_t(part.size()));
      ++n;
    }
    uint64_t answer = 0;
    if (writable) {
      answer = scratch(writable);
      chain.in(answer, writable);
      ++n;
    }
    chain.publish();
    q.next_head = uint16_t((head + n) % q.size);
    q.answers[head] = answer;
    if (kick_it) kick(index);
    return head;
  }
  // Where the chain with this head has its writable room (0: it had none).
  uint64_t answer_at(uint32_t index, uint16_t head) { return queues_.at(index).answers.at(head); }

  void kick(uint32_t index) {
    const uint64_t one = 1;
    ASSERT_EQ(::write(queues_.at(index).kick.get(), &one, sizeof one), ssize_t(sizeof one));
  }

  // Waits until ring `index`'s used index is at least `n` (mod 2^16 distance), woken by its call
  // eventfd; `guard_ms` is a hang guard, not a timing. With EVENT_IDX the ring asks to be told of
  // every completion.
  bool wait_used(uint32_t index, uint16_t n, int guard_ms = 30000) {
    Queue& q = queues_.at(index);
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(guard_ms);
    for (;;) {
      q.ring->set_used_event(q.ring->used_idx());
      if (uint16_t(q.ring->used_idx() - n) < 0x8000) return true;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count();
      if (left <= 0) return false;
      pollfd p{q.call.get(), POLLIN, 0};
      (void)::poll(&p, 1, int(left));
      uint64_t v;
      (void)!::read(q.call.get(), &v, sizeof v);
    }
  }

  GuestMemory& guest() { return guest_; }
  // What the back-end copied through its GuestMemory so far (its zero-copy figure).
  uint64_t backend_bytes_copied() { return backend_.memory().bytes_copied(); }
  vhost_user::Frontend& frontend() { return fe_; }
  // The back-end's status once stop() returned (or the connection ended).
  Status stop() {
    if (thread_.joinable()) {
      backend_.request_stop();
      thread_.join();
    }
    return status_;
  }

 private:
  struct Queue {
    std::unique_ptr<RawRing> ring;
    uint16_t size = 0;
    uint16_t next_head = 0;                // post()'s next descriptor
    std::map<uint16_t, uint64_t> answers;  // head -> its writable room
    UniqueFd kick, call;
  };
  // A 4 KiB aligned slot of `len` bytes in the upper half of guest memory, round robin.
  uint64_t scratch(uint64_t len) {
    const uint64_t base = mem_size_ / 2, size = (len + 4095) & ~uint64_t(4095);
    if (next_scratch_ + size > mem_size_ / 2) next_scratch_ = 0;
    const uint64_t at = base + next_scratch_;
    next_scratch_ += size;
    return at;
  }

  vhost_user::Backend backend_;
  uint64_t mem_size_;
  uint64_t next_scratch_ = 0;
  vhost_user::Frontend fe_;
  std::thread thread_;
  Status status_;
  UniqueFd fd_;
  GuestMemory guest_;
  std::map<uint32_t, Queue> queues_;
};

}  // namespace canopy::transport::testing
