#include "canopy/buffers/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "canopy/base/checked.h"
#include "sys_util.h"

namespace canopy::buffers {

static_assert(kSealSeal == F_SEAL_SEAL && kSealShrink == F_SEAL_SHRINK && kSealGrow == F_SEAL_GROW &&
              kSealWrite == F_SEAL_WRITE);

namespace {
constexpr uint32_t kKnownSeals = kSealSeal | kSealShrink | kSealGrow | kSealWrite;
}

Result<Mapping> Mapping::map(int fd, uint64_t offset, uint64_t size, Access access) {
  if (fd < 0 || size == 0) return make_error(Errc::kInvalidArgument, "mapping: bad fd or zero size");
  if (size > kMaxSharedMemorySize) return make_error(Errc::kLimit, "mapping: size above cap");
  const uint64_t page = page_size();
  const uint64_t delta = offset % page;
  const uint64_t start = offset - delta;
  auto len = checked_add<uint64_t>(size, delta);
  if (!len || !checked_add<uint64_t>(offset, size)) return make_error(Errc::kOverflow, "mapping: offset + size");
  if (start > uint64_t(INT64_MAX)) return make_error(Errc::kOverflow, "mapping: offset");
  const int prot = access == Access::kReadWrite ? PROT_READ | PROT_WRITE : PROT_READ;
  void* base = ::mmap(nullptr, size_t(*len), prot, MAP_SHARED, fd, off_t(start));
  if (base == MAP_FAILED) return make_error(Errc::kIo, "mapping: mmap", errno);
  Mapping m;
  m.base_ = base;
  m.map_len_ = size_t(*len);
  m.data_ = static_cast<std::byte*>(base) + delta;
  m.size_ = size_t(size);
  m.access_ = access;
  return m;
}

Mapping::Mapping(Mapping&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)),
      map_len_(std::exchange(o.map_len_, 0)),
      data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      access_(o.access_) {}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    reset();
    base_ = std::exchange(o.base_, nullptr);
    map_len_ = std::exchange(o.map_len_, 0);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    access_ = o.access_;
  }
  return *this;
}

void Mapping::reset() {
  if (base_ != nullptr) ::munmap(base_, map_len_);
  base_ = nullptr;
  map_len_ = 0;
  data_ = nullptr;
  size_ = 0;
}

Result<SharedMemory> SharedMemory::create(const char* name, uint64_t size, uint32_t seals) {
  if (name == nullptr || size == 0) return make_error(Errc::kInvalidArgument, "shm: null name or zero size");
  if (size > kMaxSharedMemorySize) return make_error(Errc::kLimit, "shm: size above cap");
  if ((seals & ~kKnownSeals) != 0) return make_error(Errc::kInvalidArgument, "shm: unknown seal bits");
  UniqueFd fd(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return make_error(Errc::kIo, "shm: memfd_create", errno);
  if (retry_eintr([&] { return ::ftruncate(fd.get(), off_t(size)); }) != 0)
    return make_error(Errc::kIo, "shm: ftruncate", errno);
  SharedMemory shm(std::move(fd), size);
  if (seals != 0) CANOPY_TRY(shm.add_seals(seals));
  return shm;
}

Result<SharedMemory> SharedMemory::import(UniqueFd fd, uint64_t min_size, uint32_t required_seals) {
  if (!fd || min_size == 0) return make_error(Errc::kInvalidArgument, "shm import: bad fd or zero size");
  if (min_size > kMaxSharedMemorySize) return make_error(Errc::kLimit, "shm import: size above cap");
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0) return make_error(Errc::kIo, "shm import: fstat", errno);
  if (!S_ISREG(st.st_mode)) return make_error(Errc::kInvalidArgument, "shm import: not a regular file");
  if (st.st_size < 0 || uint64_t(st.st_size) < min_size)
    return make_error(Errc::kOutOfRange, "shm import: file smaller than expected");
  if (uint64_t(st.st_size) > kMaxSharedMemorySize) return make_error(Errc::kLimit, "shm import: file above cap");
  SharedMemory shm(std::move(fd), uint64_t(st.st_size));
  if (required_seals != 0) {
    auto s = shm.seals();
    if (!s.ok()) return s.error();
    if ((*s & required_seals) != required_seals)
      return make_error(Errc::kInvalidArgument, "shm import: required seals missing");
  }
  return shm;
}

Status SharedMemory::add_seals(uint32_t seals) {
  if (!fd_) return make_error(Errc::kState, "shm: empty");
  if ((seals & ~kKnownSeals) != 0) return make_error(Errc::kInvalidArgument, "shm: unknown seal bits");
  if (::fcntl(fd_.get(), F_ADD_SEALS, int(seals)) != 0) return make_error(Errc::kIo, "shm: F_ADD_SEALS", errno);
  return ok_status();
}

Result<uint32_t> SharedMemory::seals() const {
  if (!fd_) return make_error(Errc::kState, "shm: empty");
  int s = ::fcntl(fd_.get(), F_GET_SEALS);
  if (s < 0) {
    if (errno == EINVAL) return make_error(Errc::kUnsupported, "shm: fd cannot carry seals (not a memfd)", errno);
    return make_error(Errc::kIo, "shm: F_GET_SEALS", errno);
  }
  return uint32_t(s);
}

Result<Mapping> SharedMemory::map(Access access) const {
  if (!fd_) return make_error(Errc::kState, "shm: empty");
  return Mapping::map(fd_.get(), 0, size_, access);
}

Result<UniqueFd> SharedMemory::dup_fd() const {
  if (!fd_) return make_error(Errc::kState, "shm: empty");
  UniqueFd d = fd_.dup();
  if (!d) return make_error(Errc::kIo, "shm: dup", errno);
  return d;
}

}  // namespace canopy::buffers
