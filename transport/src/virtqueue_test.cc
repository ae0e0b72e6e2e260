#include "canopy/transport/virtqueue.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "canopy/transport/testing/ring.h"

namespace canopy::transport {
namespace {

using testing::make_memory;
using testing::RawRing;

constexpr uint64_t kRing = 0x0;
constexpr uint64_t kData = 0x10000;

class DeviceQueueTest : public ::testing::Test {
 protected:
  void SetUp() override { configure(0); }
  void configure(uint64_t features) { ASSERT_TRUE(q.configure(&mem, kSize, ring.addrs(), features).ok()); }
  static constexpr uint16_t kSize = 8;
  GuestMemory mem = make_memory(0, 0x20000);
  RawRing ring{mem, kRing, kSize};
  DeviceQueue q;
  DescriptorChain chain;
};

TEST_F(DeviceQueueTest, EmptyRingPopsNothing) {
  auto r = q.pop(chain);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
}

TEST_F(DeviceQueueTest, PopsChainAndReadsWritesThroughIt) {
  const char req[] = "request-bytes";
  ASSERT_TRUE(mem.write(kData, req, sizeof req).ok());
  uint16_t head =
      ring.chain(0).out(kData, 6).out(kData + 6, sizeof req - 6).in(kData + 0x100, 4).in(kData + 0x200, 60).publish();
  auto r = q.pop(chain);
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(chain.head(), head);
  EXPECT_EQ(chain.readable_bytes(), sizeof req);
  EXPECT_EQ(chain.writable_bytes(), 64u);

  DescriptorReader rd(mem, chain);
  char got[sizeof req];
  ASSERT_TRUE(rd.read(got, sizeof got).ok());
  EXPECT_STREQ(got, req);
  EXPECT_EQ(rd.remaining(), 0u);
  EXPECT_EQ(rd.read(got, 1).code(), Errc::kOutOfRange);

  DescriptorWriter wr(mem, chain);
  std::string reply(10, 'r');
  ASSERT_TRUE(wr.write(reply.data(), reply.size()).ok());  // spans the 4-byte and 60-byte buffers
  EXPECT_EQ(wr.bytes_written(), 10u);
  EXPECT_EQ(wr.write(std::string(55, 'x').data(), 55).code(), Errc::kOutOfRange);
  char w0[4], w1[6];
  ASSERT_TRUE(mem.read(kData + 0x100, w0, 4).ok());
  ASSERT_TRUE(mem.read(kData + 0x200, w1, 6).ok());
  EXPECT_EQ(std::string(w0, 4) + std::string(w1, 6), reply);

  ASSERT_TRUE(q.push_used(head, wr.bytes_written()).ok());
  EXPECT_EQ(ring.used_idx(), 1);
  EXPECT_EQ(ring.used(0).id.get(), head);
  EXPECT_EQ(ring.used(0).len.get(), 10u);
}

TEST_F(DeviceQueueTest, ReaderTakesSegmentsForZeroCopy) {
  ring.chain(0).out(kData, 100).out(kData + 0x1000, 50).publish();
  ASSERT_TRUE(*q.pop(chain));
  DescriptorReader rd(mem, chain);
  ASSERT_TRUE(rd.skip(20).ok());
  std::vector<Segment> segs;
  const uint64_t copied_before = mem.bytes_copied();
  ASSERT_TRUE(rd.take_segments(100, segs).ok());
  ASSERT_EQ(segs.size(), 2u);
  EXPECT_EQ(segs[0].gpa, kData + 20);
  EXPECT_EQ(segs[0].len, 80u);
  EXPECT_EQ(segs[1].gpa, kData + 0x1000);
  EXPECT_EQ(segs[1].len, 20u);
  EXPECT_EQ(mem.bytes_copied(), copied_before);  // no byte of the payload was copied
}

TEST_F(DeviceQueueTest, IndexesWrapAround) {
  for (int i = 0; i < 3 * kSize + 3; ++i) {
    ring.chain(uint16_t(i % kSize)).in(kData, 8).publish();
    auto r = q.pop(chain);
    ASSERT_TRUE(r.ok() && *r) << i;
    ASSERT_TRUE(q.push_used(chain.head(), 8).ok());
  }
  EXPECT_EQ(ring.used_idx(), 3 * kSize + 3);
  EXPECT_EQ(q.last_avail_idx(), 3 * kSize + 3);
}

// A head the device holds (popped, not yet used) belongs to the device until it is pushed used. A driver
// that publishes it again would make a back-end serve (and hold) the same request twice, as often as it
// likes: the queue breaks instead. The control: the same head published again after it was pushed used
// is served, and a reset or a ring restart forgets what was held.
TEST_F(DeviceQueueTest, AHeadTheDeviceStillHoldsPublishedAgainBreaksTheQueue) {
  const uint16_t head = ring.chain(3).out(kData, 16).publish();
  ASSERT_TRUE(*q.pop(chain));
  EXPECT_EQ(q.in_flight(), 1u);
  ring.publish(head);  // again, while the device holds it
  auto r = q.pop(chain);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.code(), Errc::kProtocol);
  EXPECT_STREQ(r.error().what, "queue: driver published a head the device still holds");
  EXPECT_TRUE(q.broken());
  EXPECT_EQ(q.pop(chain).code(), Errc::kProtocol) << "broken until reset";

  configure(0);  // a reset: nothing is held
  EXPECT_EQ(q.in_flight(), 0u);
  ring.set_avail_idx(0);
  const uint16_t h2 = ring.chain(3).out(kData, 16).publish();
  ASSERT_TRUE(*q.pop(chain));
  ASSERT_TRUE(q.push_used(h2, 0).ok());
  EXPECT_EQ(q.in_flight(), 0u);
  ring.publish(h2);  // after it came back: a new request
  auto again = q.pop(chain);
  ASSERT_TRUE(again.ok() && *again);
  EXPECT_EQ(chain.head(), h2);
  EXPECT_FALSE(q.broken());
  // A ring restarted at a base (vhost-user SET_VRING_BASE) holds nothing either.
  q.set_last_avail_idx(q.last_avail_idx());
  EXPECT_EQ(q.in_flight(), 0u);
}

TEST_F(DeviceQueueTest, NotifiesUnlessDriverSuppressesInterrupts) {
  ring.chain(0).in(kData, 8).publish();
  ASSERT_TRUE(*q.pop(chain));
  EXPECT_FALSE(q.should_notify());  // nothing used yet
  ASSERT_TRUE(q.push_used(0, 8).ok());
  EXPECT_TRUE(q.should_notify());
  EXPECT_FALSE(q.should_notify());  // already decided for that entry
  ring.set_avail_flags(kVirtqAvailFNoInterrupt);
  ring.chain(1).in(kData, 8).publish();
  ASSERT_TRUE(*q.pop(chain));
  ASSERT_TRUE(q.push_used(1, 8).ok());
  EXPECT_FALSE(q.should_notify());
}

TEST_F(DeviceQueueTest, EventIdxNotifiesOnlyWhenUsedEventIsCrossed) {
  configure(kVirtioFEventIdx);
  // The driver wants an interrupt once used idx passes 2 (used_event = 2 -> after the 3rd entry).
  ring.set_used_event(2);
  for (uint16_t i = 0; i < 4; ++i) ring.chain(i).in(kData, 8).publish();
  std::vector<bool> notes;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(*q.pop(chain));
    ASSERT_TRUE(q.push_used(chain.head(), 8).ok());
    notes.push_back(q.should_notify());
  }
  // The first decision after configure always notifies; then only when crossing used_event == 2.
  EXPECT_EQ(notes, (std::vector<bool>{true, false, true, false}));
}

TEST_F(DeviceQueueTest, EventIdxPublishesAvailEvent) {
  configure(kVirtioFEventIdx);
  ring.chain(0).in(kData, 8).publish();
  ASSERT_TRUE(*q.pop(chain));
  ASSERT_TRUE(q.enable_notification(true).ok());
  EXPECT_EQ(ring.avail_event(), 1);
}

TEST_F(DeviceQueueTest, NoNotifyFlagWithoutEventIdx) {
  ASSERT_TRUE(q.enable_notification(false).ok());
  EXPECT_EQ(ring.used_flags(), kVirtqUsedFNoNotify);
  ASSERT_TRUE(q.enable_notification(true).ok());
  EXPECT_EQ(ring.used_flags(), 0);
}

TEST_F(DeviceQueueTest, ResumesFromVringBase) {
  q.set_last_avail_idx(5);
  ring.set_avail_idx(5);
  auto r = q.pop(chain);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);
}

TEST(DeviceQueueConfig, RejectsBadSizeAndAddresses) {
  auto mem = make_memory(0, 0x10000);
  DeviceQueue q;
  VringAddrs a{0, 0x1000, 0x2000};
  EXPECT_EQ(q.configure(&mem, 0, a, 0).code(), Errc::kInvalidArgument);
  EXPECT_EQ(q.configure(&mem, 3, a, 0).code(), Errc::kInvalidArgument);
  EXPECT_EQ(q.configure(&mem, 8, VringAddrs{8, 0x1000, 0x2000}, 0).code(), Errc::kInvalidArgument);  // desc misaligned
  EXPECT_EQ(q.configure(&mem, 8, VringAddrs{0, 0x1001, 0x2000}, 0).code(), Errc::kInvalidArgument);
  EXPECT_EQ(q.configure(&mem, 8, VringAddrs{0, 0x1000, 0x2002}, 0).code(), Errc::kInvalidArgument);
  EXPECT_EQ(q.configure(&mem, 8, VringAddrs{0, 0x1000, 0xfffc}, 0).code(), Errc::kOutOfRange);
  EXPECT_EQ(q.configure(&mem, 4096, VringAddrs{0x8000, 0x1000, 0x2000}, 0).code(), Errc::kOutOfRange);
  EXPECT_TRUE(q.configure(&mem, 8, a, 0).ok());
  EXPECT_TRUE(q.ready());
}

// Regression (found by fuzz_vhost_user_message): a used ring on top of the avail ring let the device's
// own used-ring writes republish avail entries, looping forever.
TEST(DeviceQueueConfig, RejectsOverlappingRingParts) {
  auto mem = make_memory(0, 0x10000);
  DeviceQueue q;
  EXPECT_EQ(q.configure(&mem, 16, VringAddrs{0x0, 0x100, 0x100}, 0).code(), Errc::kInvalidArgument);  // used == avail
  EXPECT_EQ(q.configure(&mem, 16, VringAddrs{0x0, 0xf0, 0x1000}, 0).code(), Errc::kInvalidArgument);  // avail in desc
  EXPECT_EQ(q.configure(&mem, 16, VringAddrs{0x1000, 0x2000, 0x1080}, 0).code(), Errc::kInvalidArgument);
  EXPECT_TRUE(q.configure(&mem, 16, VringAddrs{0x0, 0x100, 0x128}, 0).ok());  // back to back is fine
}

}  // namespace
}  // namespace canopy::transport
