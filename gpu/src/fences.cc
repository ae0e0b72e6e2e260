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
  retire_ready();
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
