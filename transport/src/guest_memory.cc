#include "canopy/transport/guest_memory.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"
#include "canopy/buffers/fault_guard.h"

namespace canopy::transport {
namespace {
// Ring fields are little-endian in guest memory.
uint16_t from_le16(uint16_t raw) {
  if constexpr (std::endian::native == std::endian::little) return raw;
  else return __builtin_bswap16(raw);
}
uint16_t to_le16(uint16_t v) { return from_le16(v); }
}  // namespace

uint64_t GuestMemory::next_layout() {
  static std::atomic<uint64_t> counter{0};
  return counter.fetch_add(1, std::memory_order_relaxed) + 1;
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept
    : regions_(std::move(o.regions_)), bytes_copied_(o.bytes_copied_.load()) {
  o.layout_ = next_layout();
}

GuestMemory& GuestMemory::operator=(GuestMemory&& o) noexcept {
  if (this != &o) {
    clear();
    regions_ = std::move(o.regions_);
    o.layout_ = next_layout();
    bytes_copied_.store(o.bytes_copied_.load());
  }
  return *this;
}

GuestMemory::~GuestMemory() { clear(); }

void GuestMemory::unmap(Region& r) {
  buffers::fault_guard::remove(r.guard);  // before the range can be reused by another mapping
  r.guard = buffers::fault_guard::kNoSlot;
  if (r.map_base) ::munmap(r.map_base, r.map_len);
  r.map_base = nullptr;
}

Status GuestMemory::check_lost() const {
  for (const auto& r : regions_)
    if (buffers::fault_guard::lost(r->guard)) {
      CANOPY_ERROR("guest memory: region at gpa 0x%llx (%llu bytes) lost: its file shrank under the mapping",
                   static_cast<unsigned long long>(r->info.guest_phys_addr),
                   static_cast<unsigned long long>(r->info.size));
      return make_error(Errc::kIo,
                        "guest memory: a region's file shrank under the mapping (truncated by the front-end)");
    }
  return {};
}

void GuestMemory::clear() {
  for (auto& r : regions_) unmap(*r);
  regions_.clear();
  layout_ = next_layout();
}

Status GuestMemory::add_region(const RegionInfo& info, UniqueFd fd) {
  if (!fd.valid()) return make_error(Errc::kInvalidArgument, "guest memory: invalid fd");
  if (info.size == 0) return make_error(Errc::kInvalidArgument, "guest memory: zero-sized region");
  if (regions_.size() >= kMaxMemoryRegions) return make_error(Errc::kLimit, "guest memory: too many regions");
  auto end = checked_add(info.guest_phys_addr, info.size);
  if (!end || !checked_add(info.mmap_offset, info.size) || (info.user_addr && !checked_add(info.user_addr, info.size)))
    return make_error(Errc::kOverflow, "guest memory: region end overflows");
  if (overlaps(info)) return make_error(Errc::kInvalidArgument, "guest memory: overlapping region");
  // A region past the end of its file would fault (SIGBUS) on access: check it against the file size.
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return make_error(Errc::kIo, "guest memory: fstat failed", errno);
  if (S_ISREG(st.st_mode) &&
      (info.mmap_offset > uint64_t(st.st_size) || info.size > uint64_t(st.st_size) - info.mmap_offset))
    return make_error(Errc::kOutOfRange, "guest memory: region runs past the end of its file");
  // mmap needs a page-aligned file offset: map from the page boundary below mmap_offset.
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  const uint64_t aligned_off = info.mmap_offset & ~(page - 1);
  const uint64_t delta = info.mmap_offset - aligned_off;
  const uint64_t map_len = info.size + delta;
  if (map_len > SIZE_MAX) return make_error(Errc::kOverflow, "guest memory: region too large");
  void* p = ::mmap(nullptr, size_t(map_len), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd.get(),
                   off_t(aligned_off));
  if (p == MAP_FAILED) return make_error(Errc::kIo, "guest memory: mmap failed", errno);
  auto region = std::make_unique<Region>();
  region->info = info;
  region->fd = std::move(fd);
  region->map_base = static_cast<uint8_t*>(p);
  region->map_len = size_t(map_len);
  region->host = region->map_base + delta;
  region->guard = buffers::fault_guard::add(p, size_t(map_len));
  region->dev = st.st_dev;
  region->ino = st.st_ino;
  insert(std::move(region));
  layout_ = next_layout();
  return {};
}

bool GuestMemory::overlaps(const RegionInfo& info) const {
  // The caller checked that info's end does not overflow.
  const uint64_t end = info.guest_phys_addr + info.size;
  for (const auto& r : regions_) {
    const uint64_t rs = r->info.guest_phys_addr, re = rs + r->info.size;
    if (info.guest_phys_addr < re && rs < end) return true;
  }
  return false;
}

void GuestMemory::insert(std::unique_ptr<Region> region) {
  auto pos =
      std::lower_bound(regions_.begin(), regions_.end(), region->info.guest_phys_addr,
                       [](const std::unique_ptr<Region>& r, uint64_t gpa) { return r->info.guest_phys_addr < gpa; });
  regions_.insert(pos, std::move(region));
}

Status GuestMemory::remove_region(uint64_t gpa, uint64_t size) {
  GuestMemory retired;
  return remove_region(gpa, size, retired);  // unmapped as `retired` goes
}

Status GuestMemory::remove_region(uint64_t gpa, uint64_t size, GuestMemory& retired) {
  for (auto it = regions_.begin(); it != regions_.end(); ++it) {
    if ((*it)->info.guest_phys_addr == gpa && (*it)->info.size == size) {
      retired.insert(std::move(*it));
      retired.layout_ = next_layout();
      regions_.erase(it);
      layout_ = next_layout();
      return {};
    }
  }
  return make_error(Errc::kInvalidArgument, "guest memory: no such region");
}

Status GuestMemory::replace_table(std::vector<TableEntry> table, GuestMemory& retired) {
  if (table.size() > kMaxMemoryRegions) return make_error(Errc::kLimit, "guest memory: too many regions");
  // Which present region each entry is (same place, size, front-end address, file and offset in it).
  std::vector<int> same(table.size(), -1);
  std::vector<bool> kept(regions_.size(), false);
  for (size_t e = 0; e < table.size(); ++e) {
    struct stat st{};
    if (!table[e].fd.valid() || ::fstat(table[e].fd.get(), &st) != 0) continue;  // add_region says why
    const RegionInfo& n = table[e].info;
    for (size_t i = 0; i < regions_.size(); ++i) {
      const Region& o = *regions_[i];
      if (kept[i] || o.info.guest_phys_addr != n.guest_phys_addr || o.info.size != n.size ||
          o.info.user_addr != n.user_addr || o.info.mmap_offset != n.mmap_offset || o.dev != st.st_dev ||
          o.ino != st.st_ino)
        continue;
      same[e] = int(i);
      kept[i] = true;
      break;
    }
  }
  // The new regions are mapped (and the whole table checked for overlaps) before anything changes.
  GuestMemory fresh;
  for (size_t e = 0; e < table.size(); ++e) {
    if (same[e] >= 0) {
      const RegionInfo& n = table[e].info;
      if (fresh.overlaps(n)) return make_error(Errc::kInvalidArgument, "guest memory: overlapping region");
      auto placeholder = std::make_unique<Region>();
      placeholder->info = n;  // stands for the kept region until the table is committed
      fresh.insert(std::move(placeholder));
      continue;
    }
    CANOPY_TRY(fresh.add_region(table[e].info, std::move(table[e].fd)));
  }
  // Commit: kept regions move over with their mappings; the others retire, still mapped.
  bool changed = regions_.size() != table.size();
  for (size_t e = 0; e < table.size(); ++e) {
    if (same[e] < 0) {
      changed = true;
      continue;
    }
    for (auto& r : fresh.regions_)
      if (!r->map_base && r->info.guest_phys_addr == table[e].info.guest_phys_addr) {
        r = std::move(regions_[size_t(same[e])]);
        break;
      }
  }
  for (auto& r : regions_)
    if (r) retired.insert(std::move(r));
  retired.layout_ = next_layout();
  regions_ = std::move(fresh.regions_);
  if (changed) layout_ = next_layout();
  return {};
}

std::vector<RegionInfo> GuestMemory::regions() const {
  std::vector<RegionInfo> out;
  out.reserve(regions_.size());
  for (const auto& r : regions_) out.push_back(r->info);
  return out;
}

const GuestMemory::Region* GuestMemory::find(uint64_t gpa) const {
  // Regions are sorted and disjoint: the candidate is the last region starting at or below gpa.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                             [](uint64_t g, const std::unique_ptr<Region>& r) { return g < r->info.guest_phys_addr; });
  if (it == regions_.begin()) return nullptr;
  const Region* r = (--it)->get();
  return gpa - r->info.guest_phys_addr < r->info.size ? r : nullptr;
}

template <typename Fn>
Status GuestMemory::for_each_piece(uint64_t gpa, size_t len, Fn&& fn) const {
  if (!checked_add<uint64_t>(gpa, len)) return make_error(Errc::kOverflow, "guest memory: address overflows");
  if (!contains(gpa, len)) return make_error(Errc::kOutOfRange, "guest memory: range outside guest memory");
  size_t done = 0;
  while (done < len) {
    const Region* r = find(gpa + done);
    uint64_t off = gpa + done - r->info.guest_phys_addr;
    size_t n = size_t(std::min<uint64_t>(len - done, r->info.size - off));
    fn(*r, off, done, n);
    done += n;
  }
  return {};
}

bool GuestMemory::contains(uint64_t gpa, uint64_t len) const {
  if (!checked_add(gpa, len)) return false;
  uint64_t cur = gpa, left = len;
  // A zero-length range must still name a guest address.
  if (left == 0) return find(gpa) != nullptr;
  while (left > 0) {
    const Region* r = find(cur);
    if (!r) return false;
    uint64_t avail = r->info.size - (cur - r->info.guest_phys_addr);
    if (avail >= left) return true;
    cur += avail;
    left -= avail;
  }
  return true;
}

Status GuestMemory::read(uint64_t gpa, void* dst, size_t len) const {
  auto* out = static_cast<uint8_t*>(dst);
  CANOPY_TRY(for_each_piece(gpa, len, [&](const Region& r, uint64_t off, size_t done, size_t n) {
    std::memcpy(out + done, r.host + off, n);
  }));
  bytes_copied_.fetch_add(len, std::memory_order_relaxed);
  return {};
}

Status GuestMemory::write(uint64_t gpa, const void* src, size_t len) {
  const auto* in = static_cast<const uint8_t*>(src);
  CANOPY_TRY(for_each_piece(gpa, len, [&](const Region& r, uint64_t off, size_t done, size_t n) {
    std::memcpy(r.host + off, in + done, n);
  }));
  bytes_copied_.fetch_add(len, std::memory_order_relaxed);
  return {};
}

Status GuestMemory::fill(uint64_t gpa, uint8_t byte, size_t len) {
  CANOPY_TRY(for_each_piece(
      gpa, len, [&](const Region& r, uint64_t off, size_t, size_t n) { std::memset(r.host + off, byte, n); }));
  bytes_copied_.fetch_add(len, std::memory_order_relaxed);
  return {};
}

uint8_t* GuestMemory::host_u16(uint64_t gpa) const {
  if (gpa & 1) return nullptr;
  const Region* r = find(gpa);
  if (!r) return nullptr;
  uint64_t off = gpa - r->info.guest_phys_addr;
  if (r->info.size - off < 2) return nullptr;
  uint8_t* p = r->host + off;
  return (reinterpret_cast<uintptr_t>(p) & 1) ? nullptr : p;
}

Result<uint16_t> GuestMemory::load_acquire_u16(uint64_t gpa) const {
  uint8_t* p = host_u16(gpa);
  if (!p) return make_error(Errc::kOutOfRange, "guest memory: bad u16 address");
  return from_le16(__atomic_load_n(reinterpret_cast<uint16_t*>(p), __ATOMIC_ACQUIRE));
}

Result<uint16_t> GuestMemory::load_relaxed_u16(uint64_t gpa) const {
  uint8_t* p = host_u16(gpa);
  if (!p) return make_error(Errc::kOutOfRange, "guest memory: bad u16 address");
  return from_le16(__atomic_load_n(reinterpret_cast<uint16_t*>(p), __ATOMIC_RELAXED));
}

Status GuestMemory::store_release_u16(uint64_t gpa, uint16_t v) {
  uint8_t* p = host_u16(gpa);
  if (!p) return make_error(Errc::kOutOfRange, "guest memory: bad u16 address");
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), to_le16(v), __ATOMIC_RELEASE);
  return {};
}

Status GuestMemory::store_relaxed_u16(uint64_t gpa, uint16_t v) {
  uint8_t* p = host_u16(gpa);
  if (!p) return make_error(Errc::kOutOfRange, "guest memory: bad u16 address");
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), to_le16(v), __ATOMIC_RELAXED);
  return {};
}

Result<uint64_t> GuestMemory::uva_to_gpa(uint64_t uva, uint64_t len) const {
  for (const auto& r : regions_) {
    const RegionInfo& i = r->info;
    if (uva >= i.user_addr && range_within(uva - i.user_addr, len, i.size))
      return i.guest_phys_addr + (uva - i.user_addr);
  }
  return make_error(Errc::kOutOfRange, "guest memory: frontend address not in any region");
}

Result<std::vector<FileRange>> GuestMemory::file_ranges(uint64_t gpa, uint64_t len) const {
  std::vector<FileRange> out;
  if (len > SIZE_MAX) return make_error(Errc::kOverflow, "guest memory: range too large");
  CANOPY_TRY(for_each_piece(gpa, size_t(len), [&](const Region& r, uint64_t off, size_t, size_t n) {
    out.push_back(FileRange{r.fd.get(), r.info.mmap_offset + off, n});
  }));
  return out;
}

Result<std::vector<GuestMemory::HostRange>> GuestMemory::host_ranges(uint64_t gpa, uint64_t len) const {
  std::vector<HostRange> out;
  if (len > SIZE_MAX) return make_error(Errc::kOverflow, "guest memory: range too large");
  CANOPY_TRY(for_each_piece(gpa, size_t(len), [&](const Region& r, uint64_t off, size_t, size_t n) {
    out.push_back(HostRange{r.host + off, n});
  }));
  return out;
}

}  // namespace canopy::transport
