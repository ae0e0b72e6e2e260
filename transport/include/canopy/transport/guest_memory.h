// Guest memory: several memfd-backed regions at guest physical addresses, mapped shared.
// All access is bounds-checked with checked arithmetic; device code never receives a raw pointer
// into guest memory (BRIEF conventions 1). Zero-copy consumers get (fd, offset) pieces to map themselves.
//
// Threading: reads/writes are safe from any thread while the region table is unchanged. Adding or
// removing regions must not race with access: vhost-user backends change the table from the same
// event-loop thread that runs their queues.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy::transport {

// Cap on regions, as vhost-user's VHOST_USER_MAX_RAM_SLOTS.
inline constexpr size_t kMaxMemoryRegions = 509;

struct RegionInfo {
  uint64_t guest_phys_addr = 0;
  uint64_t size = 0;
  uint64_t user_addr = 0;    // the frontend's virtual address of the region (vhost-user); 0 if unused
  uint64_t mmap_offset = 0;  // offset of the region in its fd
};

// A piece of guest memory as a file range, for consumers that map guest buffers themselves.
struct FileRange {
  int fd = -1;          // borrowed; valid while the region exists
  uint64_t offset = 0;  // file offset
  uint64_t length = 0;
};

class GuestMemory {
 public:
  GuestMemory() = default;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  GuestMemory(GuestMemory&&) noexcept;
  GuestMemory& operator=(GuestMemory&&) noexcept;
  ~GuestMemory();

  // Maps `size` bytes of `fd` at `mmap_offset` (MAP_SHARED) as guest physical [gpa, gpa+size).
  // Takes ownership of fd. Fails on overlap, zero size, overflow or more than kMaxMemoryRegions.
  Status add_region(const RegionInfo& info, UniqueFd fd);
  // Removes the region that starts at gpa with exactly this size.
  Status remove_region(uint64_t gpa, uint64_t size);
  // As above, but the region moves into `retired`, still mapped: whoever holds host ranges of it (a
  // library's iovecs) lets go first, then `retired` is dropped (vhost-user REM_MEM_REG).
  Status remove_region(uint64_t gpa, uint64_t size, GuestMemory& retired);
  // A whole new region table (vhost-user SET_MEM_TABLE, which QEMU resends with fresh descriptors for
  // the same memory whenever its memory map changes). A region that is the same as before (place, size,
  // front-end address, file and offset in it) keeps its mapping, so host ranges taken from it stay valid
  // and layout() stays as it was when nothing changed; the regions that go move into `retired`, still
  // mapped (see remove_region). On an error nothing changes.
  struct TableEntry {
    RegionInfo info;
    UniqueFd fd;
  };
  Status replace_table(std::vector<TableEntry> table, GuestMemory& retired);
  void clear();

  size_t region_count() const { return regions_.size(); }
  std::vector<RegionInfo> regions() const;

  // True when [gpa, gpa+len) is entirely guest memory (it may span adjacent regions).
  bool contains(uint64_t gpa, uint64_t len) const;

  // Copies between guest memory and host buffers; ranges may span adjacent regions.
  Status read(uint64_t gpa, void* dst, size_t len) const;
  Status write(uint64_t gpa, const void* src, size_t len);
  Status fill(uint64_t gpa, uint8_t byte, size_t len);

  // read_obj returns a copy (BRIEF conventions 1): the guest cannot change it after validation.
  template <typename T>
  Result<T> read_obj(uint64_t gpa) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    CANOPY_TRY(read(gpa, &v, sizeof v));
    return v;
  }
  template <typename T>
  Status write_obj(uint64_t gpa, const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    return write(gpa, &v, sizeof v);
  }

  // Naturally aligned atomic accesses for ring indexes and flags shared with the other side.
  Result<uint16_t> load_acquire_u16(uint64_t gpa) const;
  Status store_release_u16(uint64_t gpa, uint16_t v);
  Result<uint16_t> load_relaxed_u16(uint64_t gpa) const;
  Status store_relaxed_u16(uint64_t gpa, uint16_t v);

  // Translates a frontend virtual address (vhost-user SET_VRING_ADDR) to a guest physical address;
  // the range [uva, uva+len) must lie in one region.
  Result<uint64_t> uva_to_gpa(uint64_t uva, uint64_t len) const;

  // The file ranges covering [gpa, gpa+len), in order (several when the range spans regions).
  Result<std::vector<FileRange>> file_ranges(uint64_t gpa, uint64_t len) const;

  // The host mappings covering [gpa, gpa+len), in order, for a library that reads and writes guest
  // memory itself through iovecs (virglrenderer's attached backing). The pointers stay valid until the
  // region is removed or the memory cleared: the caller must let go of them first (a vhost-user
  // SET_MEM_TABLE or reset), and nothing written through them is counted in bytes_copied().
  struct HostRange {
    uint8_t* base;
    size_t len;
  };
  Result<std::vector<HostRange>> host_ranges(uint64_t gpa, uint64_t len) const;
  // Changes (to a value no GuestMemory had before) whenever a region is added or removed or the memory
  // is cleared or moved: host_ranges() taken under another layout may dangle.
  uint64_t layout() const { return layout_; }

  // A region whose file shrank under its mapping (a front-end truncated it; fault_guard.h) reads as
  // zeros from the fault on: an error naming the first such region, else ok. Devices fail on it.
  Status check_lost() const;

  // Bytes copied by read/write/fill since creation: the zero-copy accounting figure.
  uint64_t bytes_copied() const { return bytes_copied_.load(std::memory_order_relaxed); }

 private:
  struct Region {
    RegionInfo info;
    UniqueFd fd;
    uint8_t* host = nullptr;  // mapping of [mmap_offset, mmap_offset+size)
    size_t map_len = 0;
    uint8_t* map_base = nullptr;
    int guard = -1;             // buffers::fault_guard slot
    uint64_t dev = 0, ino = 0;  // the file's identity (replace_table keeps the mapping of the same file)
  };
  static void unmap(Region& r);
  void insert(std::unique_ptr<Region> region);  // in gpa order
  bool overlaps(const RegionInfo& info) const;  // with a region present (info's end checked by the caller)
  // Returns the region containing gpa, or nullptr. Regions are sorted by gpa.
  const Region* find(uint64_t gpa) const;
  template <typename Fn>
  Status for_each_piece(uint64_t gpa, size_t len, Fn&& fn) const;
  uint8_t* host_u16(uint64_t gpa) const;  // aligned, in-bounds pointer or nullptr

  std::vector<std::unique_ptr<Region>> regions_;
  mutable std::atomic<uint64_t> bytes_copied_{0};
  uint64_t layout_ = next_layout();
  static uint64_t next_layout();
};

}  // namespace canopy::transport
