// DriverQueue against the device-side DeviceQueue in the same GuestMemory, and against a hand-written
// (malicious) used ring.
#include "canopy/transport/driver_queue.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "canopy/transport/virtqueue.h"

namespace canopy::transport {
namespace {

constexpr uint64_t kBase = 0x100000;
constexpr uint64_t kMemSize = 0x100000;  // 1 MiB
constexpr uint64_t kData = kBase + 0x80000;

GuestMemory make_memory(uint64_t base, uint64_t size) {
  int fd = memfd_create("driver-queue-test", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, off_t(size)) != 0) std::abort();
  GuestMemory mem;
  if (!mem.add_region(RegionInfo{base, size, 0, 0}, UniqueFd(fd)).ok()) std::abort();
  return mem;
}

// A driver queue and a device queue on the same ring.
class QueuePair {
 public:
  QueuePair(GuestMemory& mem, uint16_t size, uint64_t features, uint64_t indirect_len = 0) : mem_(mem) {
    auto layout = layout_split_ring(size, kBase, 0x40000);
    EXPECT_TRUE(layout.ok());
    DriverQueue::Config cfg;
    cfg.size = size;
    cfg.addrs = layout->addrs;
    cfg.features = features;
    cfg.indirect_gpa = kBase + 0x40000;
    cfg.indirect_len = indirect_len;
    EXPECT_TRUE(driver.init(&mem, cfg).ok());
    EXPECT_TRUE(device.configure(&mem, size, layout->addrs, features).ok());
  }
  // Device: pops one chain, checks the readable bytes, writes `reply` and returns it as used.
  uint16_t serve_one(const std::string& expect_in, const std::string& reply) {
    DescriptorChain chain;
    auto r = device.pop(chain);
    EXPECT_TRUE(r.ok() && *r);
    DescriptorReader rd(mem_, chain);
    std::string in(rd.remaining(), '\0');
    EXPECT_TRUE(rd.read(in.data(), in.size()).ok());
    EXPECT_EQ(in, expect_in);
    DescriptorWriter wr(mem_, chain);
    EXPECT_TRUE(wr.write(reply.data(), reply.size()).ok());
    EXPECT_TRUE(device.push_used(chain.head(), wr.bytes_written()).ok());
    return chain.head();
  }
  GuestMemory& mem_;
  DriverQueue driver;
  DeviceQueue device;
};

void put(GuestMemory& mem, uint64_t gpa, const std::string& s) { ASSERT_TRUE(mem.write(gpa, s.data(), s.size()).ok()); }
std::string get(GuestMemory& mem, uint64_t gpa, size_t n) {
  std::string s(n, '\0');
  EXPECT_TRUE(mem.read(gpa, s.data(), n).ok());
  return s;
}

// ---------------------------------------------------------------------------------------------
// Layout

TEST(SplitRingLayout, AlignsEachPartPerSpec) {
  auto l = layout_split_ring(256, 0x1003, 0x10000);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->addrs.desc, 0x1010u);
  EXPECT_EQ(l->addrs.avail, 0x1010u + 16 * 256);
  EXPECT_EQ(l->addrs.used, (0x1010u + 16 * 256 + 6 + 2 * 256 + 3) & ~3u);
  EXPECT_EQ(l->end, l->addrs.used + 6 + 8 * 256);
  EXPECT_EQ(l->end - 0x1010, split_ring_bytes(256));
}

TEST(SplitRingLayout, SizeOneRingHasPaddedUsedRing) {
  auto l = layout_split_ring(1, 0, 0x100);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->addrs.avail, 16u);
  EXPECT_EQ(l->addrs.used, 24u);  // avail ends at 16 + 8 = 24, already 4-aligned
  EXPECT_EQ(l->end, 24u + 14);
}

TEST(SplitRingLayout, RejectsBadSizeSmallAreaAndOverflow) {
  EXPECT_EQ(layout_split_ring(3, 0, 0x10000).code(), Errc::kInvalidArgument);
  EXPECT_EQ(layout_split_ring(0, 0, 0x10000).code(), Errc::kInvalidArgument);
  EXPECT_EQ(layout_split_ring(256, 0, split_ring_bytes(256) - 1).code(), Errc::kOutOfRange);
  EXPECT_TRUE(layout_split_ring(256, 0, split_ring_bytes(256)).ok());
  // Misaligned base: the padding counts against the area.
  EXPECT_EQ(layout_split_ring(256, 1, split_ring_bytes(256)).code(), Errc::kOutOfRange);
  EXPECT_EQ(layout_split_ring(256, UINT64_MAX - 8, 0x100000).code(), Errc::kOverflow);
}

// ---------------------------------------------------------------------------------------------
// Init

TEST(DriverQueue, InitRejectsBadConfig) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  DriverQueue q;
  DriverQueue::Config cfg;
  cfg.size = 3;
  cfg.addrs = {kBase, kBase + 0x1000, kBase + 0x2000};
  EXPECT_EQ(q.init(&mem, cfg).code(), Errc::kInvalidArgument);
  cfg.size = 8;
  EXPECT_EQ(q.init(nullptr, cfg).code(), Errc::kInvalidArgument);
  cfg.addrs.desc = kBase + 8;  // not 16-aligned
  EXPECT_EQ(q.init(&mem, cfg).code(), Errc::kInvalidArgument);
  cfg.addrs.desc = kBase;
  cfg.addrs.used = kBase + 0x2002;  // not 4-aligned
  EXPECT_EQ(q.init(&mem, cfg).code(), Errc::kInvalidArgument);
  cfg.addrs.used = kBase + kMemSize - 8;  // runs past the end of guest memory
  EXPECT_EQ(q.init(&mem, cfg).code(), Errc::kOutOfRange);
  cfg.addrs.used = kBase + 0x2000;
  cfg.features = kVirtioFIndirectDesc;
  cfg.indirect_gpa = kBase + 0x3008;  // misaligned indirect area
  cfg.indirect_len = 0x1000;
  EXPECT_EQ(q.init(&mem, cfg).code(), Errc::kInvalidArgument);
  cfg.indirect_gpa = kBase + kMemSize - 0x800;
  EXPECT_EQ(q.init(&mem, cfg).code(), Errc::kOutOfRange);
  EXPECT_FALSE(q.ready());
  cfg.indirect_gpa = kBase + 0x3000;
  ASSERT_TRUE(q.init(&mem, cfg).ok());
  EXPECT_TRUE(q.ready());
  EXPECT_EQ(q.num_free(), 8);
  EXPECT_EQ(q.indirect_slot_entries(), 8u);  // 0x1000 / 8 slots / 16 = 32, capped at the queue size
}

TEST(DriverQueue, InitZeroesTheRings) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  ASSERT_TRUE(mem.fill(kBase, 0xee, 0x10000).ok());
  auto l = layout_split_ring(16, kBase, 0x10000);
  ASSERT_TRUE(l.ok());
  DriverQueue q;
  ASSERT_TRUE(q.init(&mem, {16, l->addrs, 0}).ok());
  auto zero = [&](uint64_t from, uint64_t len) {
    for (uint64_t a = from; a < from + len; ++a) ASSERT_EQ(*mem.read_obj<uint8_t>(a), 0) << a;
  };
  zero(l->addrs.desc, desc_table_bytes(16));
  zero(l->addrs.avail, avail_ring_bytes(16));
  zero(l->addrs.used, used_ring_bytes(16));
  // Alignment padding between the avail and used rings, and what follows, are not the queue's.
  EXPECT_EQ(*mem.read_obj<uint8_t>(l->addrs.avail + avail_ring_bytes(16)), 0xee);
  EXPECT_EQ(*mem.read_obj<uint8_t>(l->end), 0xee);
}

TEST(DriverQueue, OperationsBeforeInitAreStateErrors) {
  DriverQueue q;
  Segment s{kData, 4};
  EXPECT_EQ(q.add({s}, {}, 1).code(), Errc::kState);
  EXPECT_EQ(q.publish().code(), Errc::kState);
  EXPECT_EQ(q.get_used().code(), Errc::kState);
  EXPECT_EQ(q.disable_interrupts().code(), Errc::kState);
  EXPECT_EQ(q.enable_interrupts().code(), Errc::kState);
  EXPECT_FALSE(q.kick_needed());
}

// ---------------------------------------------------------------------------------------------
// Round trips with the device queue, EVENT_IDX off and on

class DriverQueueRoundTrip : public ::testing::TestWithParam<bool> {
 protected:
  uint64_t features() const { return GetParam() ? kVirtioFEventIdx : 0; }
};

TEST_P(DriverQueueRoundTrip, ChainReachesDeviceAndComesBackWithToken) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 8, features());
  put(mem, kData, "hello");
  auto head = p.driver.add({{kData, 5}}, {{kData + 0x100, 64}}, 0xabcdef);
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(p.driver.num_free(), 6);
  EXPECT_EQ(p.driver.in_flight(), 1);
  // Not visible to the device before publish().
  EXPECT_FALSE(*p.device.has_available());
  ASSERT_TRUE(p.driver.publish().ok());
  EXPECT_TRUE(*p.device.has_available());
  EXPECT_EQ(p.serve_one("hello", "WORLD!"), *head);
  auto used = p.driver.get_used();
  ASSERT_TRUE(used.ok());
  ASSERT_TRUE(used->has_value());
  EXPECT_EQ((*used)->token, 0xabcdefu);
  EXPECT_EQ((*used)->len, 6u);
  EXPECT_EQ(get(mem, kData + 0x100, 6), "WORLD!");
  EXPECT_EQ(p.driver.num_free(), 8);
  EXPECT_EQ(p.driver.in_flight(), 0);
  auto none = p.driver.get_used();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_P(DriverQueueRoundTrip, MultiSegmentChainsOutOfOrderCompletion) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 8, features());
  put(mem, kData, "abcdefgh");
  // Three chains of 2+1, 1+2 and 2+0 descriptors take all 8.
  ASSERT_TRUE(p.driver.add({{kData, 2}, {kData + 2, 2}}, {{kData + 0x100, 8}}, 1).ok());
  ASSERT_TRUE(p.driver.add({{kData + 4, 1}}, {{kData + 0x200, 4}, {kData + 0x300, 4}}, 2).ok());
  ASSERT_TRUE(p.driver.add({{kData, 1}, {kData + 1, 1}}, {}, 3).ok());
  EXPECT_EQ(p.driver.num_free(), 0);
  EXPECT_EQ(p.driver.add({{kData, 1}}, {}, 4).code(), Errc::kLimit);
  ASSERT_TRUE(p.driver.publish().ok());

  std::vector<DescriptorChain> chains(3);
  for (auto& c : chains) ASSERT_TRUE(*p.device.pop(c));
  EXPECT_EQ(chains[0].readable_bytes(), 4u);
  EXPECT_EQ(chains[1].writable().size(), 2u);
  EXPECT_EQ(chains[2].writable_bytes(), 0u);
  // Complete in reverse order.
  ASSERT_TRUE(p.device.push_used(chains[2].head(), 0).ok());
  ASSERT_TRUE(p.device.push_used(chains[0].head(), 8).ok());
  std::vector<uint64_t> tokens;
  for (;;) {
    auto u = p.driver.get_used();
    ASSERT_TRUE(u.ok());
    if (!u->has_value()) break;
    tokens.push_back((*u)->token);
  }
  EXPECT_EQ(tokens, (std::vector<uint64_t>{3, 1}));
  EXPECT_EQ(p.driver.num_free(), 5);
  // The freed descriptors are reusable while chain 2 is still in flight.
  ASSERT_TRUE(p.driver.add({{kData, 1}, {kData, 1}, {kData, 1}}, {{kData + 0x400, 1}, {kData + 0x400, 1}}, 5).ok());
  EXPECT_EQ(p.driver.num_free(), 0);
  ASSERT_TRUE(p.driver.publish().ok());
  DescriptorChain c;
  ASSERT_TRUE(*p.device.pop(c));
  EXPECT_EQ(c.descriptor_count(), 5u);
  ASSERT_TRUE(p.device.push_used(c.head(), 3).ok());
  ASSERT_TRUE(p.device.push_used(chains[1].head(), 8).ok());
  auto a = p.driver.get_used();
  auto b = p.driver.get_used();
  ASSERT_TRUE(a.ok() && a->has_value() && b.ok() && b->has_value());
  EXPECT_EQ((*a)->token, 5u);
  EXPECT_EQ((*b)->token, 2u);
  EXPECT_EQ(p.driver.num_free(), 8);
}

TEST_P(DriverQueueRoundTrip, IndexesWrapPast65535) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 4, features());
  put(mem, kData, "x");
  for (uint32_t i = 0; i < 70000; ++i) {
    ASSERT_TRUE(p.driver.add({{kData, 1}}, {{kData + 0x10, 1}}, i).ok());
    ASSERT_TRUE(p.driver.publish().ok());
    DescriptorChain c;
    ASSERT_TRUE(*p.device.pop(c));
    ASSERT_TRUE(p.device.push_used(c.head(), 1).ok());
    auto u = p.driver.get_used();
    ASSERT_TRUE(u.ok() && u->has_value()) << i;
    ASSERT_EQ((*u)->token, i);
  }
  EXPECT_EQ(p.driver.avail_idx(), uint16_t(70000));
  EXPECT_EQ(p.driver.last_used_idx(), uint16_t(70000));
}

TEST_P(DriverQueueRoundTrip, PointerTokensComeBack) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 4, features());
  int object = 7;
  std::vector<Segment> r{{kData, 1}};
  ASSERT_TRUE(p.driver.add(r, {}, &object).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  DescriptorChain c;
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.push_used(c.head(), 0).ok());
  auto u = p.driver.get_used();
  ASSERT_TRUE(u.ok() && u->has_value());
  EXPECT_EQ((*u)->ptr(), &object);
}

TEST_P(DriverQueueRoundTrip, ThreadedDeviceSeesEveryChainOnce) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 64, features());
  constexpr uint32_t kCount = 20000;
  std::atomic<bool> stop{false};
  std::thread device([&] {
    DescriptorChain c;
    uint32_t served = 0;
    while (served < kCount && !stop.load()) {
      auto r = p.device.pop(c);
      if (!r.ok()) {
        ADD_FAILURE() << r.error().what;
        return;
      }
      if (!*r) {
        std::this_thread::yield();
        continue;
      }
      uint32_t v = *DescriptorReader(mem, c).read_obj<uint32_t>();
      DescriptorWriter w(mem, c);
      (void)w.write_obj<uint32_t>(v * 3);
      (void)p.device.push_used(c.head(), w.bytes_written());
      ++served;
    }
  });
  auto run_driver = [&] {
    uint32_t sent = 0, received = 0;
    // Each request: 4 bytes in at a slot, 4 bytes out 8 bytes further.
    while (received < kCount) {
      while (sent < kCount && p.driver.num_free() >= 2) {
        const uint64_t slot = kData + 16ull * (sent % 4096);
        ASSERT_TRUE(mem.write_obj<uint32_t>(slot, sent).ok());
        ASSERT_TRUE(p.driver.add({{slot, 4}}, {{slot + 8, 4}}, sent).ok());
        ++sent;
      }
      ASSERT_TRUE(p.driver.publish().ok());
      auto u = p.driver.get_used();
      ASSERT_TRUE(u.ok());
      if (!u->has_value()) {
        std::this_thread::yield();
        continue;
      }
      const uint64_t token = (*u)->token;
      ASSERT_EQ((*u)->len, 4u);
      ASSERT_EQ(*mem.read_obj<uint32_t>(kData + 16 * (token % 4096) + 8), uint32_t(token * 3));
      ++received;
    }
  };
  run_driver();
  stop = true;
  device.join();
  EXPECT_EQ(p.driver.in_flight(), 0);
}

INSTANTIATE_TEST_SUITE_P(EventIdx, DriverQueueRoundTrip, ::testing::Bool(), [](const auto& info) {
  return info.param ? std::string("EventIdxOn") : std::string("EventIdxOff");
});

// ---------------------------------------------------------------------------------------------
// add() limits and validation

TEST(DriverQueue, AddRejectsBadSegments) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 4, 0);
  EXPECT_EQ(p.driver.add({}, {}, 1).code(), Errc::kInvalidArgument);
  EXPECT_EQ(p.driver.add({{kData, 0}}, {}, 1).code(), Errc::kInvalidArgument);
  EXPECT_EQ(p.driver.add({{kBase + kMemSize - 4, 8}}, {}, 1).code(), Errc::kOutOfRange);
  EXPECT_EQ(p.driver.add({{0x1000, 8}}, {}, 1).code(), Errc::kOutOfRange);
  EXPECT_EQ(p.driver.add({{kData, 1}, {kData, 1}, {kData, 1}}, {{kData, 1}, {kData, 1}}, 1).code(), Errc::kLimit);
  // Nothing was consumed by the failures.
  EXPECT_EQ(p.driver.num_free(), 4);
  EXPECT_EQ(p.driver.in_flight(), 0);
  EXPECT_EQ(p.driver.avail_idx(), 0);
}

TEST(DriverQueue, AddRejectsChainLongerThan4GiB) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  auto l = layout_split_ring(16384, kBase, 0x80000);
  ASSERT_TRUE(l.ok());
  DriverQueue q;
  ASSERT_TRUE(q.init(&mem, {16384, l->addrs, 0}).ok());
  // 8192 readable segments of 512 KiB (the same memory) add up to exactly 4 GiB: one byte too many.
  std::vector<Segment> segs(8192, Segment{kData, 0x80000});
  EXPECT_EQ(q.add(segs, {}, 1).code(), Errc::kOverflow);
  segs.pop_back();
  std::vector<Segment> w{{kData, 0x80000}};
  EXPECT_EQ(q.add(segs, w, 1).code(), Errc::kOverflow);
  w[0].len = 0x7ffff;
  EXPECT_TRUE(q.add(segs, w, 1).ok());
}

TEST(DriverQueue, KLimitUntilDescriptorsAreReturned) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 4, 0);
  ASSERT_TRUE(p.driver.add({{kData, 1}, {kData, 1}}, {}, 1).ok());
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {{kData, 1}}, 2).ok());
  EXPECT_EQ(p.driver.num_free(), 0);
  EXPECT_EQ(p.driver.add({{kData, 1}}, {}, 3).code(), Errc::kLimit);
  ASSERT_TRUE(p.driver.publish().ok());
  DescriptorChain c;
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.push_used(c.head(), 0).ok());
  ASSERT_TRUE(p.driver.get_used().ok());
  EXPECT_EQ(p.driver.num_free(), 2);
  EXPECT_TRUE(p.driver.add({{kData, 1}}, {}, 3).ok());
}

TEST(DriverQueue, DetachUnusedReturnsTokensInFlight) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 8, 0);
  ASSERT_TRUE(p.driver.add({{kData, 1}, {kData, 1}}, {}, 11).ok());
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 12).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  auto tokens = p.driver.detach_unused();
  std::sort(tokens.begin(), tokens.end());
  EXPECT_EQ(tokens, (std::vector<uint64_t>{11, 12}));
  EXPECT_EQ(p.driver.num_free(), 8);
  EXPECT_EQ(p.driver.in_flight(), 0);
}

// ---------------------------------------------------------------------------------------------
// Indirect descriptors

TEST(DriverQueue, IndirectChainUsesOneRingDescriptor) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 4, kVirtioFIndirectDesc, 4 * 4 * 16);
  ASSERT_EQ(p.driver.indirect_slot_entries(), 4u);
  put(mem, kData, "abcdef");
  auto head = p.driver.add({{kData, 2}, {kData + 2, 2}, {kData + 4, 2}}, {{kData + 0x100, 8}}, 42);
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(p.driver.num_free(), 3);
  auto d = mem.read_obj<VirtqDesc>(p.driver.addrs().desc + 16ull * *head);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->flags.get(), kVirtqDescFIndirect);
  EXPECT_EQ(d->len.get(), 4u * 16);
  EXPECT_EQ(d->addr.get(), kBase + 0x40000 + uint64_t(*head) * 4 * 16);
  ASSERT_TRUE(p.driver.publish().ok());
  EXPECT_EQ(p.serve_one("abcdef", "12345678"), *head);
  auto u = p.driver.get_used();
  ASSERT_TRUE(u.ok() && u->has_value());
  EXPECT_EQ((*u)->token, 42u);
  EXPECT_EQ((*u)->len, 8u);
  EXPECT_EQ(p.driver.num_free(), 4);
}

TEST(DriverQueue, SingleSegmentAndOversizedChainsStayDirect) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 8, kVirtioFIndirectDesc, 8 * 2 * 16);  // slots of 2 entries
  ASSERT_EQ(p.driver.indirect_slot_entries(), 2u);
  auto h1 = p.driver.add({{kData, 1}}, {}, 1);
  ASSERT_TRUE(h1.ok());
  EXPECT_EQ(mem.read_obj<VirtqDesc>(p.driver.addrs().desc + 16ull * *h1)->flags.get(), 0);
  auto h2 = p.driver.add({{kData, 1}}, {{kData, 1}}, 2);  // fits a slot: indirect
  ASSERT_TRUE(h2.ok());
  EXPECT_EQ(mem.read_obj<VirtqDesc>(p.driver.addrs().desc + 16ull * *h2)->flags.get(), kVirtqDescFIndirect);
  auto h3 = p.driver.add({{kData, 1}, {kData, 1}}, {{kData, 1}}, 3);  // too long for a slot: direct
  ASSERT_TRUE(h3.ok());
  EXPECT_EQ(mem.read_obj<VirtqDesc>(p.driver.addrs().desc + 16ull * *h3)->flags.get(), kVirtqDescFNext);
  EXPECT_EQ(p.driver.num_free(), 8 - 1 - 1 - 3);
  ASSERT_TRUE(p.driver.publish().ok());
  std::set<uint64_t> tokens;
  DescriptorChain c;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(*p.device.pop(c));
    ASSERT_TRUE(p.device.push_used(c.head(), c.writable_bytes()).ok());
  }
  for (int i = 0; i < 3; ++i) {
    auto u = p.driver.get_used();
    ASSERT_TRUE(u.ok() && u->has_value());
    tokens.insert((*u)->token);
  }
  EXPECT_EQ(tokens, (std::set<uint64_t>{1, 2, 3}));
  EXPECT_EQ(p.driver.num_free(), 8);
}

TEST(DriverQueue, IndirectAreaIgnoredWithoutTheFeature) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 4, 0, 4 * 4 * 16);
  EXPECT_FALSE(p.driver.indirect());
  ASSERT_TRUE(p.driver.add({{kData, 1}, {kData, 1}}, {}, 1).ok());
  EXPECT_EQ(p.driver.num_free(), 2);
}

// ---------------------------------------------------------------------------------------------
// Notification (kick) suppression

TEST(DriverQueueKick, FollowsNoNotifyFlagWithoutEventIdx) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 8, 0);
  EXPECT_FALSE(p.driver.kick_needed());  // nothing published
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 1).ok());
  EXPECT_FALSE(p.driver.kick_needed());  // added but not published
  ASSERT_TRUE(p.driver.publish().ok());
  EXPECT_TRUE(p.driver.kick_needed());
  EXPECT_FALSE(p.driver.kick_needed());  // already decided for these
  ASSERT_TRUE(p.device.enable_notification(false).ok());
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 2).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  EXPECT_FALSE(p.driver.kick_needed());
  ASSERT_TRUE(p.device.enable_notification(true).ok());
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 3).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  EXPECT_TRUE(p.driver.kick_needed());
}

TEST(DriverQueueKick, FollowsAvailEventWithEventIdx) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 8, kVirtioFEventIdx);
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 1).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  EXPECT_TRUE(p.driver.kick_needed());  // avail_event 0 lies in (0, 1]
  // The device has not caught up (avail_event still 0): no kick for the second chain.
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 2).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  EXPECT_FALSE(p.driver.kick_needed());
  // The NO_NOTIFY flag is ignored with EVENT_IDX; the device asks for a kick at index 2.
  DescriptorChain c;
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.enable_notification(true).ok());
  ASSERT_TRUE(mem.store_release_u16(p.driver.addrs().used, kVirtqUsedFNoNotify).ok());
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 3).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  EXPECT_TRUE(p.driver.kick_needed());
  // Two chains published at once when avail_event points at the first of them: one kick.
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.enable_notification(true).ok());  // avail_event = 3
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 4).ok());
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 5).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  EXPECT_TRUE(p.driver.kick_needed());
  // avail_event far ahead: no kick.
  ASSERT_TRUE(mem.store_release_u16(p.driver.addrs().used + 4 + 8 * 8, 100).ok());
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 6).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  EXPECT_FALSE(p.driver.kick_needed());
}

// ---------------------------------------------------------------------------------------------
// Interrupt (used buffer notification) suppression

TEST(DriverQueueInterrupts, NoInterruptFlagWithoutEventIdx) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 8, 0);
  DescriptorChain c;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, i).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.push_used(c.head(), 0).ok());
  EXPECT_TRUE(p.device.should_notify());
  ASSERT_TRUE(p.driver.disable_interrupts().ok());
  EXPECT_EQ(*mem.load_acquire_u16(p.driver.addrs().avail), kVirtqAvailFNoInterrupt);
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.push_used(c.head(), 0).ok());
  EXPECT_FALSE(p.device.should_notify());
  // Re-enabling reports the buffers already returned, so the driver polls instead of sleeping.
  auto pending = p.driver.enable_interrupts();
  ASSERT_TRUE(pending.ok());
  EXPECT_TRUE(*pending);
  EXPECT_EQ(*mem.load_acquire_u16(p.driver.addrs().avail), 0);
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.push_used(c.head(), 0).ok());
  EXPECT_TRUE(p.device.should_notify());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(p.driver.get_used()->has_value());
  EXPECT_FALSE(*p.driver.enable_interrupts());
}

TEST(DriverQueueInterrupts, UsedEventWithEventIdx) {
  GuestMemory mem = make_memory(kBase, kMemSize);
  QueuePair p(mem, 8, kVirtioFEventIdx);
  const uint64_t used_event = p.driver.addrs().avail + 4 + 2 * 8;
  DescriptorChain c;
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, i).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.push_used(c.head(), 0).ok());
  EXPECT_TRUE(p.device.should_notify());  // used_event 0 lies in [0, 1)
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.push_used(c.head(), 0).ok());
  EXPECT_FALSE(p.device.should_notify());  // the driver has not consumed yet: used_event still 0
  ASSERT_TRUE(p.driver.get_used()->has_value());
  ASSERT_TRUE(p.driver.get_used()->has_value());
  EXPECT_EQ(*mem.load_acquire_u16(used_event), 2);  // the driver asks for the next one
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 2).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.push_used(c.head(), 0).ok());
  EXPECT_TRUE(p.device.should_notify());
  ASSERT_TRUE(p.driver.get_used()->has_value());

  ASSERT_TRUE(p.driver.disable_interrupts().ok());
  EXPECT_EQ(*mem.load_acquire_u16(used_event), uint16_t(3 + 0x8000));
  ASSERT_TRUE(p.driver.add({{kData, 1}}, {}, 3).ok());
  ASSERT_TRUE(p.driver.publish().ok());
  ASSERT_TRUE(*p.device.pop(c));
  ASSERT_TRUE(p.device.push_used(c.head(), 0).ok());
  EXPECT_FALSE(p.device.should_notify());
  ASSERT_TRUE(p.driver.get_used()->has_value());
  EXPECT_EQ(*mem.load_acquire_u16(used_event), uint16_t(3 + 0x8000));  // not moved while disabled
  EXPECT_FALSE(*p.driver.enable_interrupts());
  EXPECT_EQ(*mem.load_acquire_u16(used_event), 4);
}

// ---------------------------------------------------------------------------------------------
// A buggy or malicious device

class MaliciousDevice : public ::testing::Test {
 protected:
  MaliciousDevice() : mem_(make_memory(kBase, kMemSize)), p_(mem_, 8, 0) {}
  void push_raw(uint32_t id, uint32_t len) {
    const uint64_t used = p_.driver.addrs().used;
    uint16_t idx = *mem_.load_acquire_u16(used + 2);
    VirtqUsedElem e;
    e.id = id;
    e.len = len;
    ASSERT_TRUE(mem_.write_obj(used + 4 + 8ull * (idx % 8), e).ok());
    ASSERT_TRUE(mem_.store_release_u16(used + 2, uint16_t(idx + 1)).ok());
  }
  void expect_broken(Errc code = Errc::kProtocol) {
    EXPECT_TRUE(p_.driver.broken());
    EXPECT_EQ(p_.driver.get_used().code(), code);
    EXPECT_EQ(p_.driver.add({{kData, 1}}, {}, 99).code(), Errc::kProtocol);
  }
  GuestMemory mem_;
  QueuePair p_;
};

TEST_F(MaliciousDevice, UsedIdOutOfRangeIsAProtocolError) {
  ASSERT_TRUE(p_.driver.add({{kData, 1}}, {}, 1).ok());
  ASSERT_TRUE(p_.driver.publish().ok());
  push_raw(8, 0);  // queue size 8: ids are 0..7
  auto u = p_.driver.get_used();
  EXPECT_EQ(u.code(), Errc::kProtocol);
  expect_broken();
}

TEST_F(MaliciousDevice, HugeUsedIdIsAProtocolError) {
  ASSERT_TRUE(p_.driver.add({{kData, 1}}, {}, 1).ok());
  push_raw(0xffffffffu, 0);
  EXPECT_EQ(p_.driver.get_used().code(), Errc::kProtocol);
  expect_broken();
}

TEST_F(MaliciousDevice, DuplicateUsedIdIsAProtocolError) {
  auto a = p_.driver.add({{kData, 1}}, {}, 1);
  auto b = p_.driver.add({{kData, 1}}, {}, 2);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(p_.driver.publish().ok());
  push_raw(*a, 0);
  push_raw(*a, 0);  // the same chain twice, while chain b is still in flight
  auto first = p_.driver.get_used();
  ASSERT_TRUE(first.ok() && first->has_value());
  EXPECT_EQ((*first)->token, 1u);
  EXPECT_EQ(p_.driver.get_used().code(), Errc::kProtocol);
  expect_broken();
  // Chain b's descriptors were not handed out twice.
  EXPECT_EQ(p_.driver.in_flight(), 1);
}

TEST_F(MaliciousDevice, UsedIdOfANonHeadDescriptorIsAProtocolError) {
  auto a = p_.driver.add({{kData, 1}, {kData, 1}}, {}, 1);
  ASSERT_TRUE(a.ok());
  ASSERT_EQ(*a, 0);
  push_raw(1, 0);  // descriptor 1 is the chain's second descriptor, not a head
  EXPECT_EQ(p_.driver.get_used().code(), Errc::kProtocol);
  expect_broken();
}

TEST_F(MaliciousDevice, UsedIdxRunningAheadIsAProtocolError) {
  ASSERT_TRUE(p_.driver.add({{kData, 1}}, {}, 1).ok());
  ASSERT_TRUE(mem_.store_release_u16(p_.driver.addrs().used + 2, 5).ok());  // 5 used, 1 in flight
  EXPECT_EQ(p_.driver.get_used().code(), Errc::kProtocol);
  expect_broken();
}

TEST_F(MaliciousDevice, UsedLenBeyondWritableBytesIsCapped) {
  auto a = p_.driver.add({{kData, 4}}, {{kData + 0x100, 16}}, 1);
  ASSERT_TRUE(a.ok());
  push_raw(*a, 0x10000);
  auto u = p_.driver.get_used();
  ASSERT_TRUE(u.ok() && u->has_value());
  EXPECT_EQ((*u)->len, 16u);
  EXPECT_EQ(p_.driver.len_capped(), 1u);
  EXPECT_FALSE(p_.driver.broken());
}

TEST_F(MaliciousDevice, ScribbledDescriptorTableDoesNotCorruptTheFreeList) {
  auto a = p_.driver.add({{kData, 1}, {kData, 1}, {kData, 1}}, {}, 1);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(mem_.fill(p_.driver.addrs().desc, 0xff, 16 * 8).ok());  // device overwrites the table
  push_raw(*a, 0);
  ASSERT_TRUE(p_.driver.get_used()->has_value());
  EXPECT_EQ(p_.driver.num_free(), 8);
  // Eight single-descriptor chains still get eight distinct heads.
  std::set<uint16_t> heads;
  for (int i = 0; i < 8; ++i) heads.insert(*p_.driver.add({{kData, 1}}, {}, i));
  EXPECT_EQ(heads.size(), 8u);
}

TEST_F(MaliciousDevice, ResetRecoversABrokenQueue) {
  ASSERT_TRUE(p_.driver.add({{kData, 1}}, {}, 1).ok());
  push_raw(200, 0);
  EXPECT_EQ(p_.driver.get_used().code(), Errc::kProtocol);
  DriverQueue::Config cfg{8, p_.driver.addrs(), 0};
  ASSERT_TRUE(p_.driver.init(&mem_, cfg).ok());
  EXPECT_FALSE(p_.driver.broken());
  EXPECT_TRUE(p_.driver.add({{kData, 1}}, {}, 2).ok());
}

}  // namespace
}  // namespace canopy::transport
