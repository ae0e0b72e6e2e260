#include "canopy/buffers/image.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <limits>

#include "canopy/buffers/fd_passing.h"
#include "test_util.h"

namespace canopy::buffers {
namespace {

using testing::make_socketpair;

TEST(ImageFormat, FourccValuesMatchDrm) {
  EXPECT_EQ(to_fourcc(Format::kXRGB8888), 0x34325258u);
  EXPECT_EQ(to_fourcc(Format::kARGB8888), 0x34325241u);
  EXPECT_EQ(to_fourcc(Format::kABGR8888), 0x34324241u);
  EXPECT_EQ(to_fourcc(Format::kXBGR8888), 0x34324258u);
  EXPECT_EQ(to_fourcc(Format::kRGB565), 0x36314752u);
  EXPECT_EQ(to_fourcc(Format::kNV12), 0x3231564eu);
}

TEST(ImageFormat, FromFourccRejectsUnsupportedCodes) {
  EXPECT_EQ(format_from_fourcc(0x3231564eu), Format::kNV12);
  EXPECT_FALSE(format_from_fourcc(fourcc_code('Y', 'U', 'Y', 'V')).has_value());
  EXPECT_FALSE(format_from_fourcc(0).has_value());
  EXPECT_STREQ(format_name(Format::kRGB565), "RGB565");
  EXPECT_STREQ(format_name(static_cast<Format>(0)), "unknown");
}

TEST(ImageFormat, PlaneGeometry) {
  EXPECT_EQ(plane_count(Format::kXRGB8888), 1u);
  EXPECT_EQ(plane_count(Format::kNV12), 2u);
  EXPECT_EQ(plane_count(static_cast<Format>(1)), 0u);
  EXPECT_EQ(bytes_per_pixel(Format::kABGR8888), 4u);
  EXPECT_EQ(bytes_per_pixel(Format::kRGB565), 2u);
  EXPECT_EQ(*min_stride(Format::kXRGB8888, 3, 0), 12u);
  EXPECT_EQ(*min_stride(Format::kRGB565, 3, 0), 6u);
  EXPECT_EQ(*min_stride(Format::kNV12, 5, 0), 5u);
  EXPECT_EQ(*min_stride(Format::kNV12, 5, 1), 6u);  // ceil(5 / 2) UV pairs of 2 bytes
  EXPECT_EQ(*plane_rows(Format::kNV12, 5, 0), 5u);
  EXPECT_EQ(*plane_rows(Format::kNV12, 5, 1), 3u);
  EXPECT_EQ(*plane_size(Format::kNV12, 5, 8, 1), 24u);
  EXPECT_EQ(min_stride(Format::kXRGB8888, 3, 1).code(), Errc::kInvalidArgument);
  EXPECT_EQ(plane_info(static_cast<Format>(7), 0).code(), Errc::kUnsupported);
}

TEST(ImageFormat, RowSizeOverflowIsAnError) {
  EXPECT_EQ(min_stride(Format::kXRGB8888, 0x40000000u, 0).code(), Errc::kOverflow);
}

TEST(ImageLayout, PackedNV12PlacesChromaAfterLuma) {
  auto l = ImageLayout::packed(Format::kNV12, 64, 48);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->planes[0], (PlaneLayout{0, 64}));
  EXPECT_EQ(l->planes[1], (PlaneLayout{3072, 64}));
  EXPECT_EQ(*l->required_size(), 3072u + 64 * 24);
  EXPECT_TRUE(l->validate(4608).ok());
}

TEST(ImageLayout, PackedOddSizedNV12KeepsChromaAligned) {
  auto l = ImageLayout::packed(Format::kNV12, 5, 3, 1);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->planes[0], (PlaneLayout{0, 5}));
  EXPECT_EQ(l->planes[1], (PlaneLayout{16, 6}));  // offset 15 rounded up to the 2-byte UV pair
  EXPECT_EQ(*l->required_size(), 16u + 6 * 2);
}

TEST(ImageLayout, PackedRejectsBadAlignment) {
  EXPECT_EQ(ImageLayout::packed(Format::kXRGB8888, 4, 4, 3).code(), Errc::kInvalidArgument);
  EXPECT_EQ(ImageLayout::packed(Format::kXRGB8888, 4, 4, 0).code(), Errc::kInvalidArgument);
  EXPECT_EQ(ImageLayout::packed(Format::kXRGB8888, 4, 4, 8192).code(), Errc::kInvalidArgument);
}

class ImageLayoutValidation : public ::testing::Test {
 protected:
  // XRGB8888 64x48, stride 256: 12288 bytes.
  ImageLayout good_ = ImageLayout::packed(Format::kXRGB8888, 64, 48).value();
  static constexpr uint64_t kSize = uint64_t{256} * 48;
};

TEST_F(ImageLayoutValidation, AcceptsExactBacking) { EXPECT_TRUE(good_.validate(kSize).ok()); }

TEST_F(ImageLayoutValidation, RejectsStrideSmallerThanRow) {
  good_.planes[0].stride = 252;
  EXPECT_EQ(good_.validate(kSize).code(), Errc::kInvalidArgument);
}

TEST_F(ImageLayoutValidation, RejectsStrideNotMultipleOfPixelSize) {
  good_.planes[0].stride = 258;
  EXPECT_EQ(good_.validate(1 << 20).code(), Errc::kInvalidArgument);
}

TEST_F(ImageLayoutValidation, RejectsMisalignedPlaneOffset) {
  good_.planes[0].offset = 2;
  EXPECT_EQ(good_.validate(1 << 20).code(), Errc::kInvalidArgument);
}

TEST_F(ImageLayoutValidation, RejectsZeroWidthAndZeroHeight) {
  ImageLayout l = good_;
  l.width = 0;
  EXPECT_EQ(l.validate(kSize).code(), Errc::kInvalidArgument);
  l = good_;
  l.height = 0;
  EXPECT_EQ(l.validate(kSize).code(), Errc::kInvalidArgument);
}

TEST_F(ImageLayoutValidation, RejectsDimensionsAboveCap) {
  ImageLayout l = good_;
  l.width = 16385;
  l.planes[0].stride = 16385 * 4;
  EXPECT_EQ(l.validate(uint64_t{1} << 32).code(), Errc::kLimit);
  l = good_;
  l.height = 16385;
  EXPECT_EQ(l.validate(uint64_t{1} << 32).code(), Errc::kLimit);
  l = good_;
  l.width = 16384;
  l.height = 1;
  l.planes[0].stride = 16384 * 4;
  EXPECT_TRUE(l.validate(uint64_t{16384} * 4).ok());
}

TEST_F(ImageLayoutValidation, RejectsPlaneOutsideBacking) {
  EXPECT_EQ(good_.validate(kSize - 1).code(), Errc::kOutOfRange);
  good_.planes[0].offset = 4;
  EXPECT_EQ(good_.validate(kSize).code(), Errc::kOutOfRange);
  EXPECT_TRUE(good_.validate(kSize + 4).ok());
}

TEST_F(ImageLayoutValidation, RejectsPlaneEndOverflow) {
  good_.planes[0].offset = std::numeric_limits<uint64_t>::max() - 3;
  EXPECT_EQ(good_.validate(std::numeric_limits<uint64_t>::max()).code(), Errc::kOverflow);
}

TEST_F(ImageLayoutValidation, RejectsUnknownFormat) {
  good_.format = static_cast<Format>(fourcc_code('Y', 'U', 'Y', 'V'));
  EXPECT_EQ(good_.validate(kSize).code(), Errc::kUnsupported);
}

TEST_F(ImageLayoutValidation, RejectsNonLinearModifier) {
  good_.modifier = 0x0100000000000001ull;  // I915_FORMAT_MOD_X_TILED
  EXPECT_EQ(good_.validate(kSize).code(), Errc::kUnsupported);
}

TEST_F(ImageLayoutValidation, RejectsNonZeroUnusedPlane) {
  ImageLayout l = good_;
  l.planes[1].stride = 4;
  EXPECT_EQ(l.validate(kSize).code(), Errc::kInvalidArgument);
  l = good_;
  l.planes[3].offset = 8;
  EXPECT_EQ(l.validate(kSize).code(), Errc::kInvalidArgument);
}

TEST(ImageLayoutValidationNV12, RejectsChromaPlaneOutsideBacking) {
  auto l = ImageLayout::packed(Format::kNV12, 64, 48).value();
  EXPECT_EQ(l.validate(4607).code(), Errc::kOutOfRange);
  l.planes[1].stride = 62;  // below the 64-byte UV row
  EXPECT_EQ(l.validate(1 << 20).code(), Errc::kInvalidArgument);
}

// --- ImageBuffer -------------------------------------------------------------------------------------

TEST(ImageBuffer, AllocatesSealedPackedImage) {
  auto img = ImageBuffer::allocate(Format::kXRGB8888, 64, 48);
  ASSERT_TRUE(img.ok());
  EXPECT_EQ(img->backing(), ImageBuffer::Backing::kOwned);
  EXPECT_EQ(img->backing_size(), 256u * 48);
  EXPECT_EQ(img->layout().planes[0].stride, 256u);
  int seals = ::fcntl(img->fd(), F_GET_SEALS);
  EXPECT_EQ(uint32_t(seals) & kSealFixedSize, kSealFixedSize);
}

TEST(ImageBuffer, AllocateRejectsInvalidLayout) {
  ImageLayout l = ImageLayout::packed(Format::kXRGB8888, 8, 8).value();
  l.planes[0].stride = 4;
  EXPECT_EQ(ImageBuffer::allocate(l).code(), Errc::kInvalidArgument);
  EXPECT_EQ(ImageBuffer::allocate(Format::kXRGB8888, 0, 8).code(), Errc::kInvalidArgument);
}

TEST(ImageBuffer, MappingAddressesPlanesAndRows) {
  auto img = ImageBuffer::allocate(Format::kNV12, 33, 17);
  ASSERT_TRUE(img.ok());
  auto m = img->map();
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->plane(0).size(), 64u * 17);
  EXPECT_EQ(m->plane(1).size(), 64u * 9);
  EXPECT_EQ(m->plane(1).data(), m->bytes().data() + img->layout().planes[1].offset);
  EXPECT_EQ(m->row(0, 16).size(), 33u);
  EXPECT_EQ(m->row(1, 8).size(), 34u);
  EXPECT_EQ(m->row(1, 8).data(), m->plane(1).data() + size_t{8} * 64);
  EXPECT_TRUE(m->row(0, 17).empty());
  EXPECT_TRUE(m->row(1, 9).empty());
  EXPECT_TRUE(m->plane(2).empty());
}

TEST(ImageBuffer, WrapsRegionOfExternalFileWithoutTakingIt) {
  // "Guest memory": 1 MiB; the image sits at an unaligned offset inside it.
  auto guest = SharedMemory::create("guest", 1 << 20, 0);
  ASSERT_TRUE(guest.ok());
  auto layout = ImageLayout::packed(Format::kRGB565, 10, 4, 4).value();  // stride 20
  const uint64_t offset = 4096 + 128;
  {
    auto img = ImageBuffer::wrap_external(guest->fd(), offset, *layout.required_size(), layout);
    ASSERT_TRUE(img.ok());
    EXPECT_EQ(img->backing(), ImageBuffer::Backing::kExternal);
    EXPECT_NE(img->fd(), guest->fd());
    auto m = img->map();
    ASSERT_TRUE(m.ok());
    std::memset(m->row(0, 3).data(), 0x5a, m->row(0, 3).size());
  }
  EXPECT_EQ(::fcntl(guest->fd(), F_GETFD) >= 0, true);  // still open: borrowed, not owned
  auto whole = guest->map(Access::kRead);
  ASSERT_TRUE(whole.ok());
  const std::byte* row3 = whole->data() + offset + size_t{3} * 20;
  for (int i = 0; i < 20; ++i) EXPECT_EQ(row3[i], std::byte{0x5a});
  EXPECT_EQ(whole->data()[offset + size_t{3} * 20 + 20], std::byte{0});
}

TEST(ImageBuffer, WrapExternalRejectsRegionOutsideFile) {
  auto guest = SharedMemory::create("guest", 8192, 0);
  ASSERT_TRUE(guest.ok());
  auto layout = ImageLayout::packed(Format::kXRGB8888, 16, 16).value();  // 1024 bytes
  EXPECT_EQ(ImageBuffer::wrap_external(guest->fd(), 8192 - 1023, 1024, layout).code(), Errc::kOutOfRange);
  EXPECT_EQ(ImageBuffer::wrap_external(guest->fd(), 0, 1023, layout).code(), Errc::kOutOfRange);
  EXPECT_EQ(ImageBuffer::wrap_external(-1, 0, 1024, layout).code(), Errc::kInvalidArgument);
  EXPECT_TRUE(ImageBuffer::wrap_external(guest->fd(), 8192 - 1024, 1024, layout).ok());
}

TEST(ImageBuffer, MovedFromBufferIsEmpty) {
  auto img = ImageBuffer::allocate(Format::kXRGB8888, 4, 4);
  ASSERT_TRUE(img.ok());
  ImageBuffer other = std::move(*img);
  EXPECT_FALSE(img->valid());
  EXPECT_EQ(img->backing(), ImageBuffer::Backing::kNone);
  EXPECT_EQ(img->map().code(), Errc::kState);
  EXPECT_EQ(img->export_image().code(), Errc::kState);
  EXPECT_TRUE(other.valid());
}

// --- Wire metadata ----------------------------------------------------------------------------------

TEST(ImageWire, MetadataIsLittleEndianOnTheWire) {
  auto img = ImageBuffer::allocate(Format::kNV12, 64, 48);
  ASSERT_TRUE(img.ok());
  auto e = img->export_image();
  ASSERT_TRUE(e.ok());
  const auto* b = reinterpret_cast<const uint8_t*>(&e->meta);
  EXPECT_EQ(std::memcmp(b, "CNIB", 4), 0);
  EXPECT_EQ(std::memcmp(b + 8, "NV12", 4), 0);
  EXPECT_EQ(b[12], 64);         // width
  EXPECT_EQ(b[16], 48);         // height
  EXPECT_EQ(b[20], 2);          // planes
  EXPECT_EQ(b[48 + 16], 0x00);  // plane 1 offset 3072 = 0x0c00
  EXPECT_EQ(b[48 + 17], 0x0c);
}

class ImageImport : public ::testing::Test {
 protected:
  void SetUp() override {
    img_ = ImageBuffer::allocate(Format::kXRGB8888, 64, 48).value();  // stride 256, 12288 bytes
    meta_ = img_.export_image().value().meta;
  }
  Result<ImageBuffer> import(const ImageWireMetadata& m, uint32_t seals = 0) {
    return ImageBuffer::import(UniqueFd(::fcntl(img_.fd(), F_DUPFD_CLOEXEC, 0)), m, seals);
  }
  ImageBuffer img_;
  ImageWireMetadata meta_{};
};

TEST_F(ImageImport, RoundTripPreservesLayoutAndSharesPixels) {
  auto e = img_.export_image();
  ASSERT_TRUE(e.ok());
  auto imported = ImageBuffer::import(std::move(e->fd), e->meta, kSealShrink);
  ASSERT_TRUE(imported.ok());
  EXPECT_EQ(imported->layout(), img_.layout());
  EXPECT_EQ(imported->backing(), ImageBuffer::Backing::kImported);
  auto a = img_.map();
  auto b = imported->map(Access::kRead);
  ASSERT_TRUE(a.ok() && b.ok());
  a->row(0, 47)[255] = std::byte{0x77};
  EXPECT_EQ(b->row(0, 47)[255], std::byte{0x77});
}

TEST_F(ImageImport, RejectsBadMagic) {
  meta_.magic = 0x42494e44u;
  EXPECT_EQ(import(meta_).code(), Errc::kInvalidArgument);
}

TEST_F(ImageImport, RejectsUnknownVersion) {
  meta_.version = 2u;
  EXPECT_EQ(import(meta_).code(), Errc::kInvalidArgument);
}

TEST_F(ImageImport, RejectsUnknownFourcc) {
  meta_.fourcc = fourcc_code('Y', 'U', 'Y', 'V');
  EXPECT_EQ(import(meta_).code(), Errc::kUnsupported);
}

TEST_F(ImageImport, RejectsZeroWidth) {
  meta_.width = 0u;
  EXPECT_EQ(import(meta_).code(), Errc::kInvalidArgument);
}

TEST_F(ImageImport, RejectsHeightAboveCap) {
  meta_.height = 16385u;
  EXPECT_EQ(import(meta_).code(), Errc::kLimit);
}

TEST_F(ImageImport, RejectsPlaneCountNotMatchingFormat) {
  meta_.num_planes = 2u;
  EXPECT_EQ(import(meta_).code(), Errc::kInvalidArgument);
}

TEST_F(ImageImport, RejectsStrideSmallerThanRow) {
  meta_.planes[0].stride = 255u;
  EXPECT_EQ(import(meta_).code(), Errc::kInvalidArgument);
  meta_.planes[0].stride = 252u;
  EXPECT_EQ(import(meta_).code(), Errc::kInvalidArgument);
}

TEST_F(ImageImport, RejectsPlaneOutsideBacking) {
  meta_.planes[0].offset = uint64_t{4};
  EXPECT_EQ(import(meta_).code(), Errc::kOutOfRange);
}

TEST_F(ImageImport, RejectsPlaneOffsetOverflow) {
  meta_.planes[0].offset = std::numeric_limits<uint64_t>::max() - 3;
  EXPECT_EQ(import(meta_).code(), Errc::kOverflow);
}

TEST_F(ImageImport, RejectsBackingLargerThanFile) {
  meta_.backing_size = uint64_t{12289};
  EXPECT_EQ(import(meta_).code(), Errc::kOutOfRange);
}

TEST_F(ImageImport, RejectsFdOffsetPastEndOfFile) {
  meta_.fd_offset = uint64_t{4096};
  EXPECT_EQ(import(meta_).code(), Errc::kOutOfRange);
  meta_.fd_offset = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(import(meta_).code(), Errc::kOutOfRange);
}

TEST_F(ImageImport, RejectsZeroAndOversizedBacking) {
  meta_.backing_size = uint64_t{0};
  EXPECT_EQ(import(meta_).code(), Errc::kInvalidArgument);
  meta_.backing_size = uint64_t{1} << 33;
  EXPECT_EQ(import(meta_).code(), Errc::kLimit);
}

TEST_F(ImageImport, RejectsNonZeroReservedField) {
  meta_.planes[2].reserved = 1u;
  EXPECT_EQ(import(meta_).code(), Errc::kInvalidArgument);
}

TEST_F(ImageImport, RejectsNonZeroUnusedPlane) {
  meta_.planes[1].stride = 64u;
  EXPECT_EQ(import(meta_).code(), Errc::kInvalidArgument);
}

TEST_F(ImageImport, RejectsNonLinearModifier) {
  meta_.modifier = uint64_t{1};
  EXPECT_EQ(import(meta_).code(), Errc::kUnsupported);
}

TEST_F(ImageImport, RejectsDescriptorThatIsNotAFile) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd w(p[1]);
  EXPECT_EQ(ImageBuffer::import(UniqueFd(p[0]), meta_).code(), Errc::kInvalidArgument);
}

TEST_F(ImageImport, RejectsMissingRequiredSeals) {
  auto unsealed = SharedMemory::create("unsealed", 12288, 0);
  ASSERT_TRUE(unsealed.ok());
  EXPECT_EQ(ImageBuffer::import(unsealed->dup_fd().value(), meta_, kSealShrink).code(), Errc::kInvalidArgument);
  EXPECT_TRUE(ImageBuffer::import(unsealed->dup_fd().value(), meta_).ok());
}

TEST(ImageSocket, SendsAndReceivesImage) {
  auto sp = make_socketpair();
  auto img = ImageBuffer::allocate(Format::kARGB8888, 7, 3);
  ASSERT_TRUE(img.ok());
  ASSERT_TRUE(send_image(sp.a.get(), *img).ok());
  auto got = recv_image(sp.b.get(), kSealShrink);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->layout(), img->layout());
}

TEST(ImageSocket, MessageWithoutDescriptorIsProtocolError) {
  auto sp = make_socketpair();
  auto img = ImageBuffer::allocate(Format::kARGB8888, 7, 3);
  ASSERT_TRUE(img.ok());
  auto e = img->export_image();
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE(send_fds(sp.a.get(), &e->meta, sizeof(e->meta), {}).ok());
  EXPECT_EQ(recv_image(sp.b.get()).code(), Errc::kProtocol);
}

}  // namespace
}  // namespace canopy::buffers
