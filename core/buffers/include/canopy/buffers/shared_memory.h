// Shared memory for buffers passed between Canopy processes: a memfd (SharedMemory) and an RAII
// MAP_SHARED mapping of any fd region (Mapping).
//
// Ownership: SharedMemory owns its memfd; Mapping owns its mapping (munmap on destruction). A Mapping does
// not keep the fd alive and need not: a mapping stays valid after the fd is closed.
//
// Trust: a memfd received from another process can be truncated by that process unless it carries
// F_SEAL_SHRINK; touching a mapping past the new end raises SIGBUS. Import with required_seals including
// kSealShrink when the peer is not trusted not to do that.
//
// Threading: SharedMemory and Mapping are not internally synchronised. Distinct objects may be used from
// different threads; const member functions may run concurrently on one object. The memory itself is shared
// with other processes: order accesses with a Timeline or another protocol.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy::buffers {

// memfd seal bits (the values of F_SEAL_*, fixed by the Linux ABI).
inline constexpr uint32_t kSealSeal = 0x0001;    // no further seals may be added
inline constexpr uint32_t kSealShrink = 0x0002;  // the file cannot shrink (importers are safe from SIGBUS)
inline constexpr uint32_t kSealGrow = 0x0004;    // the file cannot grow
inline constexpr uint32_t kSealWrite = 0x0008;   // the contents cannot change (no writable mapping may exist)
inline constexpr uint32_t kSealFixedSize = kSealShrink | kSealGrow;

// Documented cap on one shared memory object or mapping (sizes may come from a peer).
inline constexpr uint64_t kMaxSharedMemorySize = uint64_t{1} << 32;  // 4 GiB

enum class Access { kRead, kReadWrite };

// An RAII MAP_SHARED mapping of [offset, offset + size) of a file descriptor. Offsets need not be page
// aligned (the mapping starts at the page below and data() points at offset). Moved-from: empty.
class Mapping {
 public:
  Mapping() = default;
  // Errors: kInvalidArgument (size 0, bad fd), kLimit (size > kMaxSharedMemorySize), kOverflow, kIo (mmap).
  // The caller checks that the region lies inside the file (SharedMemory and ImageBuffer do).
  [[nodiscard]] static Result<Mapping> map(int fd, uint64_t offset, uint64_t size, Access access);

  Mapping(Mapping&& o) noexcept;
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { reset(); }

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> bytes() const { return {data_, size_}; }
  Access access() const { return access_; }
  bool valid() const { return data_ != nullptr; }
  void reset();  // unmaps; idempotent

 private:
  void* base_ = nullptr;  // page-aligned start of the mmap
  size_t map_len_ = 0;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  Access access_ = Access::kRead;
};

// A memfd of a fixed size. Moved-from: empty (valid() == false).
class SharedMemory {
 public:
  SharedMemory() = default;

  // memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), ftruncate(size), then adds `seals` (default: fixed
  // size; pass 0 to keep it resizable, add kSealSeal to forbid later seals). Errors: kInvalidArgument
  // (size 0 or null name), kLimit (size > kMaxSharedMemorySize), kIo.
  [[nodiscard]] static Result<SharedMemory> create(const char* name, uint64_t size, uint32_t seals = kSealFixedSize);

  // Takes ownership of `fd` (e.g. received over a socket). Checks with fstat that it is a regular file of at
  // least `min_size` bytes (kOutOfRange otherwise; kInvalidArgument if not a regular file or min_size is 0;
  // kLimit above kMaxSharedMemorySize) and, when required_seals != 0, that F_GET_SEALS reports all of them
  // (kInvalidArgument when not, kUnsupported when the fd cannot carry seals, i.e. is not a memfd).
  // size() is the file size found by fstat.
  [[nodiscard]] static Result<SharedMemory> import(UniqueFd fd, uint64_t min_size, uint32_t required_seals = 0);

  SharedMemory(SharedMemory&& o) noexcept : fd_(std::move(o.fd_)), size_(std::exchange(o.size_, 0)) {}
  SharedMemory& operator=(SharedMemory&& o) noexcept {
    if (this != &o) {
      fd_ = std::move(o.fd_);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  // Adds seals (F_ADD_SEALS). kIo with EPERM once kSealSeal is set; kSealWrite fails (EBUSY) while a
  // writable shared mapping exists.
  [[nodiscard]] Status add_seals(uint32_t seals);
  // The current seals (F_GET_SEALS).
  [[nodiscard]] Result<uint32_t> seals() const;
  // Maps the whole object.
  [[nodiscard]] Result<Mapping> map(Access access = Access::kReadWrite) const;
  // A new O_CLOEXEC descriptor for the same memfd (to send to another process).
  [[nodiscard]] Result<UniqueFd> dup_fd() const;

  int fd() const { return fd_.get(); }
  uint64_t size() const { return size_; }
  bool valid() const { return fd_.valid(); }

 private:
  SharedMemory(UniqueFd fd, uint64_t size) : fd_(std::move(fd)), size_(size) {}
  UniqueFd fd_;
  uint64_t size_ = 0;
};

}  // namespace canopy::buffers
