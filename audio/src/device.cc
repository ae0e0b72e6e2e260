#include "canopy/audio/device.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "canopy/audio/policy.h"
#include "canopy/base/log.h"

namespace canopy::audio {

using proto::Code;
using transport::Segment;

namespace {

constexpr uint32_t kMaxBufferBytes = 4u << 20;  // per stream; Linux asks for at most ~1 MiB (160 ms of 8ch/192k/32bit)
constexpr uint32_t kMaxRequestBytes = 4096;     // control requests we read (no TLV writes are offered)
constexpr uint32_t kMaxItemSize = 1024;         // query_info.size accepted (the structs are 24..96 bytes)
constexpr uint32_t kVolumeMax = 100;            // volume control: 0..100 = -50 dB..0 dB in 0.5 dB steps
constexpr int32_t kVolumeMinCdb = -5000, kVolumeStepCdb = 50;
// XRUN events, and PERIOD_ELAPSED events each time a period's worth of frames went to / came from the
// host (meant for the shared-memory transport, which is not offered; informational over messages).
constexpr uint32_t kOfferedPcmFeatures = proto::kPcmFEvtXruns | proto::kPcmFEvtShmemPeriods;

// The bytes of a chain part (each segment is at most 4 GiB - 1: no overflow in 64 bits).
uint64_t bytes_of(std::span<const Segment> segs) {
  uint64_t n = 0;
  for (const Segment& s : segs) n += s.len;
  return n;
}

double volume_db(uint32_t v) { return (kVolumeMinCdb + int32_t(v) * kVolumeStepCdb) / 100.0; }

}  // namespace

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

namespace {

template <typename T>
T load(const std::vector<uint8_t>& b) {
  T v{};
  std::memcpy(&v, b.data(), std::min(sizeof v, b.size()));
  return v;
}

}  // namespace

uint64_t default_formats() {
  using F = proto::Format;
  return (1ull << uint8_t(F::kU8)) | (1ull << uint8_t(F::kS16)) | (1ull << uint8_t(F::kS24)) |
         (1ull << uint8_t(F::kS32)) | (1ull << uint8_t(F::kFloat));
}

// ---------------------------------------------------------------------------------------------------
// Gain

namespace {
template <typename T, typename Fn>
void ramp_samples(uint8_t* data, size_t frames, uint32_t channels, double db, double step, Fn&& scale) {
  for (size_t f = 0; f < frames; ++f, db += step) {
    const double g = db <= kMuteDb ? 0.0 : std::pow(10.0, db / 20.0);
    for (uint32_t c = 0; c < channels; ++c) {
      T v;
      uint8_t* at = data + (f * channels + c) * sizeof(T);
      std::memcpy(&v, at, sizeof v);
      v = scale(v, g);
      std::memcpy(at, &v, sizeof v);
    }
  }
}
template <typename T>
T clamp_to(double v, double lo, double hi) {
  return T(std::lround(std::clamp(v, lo, hi)));
}
}  // namespace

void apply_gain(uint8_t format, uint8_t* data, size_t frames, uint32_t channels, double db, double step) {
  using F = proto::Format;
  switch (F(format)) {
    case F::kU8:
      ramp_samples<uint8_t>(data, frames, channels, db, step, [](uint8_t v, double g) {
        return clamp_to<uint8_t>((double(v) - 128.0) * g + 128.0, 0, 255);
      });
      break;
    case F::kS16:
      ramp_samples<int16_t>(data, frames, channels, db, step,
                            [](int16_t v, double g) { return clamp_to<int16_t>(v * g, -32768, 32767); });
      break;
    case F::kS24:
      ramp_samples<int32_t>(data, frames, channels, db, step, [](int32_t v, double g) {
        const int32_t s = int32_t(uint32_t(v) << 8) >> 8;  // the low 24 bits, sign-extended
        return clamp_to<int32_t>(s * g, -8388608.0, 8388607.0);
      });
      break;
    case F::kS32:
      ramp_samples<int32_t>(data, frames, channels, db, step,
                            [](int32_t v, double g) { return clamp_to<int32_t>(v * g, -2147483648.0, 2147483647.0); });
      break;
    case F::kFloat:
      ramp_samples<float>(data, frames, channels, db, step, [](float v, double g) { return float(v * g); });
      break;
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------------
// Streams

namespace {
enum class PcmState { kInitial, kSetParams, kPrepared, kStarted, kStopped, kReleased };
const char* pcm_state_name(PcmState s) {
  switch (s) {
    case PcmState::kInitial: return "initial";
    case PcmState::kSetParams: return "params-set";
    case PcmState::kPrepared: return "prepared";
    case PcmState::kStarted: return "started";
    case PcmState::kStopped: return "stopped";
    case PcmState::kReleased: return "released";
  }
  return "?";
}
}  // namespace

struct SndDevice::Stream final : StreamIo {
  SndDevice* dev = nullptr;
  uint32_t id = 0;
  StreamConfig cfg;
  PcmParams params_;
  bool has_params = false;
  PcmState state = PcmState::kInitial;
  std::unique_ptr<HostStream> host;
  int slot = -1;  // policy board slot
  // Control values.
  uint32_t volume = kVolumeMax;
  bool mute = false;
  // I/O buffers held: data segments, status segments, bytes done.
  struct Io {
    uint16_t head = 0;
    std::vector<Segment> data;
    std::vector<Segment> status;
    uint32_t size = 0;
    uint32_t done = 0;
    uint64_t arrived_ns = 0;
  };
  std::deque<Io> held;
  uint64_t queued_bytes = 0;  // playback bytes held and not yet taken
  bool in_xrun = false;
  uint64_t period_progress = 0;  // bytes moved since the last PERIOD_ELAPSED
  // Policy ramp.
  double policy_db = 0;
  double ramp_db_per_frame = 0;
  uint32_t last_ramp_ms = 50;
  double last_target = 0;
  uint64_t duck_started_frame = 0;
  bool ducking = false;
  StreamStats st;
  std::vector<uint8_t> scratch;

  const PcmParams& params() const override { return params_; }
  const StreamConfig& config() const override { return cfg; }
  uint16_t queue() const { return cfg.direction == proto::Direction::kOutput ? proto::kTxQ : proto::kRxQ; }

  uint32_t latency_bytes() const {
    uint64_t b = queued_bytes;
    if (host) b += uint64_t(host->delay_frames()) * params_.frame_bytes();
    return uint32_t(std::min<uint64_t>(b, UINT32_MAX));
  }

  void finish(Io& io, uint32_t status, uint32_t used_data) {
    proto::PcmStatus s{};
    s.status = status;
    s.latency_bytes = latency_bytes();
    st.last_latency_bytes = s.latency_bytes;
    uint32_t used = used_data;
    if (dev->mem_) {
      transport::DescriptorWriter c(*dev->mem_, io.status);
      if (c.remaining() >= sizeof s && c.write(&s, sizeof s).ok()) used += sizeof s;
    }
    dev->complete_(queue(), io.head, used);
  }

  // Hands back every held buffer (RELEASE, queue stop): playback ones as played, capture ones with what
  // they hold.
  void return_all(uint32_t status) {
    while (!held.empty()) {
      Io io = std::move(held.front());
      held.pop_front();
      if (cfg.direction == proto::Direction::kOutput) {
        queued_bytes -= io.size - io.done;
        finish(io, status, 0);
      } else {
        finish(io, status, io.done);
      }
    }
    queued_bytes = 0;
  }

  void set_state(PcmState s) {
    state = s;
    if (dev->board_ && slot >= 0) dev->board_->set_active(uint32_t(slot), s == PcmState::kStarted, monotonic_ns());
  }

  // After a pull / push: a short one is an underrun / overrun (counted in `counter`); the first of an
  // episode is reported as EVT_PCM_XRUN where negotiated; a full one ends the episode.
  void xrun(bool short_transfer, uint64_t& counter) {
    if (!short_transfer) {
      in_xrun = false;
      return;
    }
    ++counter;
    if (in_xrun) return;
    in_xrun = true;
    if (params_.features & proto::kPcmFEvtXruns) {
      ++st.xrun_events;
      dev->post_event(uint32_t(Code::kEvtPcmXrun), id);
    }
  }

  void moved(size_t bytes) {
    if (!(params_.features & proto::kPcmFEvtShmemPeriods) || !params_.period_bytes) return;
    period_progress += bytes;
    while (period_progress >= params_.period_bytes) {
      period_progress -= params_.period_bytes;
      dev->post_event(uint32_t(Code::kEvtPcmPeriodElapsed), id);
    }
  }

  // The policy + control gain for the next `frames` frames, applied to `data`.
  void gain(uint8_t* data, size_t frames) {
    const uint32_t fb = params_.frame_bytes();
    if (!fb || !frames) return;
    double target = 0;
    uint32_t ramp_ms = 0;
    if (dev->board_ && slot >= 0) {
      const uint64_t now = monotonic_ns();
      dev->board_->refresh(uint32_t(slot), now);
      const auto t = dev->board_->target(uint32_t(slot), now);
      target = t.db;
      ramp_ms = t.ramp_ms;
    }
    if (target < policy_db && !ducking && target < 0) {
      ducking = true;
      ++st.ducks;
      duck_started_frame = st.frames;
    }
    if (target >= 0) ducking = false;
    // A new target: ramp from where the gain is now to it, linearly in dB, over the ducking stream's
    // ramp (restoring: over the ramp of the last duck).
    if (target < 0) last_ramp_ms = ramp_ms;
    if (target != last_target) {
      const double ramp_frames = std::max(1.0, double(last_ramp_ms) * params_.rate / 1000.0);
      ramp_db_per_frame = std::max(std::abs(target - policy_db), 1e-6) / ramp_frames;
      last_target = target;
    }
    const double control_db = mute ? kMuteDb : volume_db(volume);
    size_t done = 0;
    if (policy_db != target) {
      const double dist = std::abs(target - policy_db);
      const size_t n = std::min<size_t>(frames, size_t(std::ceil(dist / ramp_db_per_frame)));
      const double step = target < policy_db ? -ramp_db_per_frame : ramp_db_per_frame;
      apply_gain(params_.format, data, n, params_.channels, policy_db + control_db, step);
      done = n;
      policy_db += step * double(n);
      if ((step < 0 && policy_db <= target) || (step > 0 && policy_db >= target)) policy_db = target;
    }
    st.gain_db = policy_db;
    st.deepest_db = std::min(st.deepest_db, policy_db);
    if (ducking && policy_db == target && target < 0 && duck_started_frame != UINT64_MAX) {
      st.duck_reached_ms = 1000.0 * double(st.frames + done - duck_started_frame) / params_.rate;
      duck_started_frame = UINT64_MAX;
    }
    const double db = policy_db + control_db;
    if (done < frames && db != 0) apply_gain(params_.format, data + done * fb, frames - done, params_.channels, db, 0);
  }

  size_t pull(uint8_t* dst, size_t bytes) override {
    if (state != PcmState::kStarted || cfg.direction != proto::Direction::kOutput || !dev->mem_) return 0;
    const uint32_t fb = params_.frame_bytes();
    size_t got = 0;
    while (got < bytes && !held.empty()) {
      Io& io = held.front();
      const size_t n = std::min<size_t>(bytes - got, io.size - io.done);
      transport::DescriptorReader c(*dev->mem_, io.data);
      if (!c.skip(io.done).ok() || !c.read(dst + got, n).ok()) {
        // The guest's memory went away under the buffer: hand it back as failed.
        Io bad = std::move(io);
        held.pop_front();
        queued_bytes -= bad.size - bad.done;
        ++st.io_errors;
        finish(bad, uint32_t(Code::kIoErr), 0);
        continue;
      }
      got += n;
      io.done += uint32_t(n);
      queued_bytes -= n;
      if (io.done == io.size) {
        Io fin = std::move(io);
        held.pop_front();
        finish(fin, uint32_t(Code::kOk), 0);
        if (st.latency_ms.size() < 100000 && params_.rate) {
          const double host_ms = host ? 1000.0 * host->delay_frames() / params_.rate : 0.0;
          st.latency_ms.push_back(float((monotonic_ns() - fin.arrived_ns) / 1e6 + host_ms));
        }
      }
    }
    // Whole frames only get a gain; a partial frame at the end (odd guest buffers) is left as is.
    if (fb) {
      gain(dst, got / fb);
      st.frames += got / fb;
    }
    moved(got);
    xrun(got < bytes, st.underruns);
    if (got < bytes && fb) st.underrun_frames += (bytes - got) / fb;
    return got;
  }

  size_t push(const uint8_t* src, size_t bytes) override {
    if (state != PcmState::kStarted || cfg.direction != proto::Direction::kInput || !dev->mem_) return 0;
    const uint32_t fb = params_.frame_bytes();
    scratch.assign(src, src + bytes);
    if (fb) gain(scratch.data(), bytes / fb);
    size_t put = 0;
    while (put < bytes && !held.empty()) {
      Io& io = held.front();
      // Never more than the buffer's own data part (writable minus the 8-byte status): CVE-2024-7730.
      const size_t n = std::min<size_t>(bytes - put, io.size - io.done);
      transport::DescriptorWriter c(*dev->mem_, io.data);
      if (!c.skip(io.done).ok() || !c.write(scratch.data() + put, n).ok()) {
        Io bad = std::move(io);
        held.pop_front();
        ++st.io_errors;
        finish(bad, uint32_t(Code::kIoErr), 0);
        continue;
      }
      put += n;
      io.done += uint32_t(n);
      if (io.done == io.size) {
        Io fin = std::move(io);
        held.pop_front();
        ++st.rx_buffers;
        finish(fin, uint32_t(Code::kOk), fin.size);
      }
    }
    if (fb) st.frames += put / fb;
    moved(put);
    xrun(put < bytes, st.overruns);
    return put;
  }
};

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

uint32_t SndDevice::pcm_command(const Chain& c, Code code, const std::vector<uint8_t>& req) {
  if (req.size() < sizeof(proto::PcmHdr)) return respond(c, Code::kBadMsg);
  const uint32_t id = load<proto::PcmHdr>(req).stream_id;
  if (id >= streams_.size()) return respond(c, Code::kBadMsg);
  Stream& s = *streams_[id];
  using S = PcmState;
  const S st = s.state;
  auto refuse = [&] {
    CANOPY_WARN_RL("snd: stream %u: %s refused in state %s", id, proto::code_name(uint32_t(code)), pcm_state_name(st));
    return respond(c, Code::kBadMsg);
  };
  switch (code) {
    case Code::kPcmSetParams: {
      if (!(st == S::kInitial || st == S::kSetParams || st == S::kPrepared || st == S::kReleased)) return refuse();
      if (req.size() < sizeof(proto::PcmSetParams)) return respond(c, Code::kBadMsg);
      const auto p = load<proto::PcmSetParams>(req);
      PcmParams n;
      n.buffer_bytes = p.buffer_bytes;
      n.period_bytes = p.period_bytes;
      n.features = p.features;
      n.channels = p.channels;
      n.format = p.format;
      if (p.format >= 64 || !(s.cfg.formats >> p.format & 1) || !proto::format_bytes(p.format))
        return respond(c, Code::kBadMsg);
      if (p.rate >= proto::kRateCount || !(s.cfg.rates >> p.rate & 1)) return respond(c, Code::kBadMsg);
      n.rate = proto::kRates[p.rate];
      if (p.channels < s.cfg.channels_min || p.channels > s.cfg.channels_max) return respond(c, Code::kBadMsg);
      if (n.features & ~kOfferedPcmFeatures) return respond(c, Code::kBadMsg);
      const uint32_t fb = n.frame_bytes();
      if (!n.period_bytes || !n.buffer_bytes || n.buffer_bytes > kMaxBufferBytes || n.buffer_bytes % n.period_bytes ||
          n.period_bytes % fb)
        return respond(c, Code::kBadMsg);
      s.params_ = n;
      s.has_params = true;
      s.state = S::kSetParams;
      return respond(c, Code::kOk);
    }
    case Code::kPcmPrepare: {
      if (!(st == S::kSetParams || st == S::kPrepared || st == S::kReleased) || !s.has_params) return refuse();
      if (s.host) {
        if (Status r = s.host->prepare(s.params_); !r.ok()) {
          CANOPY_WARN_RL("snd: stream %s: the host end refused the parameters: %s", s.cfg.name.c_str(),
                         r.error().what);  // a guest can ask again and again
          return respond(c, Code::kIoErr);
        }
      }
      s.in_xrun = false;
      s.period_progress = 0;
      s.state = S::kPrepared;
      return respond(c, Code::kOk);
    }
    case Code::kPcmStart:
      if (!(st == S::kPrepared || st == S::kStopped)) return refuse();
      s.set_state(S::kStarted);
      if (s.host) s.host->start();
      return respond(c, Code::kOk);
    case Code::kPcmStop:
      if (st != S::kStarted) return refuse();
      s.set_state(S::kStopped);
      if (s.host) s.host->stop();
      return respond(c, Code::kOk);
    case Code::kPcmRelease:
      if (!(st == S::kPrepared || st == S::kStopped)) return refuse();
      // Every pending I/O buffer goes back before the RELEASE is answered (§5.14.6.6.5.1).
      s.return_all(uint32_t(Code::kOk));
      if (s.host) s.host->release();
      s.set_state(S::kReleased);
      return respond(c, Code::kOk);
    default: return respond(c, Code::kNotSupp);
  }
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

uint32_t SndDevice::tx_rx(uint16_t queue, const Chain& c) {
  const bool tx = queue == proto::kTxQ;
  const uint64_t rbytes = bytes_of(c.readable), wbytes = bytes_of(c.writable);
  // Where the status goes: a tx buffer's writable part is the status; an rx buffer's status is its last
  // 8 writable bytes. A buffer with no room for one is handed back with nothing written.
  if (wbytes < sizeof(proto::PcmStatus) || !mem_) {
    ++bad_requests_;
    return 0;
  }
  std::vector<Segment> status, data;
  auto split = [](std::span<const Segment> segs, uint64_t from, uint64_t len, std::vector<Segment>& out) {
    uint64_t off = 0;
    for (const Segment& s : segs) {
      const uint64_t a = std::max(off, from), b = std::min(off + s.len, from + len);
      if (a < b) out.push_back({s.gpa + (a - off), uint32_t(b - a)});
      off += s.len;
    }
  };
  if (tx) split(c.writable, 0, sizeof(proto::PcmStatus), status);
  else split(c.writable, wbytes - sizeof(proto::PcmStatus), sizeof(proto::PcmStatus), status);
  auto fail_now = [&](Code code) -> uint32_t {
    ++bad_requests_;
    proto::PcmStatus s{};
    s.status = uint32_t(code);
    transport::DescriptorWriter w(*mem_, status);
    return w.write(&s, sizeof s).ok() ? sizeof s : 0;
  };
  proto::PcmXfer x{};
  transport::DescriptorReader r(*mem_, c.readable);
  if (rbytes < sizeof x || !r.read(&x, sizeof x).ok()) return fail_now(Code::kBadMsg);
  if (x.stream_id >= streams_.size()) return fail_now(Code::kBadMsg);
  Stream& s = *streams_[x.stream_id];
  if (s.queue() != queue) return fail_now(Code::kBadMsg);  // a capture stream's buffer on the txq, or the reverse
  using S = PcmState;
  if (!(s.state == S::kPrepared || s.state == S::kStarted || s.state == S::kStopped)) {
    ++s.st.io_errors;
    return fail_now(Code::kIoErr);
  }
  const uint64_t size = tx ? rbytes - sizeof x : wbytes - sizeof(proto::PcmStatus);
  if (size == 0 || size > s.params_.buffer_bytes) {
    ++s.st.io_errors;
    return fail_now(Code::kIoErr);
  }
  Stream::Io io;
  io.head = c.head;
  io.status = std::move(status);
  io.arrived_ns = monotonic_ns();
  if (tx) split(c.readable, sizeof x, size, io.data);
  else split(c.writable, 0, size, io.data);
  io.size = uint32_t(size);
  if (tx) {
    s.queued_bytes += size;
    ++s.st.tx_buffers;
  }
  s.held.push_back(std::move(io));
  return kHeld;
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
