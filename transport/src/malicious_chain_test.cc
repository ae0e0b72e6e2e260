// Chains a malicious or buggy driver can publish, each with the exact bad values. Every one must be
// rejected with an error value, returned to the driver when its head is valid, and leave the queue
// usable for the next good chain.
#include <gtest/gtest.h>

#include <limits>

#include "canopy/transport/testing/ring.h"
#include "canopy/transport/virtqueue.h"

namespace canopy::transport {
namespace {

using testing::make_memory;
using testing::RawRing;

constexpr uint64_t kMemSize = 0x20000;
constexpr uint64_t kData = 0x10000;
constexpr uint64_t kIndirect = 0x8000;

class MaliciousChain : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(q.configure(&mem, kSize, ring.addrs(), kVirtioFIndirectDesc | kVirtioFEventIdx).ok());
  }
  // Pops the published chain and expects rejection with `code`, then proves the queue still works.
  void expect_rejected(Errc code, bool returned_to_driver = true) {
    auto r = q.pop(chain);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.code(), code) << r.error().what;
    EXPECT_EQ(q.chains_rejected(), 1u);
    EXPECT_EQ(ring.used_idx(), returned_to_driver ? 1 : 0);
    if (returned_to_driver) {
      EXPECT_EQ(ring.used(0).len.get(), 0u);
    }
    // A good chain afterwards is served normally.
    ring.chain(10).in(kData, 16).publish();
    auto ok = q.pop(chain);
    ASSERT_TRUE(ok.ok()) << ok.error().what;
    ASSERT_TRUE(*ok);
    EXPECT_EQ(chain.head(), 10);
  }
  static constexpr uint16_t kSize = 16;
  GuestMemory mem = make_memory(0, kMemSize);
  RawRing ring{mem, 0, kSize};
  DeviceQueue q;
  DescriptorChain chain;
};

TEST_F(MaliciousChain, RejectsLoop) {
  ring.set_desc(0, kData, 16, kVirtqDescFNext, 1);
  ring.set_desc(1, kData, 16, kVirtqDescFNext, 0);  // 0 -> 1 -> 0 ...
  ring.publish(0);
  expect_rejected(Errc::kLimit);
}

TEST_F(MaliciousChain, RejectsSelfLoop) {
  ring.set_desc(3, kData, 16, kVirtqDescFNext, 3);
  ring.publish(3);
  expect_rejected(Errc::kLimit);
}

TEST_F(MaliciousChain, RejectsChainLongerThanQueue) {
  // 16 distinct descriptors then a 17th hop back: longer than the table even without revisiting first.
  for (uint16_t i = 0; i < kSize; ++i) ring.set_desc(i, kData, 1, kVirtqDescFNext, uint16_t((i + 1) % kSize));
  ring.publish(0);
  expect_rejected(Errc::kLimit);
}

TEST_F(MaliciousChain, RejectsHeadOutOfRange) {
  ring.publish(kSize);  // head 16 in a 16-entry queue
  expect_rejected(Errc::kOutOfRange, /*returned_to_driver=*/false);
}

TEST_F(MaliciousChain, RejectsNextOutOfRange) {
  ring.set_desc(0, kData, 16, kVirtqDescFNext, 0xffff);
  ring.publish(0);
  expect_rejected(Errc::kOutOfRange);
}

TEST_F(MaliciousChain, RejectsBufferPastEndOfMemory) {
  ring.set_desc(0, kMemSize - 8, 16, 0, 0);
  ring.publish(0);
  expect_rejected(Errc::kOutOfRange);
}

TEST_F(MaliciousChain, RejectsAddressPlusLengthOverflow) {
  ring.set_desc(0, std::numeric_limits<uint64_t>::max() - 7, 16, 0, 0);
  ring.publish(0);
  expect_rejected(Errc::kOutOfRange);
}

TEST_F(MaliciousChain, RejectsZeroLengthDescriptor) {
  ring.set_desc(0, kData, 16, kVirtqDescFNext, 1);
  ring.set_desc(1, kData, 0, 0, 0);
  ring.publish(0);
  expect_rejected(Errc::kInvalidArgument);
}

TEST_F(MaliciousChain, RejectsReadableAfterWritable) {
  ring.set_desc(0, kData, 16, kVirtqDescFWrite | kVirtqDescFNext, 1);
  ring.set_desc(1, kData + 16, 16, 0, 0);
  ring.publish(0);
  expect_rejected(Errc::kProtocol);
}

TEST_F(MaliciousChain, RejectsTotalLengthOver32Bits) {
  // Two overlapping 0x80000000-byte... cannot fit in 128 KiB; use memory big enough instead:
  // lengths 0xffff0000 + 0x10001 overflow even though each alone is a valid u32. The first must be
  // inside guest memory, so the overflow check is exercised with a memory-independent total.
  GuestMemory big;
  ASSERT_TRUE(big.add_region({0, 0x100000000ull + 0x20000, 0, 0}, testing::make_memfd(0x100000000ull + 0x20000)).ok());
  RawRing r(big, 0, kSize);
  DeviceQueue dq;
  ASSERT_TRUE(dq.configure(&big, kSize, r.addrs(), 0).ok());
  r.set_desc(0, 0x10000, 0xffff0000u, kVirtqDescFNext, 1);
  r.set_desc(1, 0x10000, 0x10001u, 0, 0);
  r.publish(0);
  auto res = dq.pop(chain);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.code(), Errc::kOverflow);
}

TEST_F(MaliciousChain, RejectsIndirectInsideIndirect) {
  ring.set_desc_at(kIndirect, 0, kData, 16, kVirtqDescFNext, 1);
  ring.set_desc_at(kIndirect, 1, kIndirect + 0x100, 32, kVirtqDescFIndirect, 0);
  ring.set_desc(0, kIndirect, 32, kVirtqDescFIndirect, 0);
  ring.publish(0);
  expect_rejected(Errc::kProtocol);
}

TEST_F(MaliciousChain, RejectsIndirectWithNextFlag) {
  ring.set_desc_at(kIndirect, 0, kData, 16, 0, 0);
  ring.set_desc(0, kIndirect, 16, kVirtqDescFIndirect | kVirtqDescFNext, 1);
  ring.set_desc(1, kData, 16, 0, 0);
  ring.publish(0);
  expect_rejected(Errc::kProtocol);
}

TEST_F(MaliciousChain, RejectsIndirectTableLengthNotMultipleOf16) {
  ring.set_desc(0, kIndirect, 24, kVirtqDescFIndirect, 0);
  ring.publish(0);
  expect_rejected(Errc::kInvalidArgument);
}

TEST_F(MaliciousChain, RejectsIndirectTableOutsideMemory) {
  ring.set_desc(0, kMemSize - 16, 32, kVirtqDescFIndirect, 0);
  ring.publish(0);
  expect_rejected(Errc::kOutOfRange);
}

TEST_F(MaliciousChain, RejectsLoopInsideIndirectTable) {
  ring.set_desc_at(kIndirect, 0, kData, 16, kVirtqDescFNext, 1);
  ring.set_desc_at(kIndirect, 1, kData, 16, kVirtqDescFNext, 0);
  ring.set_desc(0, kIndirect, 32, kVirtqDescFIndirect, 0);
  ring.publish(0);
  expect_rejected(Errc::kLimit);
}

TEST_F(MaliciousChain, RejectsIndirectNextPastTable) {
  ring.set_desc_at(kIndirect, 0, kData, 16, kVirtqDescFNext, 2);  // table has 2 entries
  ring.set_desc(0, kIndirect, 32, kVirtqDescFIndirect, 0);
  ring.publish(0);
  expect_rejected(Errc::kOutOfRange);
}

TEST_F(MaliciousChain, RejectsIndirectWhenNotNegotiated) {
  DeviceQueue plain;
  ASSERT_TRUE(plain.configure(&mem, kSize, ring.addrs(), 0).ok());
  ring.set_desc_at(kIndirect, 0, kData, 16, 0, 0);
  ring.set_desc(0, kIndirect, 16, kVirtqDescFIndirect, 0);
  ring.publish(0);
  auto r = plain.pop(chain);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.code(), Errc::kProtocol);
}

TEST_F(MaliciousChain, AcceptsWellFormedIndirectChain) {
  ring.set_desc_at(kIndirect, 0, kData, 16, kVirtqDescFNext, 1);
  ring.set_desc_at(kIndirect, 1, kData + 0x100, 32, kVirtqDescFWrite, 0);
  ring.set_desc(0, kIndirect, 32, kVirtqDescFIndirect, 0);
  ring.publish(0);
  auto r = q.pop(chain);
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(chain.readable_bytes(), 16u);
  EXPECT_EQ(chain.writable_bytes(), 32u);
}

TEST_F(MaliciousChain, BreaksQueueWhenAvailIndexRunsAhead) {
  ring.set_avail_idx(kSize + 1);  // 17 new entries in a 16-entry queue
  auto r = q.pop(chain);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.code(), Errc::kProtocol);
  EXPECT_TRUE(q.broken());
  EXPECT_EQ(q.pop(chain).code(), Errc::kProtocol);  // stays broken until reset, never crashes
}

TEST_F(MaliciousChain, RejectsRingOnUnmappedMemoryAfterConfigure) {
  // The guest removes the memory under a configured ring (vhost-user REM_MEM_REG): errors, no crash.
  ASSERT_TRUE(mem.remove_region(0, kMemSize).ok());
  auto r = q.pop(chain);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.code(), Errc::kOutOfRange);
}

}  // namespace
}  // namespace canopy::transport
