#include "canopy/transport/guest_memory.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "canopy/transport/testing/ring.h"

namespace canopy::transport {
namespace {

using testing::make_memfd;
using testing::make_memory;

TEST(GuestMemory, ReadsBackWhatWasWritten) {
  auto mem = make_memory(0x1000, 0x4000);
  const char msg[] = "hello guest";
  ASSERT_TRUE(mem.write(0x2000, msg, sizeof msg).ok());
  char out[sizeof msg] = {};
  ASSERT_TRUE(mem.read(0x2000, out, sizeof out).ok());
  EXPECT_STREQ(out, msg);
  EXPECT_EQ(mem.bytes_copied(), 2 * sizeof msg);
}

TEST(GuestMemory, RejectsRangesOutsideOrOverflowing) {
  auto mem = make_memory(0x1000, 0x1000);
  char b[16];
  EXPECT_EQ(mem.read(0xff8, b, 16).code(), Errc::kOutOfRange);   // starts below
  EXPECT_EQ(mem.read(0x1ff8, b, 16).code(), Errc::kOutOfRange);  // runs past the end
  EXPECT_EQ(mem.read(0x2000, b, 1).code(), Errc::kOutOfRange);
  EXPECT_EQ(mem.read(std::numeric_limits<uint64_t>::max() - 4, b, 16).code(), Errc::kOverflow);
  EXPECT_TRUE(mem.read(0x1ff0, b, 16).ok());
}

// A front-end may hand an unsealed file and truncate it later: the back-end survives (the region reads
// zeros from then on; buffers::fault_guard) and the memory says which region was lost. The control run,
// a reader without the guard dying of SIGBUS, is in core/buffers' fault_guard_test.
TEST(GuestMemory, ARegionWhoseFileIsTruncatedReadsZerosAndIsReportedLost) {
  GuestMemory mem;
  UniqueFd fd = make_memfd(0x2000);
  const int raw = fd.get();
  ASSERT_TRUE(mem.add_region({0x0, 0x1000, 0, 0}, make_memfd(0x1000)).ok());
  ASSERT_TRUE(mem.add_region({0x1000, 0x2000, 0, 0}, std::move(fd)).ok());
  const uint8_t in[4] = {1, 2, 3, 4};
  ASSERT_TRUE(mem.write(0x1800, in, 4).ok());
  ASSERT_TRUE(mem.write(0x10, in, 4).ok());
  EXPECT_TRUE(mem.check_lost().ok());
  ASSERT_EQ(::ftruncate(raw, 0), 0);  // the front-end's move (the region owns the descriptor)
  uint8_t out[4] = {9, 9, 9, 9};
  ASSERT_TRUE(mem.read(0x1800, out, 4).ok());
  EXPECT_EQ(out[0] | out[1] | out[2] | out[3], 0);
  const Status lost = mem.check_lost();
  EXPECT_EQ(lost.code(), Errc::kIo);
  // The other region is untouched.
  ASSERT_TRUE(mem.read(0x10, out, 4).ok());
  EXPECT_EQ(std::memcmp(in, out, 4), 0);
}

TEST(GuestMemory, AccessSpansAdjacentRegions) {
  GuestMemory mem;
  ASSERT_TRUE(mem.add_region({0x0, 0x1000, 0, 0}, make_memfd(0x1000)).ok());
  ASSERT_TRUE(mem.add_region({0x1000, 0x1000, 0, 0}, make_memfd(0x1000)).ok());
  uint8_t in[32], out[32];
  for (int i = 0; i < 32; ++i) in[i] = uint8_t(i + 1);
  ASSERT_TRUE(mem.write(0x1000 - 16, in, 32).ok());
  ASSERT_TRUE(mem.read(0x1000 - 16, out, 32).ok());
  EXPECT_EQ(std::memcmp(in, out, 32), 0);
  auto ranges = mem.file_ranges(0x1000 - 16, 32);
  ASSERT_TRUE(ranges.ok());
  ASSERT_EQ(ranges->size(), 2u);
  EXPECT_EQ((*ranges)[0].offset, 0x1000u - 16);
  EXPECT_EQ((*ranges)[1].offset, 0u);
}

TEST(GuestMemory, HostRangesSplitAtRegionsAndRejectWhatIsNotMemory) {
  GuestMemory mem;
  ASSERT_TRUE(mem.add_region({0x0, 0x1000, 0, 0}, make_memfd(0x1000)).ok());
  ASSERT_TRUE(mem.add_region({0x1000, 0x1000, 0, 0}, make_memfd(0x1000)).ok());
  const uint8_t in[4] = {1, 2, 3, 4};
  ASSERT_TRUE(mem.write(0x1000 - 2, in, 4).ok());
  auto r = mem.host_ranges(0x1000 - 2, 4);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].len, 2u);
  EXPECT_EQ((*r)[1].len, 2u);
  EXPECT_EQ((*r)[0].base[1], 2);
  EXPECT_EQ((*r)[1].base[0], 3);
  EXPECT_EQ(mem.host_ranges(0x1ff0, 0x20).code(), Errc::kOutOfRange);
  EXPECT_EQ(mem.host_ranges(std::numeric_limits<uint64_t>::max() - 4, 16).code(), Errc::kOverflow);
}

TEST(GuestMemory, HoleBetweenRegionsIsNotMemory) {
  GuestMemory mem;
  ASSERT_TRUE(mem.add_region({0x0, 0x1000, 0, 0}, make_memfd(0x1000)).ok());
  ASSERT_TRUE(mem.add_region({0x3000, 0x1000, 0, 0}, make_memfd(0x1000)).ok());
  EXPECT_FALSE(mem.contains(0xff0, 0x20));
  EXPECT_FALSE(mem.contains(0x2000, 1));
  EXPECT_TRUE(mem.contains(0x3000, 0x1000));
}

TEST(GuestMemory, RejectsOverlappingAndZeroSizedRegions) {
  GuestMemory mem;
  ASSERT_TRUE(mem.add_region({0x1000, 0x2000, 0, 0}, make_memfd(0x2000)).ok());
  EXPECT_EQ(mem.add_region({0x2000, 0x1000, 0, 0}, make_memfd(0x1000)).code(), Errc::kInvalidArgument);
  EXPECT_EQ(mem.add_region({0x0, 0x1001, 0, 0}, make_memfd(0x2000)).code(), Errc::kInvalidArgument);
  EXPECT_EQ(mem.add_region({0x8000, 0, 0, 0}, make_memfd(0x1000)).code(), Errc::kInvalidArgument);
  EXPECT_EQ(mem.add_region({std::numeric_limits<uint64_t>::max() - 0xfff, 0x2000, 0, 0}, make_memfd(0x2000)).code(),
            Errc::kOverflow);
  EXPECT_EQ(mem.region_count(), 1u);
}

TEST(GuestMemory, MapsAtUnalignedFileOffset) {
  auto fd = make_memfd(0x3000);
  ASSERT_EQ(pwrite(fd.get(), "X", 1, 0x1234), 1);
  GuestMemory mem;
  ASSERT_TRUE(mem.add_region({0x10000, 0x1000, 0, 0x1234}, std::move(fd)).ok());
  auto b = mem.read_obj<char>(0x10000);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, 'X');
}

TEST(GuestMemory, TranslatesFrontendAddresses) {
  GuestMemory mem;
  ASSERT_TRUE(mem.add_region({0x100000, 0x1000, 0x7f0000000000, 0}, make_memfd(0x1000)).ok());
  auto g = mem.uva_to_gpa(0x7f0000000010, 0x10);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(*g, 0x100010u);
  EXPECT_FALSE(mem.uva_to_gpa(0x7f0000000ff8, 0x10).ok());
  EXPECT_FALSE(mem.uva_to_gpa(0x1000, 0x10).ok());
}

TEST(GuestMemory, AtomicU16RejectsMisalignedAndOutOfRange) {
  auto mem = make_memory(0, 0x1000);
  EXPECT_TRUE(mem.store_release_u16(0x10, 0xbeef).ok());
  EXPECT_EQ(*mem.load_acquire_u16(0x10), 0xbeef);
  EXPECT_EQ(mem.load_acquire_u16(0x11).code(), Errc::kOutOfRange);
  EXPECT_EQ(mem.load_acquire_u16(0x1000).code(), Errc::kOutOfRange);
  EXPECT_EQ(mem.store_release_u16(0xfff, 1).code(), Errc::kOutOfRange);
}

TEST(GuestMemory, RemovesRegionByExactRange) {
  auto mem = make_memory(0x1000, 0x1000);
  EXPECT_EQ(mem.remove_region(0x1000, 0x800).code(), Errc::kInvalidArgument);
  EXPECT_TRUE(mem.remove_region(0x1000, 0x1000).ok());
  EXPECT_FALSE(mem.contains(0x1000, 1));
}

}  // namespace
}  // namespace canopy::transport
