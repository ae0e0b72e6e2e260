// The PipeWire host: one pw_stream per virtio stream, on canopy-snd's own event loop (the PipeWire
// loop's descriptor is polled there and iterated without blocking), so process callbacks run on the
// device's thread and touch the guest's buffers directly with no locking.
#include <pipewire/pipewire.h>
#include <spa/param/audio/format-utils.h>
#include <spa/param/buffers.h>
#include <spa/param/props.h>
#include <spa/pod/builder.h>
#include <spa/utils/result.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <string>
#include <utility>

#include "canopy/audio/host.h"
#include "canopy/audio/policy.h"
#include "canopy/base/log.h"
#include "playback_tap.h"

namespace canopy::audio {

namespace {

spa_audio_format spa_format(uint8_t f) {
  using F = proto::Format;
  switch (F(f)) {
    case F::kU8: return SPA_AUDIO_FORMAT_U8;
    case F::kS16: return SPA_AUDIO_FORMAT_S16_LE;
    case F::kS24: return SPA_AUDIO_FORMAT_S24_32_LE;  // virtio S24 is 24 bits in a 32-bit container
    case F::kS32: return SPA_AUDIO_FORMAT_S32_LE;
    case F::kFloat: return SPA_AUDIO_FORMAT_F32_LE;
    default: return SPA_AUDIO_FORMAT_UNKNOWN;
  }
}

uint32_t spa_position(uint8_t p) {
  using P = proto::Pos;
  switch (P(p)) {
    case P::kMono: return SPA_AUDIO_CHANNEL_MONO;
    case P::kFl: return SPA_AUDIO_CHANNEL_FL;
    case P::kFr: return SPA_AUDIO_CHANNEL_FR;
    case P::kRl: return SPA_AUDIO_CHANNEL_RL;
    case P::kRr: return SPA_AUDIO_CHANNEL_RR;
    case P::kFc: return SPA_AUDIO_CHANNEL_FC;
    case P::kLfe: return SPA_AUDIO_CHANNEL_LFE;
    case P::kSl: return SPA_AUDIO_CHANNEL_SL;
    case P::kSr: return SPA_AUDIO_CHANNEL_SR;
    case P::kRc: return SPA_AUDIO_CHANNEL_RC;
    case P::kFlc: return SPA_AUDIO_CHANNEL_FLC;
    case P::kFrc: return SPA_AUDIO_CHANNEL_FRC;
    case P::kRlc: return SPA_AUDIO_CHANNEL_RLC;
    case P::kRrc: return SPA_AUDIO_CHANNEL_RRC;
    case P::kFlw: return SPA_AUDIO_CHANNEL_FLW;
    case P::kFrw: return SPA_AUDIO_CHANNEL_FRW;
    case P::kFlh: return SPA_AUDIO_CHANNEL_FLH;
    case P::kFch: return SPA_AUDIO_CHANNEL_FCH;
    case P::kFrh: return SPA_AUDIO_CHANNEL_FRH;
    case P::kTc: return SPA_AUDIO_CHANNEL_TC;
    case P::kTfl: return SPA_AUDIO_CHANNEL_TFL;
    case P::kTfr: return SPA_AUDIO_CHANNEL_TFR;
    case P::kTfc: return SPA_AUDIO_CHANNEL_TFC;
    case P::kTrl: return SPA_AUDIO_CHANNEL_TRL;
    case P::kTrr: return SPA_AUDIO_CHANNEL_TRR;
    case P::kTrc: return SPA_AUDIO_CHANNEL_TRC;
    case P::kTflc: return SPA_AUDIO_CHANNEL_TFLC;
    case P::kTfrc: return SPA_AUDIO_CHANNEL_TFRC;
    case P::kTsl: return SPA_AUDIO_CHANNEL_TSL;
    case P::kTsr: return SPA_AUDIO_CHANNEL_TSR;
    case P::kLlfe: return SPA_AUDIO_CHANNEL_LLFE;
    case P::kRlfe: return SPA_AUDIO_CHANNEL_RLFE;
    case P::kBc: return SPA_AUDIO_CHANNEL_BC;
    case P::kBlc: return SPA_AUDIO_CHANNEL_BLC;
    case P::kBrc: return SPA_AUDIO_CHANNEL_BRC;
    case P::kNa: return SPA_AUDIO_CHANNEL_NA;
    default: return SPA_AUDIO_CHANNEL_UNKNOWN;
  }
}

class PwHost;

class PwStream final : public HostStream {
 public:
  PwStream(PwHost& host, StreamIo& io);
  ~PwStream() override { destroy(); }
  Status prepare(const PcmParams& p) override;
  void start() override;
  void stop() override;
  void release() override {}
  uint32_t delay_frames() override;

 private:
  void destroy();
  void process();
  static void on_process(void* d) { static_cast<PwStream*>(d)->process(); }
  static void on_state(void* d, pw_stream_state, pw_stream_state state, const char* error);
  static void on_param_changed(void* d, uint32_t id, const spa_pod* param);
  bool playback() const { return io_.config().direction == proto::Direction::kOutput; }

  PwHost& host_;
  StreamIo& io_;
  pw_stream* stream_ = nullptr;
  spa_hook listener_{};
  pw_stream_events events_{};
  PcmParams p_;
  bool running_ = false;
  uint64_t stopped_frames_ = 0;  // silence played since STOP; the node goes inactive after ~200 ms of it
  PlaybackTap tap_;              // --wav-dir: what the guest delivered, before any silence is added
};

class PwHost final : public HostBackend {
 public:
  explicit PwHost(PipeWireHostOptions o) : opt_(std::move(o)) {}
  ~PwHost() override {
    if (opt_.fd >= 0) ::close(opt_.fd);  // a connection made for it that was never handed to PipeWire
    if (core_) pw_core_disconnect(core_);
    if (context_) pw_context_destroy(context_);
    if (loop_) {
      pw_loop_leave(loop_);
      pw_loop_destroy(loop_);
    }
  }
  const char* name() const override { return "pipewire"; }

  Status init() {
    pw_init(nullptr, nullptr);
    loop_ = pw_loop_new(nullptr);
    if (!loop_) return make_error(Errc::kIo, "pipewire: cannot make a loop");
    pw_loop_enter(loop_);
    // No D-Bus: a confined canopy-snd has neither the capability to raise its threads' priority nor
    // a reason to ask RTKit or the portal over the session bus for it (module-rt then sets real-time
    // priority itself only where RLIMIT_RTPRIO allows; its D-Bus attempt, failing, leaked in
    // PipeWire 1.4's client).
    context_ = pw_context_new(loop_, pw_properties_new("support.dbus", "false", nullptr), 0);
    if (!context_) return make_error(Errc::kIo, "pipewire: cannot make a context");
    // pw_context_connect_fd owns the descriptor from here, even when it fails.
    core_ = opt_.fd >= 0 ? pw_context_connect_fd(context_, std::exchange(opt_.fd, -1), nullptr, 0)
                         : pw_context_connect(context_, nullptr, 0);
    if (!core_) return make_error(Errc::kIo, "pipewire: no PipeWire daemon answers (is pipewire running?)", errno);
    static const pw_core_events core_events = [] {
      pw_core_events e{};
      e.version = PW_VERSION_CORE_EVENTS;
      e.done = [](void* d, uint32_t id, int seq) {
        auto* h = static_cast<PwHost*>(d);
        if (id == PW_ID_CORE && seq == h->sync_seq_) h->synced_ = true;
      };
      e.error = [](void* d, uint32_t id, int, int res, const char* message) {
        auto* h = static_cast<PwHost*>(d);
        CANOPY_WARN("pipewire: error on object %u: %s (%s)", id, message ? message : "", spa_strerror(res));
        if (id != PW_ID_CORE) return;
        h->broken_ = true;
        // The daemon is gone (or refused us) after start: no stream will take data again and the
        // guest's buffers would stay held. End cleanly instead: canopy-vmm then resets the device and
        // starts a new back-end (which, with --host=auto, falls back to the null host if PipeWire is
        // still away); QEMU reports the back-end's disconnect.
        if (h->synced_) {
          CANOPY_ERROR("pipewire: lost the daemon: canopy-snd stops");
          raise(SIGTERM);
        }
      };
      return e;
    }();
    pw_core_add_listener(core_, &core_listener_, &core_events, this);
    // Round trip once so a missing daemon is an error now, not silence later.
    sync_seq_ = pw_core_sync(core_, PW_ID_CORE, 0);
    const uint64_t deadline = monotonic_ns() + uint64_t(opt_.connect_timeout_ms) * 1'000'000ull;
    while (!synced_ && !broken_ && monotonic_ns() < deadline) pw_loop_iterate(loop_, 50);
    if (!synced_) return make_error(Errc::kIo, "pipewire: the daemon did not answer (is pipewire running?)");
    CANOPY_INFO("pipewire: connected (library %s)", pw_get_library_version());
    return {};
  }

  Result<std::unique_ptr<HostStream>> open(uint32_t, StreamIo& io) override {
    return std::unique_ptr<HostStream>(std::make_unique<PwStream>(*this, io));
  }
  std::vector<Watch> watches() override {
    return {{pw_loop_get_fd(loop_), [this] { pw_loop_iterate(loop_, 0); }}};
  }
  pw_core* core() const { return core_; }
  const PipeWireHostOptions& options() const { return opt_; }

 private:
  PipeWireHostOptions opt_;
  pw_loop* loop_ = nullptr;
  pw_context* context_ = nullptr;
  pw_core* core_ = nullptr;
  spa_hook core_listener_{};
  int sync_seq_ = -1;
  bool synced_ = false;
  bool broken_ = false;
};

void PwStream::destroy() {
  if (stream_) {
    spa_hook_remove(&listener_);
    pw_stream_destroy(stream_);
    stream_ = nullptr;
  }
}

void PwStream::on_state(void* d, pw_stream_state, pw_stream_state state, const char* error) {
  auto* s = static_cast<PwStream*>(d);
  if (state == PW_STREAM_STATE_ERROR)
    CANOPY_WARN("pipewire: stream %s: %s", s->io_.config().name.c_str(), error ? error : "error");
  else CANOPY_DEBUG("pipewire: stream %s: %s", s->io_.config().name.c_str(), pw_stream_state_as_string(state));
}

// Once the format is fixed: two buffers of one period each (at least a quantum's worth). The stream's
// process callback runs on our loop and is asked to refill every free buffer, so every buffer more is
// a quantum more of latency.
void PwStream::on_param_changed(void* d, uint32_t id, const spa_pod* param) {
  auto* s = static_cast<PwStream*>(d);
  if (id != SPA_PARAM_Format || !param || !s->stream_) return;
  const uint32_t fb = std::max(1u, s->p_.frame_bytes());
  const int size = int(std::max<uint32_t>(s->p_.period_bytes, 8192 * fb));
  uint8_t buf[256];
  spa_pod_builder b = SPA_POD_BUILDER_INIT(buf, sizeof buf);
  const spa_pod* params[1] = {static_cast<const spa_pod*>(spa_pod_builder_add_object(
      &b, SPA_TYPE_OBJECT_ParamBuffers, SPA_PARAM_Buffers, SPA_PARAM_BUFFERS_buffers, SPA_POD_CHOICE_RANGE_Int(2, 1, 2),
      SPA_PARAM_BUFFERS_blocks, SPA_POD_Int(1), SPA_PARAM_BUFFERS_size,
      SPA_POD_CHOICE_RANGE_Int(size, int(fb), INT32_MAX), SPA_PARAM_BUFFERS_stride, SPA_POD_Int(int(fb))))};
  pw_stream_update_params(s->stream_, params, 1);
}

PwStream::PwStream(PwHost& host, StreamIo& io)
    : host_(host),
      io_(io),
      tap_(playback() ? host.options().wav_dir : std::string(), host.options().vm, io.config().name) {}

Status PwStream::prepare(const PcmParams& p) {
  CANOPY_TRY(tap_.prepare(p));
  if (stream_ && p == p_) return {};  // same parameters: keep the node (and what it still plays)
  destroy();
  p_ = p;
  const StreamConfig& c = io_.config();
  const uint32_t period_frames = p.period_bytes / std::max(1u, p.frame_bytes());
  const std::string vm = host_.options().vm;
  const std::string node = "canopy." + vm + "." + c.name;
  const std::string desc = vm + " " + c.name;
  char latency[32];
  std::snprintf(latency, sizeof latency, "%u/%u", period_frames, p.rate);
  pw_properties* props = pw_properties_new(
      PW_KEY_MEDIA_TYPE, "Audio", PW_KEY_MEDIA_CATEGORY, playback() ? "Playback" : "Capture", PW_KEY_MEDIA_ROLE,
      c.role.c_str(), PW_KEY_NODE_NAME, node.c_str(), PW_KEY_NODE_DESCRIPTION, desc.c_str(), PW_KEY_APP_NAME,
      "canopy-snd", PW_KEY_NODE_LATENCY, latency, "canopy.vm", vm.c_str(), "canopy.stream", c.name.c_str(), nullptr);
  pw_properties_setf(props, "canopy.priority", "%u", c.policy.priority);
  if (host_.options().force_quantum) pw_properties_setf(props, PW_KEY_NODE_FORCE_QUANTUM, "%u", period_frames);
  if (!c.target.empty()) pw_properties_set(props, PW_KEY_TARGET_OBJECT, c.target.c_str());
  stream_ = pw_stream_new(host_.core(), node.c_str(), props);
  if (!stream_) return make_error(Errc::kIo, "pipewire: cannot make a stream", errno);
  events_ = {};
  events_.version = PW_VERSION_STREAM_EVENTS;
  events_.process = &PwStream::on_process;
  events_.state_changed = &PwStream::on_state;
  events_.param_changed = &PwStream::on_param_changed;
  pw_stream_add_listener(stream_, &listener_, &events_, this);

  spa_audio_info_raw info{};
  info.format = spa_format(p.format);
  info.rate = p.rate;
  info.channels = p.channels;
  const std::vector<uint8_t> pos = p.channels == c.channels_max ? c.positions : default_positions(p.channels);
  for (uint32_t i = 0; i < p.channels && i < SPA_AUDIO_MAX_CHANNELS; ++i) info.position[i] = spa_position(pos[i]);
  uint8_t buf[1024];
  spa_pod_builder b = SPA_POD_BUILDER_INIT(buf, sizeof buf);
  const spa_pod* params[1] = {spa_format_audio_raw_build(&b, SPA_PARAM_EnumFormat, &info)};
  const int r = pw_stream_connect(
      stream_, playback() ? PW_DIRECTION_OUTPUT : PW_DIRECTION_INPUT, PW_ID_ANY,
      pw_stream_flags(PW_STREAM_FLAG_AUTOCONNECT | PW_STREAM_FLAG_MAP_BUFFERS | PW_STREAM_FLAG_INACTIVE), params, 1);
  if (r < 0) {
    destroy();
    return make_error(Errc::kIo, "pipewire: cannot connect the stream", -r);
  }
  CANOPY_INFO("pipewire: stream %s: %s %u Hz %u ch, period %u frames (node %s, role %s)", c.name.c_str(),
              proto::format_name(p.format), p.rate, p.channels, period_frames, node.c_str(), c.role.c_str());
  return {};
}

void PwStream::start() {
  running_ = true;
  stopped_frames_ = 0;
  if (stream_) pw_stream_set_active(stream_, true);
}

void PwStream::stop() {
  running_ = false;
  stopped_frames_ = 0;
  tap_.flush();
  // Capture stops at once; playback keeps its node running on silence so what PipeWire still holds
  // reaches the sink (no tail held back), then goes inactive (process()).
  if (stream_ && !playback()) pw_stream_set_active(stream_, false);
}

uint32_t PwStream::delay_frames() {
  if (!stream_) return 0;
  pw_time t{};
  if (pw_stream_get_time_n(stream_, &t, sizeof t) < 0 || t.rate.denom == 0 || t.delay < 0) return 0;
  const uint64_t delay = uint64_t(t.delay) * p_.rate * t.rate.num / t.rate.denom;
  return uint32_t(std::min<uint64_t>(delay + t.buffered + t.queued, UINT32_MAX));
}

void PwStream::process() {
  pw_buffer* b = pw_stream_dequeue_buffer(stream_);
  if (!b) return;
  spa_data& d = b->buffer->datas[0];
  if (!d.data) {
    pw_stream_queue_buffer(stream_, b);
    return;
  }
  const uint32_t fb = p_.frame_bytes();
  if (playback()) {
    uint64_t frames = d.maxsize / fb;
    if (b->requested) frames = std::min<uint64_t>(frames, b->requested);
    auto* dst = static_cast<uint8_t*>(d.data);
    const size_t want = size_t(frames) * fb;
    const size_t got = running_ ? io_.pull(dst, want) : 0;
    tap_.taken(dst, got);
    if (got < want) std::memset(dst + got, proto::silence_byte(p_.format), want - got);
    d.chunk->offset = 0;
    d.chunk->stride = int32_t(fb);
    d.chunk->size = uint32_t(want);
    b->size = frames;
    pw_stream_queue_buffer(stream_, b);
    if (!running_) {
      stopped_frames_ += frames;
      if (stopped_frames_ > p_.rate / 5) pw_stream_set_active(stream_, false);
    }
  } else {
    const uint32_t off = std::min(d.chunk->offset, d.maxsize);
    const uint32_t size = std::min(d.chunk->size, d.maxsize - off);
    if (running_) (void)io_.push(static_cast<const uint8_t*>(d.data) + off, size - size % fb);
    pw_stream_queue_buffer(stream_, b);
  }
}

}  // namespace

Result<std::unique_ptr<HostBackend>> make_pipewire_backend(const PipeWireHostOptions& o) {
  auto h = std::make_unique<PwHost>(o);
  CANOPY_TRY(h->init());
  return std::unique_ptr<HostBackend>(std::move(h));
}

}  // namespace canopy::audio
