// A PCM stream of SndDevice (device_internal.h): its commands through the transition table of virtio
// 1.2 §5.14.6.6.1, tx / rx buffers held and moved to and from the host (playback: one copy, from guest
// memory into the host's buffer; capture: through a scratch buffer for the gain), xruns, period events
// and the policy's gain ramp.
#include "device_internal.h"

namespace canopy::audio {

uint32_t SndDevice::Stream::latency_bytes() const {
  uint64_t b = queued_bytes;
  if (host) b += uint64_t(host->delay_frames()) * params_.frame_bytes();
  return uint32_t(std::min<uint64_t>(b, UINT32_MAX));
}

void SndDevice::Stream::finish(Io& io, uint32_t status, uint32_t used_data) {
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

void SndDevice::Stream::return_all(uint32_t status) {
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

void SndDevice::Stream::set_state(PcmState s) {
  state = s;
  if (dev->board_ && slot >= 0) dev->board_->set_active(uint32_t(slot), s == PcmState::kStarted, monotonic_ns());
}

void SndDevice::Stream::xrun(bool short_transfer, uint64_t& counter) {
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

void SndDevice::Stream::moved(size_t bytes) {
  if (!(params_.features & proto::kPcmFEvtShmemPeriods) || !params_.period_bytes) return;
  period_progress += bytes;
  while (period_progress >= params_.period_bytes) {
    period_progress -= params_.period_bytes;
    dev->post_event(uint32_t(Code::kEvtPcmPeriodElapsed), id);
  }
}

void SndDevice::Stream::gain(uint8_t* data, size_t frames) {
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

size_t SndDevice::Stream::pull(uint8_t* dst, size_t bytes) {
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

size_t SndDevice::Stream::push(const uint8_t* src, size_t bytes) {
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

uint32_t SndDevice::pcm_command(const Chain& c, Code code, const std::vector<uint8_t>& req) {
  if (req.size() < sizeof(proto::PcmHdr)) return respond(c, Code::kBadMsg);
  const uint32_t id = load<proto::PcmHdr>(req).stream_id;
  if (id >= streams_.size()) return respond(c, Code::kBadMsg);
  Stream& s = *streams_[id];
  const PcmState st = s.state;
  const PcmTransition* t = pcm_transition(code);
  if (!t) return respond(c, Code::kNotSupp);
  if (!(t->from & state_bit(st)) || (code == Code::kPcmPrepare && !s.has_params)) {
    CANOPY_WARN_RL("snd: stream %u: %s refused in state %s", id, proto::code_name(uint32_t(code)), pcm_state_name(st));
    return respond(c, Code::kBadMsg);
  }
  switch (code) {
    case Code::kPcmSetParams: {
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
      s.state = t->to;
      return respond(c, Code::kOk);
    }
    case Code::kPcmPrepare: {
      if (s.host) {
        if (Status r = s.host->prepare(s.params_); !r.ok()) {
          CANOPY_WARN_RL("snd: stream %s: the host end refused the parameters: %s", s.cfg.name.c_str(),
                         r.error().what);  // a guest can ask again and again
          return respond(c, Code::kIoErr);
        }
      }
      s.in_xrun = false;
      s.period_progress = 0;
      s.state = t->to;
      return respond(c, Code::kOk);
    }
    case Code::kPcmStart:
      s.set_state(t->to);
      if (s.host) s.host->start();
      return respond(c, Code::kOk);
    case Code::kPcmStop:
      s.set_state(t->to);
      if (s.host) s.host->stop();
      return respond(c, Code::kOk);
    case Code::kPcmRelease:
      // Every pending I/O buffer goes back before the RELEASE is answered (§5.14.6.6.5.1).
      s.return_all(uint32_t(Code::kOk));
      if (s.host) s.host->release();
      s.set_state(t->to);
      return respond(c, Code::kOk);
    default: return respond(c, Code::kNotSupp);
  }
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
  if (!(s.state == PcmState::kPrepared || s.state == PcmState::kStarted || s.state == PcmState::kStopped)) {
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

}  // namespace canopy::audio
