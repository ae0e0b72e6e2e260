// One contiguous view of scattered pieces of files: each (fd, offset, length) piece is mapped
// MAP_SHARED|MAP_FIXED right after the previous one inside one reserved address range, so a consumer
// reads a guest buffer made of scattered guest pages as one linear image without copying it (the host
// has no udmabuf). Adjacent pieces of the same file that follow each other are mapped with one mmap.
//
// Alignment: every piece must start on a page boundary of its file, and every piece but the last must
// be a whole number of pages long; otherwise map_scattered() fails with kUnsupported and the caller
// falls back to copying. The last piece's final page is mapped whole (the file must extend that far).
//
// Caps: at most kMaxScatterPieces pieces and kMaxSharedMemorySize bytes in all (sizes come from a guest).
//
// Ownership: a ScatterMapping owns its address range (munmap on destruction) and not the descriptors;
// like any mapping it stays valid after they are closed. Moved-from: empty.
// Threading: not internally synchronised; const members may run concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "canopy/base/result.h"
#include "canopy/buffers/shared_memory.h"

namespace canopy::buffers {

inline constexpr size_t kMaxScatterPieces = size_t{1} << 20;

struct FilePiece {
  int fd = -1;  // borrowed
  uint64_t offset = 0;
  uint64_t length = 0;
};

class ScatterMapping {
 public:
  ScatterMapping() = default;
  ScatterMapping(ScatterMapping&& o) noexcept;
  ScatterMapping& operator=(ScatterMapping&& o) noexcept;
  ScatterMapping(const ScatterMapping&) = delete;
  ScatterMapping& operator=(const ScatterMapping&) = delete;
  ~ScatterMapping() { reset(); }

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> bytes() const { return {data_, size_}; }
  bool valid() const { return data_ != nullptr; }
  // mmap calls the view took (after merging adjacent pieces): what a consumer pays to build it.
  size_t map_calls() const { return map_calls_; }
  void reset();

 private:
  friend Result<ScatterMapping> map_scattered(std::span<const FilePiece>, Access);
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  size_t reserved_ = 0;
  size_t map_calls_ = 0;
};

// Errors: kInvalidArgument (no pieces, a zero length or bad fd), kUnsupported (misaligned piece),
// kLimit (over a cap), kOverflow, kIo (mmap failed, e.g. a piece beyond its file's mappable range).
[[nodiscard]] Result<ScatterMapping> map_scattered(std::span<const FilePiece> pieces, Access access);

// Whether map_scattered() would accept the alignment of these pieces.
bool scatter_mappable(std::span<const FilePiece> pieces);

}  // namespace canopy::buffers
