// GpuDevice's scanouts: what each shows, frames to the output, flushes and the cursor (device_internal.h).
#include "device_internal.h"

namespace canopy::gpu {

using namespace detail;  // NOLINT(google-build-using-namespace): the device's own helpers
using proto::Cmd;
using proto::Resp;

void GpuDevice::disable_scanout(uint32_t s) {
  Scanout& sc = *scanouts_[s];
  if (sc.resource_id) {
    auto it = resources_.find(sc.resource_id);
    if (it != resources_.end()) it->second->scanout_mask &= ~(1u << s);
  }
  const bool was = sc.resource_id != 0;
  sc.resource_id = 0;
  sc.r = {};
  sc.fb = {};
  if (was) output_->on_scanout(ScanoutState{s, false, 0, 0, 0});
}

void GpuDevice::show(uint32_t s, Resource& r, const Rect& rect, const Framebuffer& fb) {
  Scanout& sc = *scanouts_[s];
  if (sc.resource_id && sc.resource_id != r.id) {
    auto old = resources_.find(sc.resource_id);
    if (old != resources_.end()) old->second->scanout_mask &= ~(1u << s);
  }
  sc.resource_id = r.id;
  sc.r = rect;
  sc.fb = fb;
  r.scanout_mask |= 1u << s;
  output_->on_scanout(ScanoutState{s, true, rect.width, rect.height, r.id});
}

Resp GpuDevice::set_scanout(const Command& c) {
  const auto ss = c.as<proto::SetScanout>();
  const uint32_t s = ss.scanout_id;
  if (s >= scanouts_.size()) return Resp::kErrInvalidScanoutId;
  if (ss.resource_id.get() == 0) {
    disable_scanout(s);
    return Resp::kOkNodata;
  }
  auto it = resources_.find(ss.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (r.blob) return Resp::kErrInvalidParameter;  // blobs are shown with SET_SCANOUT_BLOB
  if (ss.r.width.get() == 0 || ss.r.height.get() == 0 || !rect_inside(ss.r, r.width, r.height))
    return Resp::kErrInvalidParameter;
  if (r.is3d && !r.host.map.data()) {
    // A 3D resource reaches the output through a host copy, read back at each flush.
    if (r.fourcc == 0 || r.args3d.depth != 1) return Resp::kErrInvalidParameter;
    if (const Resp hr = give_host_image(r); hr != Resp::kOkNodata) return hr;
  }
  show(s, r, to_rect(ss.r), Framebuffer{false, r.fourcc, r.width * proto::kBytesPerPixel, r.width, r.height, 0});
  return Resp::kOkNodata;
}

Resp GpuDevice::set_scanout_blob(const Command& c) {
  if (!feature(proto::kFResourceBlob)) return Resp::kErrUnspec;
  const auto sb = c.as<proto::SetScanoutBlob>();
  const uint32_t s = sb.scanout_id;
  if (s >= scanouts_.size()) return Resp::kErrInvalidScanoutId;
  if (sb.resource_id.get() == 0) {
    disable_scanout(s);
    return Resp::kOkNodata;
  }
  auto it = resources_.find(sb.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  // Guest-memory blobs only: a host blob's pixels are the renderer's (not scanned out from here yet).
  if (!r.blob || r.is3d) return Resp::kErrInvalidParameter;
  const uint32_t fourcc = proto::drm_fourcc(sb.format);
  const uint32_t w = sb.width, h = sb.height, stride = sb.strides[0];
  const uint64_t offset = sb.offsets[0].get();
  if (fourcc == 0 || w == 0 || h == 0 || w > options_.caps.max_dimension || h > options_.caps.max_dimension)
    return Resp::kErrInvalidParameter;
  if (uint64_t(stride) < uint64_t(w) * proto::kBytesPerPixel) return Resp::kErrInvalidParameter;
  // The framebuffer must lie inside the blob: offset + stride * (h - 1) + w * 4 <= size.
  const uint64_t need = offset + uint64_t(stride) * (h - 1) + uint64_t(w) * proto::kBytesPerPixel;
  if (need > r.blob_size) return Resp::kErrInvalidParameter;
  if (sb.r.width.get() == 0 || sb.r.height.get() == 0 || !rect_inside(sb.r, w, h)) return Resp::kErrInvalidParameter;
  show(s, r, to_rect(sb.r), Framebuffer{true, fourcc, stride, w, h, offset});
  return Resp::kOkNodata;
}

void GpuDevice::emit_frame(uint32_t s, Resource& r, const Rect& damage_res, uint64_t pending_id, Readback* rb) {
  Scanout& sc = *scanouts_[s];
  Rect dmg = intersect(damage_res, sc.r);
  if (dmg.empty()) return;
  dmg.x -= sc.r.x;
  dmg.y -= sc.r.y;
  auto f = std::make_shared<Frame>();
  f->scanout = s;
  f->seq = ++sc.seq;
  f->resource_id = r.id;
  f->drm_fourcc = sc.fb.fourcc;
  f->width = sc.r.width;
  f->height = sc.r.height;
  f->stride = sc.fb.stride;
  f->damage.push_back(dmg);
  f->presented = Frame::Clock::now();
  f->offset = sc.fb.offset + uint64_t(sc.r.y) * sc.fb.stride + uint64_t(sc.r.x) * proto::kBytesPerPixel;
  if (sc.fb.blob) {
    f->blob = true;
    f->pieces = r.pieces;
  } else if (aliased(r)) {
    f->aliased = true;
    f->pieces = r.pieces;
  } else {
    f->pieces = r.host_pieces;
  }
  f->view_cache = r.view;
  if (!r.generation) r.generation = ++generations_;
  f->generation = r.generation;
  if (rb && sc.acquire) {
    f->acquire_timeline = sc.acquire;
    f->acquire_point = ++sc.acquire_value;
    rb->points.emplace_back(s, f->acquire_point);
  }
  // Every kind of frame carries what was copied for its resource: earlier transfers and read-backs, and
  // whatever guest memory this command copied before the frame left (0 for a zero-copy path).
  r.pending_copied += take_guest_copies();
  f->bytes_copied = std::exchange(r.pending_copied, 0);
  f->release_token = pending_id;
  if (pending_id) {
    auto p = pending_.find(pending_id);
    if (p != pending_.end()) ++p->second->outstanding;
    std::weak_ptr<ReleaseQueue> wq = releases_;
    f->on_release = [wq](uint64_t token) {
      auto q = wq.lock();
      if (!q) return;
      std::lock_guard<std::mutex> lk(q->mu);
      q->tokens.push_back(token);
      // The device's own thread runs process_releases() when it is done with what released the frame;
      // only another thread needs to wake it.
      if (std::this_thread::get_id() == q->owner || q->signalled) return;
      q->signalled = true;
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = write(q->fd, &one, sizeof one);
    };
  }
  ++stats_.frames;
  output_->on_frame(std::move(f));
}

Resp GpuDevice::resource_flush(const Command& c, uint64_t pending_id) {
  const auto rf = c.as<proto::ResourceFlush>();
  auto it = resources_.find(rf.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (!r.blob && !rect_inside(rf.r, r.width, r.height)) return Resp::kErrInvalidParameter;
  const Rect dmg = to_rect(rf.r);
  // Blob flush rectangles are in the coordinates of the framebuffer each scanout shows.
  for (uint32_t s = 0; s < scanouts_.size(); ++s)
    if (r.blob && (r.scanout_mask & (1u << s)) && !rect_inside(rf.r, scanouts_[s]->fb.width, scanouts_[s]->fb.height))
      return Resp::kErrInvalidParameter;
  Readback* rb = nullptr;
  if (r.is3d && r.scanout_mask && r.host.map.data() && !dmg.empty()) {
    // The damaged rectangle, from the renderer into the host copy the output reads: once the GPU work
    // before this flush is done where the output waits for acquire points, else now.
    rb = fence_readback(r, dmg);
    if (!rb && !read_back_into_host(r, dmg).ok()) return Resp::kErrUnspec;
    const uint64_t copied = uint64_t(dmg.width) * proto::kBytesPerPixel * dmg.height;
    r.pending_copied += copied;
    stats_.bytes_copied += copied;
  }
  for (uint32_t s = 0; s < scanouts_.size(); ++s)
    if (r.scanout_mask & (1u << s)) emit_frame(s, r, dmg, pending_id, rb);
  return Resp::kOkNodata;
}

proto::CtrlHdr GpuDevice::cursor(std::span<const uint8_t> request) {
  proto::CtrlHdr out{};
  auto answer = [&](Resp r) {
    out.type = uint32_t(r);
    if (is_error(r)) {
      ++stats_.errors;
      CANOPY_WARN_RL("gpu: cursor command -> %s", proto::resp_name(uint32_t(r)));
    }
    return out;
  };
  DecodeError derr{};
  auto cmd = decode(request, Queue::kCursor, &derr);
  if (!cmd.ok()) return answer(derr.resp);
  out.ctx_id = cmd->hdr.ctx_id;
  const auto u = cmd->as<proto::UpdateCursor>();
  const uint32_t s = u.pos.scanout_id;
  if (s >= scanouts_.size()) return answer(Resp::kErrInvalidScanoutId);
  CursorUpdate& cu = scanouts_[s]->cursor;
  cu.scanout = s;
  cu.x = u.pos.x;
  cu.y = u.pos.y;
  cu.image_changed = false;
  if (cmd->type == Cmd::kUpdateCursor) {
    if (u.resource_id.get() == 0) {
      cu.visible = false;
      cu.image.reset();
    } else {
      auto it = resources_.find(u.resource_id);
      if (it == resources_.end()) return answer(Resp::kErrInvalidResourceId);
      Resource& r = *it->second;
      if (r.blob || r.width != proto::kCursorSize || r.height != proto::kCursorSize)
        return answer(Resp::kErrInvalidParameter);
      auto img = std::make_shared<CursorImage>();
      img->argb.resize(size_t{proto::kCursorSize} * proto::kCursorSize);
      uint8_t* dst = reinterpret_cast<uint8_t*>(img->argb.data());
      const uint64_t image_bytes = img->argb.size() * 4;
      // Alias mode shows the guest's memory itself; otherwise the pixels were transferred to the host.
      // The guest-memory copy is counted as GuestMemory counted it (between commands: no frame gets it).
      if (r.is3d) {
        if (!renderer_
                 ->read_pixels(r.id, Rect{0, 0, proto::kCursorSize, proto::kCursorSize}, dst, proto::kCursorSize * 4)
                 .ok())
          return answer(Resp::kErrUnspec);
        stats_.cursor_bytes_copied += image_bytes;
      } else if (!aliased(r)) {
        std::memcpy(dst, r.host.map.data(), image_bytes);
        stats_.cursor_bytes_copied += image_bytes;
      } else {
        const uint64_t before = mem_ ? mem_->bytes_copied() : 0;
        const bool ok = read_backing(r, 0, dst, image_bytes);
        if (mem_) stats_.cursor_bytes_copied += mem_->bytes_copied() - before;
        if (!ok) return answer(Resp::kErrUnspec);
      }
      cu.image = std::move(img);
      cu.image_changed = true;
      cu.visible = true;
      cu.hot_x = u.hot_x;
      cu.hot_y = u.hot_y;
    }
  }
  output_->on_cursor(cu);
  return answer(Resp::kOkNodata);
}

}  // namespace canopy::gpu
