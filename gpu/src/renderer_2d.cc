// The 2D renderer: each 2D resource's host storage is a sealed memfd (a compositor in another process
// can map it); no capsets; contexts exist only as fence timelines.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <set>

#include "canopy/gpu/device.h"
#include "canopy/protocol/virtio_gpu.h"

namespace canopy::gpu {
namespace {

class Renderer2d : public Renderer {
 public:
  const char* name() const override { return "2d"; }
  uint32_t num_capsets() const override { return 0; }
  Result<CapsetInfo> capset_info(uint32_t) const override {
    return make_error(Errc::kInvalidArgument, "2d renderer: no capsets");
  }
  Result<std::vector<uint8_t>> capset(uint32_t, uint32_t) const override {
    return make_error(Errc::kInvalidArgument, "2d renderer: no capsets");
  }
  Status create_context(uint32_t ctx_id, uint32_t capset_id, std::string_view) override {
    if (capset_id != 0) return make_error(Errc::kInvalidArgument, "2d renderer: no capsets");
    contexts_.insert(ctx_id);
    return {};
  }
  void destroy_context(uint32_t ctx_id) override { contexts_.erase(ctx_id); }
  Status submit(uint32_t ctx_id, std::span<const uint8_t> commands) override {
    if (!contexts_.count(ctx_id)) return make_error(Errc::kInvalidArgument, "2d renderer: no such context");
    if (!commands.empty()) return make_error(Errc::kUnsupported, "2d renderer: command streams need the 3D renderer");
    return {};
  }
  Result<HostImage> create_2d(uint32_t resource_id, uint32_t width, uint32_t height) override {
    (void)resource_id;
    HostImage img;
    img.stride = width * proto::kBytesPerPixel;
    img.size = uint64_t(img.stride) * height;
    UniqueFd fd(memfd_create("canopy-gpu-2d", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) return make_error(Errc::kIo, "memfd_create", errno);
    if (ftruncate(fd.get(), off_t(img.size)) != 0) return make_error(Errc::kNoMemory, "ftruncate", errno);
    (void)fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    CANOPY_ASSIGN_OR_RETURN(img.map, buffers::Mapping::map(fd.get(), 0, img.size, buffers::Access::kReadWrite));
    (void)forbid_writable_reopen(fd.get());  // the compositor gets it read-only: so it stays
    img.fd = std::make_shared<const UniqueFd>(std::move(fd));
    return img;
  }

 private:
  std::set<uint32_t> contexts_;
};

}  // namespace

std::unique_ptr<Renderer> make_2d_renderer() { return std::make_unique<Renderer2d>(); }

// What a renderer without 3D answers.
Status Renderer::create_3d(uint32_t, const Resource3dArgs&) {
  return make_error(Errc::kUnsupported, "renderer: no 3D resources");
}
Status Renderer::create_blob_3d(uint32_t, const Blob3dArgs&, std::span<const transport::GuestMemory::HostRange>) {
  return make_error(Errc::kUnsupported, "renderer has no host blobs");
}
Result<BlobExport> Renderer::export_blob(uint32_t) {
  return make_error(Errc::kUnsupported, "renderer has no host blobs");
}
Status Renderer::attach_backing_3d(uint32_t, std::span<const transport::GuestMemory::HostRange>) {
  return make_error(Errc::kUnsupported, "renderer: no 3D resources");
}
Status Renderer::transfer_3d(uint32_t, bool, const Transfer3d&) {
  return make_error(Errc::kUnsupported, "renderer: no 3D resources");
}
Status Renderer::read_pixels(uint32_t, const Rect&, uint8_t*, uint32_t) {
  return make_error(Errc::kUnsupported, "renderer: no 3D resources");
}
Status Renderer::create_fence(uint32_t, uint32_t, bool, uint64_t) {
  return make_error(Errc::kUnsupported, "renderer: no fences of its own");
}

}  // namespace canopy::gpu
