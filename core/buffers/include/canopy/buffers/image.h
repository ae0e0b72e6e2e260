// Image buffers: pixel formats (DRM fourcc), validated layouts, and ImageBuffer — an image in shared memory
// that can be sent to another process as (fd + ImageWireMetadata) and imported there after validation.
//
// Formats are linear only (modifier DRM_FORMAT_MOD_LINEAR). Plane geometry, per plane p:
//   rows(p)       = ceil(height / vsub(p))
//   min_stride(p) = ceil(width / hsub(p)) * cpp(p)          (cpp: bytes per pixel block)
//   size(p)       = stride(p) * rows(p)                     (the last row is counted with its full stride)
// NV12: plane 0 = Y (cpp 1, no subsampling), plane 1 = interleaved UV (cpp 2, hsub 2, vsub 2): odd sizes
// round the chroma plane up. Every size computation is checked (kOverflow on overflow).
//
// Caps (documented limits on peer-supplied values): width and height in [1, kMaxImageDimension].
// Every imported field is validated (ImageLayout::validate, ImageBuffer::import): unknown fourcc or a
// non-linear modifier -> kUnsupported; zero size, a stride below min_stride or not a multiple of cpp, a plane
// offset not a multiple of cpp, a non-zero unused plane or reserved field, a bad magic/version/plane count
// -> kInvalidArgument; a dimension above the cap -> kLimit; a plane or the backing outside the fd ->
// kOutOfRange. Planes may overlap each other (harmless for memory safety; the producer's problem).
//
// Ownership: an ImageBuffer holds its own descriptor (it dups a borrowed one) and never owns more memory than
// that descriptor's file: Backing::kOwned — a sealed memfd it created; kExternal — a region of someone
// else's file (e.g. guest RAM), borrowed: the file's contents belong to its owner; kImported — received from
// a peer. ImageMapping owns a mapping and stays valid after the ImageBuffer is destroyed.
//
// Threading: ImageBuffer and ImageMapping are not internally synchronised; const member functions may run
// concurrently. Pixel memory is shared between processes: hand it over with a Timeline.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>

#include "canopy/base/le.h"
#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/buffers/shared_memory.h"

namespace canopy::buffers {

constexpr uint32_t fourcc_code(char a, char b, char c, char d) {
  return uint32_t(uint8_t(a)) | uint32_t(uint8_t(b)) << 8 | uint32_t(uint8_t(c)) << 16 | uint32_t(uint8_t(d)) << 24;
}

// Values are the DRM fourcc codes (drm_fourcc.h).
enum class Format : uint32_t {
  kXRGB8888 = fourcc_code('X', 'R', '2', '4'),
  kARGB8888 = fourcc_code('A', 'R', '2', '4'),
  kABGR8888 = fourcc_code('A', 'B', '2', '4'),
  kXBGR8888 = fourcc_code('X', 'B', '2', '4'),
  kRGB565 = fourcc_code('R', 'G', '1', '6'),
  kNV12 = fourcc_code('N', 'V', '1', '2'),
};

inline constexpr uint64_t kDrmFormatModLinear = 0;  // DRM_FORMAT_MOD_LINEAR
inline constexpr uint32_t kMaxImageDimension = 16384;
inline constexpr uint32_t kMaxPlanes = 4;  // layout / wire slots (DRM's limit); the formats here use <= 2

constexpr uint32_t to_fourcc(Format f) { return static_cast<uint32_t>(f); }
// The Format for a fourcc, or nullopt for one we do not support.
std::optional<Format> format_from_fourcc(uint32_t fourcc);
const char* format_name(Format f);  // "XRGB8888", ...; "unknown" for a value outside the enum

struct PlaneInfo {
  uint32_t cpp = 0;   // bytes per pixel block
  uint32_t hsub = 1;  // horizontal subsampling
  uint32_t vsub = 1;  // vertical subsampling
};

// Number of planes (1 or 2); 0 for a value outside the enum.
uint32_t plane_count(Format f);
// Bytes per pixel of a single-plane format, 0 for NV12 and unknown values (use plane_info).
uint32_t bytes_per_pixel(Format f);
// Geometry of one plane. Errors: kUnsupported (unknown format), kInvalidArgument (plane >= plane_count).
Result<PlaneInfo> plane_info(Format f, uint32_t plane);
// Smallest stride holding one row of `plane`, and its number of rows (no dimension cap applied here).
Result<uint32_t> min_stride(Format f, uint32_t width, uint32_t plane);
Result<uint32_t> plane_rows(Format f, uint32_t height, uint32_t plane);
// stride * rows, checked.
Result<uint64_t> plane_size(Format f, uint32_t height, uint32_t stride, uint32_t plane);

struct PlaneLayout {
  uint64_t offset = 0;  // from the start of the image's backing region
  uint32_t stride = 0;  // bytes between rows
  bool operator==(const PlaneLayout&) const = default;
};

struct ImageLayout {
  Format format = Format::kXRGB8888;
  uint32_t width = 0;
  uint32_t height = 0;
  uint64_t modifier = kDrmFormatModLinear;
  std::array<PlaneLayout, kMaxPlanes> planes{};  // slots >= plane_count(format) are all zero

  // A packed layout: each stride is min_stride rounded up to `stride_align`, planes follow each other at
  // offsets rounded up to `stride_align`. stride_align: a power of two in [1, 4096]. Validates dimensions.
  static Result<ImageLayout> packed(Format f, uint32_t width, uint32_t height, uint32_t stride_align = 64);
  // The end of the furthest plane (the backing size this layout needs). Validates the layout first
  // (with an unbounded backing).
  Result<uint64_t> required_size() const;
  // Checks every field and that each plane lies inside a backing region of `backing_size` bytes.
  Status validate(uint64_t backing_size) const;

  bool operator==(const ImageLayout&) const = default;
};

// Wire metadata sent with an image's descriptor. Little-endian, fixed size; version 1.
inline constexpr uint32_t kImageWireMagic = fourcc_code('C', 'N', 'I', 'B');
inline constexpr uint32_t kImageWireVersion = 1;

struct ImageWirePlane {
  le64 offset;  // relative to fd_offset
  le32 stride;
  le32 reserved;  // must be 0
};
static_assert(sizeof(ImageWirePlane) == 16);

struct ImageWireMetadata {
  le32 magic;    // kImageWireMagic
  le32 version;  // kImageWireVersion
  le32 fourcc;   // Format
  le32 width;
  le32 height;
  le32 num_planes;                    // must equal plane_count(format)
  le64 modifier;                      // kDrmFormatModLinear
  le64 fd_offset;                     // where the image's backing region starts in the file
  le64 backing_size;                  // bytes of the backing region
  ImageWirePlane planes[kMaxPlanes];  // slots >= num_planes all zero
};
static_assert(sizeof(ImageWireMetadata) == 112);
static_assert(offsetof(ImageWireMetadata, fourcc) == 8);
static_assert(offsetof(ImageWireMetadata, modifier) == 24);
static_assert(offsetof(ImageWireMetadata, fd_offset) == 32);
static_assert(offsetof(ImageWireMetadata, backing_size) == 40);
static_assert(offsetof(ImageWireMetadata, planes) == 48);

// A validated view of a wire struct's layout part (no fd checks). Errors as documented at the top.
Result<ImageLayout> layout_from_wire(const ImageWireMetadata& meta);

// A mapped image: the backing region and helpers to address planes and rows. Moved-from: empty.
class ImageMapping {
 public:
  ImageMapping() = default;
  ImageMapping(Mapping mapping, const ImageLayout& layout) : mapping_(std::move(mapping)), layout_(layout) {}

  std::span<std::byte> bytes() const { return mapping_.bytes(); }  // the whole backing region
  // The bytes of plane p (stride * rows), or an empty span for p >= plane_count.
  std::span<std::byte> plane(uint32_t p) const;
  // The min_stride pixel bytes of row y of plane p, or an empty span when out of range.
  std::span<std::byte> row(uint32_t p, uint32_t y) const;
  const ImageLayout& layout() const { return layout_; }
  bool valid() const { return mapping_.valid(); }

 private:
  Mapping mapping_;
  ImageLayout layout_{};
};

// The descriptor and metadata to send to another process (see send_image).
struct ExportedImage {
  UniqueFd fd;
  ImageWireMetadata meta{};
};

class ImageBuffer {
 public:
  enum class Backing { kNone, kOwned, kExternal, kImported };

  ImageBuffer() = default;

  // A new sealed (fixed-size) memfd holding a packed image / the given layout (validated; the backing is
  // layout.required_size() bytes).
  [[nodiscard]] static Result<ImageBuffer> allocate(Format f, uint32_t width, uint32_t height,
                                                    const char* name = "canopy-image");
  [[nodiscard]] static Result<ImageBuffer> allocate(const ImageLayout& layout, const char* name = "canopy-image");

  // An image inside [offset, offset + size) of someone else's file (e.g. guest memory). `fd` is borrowed and
  // duplicated (the caller keeps and closes its own). Checks the region against fstat and the layout
  // against `size`.
  [[nodiscard]] static Result<ImageBuffer> wrap_external(int fd, uint64_t offset, uint64_t size,
                                                         const ImageLayout& layout);

  // Builds an image from a peer's descriptor and metadata, validating every field (see the top of this
  // file) and the region against fstat; when required_seals != 0 the file must be a memfd with those seals
  // (use kSealShrink against a peer that could truncate it).
  [[nodiscard]] static Result<ImageBuffer> import(UniqueFd fd, const ImageWireMetadata& meta,
                                                  uint32_t required_seals = 0);

  ImageBuffer(ImageBuffer&& o) noexcept;
  ImageBuffer& operator=(ImageBuffer&& o) noexcept;
  ImageBuffer(const ImageBuffer&) = delete;
  ImageBuffer& operator=(const ImageBuffer&) = delete;
  ~ImageBuffer() = default;

  // A dup of the descriptor plus the metadata describing this image.
  [[nodiscard]] Result<ExportedImage> export_image() const;
  // Maps the backing region (read/write by default).
  [[nodiscard]] Result<ImageMapping> map(Access access = Access::kReadWrite) const;

  const ImageLayout& layout() const { return layout_; }
  Backing backing() const { return backing_; }
  int fd() const { return fd_.get(); }
  uint64_t fd_offset() const { return fd_offset_; }
  uint64_t backing_size() const { return backing_size_; }
  bool valid() const { return fd_.valid(); }

 private:
  ImageBuffer(UniqueFd fd, uint64_t offset, uint64_t size, const ImageLayout& layout, Backing b)
      : fd_(std::move(fd)), fd_offset_(offset), backing_size_(size), layout_(layout), backing_(b) {}

  UniqueFd fd_;
  uint64_t fd_offset_ = 0;
  uint64_t backing_size_ = 0;
  ImageLayout layout_{};
  Backing backing_ = Backing::kNone;
};

// Sends an image (one message: ImageWireMetadata + its descriptor) / receives and imports one.
[[nodiscard]] Status send_image(int sock, const ImageBuffer& image);
[[nodiscard]] Result<ImageBuffer> recv_image(int sock, uint32_t required_seals = 0);

}  // namespace canopy::buffers
