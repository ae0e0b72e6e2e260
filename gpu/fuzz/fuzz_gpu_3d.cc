// Fuzz target: the 3D command path in front of the renderer — our validation, not virglrenderer's
// internals. The device model runs with a checking 3D renderer that stands where virglrenderer does and
// traps on anything our validation must never let through: a resource it does not know or knows
// twice, a backing range outside the guest's memory, a transfer without backing, a read-back outside
// the resource or its host copy, a context it does not know. The input format and the device's
// invariants are gpu_fuzz_rig.h's; queue byte 2 completes the renderer's fences (in order) and releases
// held frames; a reset must leave nothing behind in the renderer either. Host blobs (HOST3D) and
// MAP_BLOB / UNMAP_BLOB go to a checking host-visible region that traps on a mapping outside it, over
// another, of an unknown resource, or an unmap of something not mapped; a reset must leave it empty.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <vector>

#include "canopy/gpu/device.h"
#include "gpu_fuzz_rig.h"

using namespace canopy;
using namespace canopy::gpu;

namespace {

using fuzzing::check;
using fuzzing::Rig;

constexpr uint32_t kBpp = 4;

class CheckingRenderer final : public Renderer {
 public:
  explicit CheckingRenderer(const uint8_t* ram) : ram_(ram) {}
  void set_ram(const uint8_t* ram) { ram_ = ram; }
  const char* name() const override { return "checking"; }
  uint32_t num_capsets() const override { return 1; }
  Result<CapsetInfo> capset_info(uint32_t index) const override {
    if (index != 0) return make_error(Errc::kInvalidArgument, "no such capset");
    return CapsetInfo{2, 2, 16};
  }
  Result<std::vector<uint8_t>> capset(uint32_t id, uint32_t version) const override {
    if (id != 2 || version != 2) return make_error(Errc::kInvalidArgument, "no such capset");
    return std::vector<uint8_t>(16, 0x5a);
  }
  Status create_context(uint32_t ctx_id, uint32_t capset_id, std::string_view) override {
    check(ctx_id != 0 && !contexts_.count(ctx_id), "context id zero or taken");
    if (capset_id > 2) return make_error(Errc::kInvalidArgument, "capset");
    contexts_.insert(ctx_id);
    return {};
  }
  void destroy_context(uint32_t ctx_id) override {
    check(contexts_.erase(ctx_id) == 1, "destroying an unknown context");
  }
  Status submit(uint32_t ctx_id, std::span<const uint8_t> commands) override {
    check(contexts_.count(ctx_id) == 1, "submit to an unknown context");
    if (commands.size() % 4) return make_error(Errc::kInvalidArgument, "not in dwords");
    return {};
  }
  Result<HostImage> create_2d(uint32_t resource_id, uint32_t width, uint32_t height) override {
    auto img = two_d_->create_2d(resource_id, width, height);
    if (img.ok()) hosts_[resource_id] = {reinterpret_cast<const uint8_t*>(img->map.data()), img->size};
    return img;
  }
  bool supports_3d() const override { return true; }
  Status create_3d(uint32_t id, const Resource3dArgs& a) override {
    check(id != 0 && !resources_.count(id), "3D resource id zero or taken");
    check(a.width && a.height && a.depth && a.array_size, "zero-sized 3D resource");
    if (a.target > 8) return make_error(Errc::kInvalidArgument, "target");
    resources_[id] = Res{a, false};
    return {};
  }
  Status create_blob_3d(uint32_t id, const Blob3dArgs& a,
                        std::span<const transport::GuestMemory::HostRange> iov) override {
    check(id != 0 && !resources_.count(id), "host blob id zero or taken");
    const bool guest_only = a.blob_mem == uint32_t(proto::BlobMem::kGuest);
    check(guest_only || contexts_.count(a.ctx_id), "host blob in an unknown context");
    check(!guest_only || !iov.empty(), "guest blob without its memory");
    check(a.size > 0, "empty host blob");
    for (const auto& r : iov)
      check(r.len > 0 && r.base >= ram_ && r.base + r.len <= ram_ + Rig::kRam,
            "host blob backing outside guest memory");
    if (!guest_only && a.blob_id > 3) return make_error(Errc::kInvalidArgument, "no such object");
    resources_[id] = Res{{}, !iov.empty(), a.size};
    return {};
  }
  Result<BlobExport> export_blob(uint32_t id) override {
    auto it = resources_.find(id);
    check(it != resources_.end() && it->second.blob_size > 0, "export of an unknown or non-blob resource");
    BlobExport e;
    e.fd = UniqueFd(memfd_create("fuzz-blob", MFD_CLOEXEC));
    e.map_info = proto::kMapCacheCached;
    blob_size_[e.fd.get()] = it->second.blob_size;
    return e;
  }
  uint64_t exported_size(int fd) const {
    auto it = blob_size_.find(fd);
    return it == blob_size_.end() ? 0 : it->second;
  }
  void destroy_3d(uint32_t id) override {
    auto it = resources_.find(id);
    check(it != resources_.end(), "destroying an unknown 3D resource");
    check(!it->second.backed, "destroyed with its backing still attached");
    resources_.erase(it);
    hosts_.erase(id);
  }
  Status attach_backing_3d(uint32_t id, std::span<const transport::GuestMemory::HostRange> iov) override {
    auto it = resources_.find(id);
    check(it != resources_.end(), "backing for an unknown 3D resource");
    check(!it->second.backed, "backing attached twice");
    check(!iov.empty(), "empty backing");
    for (const auto& r : iov)
      check(r.len > 0 && r.base >= ram_ && r.base + r.len <= ram_ + Rig::kRam, "backing range outside guest memory");
    it->second.backed = true;
    return {};
  }
  void detach_backing_3d(uint32_t id) override {
    auto it = resources_.find(id);
    check(it != resources_.end(), "detaching an unknown 3D resource");
    it->second.backed = false;
  }
  void attach_to_context(uint32_t ctx, uint32_t id) override {
    check(contexts_.count(ctx) && resources_.count(id), "attach: unknown context or resource");
  }
  void detach_from_context(uint32_t ctx, uint32_t id) override {
    check(contexts_.count(ctx) && resources_.count(id), "detach: unknown context or resource");
  }
  Status transfer_3d(uint32_t id, bool, const Transfer3d& t) override {
    auto it = resources_.find(id);
    check(it != resources_.end(), "transfer on an unknown 3D resource");
    check(it->second.backed, "transfer without backing");
    check(t.ctx_id == 0 || contexts_.count(t.ctx_id), "transfer in an unknown context");
    const auto& a = it->second.a;
    if (uint64_t(t.x) + t.w > a.width || uint64_t(t.y) + t.h > a.height)
      return make_error(Errc::kInvalidArgument, "box");
    return {};
  }
  Status read_pixels(uint32_t id, const Rect& r, uint8_t* dst, uint32_t stride) override {
    auto it = resources_.find(id);
    check(it != resources_.end(), "read-back of an unknown 3D resource");
    check(uint64_t(r.x) + r.width <= it->second.a.width && uint64_t(r.y) + r.height <= it->second.a.height,
          "read-back outside the resource");
    check(uint64_t(stride) >= uint64_t(r.width) * kBpp, "read-back stride below the row");
    if (r.width == 0 || r.height == 0) return {};
    // Into the resource's host copy (scanout) or a cursor image the device owns: write every byte.
    for (uint32_t y = 0; y < r.height; ++y) std::memset(dst + uint64_t(y) * stride, 0x42, size_t(r.width) * kBpp);
    auto h = hosts_.find(id);
    if (h != hosts_.end() && h->second.first && dst >= h->second.first && dst < h->second.first + h->second.second)
      check(dst + uint64_t(stride) * (r.height - 1) + uint64_t(r.width) * kBpp <= h->second.first + h->second.second,
            "read-back past the host copy");
    return {};
  }
  Status create_fence(uint32_t ctx, uint32_t, bool on_ring, uint64_t id) override {
    check(!on_ring || contexts_.count(ctx), "ring fence in an unknown context");
    fences_.push_back(id);
    return {};
  }
  void set_fence_callback(std::function<void(uint64_t)> cb) override { cb_ = std::move(cb); }
  void complete_fences() {
    while (!fences_.empty()) {
      const uint64_t f = fences_.front();
      fences_.pop_front();
      if (cb_) cb_(f);
    }
  }
  bool empty() const { return contexts_.empty() && resources_.empty(); }

 private:
  struct Res {
    Resource3dArgs a;
    bool backed = false;
    uint64_t blob_size = 0;  // a host blob's
  };
  std::map<int, uint64_t> blob_size_;  // exported fd -> blob size
  const uint8_t* ram_;
  std::unique_ptr<Renderer> two_d_ = make_2d_renderer();
  std::set<uint32_t> contexts_;
  std::map<uint32_t, Res> resources_;
  std::map<uint32_t, std::pair<const uint8_t*, uint64_t>> hosts_;
  std::deque<uint64_t> fences_;
  std::function<void(uint64_t)> cb_;
};

// The host-visible region as a checker: mappings inside it, page aligned, never over each other, of
// at least the blob's size; unmaps of exactly what was mapped.
class CheckingRegion final : public HostVisibleRegion {
 public:
  explicit CheckingRegion(const CheckingRenderer& r) : r_(r) {}
  uint64_t size() const override { return kSize; }
  bool usable() const override { return true; }
  Status map(uint64_t offset, int fd, uint64_t fd_offset, uint64_t len, bool) override {
    check(offset % 4096 == 0 && len % 4096 == 0 && len > 0 && fd_offset == 0, "unaligned or empty mapping");
    check(offset < kSize && len <= kSize - offset, "mapping outside the region");
    check(len >= r_.exported_size(fd) && r_.exported_size(fd) > 0, "mapping smaller than the blob, or of no export");
    auto next = maps_.lower_bound(offset);
    check(next == maps_.end() || next->first >= offset + len, "mapping over the next one");
    check(next == maps_.begin() || std::prev(next)->first + std::prev(next)->second <= offset,
          "mapping over the previous one");
    maps_.emplace(offset, len);
    return {};
  }
  Status unmap(uint64_t offset, uint64_t len) override {
    auto it = maps_.find(offset);
    check(it != maps_.end() && it->second == len, "unmap of something not mapped");
    maps_.erase(it);
    return {};
  }
  bool empty() const { return maps_.empty(); }
  static constexpr uint64_t kSize = 64ull << 20;

 private:
  const CheckingRenderer& r_;
  std::map<uint64_t, uint64_t> maps_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Rig rig;
  // The checking renderer learns where guest memory is mapped once the rig has made it.
  auto owned = std::make_unique<CheckingRenderer>(nullptr);
  CheckingRenderer* renderer = owned.get();
  // A set-up that fails is a broken target, not an uninteresting input: it must not replay as a pass.
  check(rig.start(std::move(owned), proto::kFVirgl), "set-up: the rig's device did not start");
  auto ranges = rig.mem.host_ranges(0, Rig::kRam);
  check(ranges.ok() && ranges->size() == 1, "set-up: guest RAM is not one mapping");
  renderer->set_ram((*ranges)[0].base);
  CheckingRegion region(*renderer);
  rig.dev->set_host_visible(&region);
  rig.run(data, size, [&] {
    renderer->complete_fences();
    rig.dev->process_renderer();
    rig.out.release_held();
    rig.dev->process_releases();
  });
  check(renderer->empty(), "reset leaves nothing in the renderer");
  check(region.empty(), "reset leaves nothing mapped in the host-visible region");
  return 0;
}
