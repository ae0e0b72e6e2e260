#include "canopy/audio/vhost_snd.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "canopy/base/log.h"
#include "canopy/transport/virtio_ring.h"

namespace canopy::audio {

namespace vu = transport::vhost_user;

Result<std::unique_ptr<VhostSnd>> VhostSnd::create(SndOptions options, std::unique_ptr<HostBackend> host,
                                                   std::unique_ptr<PolicyBoard> board) {
  std::unique_ptr<VhostSnd> v(new VhostSnd());
  v->vm_ = options.vm;
  v->host_ = std::move(host);
  v->board_ = std::move(board);
  VhostSnd* self = v.get();
  CANOPY_ASSIGN_OR_RETURN(
      v->dev_, SndDevice::create(std::move(options), v->host_.get(), v->board_.get(),
                                 [self](uint16_t q, uint16_t head, uint32_t used) { self->complete(q, head, used); }));
  return v;
}

VhostSnd::~VhostSnd() {
  const std::string s = summary();
  CANOPY_INFO("canopy-snd: summary\n%s", s.c_str());
  if (!stats_path_.empty()) {
    if (FILE* f = std::fopen(stats_path_.c_str(), "w")) {
      std::fputs(s.c_str(), f);
      std::fclose(f);
    } else {
      CANOPY_WARN("canopy-snd: cannot write the summary to %s: %s", stats_path_.c_str(), std::strerror(errno));
    }
  }
  dev_.reset();  // streams before their host
}

uint64_t VhostSnd::features() const {
  return transport::kVirtioFVersion1 | transport::kVirtioFIndirectDesc | transport::kVirtioFEventIdx |
         dev_->offered_features();
}

uint64_t VhostSnd::protocol_features() const { return vu::proto_bit(vu::kProtoConfig) | vu::proto_bit(vu::kProtoMq); }

Result<std::vector<uint8_t>> VhostSnd::read_config(uint32_t offset, uint32_t size) {
  const proto::Config c = dev_->config();
  if (uint64_t(offset) + size > sizeof c) return make_error(Errc::kOutOfRange, "snd config: read past the end");
  if (offset == 0 && size == proto::kConfigBytesNoCtls && (dev_->offered_features() & proto::kFCtls) &&
      !told_no_controls_field_) {
    told_no_controls_field_ = true;
    CANOPY_ERROR(
        "canopy-snd: the front-end's config space is %u bytes, without the controls field that the offered "
        "VIRTIO_SND_F_CTLS needs: its guest will fail to probe; give QEMU's vhost-user-snd controls=on, or "
        "run canopy-snd without --controls",
        size);
  }
  std::vector<uint8_t> out(size);
  if (size) std::memcpy(out.data(), reinterpret_cast<const uint8_t*>(&c) + offset, size);
  return out;
}

void VhostSnd::set_acked_features(uint64_t features) { dev_->set_acked_features(features); }

void VhostSnd::complete(uint16_t queue, uint16_t head, uint32_t used) {
  vu::QueueHandle* q = queue < queues_.size() ? queues_[queue] : nullptr;
  if (!q) return;
  if (Status s = q->complete(head, used); !s.ok())
    CANOPY_WARN_RL("snd: queue %u: completion lost: %s", queue, s.error().what);
}

void VhostSnd::on_queue_started(vu::QueueHandle& q) {
  if (q.index() < queues_.size()) queues_[q.index()] = &q;
}

void VhostSnd::on_kick(vu::QueueHandle& q) {
  if (q.index() >= queues_.size()) return;
  queues_[q.index()] = &q;
  dev_->set_memory(&q.memory());
  (void)q.process([&](const transport::DescriptorChain& chain, transport::DescriptorReader&,
                      transport::DescriptorWriter&) -> Result<uint32_t> {
    SndDevice::Chain c{chain.head(), chain.readable(), chain.writable()};
    if (q.index() == proto::kControlQ) return dev_->control(c);
    const uint32_t r = dev_->io(q.index(), c);
    return r == SndDevice::kHeld ? vu::QueueHandle::kDeferred : r;
  });
}

void VhostSnd::on_queue_stopped(vu::QueueHandle& q) {
  if (q.index() < queues_.size()) dev_->queue_stopped(q.index(), q.resetting());
}

void VhostSnd::on_reset() { dev_->reset(); }

std::vector<vu::Device::Watch> VhostSnd::watches() {
  std::vector<Watch> w;
  for (auto& h : host_->watches()) w.push_back({h.fd, std::move(h.fn)});
  return w;
}

std::string VhostSnd::summary() const {
  std::string out;
  for (uint32_t i = 0; i < dev_->num_streams(); ++i) {
    const StreamStats& s = dev_->stats(i);
    const StreamIo* io = const_cast<SndDevice&>(*dev_).stream_io(i);
    const PcmParams& p = io->params();
    const double lat_ms = p.rate && p.frame_bytes() ? 1000.0 * s.last_latency_bytes / p.frame_bytes() / p.rate : 0;
    char line[640];
    int n = std::snprintf(line, sizeof line,
                          "stream %s/%s %s: state=%s tx=%llu rx=%llu frames=%llu underruns=%llu underrun_frames=%llu "
                          "overruns=%llu "
                          "xrun_events=%llu io_errors=%llu latency_bytes_ms=%.1f",
                          vm_.c_str(), io->config().name.c_str(),
                          io->config().direction == proto::Direction::kOutput ? "output" : "input", dev_->state_name(i),
                          (unsigned long long)s.tx_buffers, (unsigned long long)s.rx_buffers,
                          (unsigned long long)s.frames, (unsigned long long)s.underruns,
                          (unsigned long long)s.underrun_frames, (unsigned long long)s.overruns,
                          (unsigned long long)s.xrun_events, (unsigned long long)s.io_errors, lat_ms);
    if (!s.latency_ms.empty())
      n += std::snprintf(line + n, sizeof line - size_t(n), " latency_ms p50=%.1f p99=%.1f max=%.1f",
                         s.latency_percentile(0.5), s.latency_percentile(0.99), s.latency_percentile(1.0));
    if (s.ducks)
      n += std::snprintf(line + n, sizeof line - size_t(n), " ducks=%llu deepest_db=%.1f duck_reached_ms=%.1f",
                         (unsigned long long)s.ducks, s.deepest_db, s.duck_reached_ms);
    std::snprintf(line + n, sizeof line - size_t(n), "\n");
    out += line;
  }
  char tail[160];
  std::snprintf(tail, sizeof tail, "events sent=%llu dropped=%llu bad_requests=%llu\n",
                (unsigned long long)dev_->events_sent(), (unsigned long long)dev_->events_dropped(),
                (unsigned long long)dev_->bad_requests());
  return out + tail;
}

}  // namespace canopy::audio
