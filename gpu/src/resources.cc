// GpuDevice's resources (2D, 3D, blobs) and 3D contexts (device_internal.h).
#include "device_internal.h"
#include "texture_bytes.h"

namespace canopy::gpu {

using namespace detail;  // NOLINT(google-build-using-namespace): the device's own helpers
using proto::Resp;

Resp GpuDevice::resource_create_2d(const Command& c) {
  const auto rc = c.as<proto::ResourceCreate2d>();
  const uint32_t id = rc.resource_id;
  if (id == 0 || resources_.count(id)) return Resp::kErrInvalidResourceId;
  const uint32_t fourcc = proto::drm_fourcc(rc.format);
  if (fourcc == 0) return Resp::kErrInvalidParameter;
  const uint32_t w = rc.width, h = rc.height;
  if (w == 0 || h == 0 || w > options_.caps.max_dimension || h > options_.caps.max_dimension)
    return Resp::kErrInvalidParameter;
  if (resources_.size() >= options_.caps.max_resources) return Resp::kErrOutOfMemory;
  auto r = std::make_unique<Resource>();
  r->id = id;
  r->format = rc.format;
  r->fourcc = fourcc;
  r->width = w;
  r->height = h;
  if (const Resp hr = give_host_image(*r); hr != Resp::kOkNodata) return hr;
  resources_.emplace(id, std::move(r));
  return Resp::kOkNodata;
}

Resp GpuDevice::give_host_image(Resource& r) {
  const uint64_t bytes = uint64_t(r.width) * proto::kBytesPerPixel * r.height;
  if (stats_.host_bytes + bytes > options_.caps.max_host_bytes) return Resp::kErrOutOfMemory;
  auto host = renderer_->create_2d(r.id, r.width, r.height);
  if (!host.ok()) return Resp::kErrOutOfMemory;
  r.host = std::move(*host);
  r.host_pieces = std::make_shared<const std::vector<FramePiece>>(1, FramePiece{r.host.fd, 0, r.host.size});
  stats_.host_bytes += r.host.size;
  return Resp::kOkNodata;
}

Resp GpuDevice::create_blob(const Command& c) {
  if (!feature(proto::kFResourceBlob)) return Resp::kErrUnspec;
  const auto cb = c.as<proto::ResourceCreateBlob>();
  const uint32_t id = cb.resource_id;
  if (id == 0 || resources_.count(id)) return Resp::kErrInvalidResourceId;
  const uint32_t known = proto::kBlobFlagMappable | proto::kBlobFlagShareable | proto::kBlobFlagCrossDevice;
  if (cb.blob_flags.get() & ~known) return Resp::kErrInvalidParameter;
  if (cb.blob_mem.get() != uint32_t(proto::BlobMem::kGuest)) return create_blob_3d(c);
  if (cb.size.get() == 0 || cb.nr_entries.get() == 0) return Resp::kErrInvalidParameter;
  if (resources_.size() >= options_.caps.max_resources) return Resp::kErrOutOfMemory;
  auto r = std::make_unique<Resource>();
  r->id = id;
  r->blob = true;
  r->blob_size = cb.size;
  r->blob_flags = cb.blob_flags;
  r->blob_mem = cb.blob_mem;
  const Resp b = set_backing(*r, c.tail<proto::ResourceCreateBlob>(), cb.nr_entries);
  if (b != Resp::kOkNodata) return b;
  if (r->backing_bytes < r->blob_size) {
    free_backing(*r);
    return Resp::kErrInvalidParameter;
  }
  if (!make_pieces(*r).ok()) {
    free_backing(*r);
    return Resp::kErrUnspec;
  }
  // With a 3D renderer the blob is the renderer's too, as QEMU's virgl device has it: a context may use
  // guest memory blobs (venus's command rings where the renderer has no shared-memory blobs).
  if (renderer_->supports_3d()) {
    if (const Resp rr = give_guest_blob_to_renderer(*r, cb.hdr.ctx_id, cb.blob_id); rr != Resp::kOkNodata) {
      free_backing(*r);
      return rr;
    }
  }
  resources_.emplace(id, std::move(r));
  return Resp::kOkNodata;
}

Resp GpuDevice::give_guest_blob_to_renderer(Resource& r, uint32_t ctx_id, uint64_t blob_id) {
  std::vector<transport::GuestMemory::HostRange> iov;
  if (!backing_ranges(r, iov)) return Resp::kErrInvalidParameter;
  Blob3dArgs a;
  a.ctx_id = ctx_id;
  a.blob_mem = uint32_t(proto::BlobMem::kGuest);
  a.blob_flags = r.blob_flags;
  a.blob_id = blob_id;
  a.size = r.blob_size;
  if (Status st = renderer_->create_blob_3d(r.id, a, iov); !st.ok()) {
    CANOPY_WARN_RL("gpu: guest blob %u refused by the renderer: %s", r.id, st.error().what);
    return Resp::kErrInvalidParameter;
  }
  r.in_renderer = true;
  mem_layout_ = mem_->layout();
  return Resp::kOkNodata;
}

void GpuDevice::destroy_resource(uint32_t id) {
  auto it = resources_.find(id);
  if (it == resources_.end()) return;
  Resource& r = *it->second;
  for (uint32_t s = 0; s < scanouts_.size(); ++s)
    if (r.scanout_mask & (1u << s)) disable_scanout(s);
  for (auto& [cid, ctx] : contexts_) ctx->resources.erase(id);
  unmap_resource(r);
  if (r.is3d || r.in_renderer) {
    renderer_->detach_backing_3d(id);
    renderer_->destroy_3d(id);
  }
  stats_.gpu_bytes -= r.gpu_bytes;  // 0 unless the 3D budget holds it
  free_backing(r);
  stats_.host_bytes -= r.host.size;
  resources_.erase(it);
}

Resp GpuDevice::resource_unref(const Command& c) {
  const auto u = c.as<proto::ResourceUnref>();
  if (!resources_.count(u.resource_id)) return Resp::kErrInvalidResourceId;
  destroy_resource(u.resource_id);
  return Resp::kOkNodata;
}

GpuDevice::Reply GpuDevice::assign_uuid(const Command& c) {
  if (!feature(proto::kFResourceUuid)) return Resp::kErrUnspec;
  const auto a = c.as<proto::ResourceAssignUuid>();
  auto it = resources_.find(a.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (!r.has_uuid) {
    if (getrandom(r.uuid.data(), r.uuid.size(), 0) != ssize_t(r.uuid.size())) return Resp::kErrUnspec;
    r.uuid[6] = uint8_t((r.uuid[6] & 0x0f) | 0x40);  // RFC 4122 version 4
    r.uuid[8] = uint8_t((r.uuid[8] & 0x3f) | 0x80);
    r.has_uuid = true;
  }
  return {Resp::kOkResourceUuid, std::vector<uint8_t>(r.uuid.begin(), r.uuid.end())};
}

Resp GpuDevice::ctx_create(const Command& c) {
  const auto cc = c.as<proto::CtxCreate>();
  const uint32_t id = cc.hdr.ctx_id;
  if (id == 0 || contexts_.count(id)) return Resp::kErrInvalidContextId;
  if (cc.nlen.get() > sizeof cc.debug_name) return Resp::kErrInvalidParameter;
  const uint32_t init = cc.context_init;
  if (init & ~proto::kContextInitCapsetMask) return Resp::kErrInvalidParameter;
  if (init && !feature(proto::kFContextInit)) return Resp::kErrInvalidParameter;
  if (contexts_.size() >= options_.caps.max_contexts) return Resp::kErrOutOfMemory;
  const uint32_t capset = init & proto::kContextInitCapsetMask;
  if (!renderer_->create_context(id, capset, std::string_view(cc.debug_name, cc.nlen.get())).ok())
    return Resp::kErrInvalidParameter;
  auto ctx = std::make_unique<Context>();
  ctx->capset = capset;
  contexts_.emplace(id, std::move(ctx));
  return Resp::kOkNodata;
}

Resp GpuDevice::ctx_destroy(const Command& c) {
  const uint32_t id = c.hdr.ctx_id;
  auto it = contexts_.find(id);
  if (it == contexts_.end()) return Resp::kErrInvalidContextId;
  renderer_->destroy_context(id);
  contexts_.erase(it);
  return Resp::kOkNodata;
}

Resp GpuDevice::ctx_resource(const Command& c, bool attach) {
  const auto cr = c.as<proto::CtxResource>();
  auto it = contexts_.find(c.hdr.ctx_id);
  if (it == contexts_.end()) return Resp::kErrInvalidContextId;
  auto rit = resources_.find(cr.resource_id);
  if (rit == resources_.end()) return Resp::kErrInvalidResourceId;
  if (attach) it->second->resources.insert(cr.resource_id);
  else it->second->resources.erase(cr.resource_id);
  if (rit->second->is3d || rit->second->in_renderer) {
    if (attach) renderer_->attach_to_context(c.hdr.ctx_id, cr.resource_id);
    else renderer_->detach_from_context(c.hdr.ctx_id, cr.resource_id);
  }
  return Resp::kOkNodata;
}

Resp GpuDevice::submit_3d(const Command& c) {
  const auto s = c.as<proto::CmdSubmit>();
  if (!contexts_.count(c.hdr.ctx_id)) return Resp::kErrInvalidContextId;
  const auto tail = c.tail<proto::CmdSubmit>();
  if (s.size.get() > tail.size()) return Resp::kErrInvalidParameter;
  if (!renderer_->submit(c.hdr.ctx_id, tail.first(s.size.get())).ok()) return Resp::kErrInvalidParameter;
  return Resp::kOkNodata;
}

Resp GpuDevice::resource_create_3d(const Command& c) {
  if (!renderer_->supports_3d() || !feature(proto::kFVirgl)) return Resp::kErrUnspec;
  const auto rc = c.as<proto::ResourceCreate3d>();
  const uint32_t id = rc.resource_id;
  if (id == 0 || resources_.count(id)) return Resp::kErrInvalidResourceId;
  Resource3dArgs a;
  a.target = rc.target;
  a.format = rc.format;
  a.bind = rc.bind;
  a.width = rc.width;
  a.height = rc.height;
  a.depth = rc.depth;
  a.array_size = rc.array_size;
  a.last_level = rc.last_level;
  a.nr_samples = rc.nr_samples;
  a.flags = rc.flags;
  // Gallium's PIPE_BUFFER (target 0): width is the size in bytes, one row. Textures: each dimension
  // within max_dimension. The renderer checks the rest (target, format, bind, levels).
  constexpr uint32_t kPipeBuffer = 0;
  const uint32_t maxd = options_.caps.max_dimension;
  if (a.width == 0 || a.height == 0 || a.depth == 0 || a.array_size == 0 || a.last_level > 31 || a.nr_samples > 32)
    return Resp::kErrInvalidParameter;
  if (a.target == kPipeBuffer ? (a.height != 1 || a.depth != 1 || a.array_size != 1)
                              : (a.width > maxd || a.height > maxd || a.depth > maxd || a.array_size > maxd))
    return Resp::kErrInvalidParameter;
  // Its format's size, every mip level, every layer and sample (texture_bytes.cc).
  const auto size = texture_bytes(a);
  if (!size) return Resp::kErrInvalidParameter;
  const uint64_t bytes = *size;
  if (resources_.size() >= options_.caps.max_resources) return Resp::kErrOutOfMemory;
  if (bytes > options_.caps.max_3d_bytes || stats_.gpu_bytes + bytes > options_.caps.max_3d_bytes)
    return Resp::kErrOutOfMemory;
  if (!renderer_->create_3d(id, a).ok()) return Resp::kErrInvalidParameter;
  stats_.gpu_bytes += bytes;
  auto r = std::make_unique<Resource>();
  r->id = id;
  r->is3d = true;
  r->args3d = a;
  r->gpu_bytes = bytes;
  r->format = a.format;
  r->fourcc = proto::drm_fourcc(a.format);  // virtio-gpu's formats are Gallium's: 0 if not scanout-able
  r->width = a.width;
  r->height = a.height;
  resources_.emplace(id, std::move(r));
  return Resp::kOkNodata;
}

}  // namespace canopy::gpu
