#include "canopy/buffers/shared_memory.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include "test_util.h"

namespace canopy::buffers {
namespace {

TEST(SharedMemory, CreatesFixedSizeSealedMemfd) {
  auto shm = SharedMemory::create("test", 8192);
  ASSERT_TRUE(shm.ok());
  EXPECT_EQ(shm->size(), 8192u);
  auto seals = shm->seals();
  ASSERT_TRUE(seals.ok());
  EXPECT_EQ(*seals & kSealFixedSize, kSealFixedSize);
  EXPECT_NE(::fcntl(shm->fd(), F_GETFD) & FD_CLOEXEC, 0);
  errno = 0;
  EXPECT_NE(::ftruncate(shm->fd(), 4096), 0);
  EXPECT_EQ(errno, EPERM);
}

TEST(SharedMemory, RejectsZeroSizeAndSizeAboveCap) {
  EXPECT_EQ(SharedMemory::create("test", 0).code(), Errc::kInvalidArgument);
  EXPECT_EQ(SharedMemory::create(nullptr, 4096).code(), Errc::kInvalidArgument);
  EXPECT_EQ(SharedMemory::create("test", kMaxSharedMemorySize + 1).code(), Errc::kLimit);
  EXPECT_EQ(SharedMemory::create("test", 4096, 0x100).code(), Errc::kInvalidArgument);
}

TEST(SharedMemory, TwoMappingsSeeTheSameBytes) {
  auto shm = SharedMemory::create("test", 4096);
  ASSERT_TRUE(shm.ok());
  auto a = shm->map();
  auto b = shm->map(Access::kRead);
  ASSERT_TRUE(a.ok() && b.ok());
  std::memcpy(a->data(), "hello", 5);
  EXPECT_EQ(std::memcmp(b->data(), "hello", 5), 0);
  EXPECT_EQ(b->access(), Access::kRead);
}

TEST(SharedMemory, MappingAtUnalignedOffsetPointsAtThatByte) {
  auto shm = SharedMemory::create("test", uint64_t{3} * 4096);
  ASSERT_TRUE(shm.ok());
  auto whole = shm->map();
  ASSERT_TRUE(whole.ok());
  for (size_t i = 0; i < whole->size(); ++i) whole->data()[i] = std::byte(i * 31);
  auto part = Mapping::map(shm->fd(), 4096 + 100, 50, Access::kRead);
  ASSERT_TRUE(part.ok());
  EXPECT_EQ(part->size(), 50u);
  EXPECT_EQ(std::memcmp(part->data(), whole->data() + 4096 + 100, 50), 0);
}

TEST(SharedMemory, MappingRejectsZeroSizeBadFdAndOverflow) {
  auto shm = SharedMemory::create("test", 4096);
  ASSERT_TRUE(shm.ok());
  EXPECT_EQ(Mapping::map(shm->fd(), 0, 0, Access::kRead).code(), Errc::kInvalidArgument);
  EXPECT_EQ(Mapping::map(-1, 0, 4096, Access::kRead).code(), Errc::kInvalidArgument);
  EXPECT_EQ(Mapping::map(shm->fd(), std::numeric_limits<uint64_t>::max() - 10, 100, Access::kRead).code(),
            Errc::kOverflow);
  EXPECT_EQ(Mapping::map(shm->fd(), 0, kMaxSharedMemorySize + 1, Access::kRead).code(), Errc::kLimit);
}

TEST(SharedMemory, ImportAcceptsAtLeastTheExpectedSize) {
  auto shm = SharedMemory::create("test", 8192);
  ASSERT_TRUE(shm.ok());
  auto fd = shm->dup_fd();
  ASSERT_TRUE(fd.ok());
  auto imported = SharedMemory::import(std::move(*fd), 4096, kSealShrink);
  ASSERT_TRUE(imported.ok());
  EXPECT_EQ(imported->size(), 8192u);
}

TEST(SharedMemory, ImportRejectsFileSmallerThanExpected) {
  auto shm = SharedMemory::create("test", 8192);
  ASSERT_TRUE(shm.ok());
  EXPECT_EQ(SharedMemory::import(shm->dup_fd().value(), 8193).code(), Errc::kOutOfRange);
}

TEST(SharedMemory, ImportRejectsNonRegularFile) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd w(p[1]);
  EXPECT_EQ(SharedMemory::import(UniqueFd(p[0]), 1).code(), Errc::kInvalidArgument);
}

TEST(SharedMemory, ImportRejectsInvalidFdAndZeroSize) {
  EXPECT_EQ(SharedMemory::import(UniqueFd(), 4096).code(), Errc::kInvalidArgument);
  auto shm = SharedMemory::create("test", 4096);
  ASSERT_TRUE(shm.ok());
  EXPECT_EQ(SharedMemory::import(shm->dup_fd().value(), 0).code(), Errc::kInvalidArgument);
}

TEST(SharedMemory, ImportChecksRequiredSeals) {
  auto shm = SharedMemory::create("test", 4096, 0);
  ASSERT_TRUE(shm.ok());
  EXPECT_EQ(SharedMemory::import(shm->dup_fd().value(), 4096, kSealShrink).code(), Errc::kInvalidArgument);
  ASSERT_TRUE(shm->add_seals(kSealShrink).ok());
  EXPECT_TRUE(SharedMemory::import(shm->dup_fd().value(), 4096, kSealShrink).ok());
  EXPECT_EQ(SharedMemory::import(shm->dup_fd().value(), 4096, kSealShrink | kSealGrow).code(), Errc::kInvalidArgument);
}

TEST(SharedMemory, SealSealForbidsFurtherSeals) {
  auto shm = SharedMemory::create("test", 4096, kSealFixedSize | kSealSeal);
  ASSERT_TRUE(shm.ok());
  auto s = shm->add_seals(kSealWrite);
  EXPECT_EQ(s.code(), Errc::kIo);
  EXPECT_EQ(s.error().sys_errno, EPERM);
}

TEST(SharedMemory, WriteSealFailsWhileWritableMappingExists) {
  auto shm = SharedMemory::create("test", 4096);
  ASSERT_TRUE(shm.ok());
  {
    auto m = shm->map();
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(shm->add_seals(kSealWrite).code(), Errc::kIo);
  }
  EXPECT_TRUE(shm->add_seals(kSealWrite).ok());
  EXPECT_EQ(shm->map(Access::kReadWrite).code(), Errc::kIo);
  EXPECT_TRUE(shm->map(Access::kRead).ok());
}

TEST(SharedMemory, MovedFromObjectsAreEmpty) {
  auto shm = SharedMemory::create("test", 4096);
  ASSERT_TRUE(shm.ok());
  auto m = shm->map();
  ASSERT_TRUE(m.ok());
  Mapping m2 = std::move(*m);
  EXPECT_FALSE(m->valid());
  EXPECT_EQ(m->size(), 0u);
  EXPECT_TRUE(m2.valid());
  m->reset();  // safe on an empty mapping

  SharedMemory s2 = std::move(*shm);
  EXPECT_FALSE(shm->valid());
  EXPECT_EQ(shm->size(), 0u);
  EXPECT_EQ(shm->map().code(), Errc::kState);
  EXPECT_EQ(shm->seals().code(), Errc::kState);
  EXPECT_EQ(shm->dup_fd().code(), Errc::kState);
  EXPECT_TRUE(s2.valid());
}

}  // namespace
}  // namespace canopy::buffers
