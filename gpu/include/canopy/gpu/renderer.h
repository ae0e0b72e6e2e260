// The renderer behind GpuDevice (device.h): what the device asks of whatever draws — 2D resources in
// memfds (make_2d_renderer, renderer_2d.cc) or virglrenderer's 3D contexts, resources, blobs and fences
// (renderer_virgl.h) — and the argument types of those calls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/gpu/scanout_output.h"
#include "canopy/protocol/virtio_gpu.h"
#include "canopy/transport/guest_memory.h"

namespace canopy::gpu {
namespace proto = ::canopy::protocol::virtio_gpu;  // virtio-gpu's wire format (canopy/protocol/virtio_gpu.h)

struct CapsetInfo {
  uint32_t id = 0, max_version = 0, max_size = 0;
};

// A 2D resource's host storage.
struct HostImage {
  SharedFd fd;
  buffers::Mapping map;
  uint32_t stride = 0;
  uint64_t size = 0;
};

// RESOURCE_CREATE_3D's arguments (Gallium target, format, bind flags ...), checked by the renderer.
struct Resource3dArgs {
  uint32_t target = 0, format = 0, bind = 0, width = 0, height = 0, depth = 0, array_size = 0, last_level = 0,
           nr_samples = 0, flags = 0;
};

// RESOURCE_CREATE_BLOB of host memory (HOST3D, or HOST3D_GUEST with guest backing): the context's
// object `blob_id` (0: fresh shared memory) becomes resource memory.
struct Blob3dArgs {
  uint32_t ctx_id = 0, blob_mem = 0, blob_flags = 0;
  uint64_t blob_id = 0, size = 0;
};

// A host blob as a file the front-end can map into the guest, and how the guest should cache it.
struct BlobExport {
  UniqueFd fd;
  uint32_t map_info = 0;  // proto::kMapCache*
};

// A TRANSFER_TO/FROM_HOST_3D: the box of `level`, the guest data at `offset` of the resource's backing
// with `stride` bytes per row and `layer_stride` per layer (0: tightly packed).
struct Transfer3d {
  uint32_t ctx_id = 0, level = 0, stride = 0, layer_stride = 0;
  uint32_t x = 0, y = 0, z = 0, w = 0, h = 0, d = 0;
  uint64_t offset = 0;
};

// The renderer behind the device model. The 2D renderer (make_2d_renderer) keeps 2D resources in
// memfds and has no capsets; the virgl renderer (renderer_virgl.h) runs virglrenderer: capsets,
// contexts with command streams, 3D resources and fences that complete when the GPU work has.
class Renderer {
 public:
  virtual ~Renderer() = default;
  virtual const char* name() const = 0;
  virtual uint32_t num_capsets() const = 0;
  // Errors: kInvalidArgument for an index / id / version the renderer does not have.
  virtual Result<CapsetInfo> capset_info(uint32_t index) const = 0;
  virtual Result<std::vector<uint8_t>> capset(uint32_t id, uint32_t version) const = 0;
  virtual Status create_context(uint32_t ctx_id, uint32_t capset_id, std::string_view debug_name) = 0;
  virtual void destroy_context(uint32_t ctx_id) = 0;
  // A context's command stream (SUBMIT_3D). The 2D renderer accepts only an empty stream (a fence carrier).
  virtual Status submit(uint32_t ctx_id, std::span<const uint8_t> commands) = 0;
  virtual Result<HostImage> create_2d(uint32_t resource_id, uint32_t width, uint32_t height) = 0;

  // ---- 3D. The 2D renderer has none of this (supports_3d() false, the rest kUnsupported). ----
  virtual bool supports_3d() const { return false; }
  virtual Status create_3d(uint32_t resource_id, const Resource3dArgs& args);
  virtual void destroy_3d(uint32_t /*resource_id*/) {}
  // The guest memory behind a 3D resource, as host mappings (GuestMemory::host_ranges), in order.
  virtual Status attach_backing_3d(uint32_t resource_id, std::span<const transport::GuestMemory::HostRange> iov);
  virtual void detach_backing_3d(uint32_t /*resource_id*/) {}
  // What the renderer was last handed as the resource's backing (none: empty), for checks.
  virtual std::vector<transport::GuestMemory::HostRange> backing_3d(uint32_t /*resource_id*/) const { return {}; }
  virtual void attach_to_context(uint32_t /*ctx_id*/, uint32_t /*resource_id*/) {}
  virtual void detach_from_context(uint32_t /*ctx_id*/, uint32_t /*resource_id*/) {}
  // Host blobs (RESOURCE_CREATE_BLOB with HOST3D / HOST3D_GUEST); iov: the guest backing of HOST3D_GUEST.
  // Destroyed with destroy_3d.
  virtual Status create_blob_3d(uint32_t resource_id, const Blob3dArgs& args,
                                std::span<const transport::GuestMemory::HostRange> iov);
  // A host blob as a mappable file (RESOURCE_MAP_BLOB). kUnsupported where the renderer's memory
  // cannot be shared as a file.
  virtual Result<BlobExport> export_blob(uint32_t resource_id);
  // Between the resource and its attached backing; errors for a box or level outside the resource.
  virtual Status transfer_3d(uint32_t resource_id, bool to_host, const Transfer3d& t);
  // Reads level 0's rows [y, y + h) of columns [x, x + w) into dst (`stride` bytes a row, top row first):
  // how a scanout of a 3D resource reaches the output (a counted copy).
  virtual Status read_pixels(uint32_t resource_id, const Rect& r, uint8_t* dst, uint32_t stride);
  // A fence after everything submitted so far (to ring `ring_idx` of ctx_id when on_ring, else to all):
  // the callback set with set_fence_callback gets `id` once that work has completed, from poll().
  virtual Status create_fence(uint32_t ctx_id, uint32_t ring_idx, bool on_ring, uint64_t id);
  // A sink: the overrides move from it.
  // NOLINTNEXTLINE(performance-unnecessary-value-param)
  virtual void set_fence_callback(std::function<void(uint64_t id)> /*cb*/) {}
  // Readable when poll() has fences to report; -1 when the renderer has none.
  virtual int poll_fd() const { return -1; }
  virtual void poll() {}
};
std::unique_ptr<Renderer> make_2d_renderer();

}  // namespace canopy::gpu
