#include "canopy/buffers/scatter_mapping.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace canopy::buffers {
namespace {

const uint64_t kPage = uint64_t(sysconf(_SC_PAGESIZE));

SharedMemory pattern_file(uint64_t pages) {
  auto shm = SharedMemory::create("scatter-test", pages * kPage);
  EXPECT_TRUE(shm.ok());
  auto map = shm->map(Access::kReadWrite);
  EXPECT_TRUE(map.ok());
  for (uint64_t pg = 0; pg < pages; ++pg) std::memset(map->data() + pg * kPage, int(pg + 1), kPage);
  return std::move(*shm);
}

TEST(ScatterMapping, MapsScatteredPagesInTheGivenOrder) {
  SharedMemory f = pattern_file(8);
  // Pages 5, 2, 3 (adjacent: one mmap), then half of page 7.
  std::vector<FilePiece> pieces{{f.fd(), 5 * kPage, kPage},
                                {f.fd(), 2 * kPage, kPage},
                                {f.fd(), 3 * kPage, kPage},
                                {f.fd(), 7 * kPage, kPage / 2}};
  auto m = map_scattered(pieces, Access::kRead);
  ASSERT_TRUE(m.ok()) << m.error().what;
  EXPECT_EQ(m->size(), 3 * kPage + kPage / 2);
  EXPECT_EQ(m->map_calls(), 3u);
  EXPECT_EQ(uint8_t(m->data()[0]), 6);
  EXPECT_EQ(uint8_t(m->data()[kPage]), 3);
  EXPECT_EQ(uint8_t(m->data()[2 * kPage + 7]), 4);
  EXPECT_EQ(uint8_t(m->data()[3 * kPage + kPage / 2 - 1]), 8);
}

TEST(ScatterMapping, WritesReachTheFile) {
  SharedMemory f = pattern_file(4);
  std::vector<FilePiece> pieces{{f.fd(), 3 * kPage, kPage}, {f.fd(), 0, kPage}};
  auto m = map_scattered(pieces, Access::kReadWrite);
  ASSERT_TRUE(m.ok());
  m->data()[kPage + 1] = std::byte{0xab};
  auto direct = f.map(Access::kRead);
  ASSERT_TRUE(direct.ok());
  EXPECT_EQ(uint8_t(direct->data()[1]), 0xab);
}

TEST(ScatterMapping, RefusesMisalignedPiecesSoTheCallerCopies) {
  SharedMemory f = pattern_file(4);
  std::vector<FilePiece> odd_offset{{f.fd(), 100, kPage}};
  EXPECT_FALSE(scatter_mappable(odd_offset));
  EXPECT_EQ(map_scattered(odd_offset, Access::kRead).error().code, Errc::kUnsupported);
  std::vector<FilePiece> short_middle{{f.fd(), 0, 100}, {f.fd(), kPage, kPage}};
  EXPECT_EQ(map_scattered(short_middle, Access::kRead).error().code, Errc::kUnsupported);
}

TEST(ScatterMapping, RefusesEmptyZeroLengthAndOverflow) {
  SharedMemory f = pattern_file(1);
  EXPECT_EQ(map_scattered({}, Access::kRead).error().code, Errc::kInvalidArgument);
  std::vector<FilePiece> zero{{f.fd(), 0, 0}};
  EXPECT_EQ(map_scattered(zero, Access::kRead).error().code, Errc::kInvalidArgument);
  std::vector<FilePiece> wrap{{f.fd(), ~uint64_t{0} - kPage + 1, kPage}};
  EXPECT_EQ(map_scattered(wrap, Access::kRead).error().code, Errc::kOverflow);
  std::vector<FilePiece> huge{{f.fd(), 0, kMaxSharedMemorySize}, {f.fd(), 0, kPage}};
  EXPECT_EQ(map_scattered(huge, Access::kRead).error().code, Errc::kLimit);
}

TEST(ScatterMapping, MoveLeavesTheSourceEmpty) {
  SharedMemory f = pattern_file(2);
  std::vector<FilePiece> pieces{{f.fd(), kPage, kPage}};
  auto m = map_scattered(pieces, Access::kRead);
  ASSERT_TRUE(m.ok());
  ScatterMapping moved = std::move(*m);
  EXPECT_FALSE(m->valid());
  EXPECT_EQ(uint8_t(moved.data()[0]), 2);
}

}  // namespace
}  // namespace canopy::buffers
