// GpuDevice's host blobs (3D resources the renderer allocates) and the host-visible region they are mapped
// into (device_internal.h).
#include "device_internal.h"

namespace canopy::gpu {

using namespace detail;  // NOLINT(google-build-using-namespace): the device's own helpers
using proto::Resp;

Resp GpuDevice::create_blob_3d(const Command& c) {
  const auto cb = c.as<proto::ResourceCreateBlob>();
  const uint32_t mem = cb.blob_mem;
  if (!renderer_->supports_3d() || !feature(proto::kFVirgl)) return Resp::kErrInvalidParameter;
  if (mem != uint32_t(proto::BlobMem::kHost3d) && mem != uint32_t(proto::BlobMem::kHost3dGuest))
    return Resp::kErrInvalidParameter;
  // A host blob is a context's object (its blob_id names it there).
  if (!contexts_.count(cb.hdr.ctx_id)) return Resp::kErrInvalidContextId;
  const bool guest = mem == uint32_t(proto::BlobMem::kHost3dGuest);
  if (cb.size.get() == 0 || (guest ? cb.nr_entries.get() == 0 : cb.nr_entries.get() != 0))
    return Resp::kErrInvalidParameter;
  // Counted in pages against the 3D budget (host memory the guest makes us hold).
  if (cb.size.get() > options_.caps.max_3d_bytes) return Resp::kErrOutOfMemory;
  const uint64_t bytes = whole_pages(cb.size);
  if (stats_.gpu_bytes + bytes > options_.caps.max_3d_bytes) return Resp::kErrOutOfMemory;
  if (resources_.size() >= options_.caps.max_resources) return Resp::kErrOutOfMemory;
  auto r = std::make_unique<Resource>();
  r->id = cb.resource_id;
  r->blob = true;
  r->is3d = true;
  r->blob_size = cb.size;
  r->blob_flags = cb.blob_flags;
  r->blob_mem = mem;
  std::vector<transport::GuestMemory::HostRange> iov;
  if (guest) {
    const Resp b = set_backing(*r, c.tail<proto::ResourceCreateBlob>(), cb.nr_entries);
    if (b != Resp::kOkNodata) return b;
    if (r->backing_bytes < r->blob_size || !backing_ranges(*r, iov)) {
      free_backing(*r);
      return Resp::kErrInvalidParameter;
    }
  }
  Blob3dArgs a;
  a.ctx_id = cb.hdr.ctx_id;
  a.blob_mem = mem;
  a.blob_flags = cb.blob_flags;
  a.blob_id = cb.blob_id;
  a.size = cb.size;
  if (Status st = renderer_->create_blob_3d(r->id, a, iov); !st.ok()) {
    CANOPY_WARN_RL("gpu: host blob %u (ctx %u, blob id %llu, %llu bytes) refused: %s", r->id, a.ctx_id,
                   (unsigned long long)a.blob_id, (unsigned long long)a.size, st.error().what);
    free_backing(*r);
    return Resp::kErrInvalidParameter;
  }
  if (guest) mem_layout_ = mem_->layout();
  r->gpu_bytes = bytes;
  stats_.gpu_bytes += bytes;
  contexts_[cb.hdr.ctx_id]->resources.insert(r->id);
  resources_.emplace(r->id, std::move(r));
  return Resp::kOkNodata;
}

GpuDevice::Reply GpuDevice::map_blob(const Command& c) {
  if (!feature(proto::kFResourceBlob)) return Resp::kErrUnspec;
  if (!host_visible_ || !host_visible_->usable()) return Resp::kErrUnspec;
  const auto m = c.as<proto::ResourceMapBlob>();
  auto it = resources_.find(m.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (!r.is3d || !r.blob || !(r.blob_flags & proto::kBlobFlagMappable) || r.mapped) return Resp::kErrInvalidParameter;
  const uint64_t offset = m.offset;
  const uint64_t len = whole_pages(r.blob_size);
  if (offset % kPage || offset > host_visible_->size() || len > host_visible_->size() - offset)
    return Resp::kErrInvalidParameter;
  // Not over another mapping (the driver allocates the region; a guest that overlaps is refused).
  auto next = mapped_.lower_bound(offset);
  if (next != mapped_.end() && next->first < offset + len) return Resp::kErrInvalidParameter;
  if (next != mapped_.begin()) {
    const auto& prev = *std::prev(next);
    if (prev.first + prev.second.second > offset) return Resp::kErrInvalidParameter;
  }
  auto ex = renderer_->export_blob(r.id);
  if (!ex.ok()) {
    CANOPY_WARN_RL("gpu: MAP_BLOB of resource %u: %s", r.id, ex.error().what);
    return Resp::kErrUnspec;
  }
  if (Status st = host_visible_->map(offset, ex->fd.get(), 0, len, true); !st.ok()) {
    CANOPY_WARN_RL("gpu: MAP_BLOB of resource %u at 0x%llx: the front-end did not map it: %s", r.id,
                   (unsigned long long)offset, st.error().what);
    return Resp::kErrUnspec;
  }
  r.mapped = true;
  r.map_offset = offset;
  r.map_len = len;
  mapped_.emplace(offset, std::make_pair(r.id, len));
  proto::RespMapInfo info{};
  info.map_info = ex->map_info;
  const auto* p = reinterpret_cast<const uint8_t*>(&info) + sizeof info.hdr;
  return {Resp::kOkMapInfo, std::vector<uint8_t>(p, p + (sizeof info - sizeof info.hdr))};
}

Resp GpuDevice::unmap_blob(const Command& c) {
  if (!feature(proto::kFResourceBlob)) return Resp::kErrUnspec;
  const auto u = c.as<proto::ResourceUnmapBlob>();
  auto it = resources_.find(u.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  if (!it->second->mapped) return Resp::kErrInvalidParameter;
  unmap_resource(*it->second);
  return Resp::kOkNodata;
}

void GpuDevice::unmap_resource(Resource& r) {
  if (!r.mapped) return;
  r.mapped = false;
  if (host_visible_) {
    if (Status st = host_visible_->unmap(r.map_offset, r.map_len); !st.ok()) {
      // The guest may still reach those pages: the range stays taken (no other blob goes there) until a
      // reset, when the front-end empties the region.
      CANOPY_WARN_RL("gpu: resource %u: the front-end did not unmap it (%s): its range stays taken until a reset", r.id,
                     st.error().what);
      mapped_[r.map_offset].first = 0;
      return;
    }
  }
  mapped_.erase(r.map_offset);
}

Resp GpuDevice::transfer_3d(const Command& c, bool to_host) {
  if (!renderer_->supports_3d() || !feature(proto::kFVirgl)) return Resp::kErrUnspec;
  const auto t = c.as<proto::TransferHost3d>();
  auto it = resources_.find(t.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (!r.is3d) return Resp::kErrInvalidParameter;
  const uint32_t ctx = c.hdr.ctx_id;
  if (ctx != 0 && !contexts_.count(ctx)) return Resp::kErrInvalidContextId;
  if (r.backing.empty()) return Resp::kErrUnspec;
  Transfer3d x;
  x.ctx_id = ctx;
  x.level = t.level;
  x.stride = t.stride;
  x.layer_stride = t.layer_stride;
  x.x = t.box.x;
  x.y = t.box.y;
  x.z = t.box.z;
  x.w = t.box.w;
  x.h = t.box.h;
  x.d = t.box.d;
  x.offset = t.offset;
  if (x.offset > r.backing_bytes) return Resp::kErrInvalidParameter;
  if (!renderer_->transfer_3d(r.id, to_host, x).ok()) return Resp::kErrInvalidParameter;
  return Resp::kOkNodata;
}

}  // namespace canopy::gpu
