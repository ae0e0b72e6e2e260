#include "canopy/buffers/scatter_mapping.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "canopy/base/checked.h"

namespace canopy::buffers {
namespace {

uint64_t page() {
  static const uint64_t p = uint64_t(sysconf(_SC_PAGESIZE));
  return p;
}

}  // namespace

ScatterMapping::ScatterMapping(ScatterMapping&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      reserved_(std::exchange(o.reserved_, 0)),
      map_calls_(std::exchange(o.map_calls_, 0)) {}

ScatterMapping& ScatterMapping::operator=(ScatterMapping&& o) noexcept {
  if (this != &o) {
    reset();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    reserved_ = std::exchange(o.reserved_, 0);
    map_calls_ = std::exchange(o.map_calls_, 0);
  }
  return *this;
}

void ScatterMapping::reset() {
  if (data_ != nullptr) ::munmap(data_, reserved_);
  data_ = nullptr;
  size_ = 0;
  reserved_ = 0;
  map_calls_ = 0;
}

bool scatter_mappable(std::span<const FilePiece> pieces) {
  const uint64_t p = page();
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (pieces[i].offset % p != 0) return false;
    if (i + 1 < pieces.size() && pieces[i].length % p != 0) return false;
  }
  return !pieces.empty();
}

Result<ScatterMapping> map_scattered(std::span<const FilePiece> pieces, Access access) {
  if (pieces.empty()) return make_error(Errc::kInvalidArgument, "scatter map: no pieces");
  if (pieces.size() > kMaxScatterPieces) return make_error(Errc::kLimit, "scatter map: too many pieces");
  const uint64_t p = page();
  uint64_t total = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const FilePiece& pc = pieces[i];
    if (pc.fd < 0 || pc.length == 0) return make_error(Errc::kInvalidArgument, "scatter map: bad fd or zero length");
    if (!checked_add(pc.offset, pc.length) || pc.offset > uint64_t(INT64_MAX))
      return make_error(Errc::kOverflow, "scatter map: piece offset + length");
    if (pc.offset % p != 0 || (i + 1 < pieces.size() && pc.length % p != 0))
      return make_error(Errc::kUnsupported, "scatter map: piece not page aligned");
    auto t = checked_add(total, pc.length);
    if (!t) return make_error(Errc::kOverflow, "scatter map: total length");
    total = *t;
  }
  if (total > kMaxSharedMemorySize) return make_error(Errc::kLimit, "scatter map: total above cap");
  const uint64_t reserved = (total + p - 1) / p * p;
  void* base = ::mmap(nullptr, size_t(reserved), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return make_error(Errc::kIo, "scatter map: reserve", errno);
  ScatterMapping m;
  m.data_ = static_cast<std::byte*>(base);
  m.size_ = size_t(total);
  m.reserved_ = size_t(reserved);
  const int prot = access == Access::kReadWrite ? PROT_READ | PROT_WRITE : PROT_READ;
  uint64_t at = 0;
  size_t i = 0;
  while (i < pieces.size()) {
    // Merge the run of pieces that continue the same file contiguously.
    const int fd = pieces[i].fd;
    const uint64_t off = pieces[i].offset;
    uint64_t len = pieces[i].length;
    size_t j = i + 1;
    while (j < pieces.size() && pieces[j].fd == fd && pieces[j].offset == off + len) len += pieces[j++].length;
    const uint64_t map_len = (len + p - 1) / p * p;
    void* r = ::mmap(m.data_ + at, size_t(map_len), prot, MAP_SHARED | MAP_FIXED, fd, off_t(off));
    if (r == MAP_FAILED) return make_error(Errc::kIo, "scatter map: mmap piece", errno);  // m unmaps all
    ++m.map_calls_;
    at += len;
    i = j;
  }
  return m;
}

}  // namespace canopy::buffers
