// SndDevice: the virtio-snd device's configuration, control queue (queries, jacks, controls), events,
// queue stops and reset (device_internal.h says where the rest lives).
#include "device_internal.h"

namespace canopy::audio {

std::vector<uint8_t> default_positions(uint8_t channels) {
  using P = proto::Pos;
  static const std::vector<std::vector<P>> layouts = {
      {P::kMono},
      {P::kFl, P::kFr},
      {P::kFl, P::kFr, P::kLfe},
      {P::kFl, P::kFr, P::kRl, P::kRr},
      {P::kFl, P::kFr, P::kRl, P::kRr, P::kFc},
      {P::kFl, P::kFr, P::kRl, P::kRr, P::kFc, P::kLfe},
      {P::kFl, P::kFr, P::kRl, P::kRr, P::kFc, P::kLfe, P::kRc},
      {P::kFl, P::kFr, P::kRl, P::kRr, P::kFc, P::kLfe, P::kSl, P::kSr},
  };
  std::vector<uint8_t> out;
  if (channels >= 1 && channels <= layouts.size())
    for (P p : layouts[channels - 1]) out.push_back(uint8_t(p));
  while (out.size() < channels) out.push_back(uint8_t(P::kNa));
  return out;
}

uint64_t default_formats() {
  using F = proto::Format;
  return (1ull << uint8_t(F::kU8)) | (1ull << uint8_t(F::kS16)) | (1ull << uint8_t(F::kS24)) |
         (1ull << uint8_t(F::kS32)) | (1ull << uint8_t(F::kFloat));
}

// ---------------------------------------------------------------------------------------------------
// Device

Result<std::unique_ptr<SndDevice>> SndDevice::create(SndOptions options, HostBackend* host, PolicyBoard* board,
                                                     CompleteFn complete) {
  if (options.streams.empty()) return make_error(Errc::kInvalidArgument, "snd: no streams configured");
  if (options.streams.size() > 64) return make_error(Errc::kLimit, "snd: at most 64 streams");
  if (options.jacks.size() > 64) return make_error(Errc::kLimit, "snd: at most 64 jacks");
  if (!complete) return make_error(Errc::kInvalidArgument, "snd: no completion callback");
  std::unique_ptr<SndDevice> d(new SndDevice());
  d->host_ = host;
  d->board_ = board;
  d->complete_ = std::move(complete);
  for (auto& s : options.streams) {
    if (s.name.empty()) return make_error(Errc::kInvalidArgument, "snd: a stream has no name");
    if (s.channels_min < 1 || s.channels_min > s.channels_max || s.channels_max > proto::kChmapMaxSize)
      return make_error(Errc::kInvalidArgument, "snd: channels must satisfy 1 <= min <= max <= 18");
    if (!s.formats) s.formats = default_formats();
    if (s.formats & ~default_formats())
      return make_error(Errc::kUnsupported,
                        "snd: a stream offers a format the device cannot carry (U8, S16, S24, S32, FLOAT)");
    if (!s.rates) s.rates = (1u << 6) | (1u << 7);
    if (s.rates >> proto::kRateCount) return make_error(Errc::kInvalidArgument, "snd: a rate bit outside virtio-snd's");
    if (s.positions.empty()) s.positions = default_positions(s.channels_max);
    if (s.positions.size() != s.channels_max)
      return make_error(Errc::kInvalidArgument, "snd: a channel map must name one position per channel");
    for (uint8_t p : s.positions)
      if (p >= proto::kPosCount) return make_error(Errc::kInvalidArgument, "snd: unknown channel position");
    if (s.policy.priority > 100) return make_error(Errc::kInvalidArgument, "snd: priority is 0..100");
    if (!(s.policy.duck_db <= 0 && s.policy.duck_db >= kMuteDb))
      return make_error(Errc::kInvalidArgument, "snd: duck_db must lie in -96..0 dB");
    if (s.policy.ramp_ms > 10000) return make_error(Errc::kInvalidArgument, "snd: ramp_ms is at most 10000");
  }
  d->opt_ = std::move(options);
  for (const auto& j : d->opt_.jacks) d->jack_connected_.push_back(j.connected ? 1 : 0);
  for (uint32_t i = 0; i < d->opt_.streams.size(); ++i) {
    auto s = std::make_unique<Stream>();
    s->dev = d.get();
    s->id = i;
    s->cfg = d->opt_.streams[i];
    if (board) {
      auto slot = board->claim(d->opt_.vm + "/" + s->cfg.name, s->cfg.policy);
      if (!slot.ok()) return slot.error();
      s->slot = int(*slot);
    }
    if (host) {
      auto h = host->open(i, *s);
      if (!h.ok()) return h.error();
      s->host = std::move(*h);
    }
    d->streams_.push_back(std::move(s));
  }
  return d;
}

SndDevice::~SndDevice() {
  for (auto& s : streams_) {
    s->host.reset();
    if (board_ && s->slot >= 0) board_->release(uint32_t(s->slot));
  }
}

uint64_t SndDevice::offered_features() const { return opt_.controls ? proto::kFCtls : 0; }

uint32_t SndDevice::config_bytes() const { return opt_.controls ? sizeof(proto::Config) : proto::kConfigBytesNoCtls; }

proto::Config SndDevice::config() const {
  proto::Config c{};
  c.jacks = uint32_t(opt_.jacks.size());
  c.streams = uint32_t(streams_.size());
  c.chmaps = uint32_t(streams_.size());
  c.controls = opt_.controls ? uint32_t(streams_.size() * 2) : 0;
  return c;
}

double StreamStats::latency_percentile(double p) const {
  if (latency_ms.empty()) return -1;
  std::vector<float> v(latency_ms);
  const size_t k = std::min(v.size() - 1, size_t(p * double(v.size())));
  std::nth_element(v.begin(), v.begin() + long(k), v.end());
  return v[k];
}

uint32_t SndDevice::num_streams() const { return uint32_t(streams_.size()); }
const StreamStats& SndDevice::stats(uint32_t s) const { return streams_.at(s)->st; }
const char* SndDevice::state_name(uint32_t s) const { return pcm_state_name(streams_.at(s)->state); }
StreamIo* SndDevice::stream_io(uint32_t s) { return s < streams_.size() ? streams_[s].get() : nullptr; }

uint32_t SndDevice::respond(const Chain& c, Code code, std::span<const uint8_t> payload) {
  if (!mem_) return 0;
  transport::DescriptorWriter w(*mem_, c.writable);
  proto::Hdr h{};
  h.code = uint32_t(code);
  if (code != Code::kOk) ++bad_requests_;
  if (w.remaining() < sizeof h || !w.write(&h, sizeof h).ok()) return 0;
  const size_t n = std::min(payload.size(), w.remaining());
  if (n && !w.write(payload.data(), n).ok()) return sizeof h;
  return uint32_t(sizeof h + n);
}

uint32_t SndDevice::control(const Chain& c) {
  if (!mem_) return 0;
  transport::DescriptorReader r(*mem_, c.readable);
  std::vector<uint8_t> req(std::min<size_t>(r.remaining(), kMaxRequestBytes));
  if (req.size() < sizeof(proto::Hdr) || !r.read(req.data(), req.size()).ok()) return respond(c, Code::kBadMsg);
  const uint32_t code = load<proto::Hdr>(req).code;
  switch (Code(code)) {
    case Code::kJackInfo:
    case Code::kPcmInfo:
    case Code::kChmapInfo:
    case Code::kCtlInfo: return query(c, code, req);
    case Code::kJackRemap: {
      if (req.size() < sizeof(proto::JackRemap)) return respond(c, Code::kBadMsg);
      const auto m = load<proto::JackRemap>(req);
      if (m.hdr.jack_id >= opt_.jacks.size()) return respond(c, Code::kBadMsg);
      return respond(c, Code::kOk);  // HDA association/sequence: kept by the guest; the host routing is the manifest's
    }
    case Code::kPcmSetParams:
    case Code::kPcmPrepare:
    case Code::kPcmRelease:
    case Code::kPcmStart:
    case Code::kPcmStop: return pcm_command(c, Code(code), req);
    case Code::kCtlEnumItems:
    case Code::kCtlRead:
    case Code::kCtlWrite:
    case Code::kCtlTlvRead:
    case Code::kCtlTlvWrite:
    case Code::kCtlTlvCommand: return ctl_command(c, Code(code), req);
    default: CANOPY_WARN_RL("snd: unknown control request 0x%x", code); return respond(c, Code::kNotSupp);
  }
}

uint32_t SndDevice::query(const Chain& c, uint32_t code, const std::vector<uint8_t>& req) {
  if (req.size() < sizeof(proto::QueryInfo)) return respond(c, Code::kBadMsg);
  const auto q = load<proto::QueryInfo>(req);
  uint32_t total = 0, item = 0, min_item = 0;
  switch (Code(code)) {
    case Code::kJackInfo: total = uint32_t(opt_.jacks.size()), item = min_item = sizeof(proto::JackInfo); break;
    case Code::kPcmInfo: total = uint32_t(streams_.size()), item = min_item = sizeof(proto::PcmInfo); break;
    case Code::kChmapInfo: total = uint32_t(streams_.size()), item = min_item = sizeof(proto::ChmapInfo); break;
    case Code::kCtlInfo:
      if (!(acked_ & proto::kFCtls)) return respond(c, Code::kNotSupp);
      total = config().controls, item = sizeof(proto::CtlInfo), min_item = 92;  // 92: the i386 layout
      break;
    default: return respond(c, Code::kNotSupp);
  }
  // CVE-2026-3196: start_id + count and count * size in 64 bits, against the configuration and the
  // response buffer, before anything is sized by them.
  const uint64_t start = q.start_id, count = q.count, size = q.size;
  if (start + count > total || size < min_item || size > kMaxItemSize) return respond(c, Code::kBadMsg);
  if (bytes_of(c.writable) < sizeof(proto::Hdr) + count * size) return respond(c, Code::kBadMsg);
  std::vector<uint8_t> out(size_t(count * size), 0);
  for (uint32_t k = 0; k < count; ++k) {
    const uint32_t id = uint32_t(start) + k;
    uint8_t* at = out.data() + size_t(k) * size;
    const size_t n = std::min<size_t>(item, size);
    if (Code(code) == Code::kJackInfo) {
      const JackConfig& j = opt_.jacks[id];
      proto::JackInfo i{};
      i.features = proto::kJackFRemap;
      // Jack connectivity (bits 30..31 = 0), default device, association 1, sequence = id.
      i.hda_reg_defconf = (j.hda_device << 20) | (1u << 4) | (id & 0xf);
      i.hda_reg_caps = proto::kHdaCapPresenceDetect |
                       (j.direction == proto::Direction::kOutput ? proto::kHdaCapOutput : proto::kHdaCapInput);
      i.connected = jack_connected_[id];
      std::memcpy(at, &i, n);
    } else if (Code(code) == Code::kPcmInfo) {
      const StreamConfig& s = streams_[id]->cfg;
      proto::PcmInfo i{};
      i.features = kOfferedPcmFeatures;
      i.formats = s.formats;
      i.rates = s.rates;
      i.direction = uint8_t(s.direction);
      i.channels_min = s.channels_min;
      i.channels_max = s.channels_max;
      std::memcpy(at, &i, n);
    } else if (Code(code) == Code::kChmapInfo) {
      const StreamConfig& s = streams_[id]->cfg;
      proto::ChmapInfo i{};
      i.direction = uint8_t(s.direction);
      i.channels = s.channels_max;
      std::memcpy(i.positions, s.positions.data(), s.positions.size());
      std::memcpy(at, &i, n);
    } else {
      const Stream& s = *streams_[id / 2];
      const bool out_dir = s.cfg.direction == proto::Direction::kOutput;
      proto::CtlInfo i{};
      const bool volume = id % 2 == 0;
      i.role =
          ((volume ? uint32_t(proto::CtlRole::kVolume) : uint32_t(proto::CtlRole::kMute)) << 1) | (out_dir ? 0 : 1);
      i.type = uint32_t(volume ? proto::CtlType::kInteger : proto::CtlType::kBoolean);
      i.access = proto::kCtlAccessRead | proto::kCtlAccessWrite | (volume ? proto::kCtlAccessTlvRead : 0);
      i.count = 1;
      // ALSA mixer names; streams with the same (truncated) name get distinct indices.
      std::string name =
          s.cfg.name.substr(0, 24) + (out_dir ? " Playback " : " Capture ") + (volume ? "Volume" : "Switch");
      uint32_t index = 0;
      for (uint32_t o = 0; o < s.id; ++o)
        if (streams_[o]->cfg.name.substr(0, 24) == s.cfg.name.substr(0, 24) &&
            streams_[o]->cfg.direction == s.cfg.direction)
          ++index;
      i.index = index;
      std::memcpy(i.name, name.c_str(), std::min<size_t>(name.size(), proto::kCtlNameBytes - 1));
      if (volume) {
        i.value.integer.min = 0;
        i.value.integer.max = kVolumeMax;
        i.value.integer.step = 1;
      }
      // An i386 guest's struct has no padding before the union: move the value up.
      if (size < sizeof(proto::CtlInfo)) {
        std::memcpy(at, &i, offsetof(proto::CtlInfo, pad));
        std::memcpy(at + offsetof(proto::CtlInfo, pad), &i.value,
                    std::min<size_t>(size - offsetof(proto::CtlInfo, pad), sizeof i.value));
      } else {
        std::memcpy(at, &i, n);
      }
    }
  }
  return respond(c, Code::kOk, out);
}

uint32_t SndDevice::ctl_command(const Chain& c, Code code, const std::vector<uint8_t>& req) {
  if (!(acked_ & proto::kFCtls)) return respond(c, Code::kNotSupp);
  if (req.size() < sizeof(proto::CtlHdr)) return respond(c, Code::kBadMsg);
  const uint32_t id = load<proto::CtlHdr>(req).control_id;
  if (id >= config().controls) return respond(c, Code::kBadMsg);
  Stream& s = *streams_[id / 2];
  const bool volume = id % 2 == 0;
  switch (code) {
    case Code::kCtlRead: {
      proto::CtlValue v{};
      v.integer[0] = volume ? s.volume : (s.mute ? 0u : 1u);  // the switch is "on" when not muted
      if (bytes_of(c.writable) < sizeof(proto::Hdr) + sizeof v) return respond(c, Code::kBadMsg);
      return respond(c, Code::kOk, std::span(reinterpret_cast<const uint8_t*>(&v), sizeof v));
    }
    case Code::kCtlWrite: {
      if (req.size() < sizeof(proto::CtlHdr) + sizeof(le32)) return respond(c, Code::kBadMsg);
      le32 raw;
      std::memcpy(&raw, req.data() + sizeof(proto::CtlHdr), sizeof raw);
      const uint32_t v = raw;
      if (volume) {
        if (v > kVolumeMax) return respond(c, Code::kBadMsg);
        s.volume = v;
      } else {
        if (v > 1) return respond(c, Code::kBadMsg);
        s.mute = v == 0;
      }
      return respond(c, Code::kOk);
    }
    case Code::kCtlTlvRead: {
      if (!volume) return respond(c, Code::kBadMsg);
      struct {
        proto::CtlTlvHdr h;
        le32 min;
        le32 step;
      } tlv{};
      tlv.h.type = proto::kTlvDbScale;
      tlv.h.length = 8;
      tlv.min = uint32_t(kVolumeMinCdb);
      tlv.step = uint32_t(kVolumeStepCdb) | proto::kTlvDbScaleMute;
      return respond(c, Code::kOk, std::span(reinterpret_cast<const uint8_t*>(&tlv), sizeof tlv));
    }
    case Code::kCtlEnumItems:  // no enumerated controls
    case Code::kCtlTlvWrite:   // not in any control's access bits
    case Code::kCtlTlvCommand:
    default: return respond(c, Code::kBadMsg);
  }
}

uint32_t SndDevice::io(uint16_t queue, const Chain& c) {
  if (queue == proto::kEventQ) {
    if (bytes_of(c.writable) < sizeof(proto::Event)) {
      ++bad_requests_;
      return 0;
    }
    event_buffers_.push_back({c.head, {c.writable.begin(), c.writable.end()}});
    flush_events();
    return kHeld;
  }
  if (queue == proto::kTxQ || queue == proto::kRxQ) return tx_rx(queue, c);
  ++bad_requests_;
  return 0;
}

void SndDevice::post_event(uint32_t code, uint32_t data) {
  proto::Event e{};
  e.hdr.code = code;
  e.data = data;
  if (pending_events_.size() >= opt_.max_pending_events) {
    pending_events_.pop_front();
    ++events_dropped_;
  }
  pending_events_.push_back(e);
  flush_events();
}

void SndDevice::post_ctl_event(uint32_t control, uint16_t mask) {
  // virtio_snd_ctl_event: le16 control_id, le16 mask where an event has its le32 data.
  post_event(uint32_t(Code::kEvtCtlNotify), (control & 0xffff) | (uint32_t(mask) << 16));
}

void SndDevice::flush_events() {
  while (!pending_events_.empty() && !event_buffers_.empty() && mem_) {
    HeldBuffer b = std::move(event_buffers_.front());
    event_buffers_.pop_front();
    const proto::Event e = pending_events_.front();
    pending_events_.pop_front();
    transport::DescriptorWriter w(*mem_, b.writable);
    const bool ok = w.write(&e, sizeof e).ok();
    ++events_sent_;
    complete_(proto::kEventQ, b.head, ok ? sizeof e : 0);
  }
}

Status SndDevice::set_jack(uint32_t jack, bool connected) {
  if (jack >= jack_connected_.size()) return make_error(Errc::kInvalidArgument, "no such jack");
  if (jack_connected_[jack] == (connected ? 1 : 0)) return {};
  jack_connected_[jack] = connected ? 1 : 0;
  post_event(uint32_t(connected ? Code::kEvtJackConnected : Code::kEvtJackDisconnected), jack);
  return {};
}

Status SndDevice::set_volume(uint32_t stream, uint32_t volume, bool mute) {
  if (stream >= streams_.size()) return make_error(Errc::kInvalidArgument, "no such stream");
  if (volume > kVolumeMax) return make_error(Errc::kInvalidArgument, "volume is 0..100");
  Stream& s = *streams_[stream];
  const bool vol_changed = s.volume != volume, mute_changed = s.mute != mute;
  s.volume = volume;
  s.mute = mute;
  if (acked_ & proto::kFCtls) {
    if (vol_changed) post_ctl_event(stream * 2, proto::kCtlEvtMaskValue);
    if (mute_changed) post_ctl_event(stream * 2 + 1, proto::kCtlEvtMaskValue);
  }
  return {};
}

void SndDevice::queue_stopped(uint16_t queue, bool resetting) {
  if (queue == proto::kEventQ) {
    if (!resetting)
      for (auto& b : event_buffers_) complete_(proto::kEventQ, b.head, 0);
    event_buffers_.clear();
    return;
  }
  for (auto& s : streams_) {
    if (s->queue() != queue) continue;
    if (resetting) {
      s->held.clear();
      s->queued_bytes = 0;
    } else {
      s->return_all(uint32_t(Code::kIoErr));
    }
  }
}

void SndDevice::reset() {
  event_buffers_.clear();
  pending_events_.clear();
  acked_ = 0;
  for (auto& s : streams_) {
    s->held.clear();
    s->queued_bytes = 0;
    if (s->host && (s->state == PcmState::kStarted)) s->host->stop();
    if (s->host && s->state != PcmState::kInitial) s->host->release();
    s->set_state(PcmState::kInitial);
    s->has_params = false;
    s->in_xrun = false;
  }
}

}  // namespace canopy::audio
