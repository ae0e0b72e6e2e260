#include "canopy/buffers/udmabuf.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace canopy::buffers {
namespace {

const uint64_t kPage = uint64_t(sysconf(_SC_PAGESIZE));

TEST(Udmabuf, RefusesPiecesThatAreNotWholePages) {
  EXPECT_EQ(make_udmabuf({}).code(), Errc::kInvalidArgument);
  const FilePiece half{3, 0, kPage / 2}, odd{3, 100, kPage};
  EXPECT_EQ(make_udmabuf({&half, 1}).code(), Errc::kInvalidArgument);
  EXPECT_EQ(make_udmabuf({&odd, 1}).code(), Errc::kInvalidArgument);
}

// Where /dev/udmabuf exists the dma-buf shows the pieces' bytes in order; without it the call says so
// and the case skips (a failure under CANOPY_NO_SKIP=1). No host here has the device:
// conformance_udmabuf_qemu runs this binary inside a Linux guest, whose kernel has it.
TEST(Udmabuf, TheDmaBufShowsThePiecesInOrder) {
  if (::access("/dev/udmabuf", R_OK | W_OK) != 0) {
    auto r = make_udmabuf(std::vector<FilePiece>{{0, 0, kPage}});
    EXPECT_EQ(r.code(), Errc::kUnsupported);
    if (std::getenv("CANOPY_NO_SKIP")) FAIL() << "no /dev/udmabuf here (CANOPY_NO_SKIP=1)";
    GTEST_SKIP() << "no /dev/udmabuf here";
  }
  auto shm = SharedMemory::create("udmabuf-test", 4 * kPage);  // sealed against shrinking
  ASSERT_TRUE(shm.ok());
  auto map = shm->map(Access::kReadWrite);
  ASSERT_TRUE(map.ok());
  for (uint64_t p = 0; p < 4; ++p) std::memset(map->data() + p * kPage, int(p + 1), kPage);
  const std::vector<FilePiece> pieces{{shm->fd(), 2 * kPage, kPage}, {shm->fd(), 0, 2 * kPage}};
  auto buf = make_udmabuf(pieces);
  ASSERT_TRUE(buf.ok()) << buf.error().what;
  void* v = ::mmap(nullptr, 3 * kPage, PROT_READ, MAP_SHARED, buf->get(), 0);
  ASSERT_NE(v, MAP_FAILED);
  const auto* b = static_cast<const uint8_t*>(v);
  EXPECT_EQ(b[0], 3);
  EXPECT_EQ(b[kPage], 1);
  EXPECT_EQ(b[2 * kPage + 5], 2);
  ::munmap(v, 3 * kPage);
  // An unsealed memfd is refused by the kernel.
  UniqueFd plain(::memfd_create("unsealed", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(plain.get(), off_t(kPage)), 0);
  EXPECT_EQ(make_udmabuf(std::vector<FilePiece>{{plain.get(), 0, kPage}}).code(), Errc::kIo);
}

}  // namespace
}  // namespace canopy::buffers
