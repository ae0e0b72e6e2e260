// GpuDevice's fence timelines: fenced commands in flight, frame releases and renderer fences retire them
// in order, and responses go out (device_internal.h).
#include "device_internal.h"

namespace canopy::gpu {

using namespace detail;  // NOLINT(google-build-using-namespace): the device's own helpers
using proto::Resp;

void GpuDevice::send_response(uint64_t token, Resp resp, const proto::CtrlHdr& in, std::span<const uint8_t> body,
                              bool fenced) {
  // The response echoes the context and ring; a fenced one also its fence (the driver retires by it).
  proto::CtrlHdr h{};
  h.type = uint32_t(resp);
  h.ctx_id = in.ctx_id;
  h.ring_idx = in.ring_idx;
  if (fenced) {
    h.flags = in.flags.get() & (proto::kFlagFence | proto::kFlagInfoRingIdx);
    h.fence_id = in.fence_id;
  }
  std::vector<uint8_t> out(sizeof h + body.size());
  std::memcpy(out.data(), &h, sizeof h);
  if (!body.empty()) std::memcpy(out.data() + sizeof h, body.data(), body.size());
  if (is_error(resp)) ++stats_.errors;
  respond_(token, out);
}

void GpuDevice::retire_ready() {
  for (auto it = timelines_.begin(); it != timelines_.end();) {
    auto& q = it->second;
    size_t n = 0;
    while (n < q.size()) {
      auto pit = pending_.find(q[n]);
      if (pit == pending_.end()) {
        ++n;
        continue;
      }
      Pending& p = *pit->second;
      if (!p.executed || p.outstanding) break;
      ++stats_.fences_retired;
      const std::unique_ptr<Pending> done = std::move(pit->second);
      pending_.erase(pit);
      ++n;
      send_response(done->token, done->resp, done->hdr, done->body, true);
    }
    q.erase(q.begin(), q.begin() + long(n));
    it = q.empty() ? timelines_.erase(it) : std::next(it);
  }
}

void GpuDevice::force_retire() {
  for (auto& [id, p] : pending_) p->outstanding = 0;
  retire_ready();
}

void GpuDevice::claim_thread() {
  const auto me = std::this_thread::get_id();
  if (releases_->owner == me) return;  // written only here, on the device's thread
  std::lock_guard<std::mutex> lk(releases_->mu);
  releases_->owner = me;
}

void GpuDevice::take_releases(std::vector<uint64_t>& out) {
  // Releases from other threads push a token and write the eventfd under the lock; taking them drains
  // it under the same lock, so the eventfd is readable exactly while such tokens wait. The device's own
  // thread pushes without writing it. An empty queue (the common case after a command) costs no system
  // call, and neither do tokens that came without a wake-up.
  std::lock_guard<std::mutex> lk(releases_->mu);
  if (releases_->tokens.empty()) return;
  if (releases_->signalled) {
    uint64_t v;
    [[maybe_unused]] ssize_t r = read(release_event_.get(), &v, sizeof v);
    releases_->signalled = false;
    ++releases_woken_;
  } else {
    ++releases_direct_;
  }
  out.swap(releases_->tokens);
}

void GpuDevice::process_renderer() {
  renderer_->poll();
  finish_readbacks();
  retire_ready();
}

Status GpuDevice::read_back_into_host(Resource& res, const Rect& r) {
  uint8_t* dst = reinterpret_cast<uint8_t*>(res.host.map.data()) + uint64_t(r.y) * res.host.stride +
                 uint64_t(r.x) * proto::kBytesPerPixel;
  return renderer_->read_pixels(res.id, r, dst, res.host.stride);
}

GpuDevice::Readback* GpuDevice::fence_readback(Resource& r, const Rect& damage) {
  if (!output_->takes_acquire_fences() || !renderer_->supports_3d()) return nullptr;
  // A guest that floods flushes ahead of its GPU work would grow the list without bound: past the cap
  // the read-back is done now (it waits for the GPU, as every read-back did before acquire points).
  if (readbacks_.size() >= kMaxReadbacks) {
    ++stats_.readbacks_over_cap;
    return nullptr;
  }
  for (uint32_t s = 0; s < scanouts_.size(); ++s) {
    if (!(r.scanout_mask & (1u << s)) || scanouts_[s]->acquire) continue;
    auto tl = buffers::Timeline::create_producer();
    if (!tl.ok()) {
      CANOPY_WARN_RL("gpu: scanout %u: no acquire timeline (%s); 3D frames are read back at once", s, tl.error().what);
      return nullptr;
    }
    scanouts_[s]->acquire = std::make_shared<buffers::Timeline>(std::move(*tl));
  }
  const uint64_t id = next_pending_++;
  if (!renderer_->create_fence(0, 0, false, id).ok()) return nullptr;
  ++stats_.fenced_readbacks;
  auto rb = std::make_unique<Readback>();
  rb->resource_id = r.id;
  rb->host = r.host.fd;
  rb->rect = damage;
  Readback* out = rb.get();
  readbacks_.emplace(id, std::move(rb));
  return out;
}

void GpuDevice::finish_readbacks() {
  // In completion order (the renderer reports a timeline's fences oldest first), so each scanout's points
  // are signalled in increasing order.
  std::vector<uint64_t> done;
  done.swap(readbacks_done_);
  for (uint64_t id : done) {
    auto it = readbacks_.find(id);
    if (it == readbacks_.end()) continue;
    const std::unique_ptr<Readback> rb = std::move(it->second);
    readbacks_.erase(it);
    // A resource destroyed meanwhile (its id perhaps given to a new one, with a host copy of its own)
    // has nothing to read: its frames show what its host copy held.
    auto res = resources_.find(rb->resource_id);
    if (res != resources_.end() && res->second->is3d && res->second->host.map.data() &&
        res->second->host.fd == rb->host) {
      if (!read_back_into_host(*res->second, rb->rect).ok())
        CANOPY_WARN_RL("gpu: resource %u: read-back after its fence failed; the frame shows older pixels",
                       rb->resource_id);
    }
    // The points are signalled whatever happened: a consumer never waits for a frame that cannot come.
    for (auto [s, point] : rb->points)
      if (s < scanouts_.size() && scanouts_[s]->acquire && scanouts_[s]->acquire->signalled() < point)
        (void)scanouts_[s]->acquire->signal(point);
  }
  if (!done.empty()) output_->on_acquired();
}

void GpuDevice::process_releases() {
  std::vector<uint64_t> tokens;
  take_releases(tokens);
  bool any = false;
  for (uint64_t t : tokens) {
    auto it = pending_.find(t);
    if (it == pending_.end() || it->second->outstanding == 0) continue;
    --it->second->outstanding;
    any = true;
  }
  if (any) retire_ready();
}

}  // namespace canopy::gpu
