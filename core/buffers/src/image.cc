#include "canopy/buffers/image.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "canopy/base/checked.h"
#include "canopy/buffers/fd_passing.h"

namespace canopy::buffers {

namespace {

bool known_format(Format f) {
  switch (f) {
    case Format::kXRGB8888:
    case Format::kARGB8888:
    case Format::kABGR8888:
    case Format::kXBGR8888:
    case Format::kRGB565:
    case Format::kNV12: return true;
  }
  return false;
}

uint32_t div_round_up(uint32_t a, uint32_t b) { return a / b + (a % b != 0 ? 1 : 0); }

Status check_dimensions(uint32_t width, uint32_t height) {
  if (width == 0 || height == 0) return make_error(Errc::kInvalidArgument, "image: zero width or height");
  if (width > kMaxImageDimension || height > kMaxImageDimension)
    return make_error(Errc::kLimit, "image: dimension above cap");
  return ok_status();
}

// Validates the layout's own fields and returns the end of the furthest plane.
Result<uint64_t> layout_end(const ImageLayout& l) {
  if (!known_format(l.format)) return make_error(Errc::kUnsupported, "image: unknown format");
  if (l.modifier != kDrmFormatModLinear) return make_error(Errc::kUnsupported, "image: non-linear modifier");
  CANOPY_TRY(check_dimensions(l.width, l.height));
  const uint32_t n = plane_count(l.format);
  uint64_t end = 0;
  for (uint32_t p = 0; p < kMaxPlanes; ++p) {
    const PlaneLayout& pl = l.planes[p];
    if (p >= n) {
      if (pl.offset != 0 || pl.stride != 0) return make_error(Errc::kInvalidArgument, "image: unused plane not zero");
      continue;
    }
    CANOPY_ASSIGN_OR_RETURN(PlaneInfo info, plane_info(l.format, p));
    CANOPY_ASSIGN_OR_RETURN(uint32_t min, min_stride(l.format, l.width, p));
    if (pl.stride < min) return make_error(Errc::kInvalidArgument, "image: stride smaller than a row");
    if (pl.stride % info.cpp != 0) return make_error(Errc::kInvalidArgument, "image: stride not a multiple of cpp");
    if (pl.offset % info.cpp != 0) return make_error(Errc::kInvalidArgument, "image: plane offset misaligned");
    CANOPY_ASSIGN_OR_RETURN(uint64_t size, plane_size(l.format, l.height, pl.stride, p));
    auto plane_end = checked_add<uint64_t>(pl.offset, size);
    if (!plane_end) return make_error(Errc::kOverflow, "image: plane offset + size");
    if (*plane_end > end) end = *plane_end;
  }
  return end;
}

}  // namespace

std::optional<Format> format_from_fourcc(uint32_t fourcc) {
  Format f = static_cast<Format>(fourcc);
  if (!known_format(f)) return std::nullopt;
  return f;
}

const char* format_name(Format f) {
  switch (f) {
    case Format::kXRGB8888: return "XRGB8888";
    case Format::kARGB8888: return "ARGB8888";
    case Format::kABGR8888: return "ABGR8888";
    case Format::kXBGR8888: return "XBGR8888";
    case Format::kRGB565: return "RGB565";
    case Format::kNV12: return "NV12";
  }
  return "unknown";
}

uint32_t plane_count(Format f) {
  if (!known_format(f)) return 0;
  return f == Format::kNV12 ? 2 : 1;
}

uint32_t bytes_per_pixel(Format f) {
  switch (f) {
    case Format::kXRGB8888:
    case Format::kARGB8888:
    case Format::kABGR8888:
    case Format::kXBGR8888: return 4;
    case Format::kRGB565: return 2;
    case Format::kNV12: return 0;
  }
  return 0;
}

Result<PlaneInfo> plane_info(Format f, uint32_t plane) {
  if (!known_format(f)) return make_error(Errc::kUnsupported, "image: unknown format");
  if (plane >= plane_count(f)) return make_error(Errc::kInvalidArgument, "image: no such plane");
  if (f == Format::kNV12) return plane == 0 ? PlaneInfo{1, 1, 1} : PlaneInfo{2, 2, 2};
  return PlaneInfo{bytes_per_pixel(f), 1, 1};
}

Result<uint32_t> min_stride(Format f, uint32_t width, uint32_t plane) {
  CANOPY_ASSIGN_OR_RETURN(PlaneInfo info, plane_info(f, plane));
  auto s = checked_mul<uint32_t>(div_round_up(width, info.hsub), info.cpp);
  if (!s) return make_error(Errc::kOverflow, "image: row size overflows");
  return *s;
}

Result<uint32_t> plane_rows(Format f, uint32_t height, uint32_t plane) {
  CANOPY_ASSIGN_OR_RETURN(PlaneInfo info, plane_info(f, plane));
  return div_round_up(height, info.vsub);
}

Result<uint64_t> plane_size(Format f, uint32_t height, uint32_t stride, uint32_t plane) {
  CANOPY_ASSIGN_OR_RETURN(uint32_t rows, plane_rows(f, height, plane));
  auto s = checked_mul<uint64_t>(stride, rows);
  if (!s) return make_error(Errc::kOverflow, "image: plane size overflows");
  return *s;
}

Result<ImageLayout> ImageLayout::packed(Format f, uint32_t width, uint32_t height, uint32_t stride_align) {
  if (!known_format(f)) return make_error(Errc::kUnsupported, "image: unknown format");
  if (stride_align == 0 || stride_align > 4096 || (stride_align & (stride_align - 1)) != 0)
    return make_error(Errc::kInvalidArgument, "image: stride_align not a power of two <= 4096");
  CANOPY_TRY(check_dimensions(width, height));
  ImageLayout l;
  l.format = f;
  l.width = width;
  l.height = height;
  uint64_t offset = 0;
  for (uint32_t p = 0; p < plane_count(f); ++p) {
    CANOPY_ASSIGN_OR_RETURN(uint32_t min, min_stride(f, width, p));
    auto stride = checked_add<uint32_t>(min, stride_align - 1);
    if (!stride) return make_error(Errc::kOverflow, "image: stride overflows");
    l.planes[p].stride = *stride & ~(stride_align - 1);
    // Offsets: aligned to stride_align and to the plane's pixel block (cpp is 1, 2 or 4: a power of two).
    CANOPY_ASSIGN_OR_RETURN(PlaneInfo info, plane_info(f, p));
    const uint64_t align = std::max<uint64_t>(stride_align, info.cpp);
    auto aligned = checked_add<uint64_t>(offset, align - 1);
    if (!aligned) return make_error(Errc::kOverflow, "image: offset overflows");
    l.planes[p].offset = *aligned & ~(align - 1);
    CANOPY_ASSIGN_OR_RETURN(uint64_t size, plane_size(f, height, l.planes[p].stride, p));
    auto end = checked_add<uint64_t>(l.planes[p].offset, size);
    if (!end) return make_error(Errc::kOverflow, "image: plane end overflows");
    offset = *end;
  }
  return l;
}

Result<uint64_t> ImageLayout::required_size() const { return layout_end(*this); }

Status ImageLayout::validate(uint64_t backing_size) const {
  CANOPY_ASSIGN_OR_RETURN(uint64_t end, layout_end(*this));
  if (end > backing_size) return make_error(Errc::kOutOfRange, "image: plane outside the backing");
  return ok_status();
}

Result<ImageLayout> layout_from_wire(const ImageWireMetadata& meta) {
  // Each field is read once from the caller's copy.
  if (meta.magic.get() != kImageWireMagic) return make_error(Errc::kInvalidArgument, "image wire: bad magic");
  if (meta.version.get() != kImageWireVersion) return make_error(Errc::kInvalidArgument, "image wire: bad version");
  auto f = format_from_fourcc(meta.fourcc.get());
  if (!f) return make_error(Errc::kUnsupported, "image: unknown format");
  if (meta.num_planes.get() != plane_count(*f))
    return make_error(Errc::kInvalidArgument, "image wire: plane count does not match the format");
  ImageLayout l;
  l.format = *f;
  l.width = meta.width.get();
  l.height = meta.height.get();
  l.modifier = meta.modifier.get();
  for (uint32_t p = 0; p < kMaxPlanes; ++p) {
    if (meta.planes[p].reserved.get() != 0) return make_error(Errc::kInvalidArgument, "image wire: reserved not zero");
    l.planes[p].offset = meta.planes[p].offset.get();
    l.planes[p].stride = meta.planes[p].stride.get();
  }
  CANOPY_TRY(layout_end(l));
  return l;
}

std::span<std::byte> ImageMapping::plane(uint32_t p) const {
  if (!mapping_.valid() || p >= plane_count(layout_.format)) return {};
  auto size = plane_size(layout_.format, layout_.height, layout_.planes[p].stride, p);
  if (!size.ok() || !range_within(layout_.planes[p].offset, *size, mapping_.size())) return {};
  return mapping_.bytes().subspan(size_t(layout_.planes[p].offset), size_t(*size));
}

std::span<std::byte> ImageMapping::row(uint32_t p, uint32_t y) const {
  auto pl = plane(p);
  if (pl.empty()) return {};
  auto rows = plane_rows(layout_.format, layout_.height, p);
  auto min = min_stride(layout_.format, layout_.width, p);
  if (!rows.ok() || !min.ok() || y >= *rows) return {};
  return pl.subspan(size_t(uint64_t(y) * layout_.planes[p].stride), *min);
}

ImageBuffer::ImageBuffer(ImageBuffer&& o) noexcept
    : fd_(std::move(o.fd_)),
      fd_offset_(std::exchange(o.fd_offset_, 0)),
      backing_size_(std::exchange(o.backing_size_, 0)),
      layout_(std::exchange(o.layout_, ImageLayout{})),
      backing_(std::exchange(o.backing_, Backing::kNone)) {}

ImageBuffer& ImageBuffer::operator=(ImageBuffer&& o) noexcept {
  if (this != &o) {
    fd_ = std::move(o.fd_);
    fd_offset_ = std::exchange(o.fd_offset_, 0);
    backing_size_ = std::exchange(o.backing_size_, 0);
    layout_ = std::exchange(o.layout_, ImageLayout{});
    backing_ = std::exchange(o.backing_, Backing::kNone);
  }
  return *this;
}

Result<ImageBuffer> ImageBuffer::allocate(Format f, uint32_t width, uint32_t height, const char* name) {
  CANOPY_ASSIGN_OR_RETURN(ImageLayout layout, ImageLayout::packed(f, width, height));
  return allocate(layout, name);
}

Result<ImageBuffer> ImageBuffer::allocate(const ImageLayout& layout, const char* name) {
  CANOPY_ASSIGN_OR_RETURN(uint64_t size, layout.required_size());
  CANOPY_ASSIGN_OR_RETURN(SharedMemory shm, SharedMemory::create(name, size, kSealFixedSize));
  CANOPY_ASSIGN_OR_RETURN(UniqueFd fd, shm.dup_fd());
  return ImageBuffer(std::move(fd), 0, size, layout, Backing::kOwned);
}

namespace {

// The region [offset, offset + size) must lie inside the file; the layout inside the region.
Status check_region(int fd, uint64_t offset, uint64_t size, const ImageLayout& layout) {
  if (size == 0) return make_error(Errc::kInvalidArgument, "image: zero backing size");
  if (size > kMaxSharedMemorySize) return make_error(Errc::kLimit, "image: backing above cap");
  struct stat st{};
  if (::fstat(fd, &st) != 0) return make_error(Errc::kIo, "image: fstat", errno);
  if (!S_ISREG(st.st_mode)) return make_error(Errc::kInvalidArgument, "image: fd is not a regular file");
  if (st.st_size < 0 || !range_within(offset, size, uint64_t(st.st_size)))
    return make_error(Errc::kOutOfRange, "image: backing region outside the file");
  return layout.validate(size);
}

}  // namespace

Result<ImageBuffer> ImageBuffer::wrap_external(int fd, uint64_t offset, uint64_t size, const ImageLayout& layout) {
  if (fd < 0) return make_error(Errc::kInvalidArgument, "image: bad fd");
  CANOPY_TRY(check_region(fd, offset, size, layout));
  UniqueFd own(::fcntl(fd, F_DUPFD_CLOEXEC, 0));  // the caller keeps its borrowed descriptor
  if (!own) return make_error(Errc::kIo, "image: dup", errno);
  return ImageBuffer(std::move(own), offset, size, layout, Backing::kExternal);
}

Result<ImageBuffer> ImageBuffer::import(UniqueFd fd, const ImageWireMetadata& meta_in, uint32_t required_seals) {
  if (!fd) return make_error(Errc::kInvalidArgument, "image: bad fd");
  const ImageWireMetadata meta = meta_in;  // one copy: every field is read once
  CANOPY_ASSIGN_OR_RETURN(ImageLayout layout, layout_from_wire(meta));
  const uint64_t offset = meta.fd_offset.get();
  const uint64_t size = meta.backing_size.get();
  CANOPY_TRY(check_region(fd.get(), offset, size, layout));
  if (required_seals != 0) {
    int s = ::fcntl(fd.get(), F_GET_SEALS);
    if (s < 0) return make_error(Errc::kUnsupported, "image: fd cannot carry seals (not a memfd)", errno);
    if ((uint32_t(s) & required_seals) != required_seals)
      return make_error(Errc::kInvalidArgument, "image: required seals missing");
  }
  return ImageBuffer(std::move(fd), offset, size, layout, Backing::kImported);
}

Result<ExportedImage> ImageBuffer::export_image() const {
  if (!fd_) return make_error(Errc::kState, "image: empty");
  ExportedImage e;
  e.fd = fd_.dup();
  if (!e.fd) return make_error(Errc::kIo, "image: dup", errno);
  e.meta.magic = kImageWireMagic;
  e.meta.version = kImageWireVersion;
  e.meta.fourcc = to_fourcc(layout_.format);
  e.meta.width = layout_.width;
  e.meta.height = layout_.height;
  e.meta.num_planes = plane_count(layout_.format);
  e.meta.modifier = layout_.modifier;
  e.meta.fd_offset = fd_offset_;
  e.meta.backing_size = backing_size_;
  for (uint32_t p = 0; p < kMaxPlanes; ++p) {
    e.meta.planes[p].offset = layout_.planes[p].offset;
    e.meta.planes[p].stride = layout_.planes[p].stride;
    e.meta.planes[p].reserved = 0;
  }
  return e;
}

Result<ImageMapping> ImageBuffer::map(Access access) const {
  if (!fd_) return make_error(Errc::kState, "image: empty");
  CANOPY_ASSIGN_OR_RETURN(Mapping m, Mapping::map(fd_.get(), fd_offset_, backing_size_, access));
  return ImageMapping(std::move(m), layout_);
}

Status send_image(int sock, const ImageBuffer& image) {
  CANOPY_ASSIGN_OR_RETURN(ExportedImage e, image.export_image());
  const int fd = e.fd.get();
  return send_fds(sock, &e.meta, sizeof(e.meta), std::span<const int>(&fd, 1));
}

Result<ImageBuffer> recv_image(int sock, uint32_t required_seals) {
  ImageWireMetadata meta{};
  CANOPY_ASSIGN_OR_RETURN(std::vector<UniqueFd> fds, recv_fds(sock, &meta, sizeof(meta), 1));
  if (fds.size() != 1) return make_error(Errc::kProtocol, "image: expected one descriptor");
  return ImageBuffer::import(std::move(fds[0]), meta, required_seals);
}

}  // namespace canopy::buffers
