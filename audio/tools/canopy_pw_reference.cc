// canopy-pw-reference: the same-run reference for canopy-snd's write -> heard latency
// (bench/snd_bench.sh): a plain PipeWire playback client (one pw_stream, no VM, no virtio) that plays a
// tone into the same sink, with the same quantum and the same buffering as a canopy-snd case, and
// measures write -> heard the way canopy-snd measures it.
//
//   canopy-pw-reference --period-ms P [--periods 2] [--ms 1000] [--rate 48000] [--channels 2] [--hz 1000]
//                       [--level-db -12] [--target NODE] [--no-force-quantum] [--timeout-s 30]
//
// The stream is set up as canopy-snd sets up a guest's stream (audio/src/pipewire_host.cc): S16,
// node.latency = P ms at the rate, node.force-quantum = P ms (canopy-snd --force-quantum), two buffers
// of at least a period, its process callback on the client's own (non real-time) loop, autoconnected
// to the default sink unless --target.
//
// The client writes as the benchmark's guest does (canopy-partition-tone): periods of P ms into a queue
// of --periods periods, filled before the stream runs, and one period more each time one was used up
// (written from the loop, after the process callback that used it up, as an application's writer
// answers "room"). canopy-snd records, per guest buffer, (when its last byte was copied into PipeWire's
// buffer - when the buffer reached the device) + PipeWire's delay at that moment (pw_time delay +
// buffered + queued, read before the buffer is queued); this client records the same sum for each
// period, from when it was written into the queue. So both figures are the same quantity: the wait of
// the written data before PipeWire has it, plus PipeWire's own delay to the sink; the difference is
// what the virtio path (the guest's kick, canopy-snd) adds. Prints
//   pw-reference: done periods=N latency_ms avg=A p50=.. p99=.. max=M pw_delay_ms_p50=D
//                 requested_frames=Q underruns=U
// (p50 / p99 / max as canopy-snd's stats compute them; D: PipeWire's delay part alone; Q: the median
// frames PipeWire asked per cycle, the quantum it ran at; U: cycles the queue could not fill) and
// exits 0; or "pw-reference: FAIL ..." and exits 1 (no daemon, a stream error, not done within
// --timeout-s). Bad usage: exit 2.
#include <pipewire/pipewire.h>
#include <spa/param/audio/format-utils.h>
#include <spa/param/buffers.h>
#include <spa/pod/builder.h>
#include <spa/utils/result.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

namespace {

uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

int usage() {
  std::fprintf(stderr,
               "usage: canopy-pw-reference --period-ms P [--ms MS] [--rate R] [--channels C] [--hz H] [--level-db L]\n"
               "                           [--target NODE] [--no-force-quantum] [--timeout-s S]\n");
  return 2;
}

// A period the client wrote and PipeWire has not taken whole yet.
struct Period {
  std::vector<int16_t> samples;
  size_t done = 0;  // samples taken
  uint64_t written_ns = 0;
};

struct Client {
  pw_main_loop* loop = nullptr;
  pw_stream* stream = nullptr;
  spa_source* room = nullptr;  // signalled by process() when a period was used up
  uint32_t rate = 48000, channels = 2, period_frames = 0, periods = 2;
  uint64_t n_periods = 0, written = 0, used = 0, total_frames = 0, phase = 0, underruns = 0;
  double hz = 1000, amp = 0.25;
  std::deque<Period> queue;
  std::vector<float> latency_ms, pw_delay_ms;
  std::vector<uint32_t> requested;
  std::string error;
  bool started = false, finished = false;

  uint32_t frame_bytes() const { return channels * 2; }

  // The application's writer: tops the queue up to `periods` periods of tone (the write).
  void fill() {
    while (queue.size() < periods && written < n_periods) {
      Period p;
      p.samples.resize(size_t(period_frames) * channels);
      for (uint32_t f = 0; f < period_frames; ++f, ++phase) {
        const double v = phase < total_frames ? amp * std::sin(2.0 * M_PI * hz * double(phase) / rate) : 0.0;
        const auto x = int16_t(std::lround(v * 32767.0));
        for (uint32_t c = 0; c < channels; ++c) p.samples[size_t(f) * channels + c] = x;
      }
      p.written_ns = monotonic_ns();
      queue.push_back(std::move(p));
      ++written;
    }
  }

  // canopy-snd's PwStream::delay_frames, the same formula.
  uint32_t delay_frames() const {
    pw_time t{};
    if (pw_stream_get_time_n(stream, &t, sizeof t) < 0 || t.rate.denom == 0 || t.delay < 0) return 0;
    const uint64_t delay = uint64_t(t.delay) * rate * t.rate.num / t.rate.denom;
    return uint32_t(std::min<uint64_t>(delay + t.buffered + t.queued, UINT32_MAX));
  }

  void process() {
    pw_buffer* b = pw_stream_dequeue_buffer(stream);
    if (!b) return;
    spa_data& d = b->buffer->datas[0];
    if (!d.data) {
      pw_stream_queue_buffer(stream, b);
      return;
    }
    const uint32_t fb = frame_bytes();
    uint64_t frames = d.maxsize / fb;
    if (b->requested) frames = std::min<uint64_t>(frames, b->requested);
    auto* dst = static_cast<int16_t*>(d.data);
    const size_t want = size_t(frames) * channels;
    size_t got = 0;
    bool room_made = false;
    while (got < want && !queue.empty()) {
      Period& p = queue.front();
      const size_t n = std::min(want - got, p.samples.size() - p.done);
      std::memcpy(dst + got, p.samples.data() + p.done, n * sizeof(int16_t));
      got += n;
      p.done += n;
      if (p.done == p.samples.size()) {
        // As canopy-snd does when a guest buffer is used up: PipeWire's delay before the buffer is queued.
        const double host_ms = rate ? 1000.0 * delay_frames() / rate : 0.0;
        latency_ms.push_back(float((monotonic_ns() - p.written_ns) / 1e6 + host_ms));
        pw_delay_ms.push_back(float(host_ms));
        queue.pop_front();
        ++used;
        room_made = true;
      }
    }
    if (got < want) {
      std::memset(dst + got, 0, (want - got) * sizeof(int16_t));
      if (started && used < n_periods) ++underruns;
    }
    d.chunk->offset = 0;
    d.chunk->stride = int32_t(fb);
    d.chunk->size = uint32_t(want * sizeof(int16_t));
    b->size = frames;
    if (!finished) requested.push_back(uint32_t(b->requested));
    started = true;
    pw_stream_queue_buffer(stream, b);
    if (room_made) pw_loop_signal_event(pw_main_loop_get_loop(loop), room);
    if (!finished && used >= n_periods) {
      finished = true;
      pw_main_loop_quit(loop);
    }
  }

  static void on_process(void* d) { static_cast<Client*>(d)->process(); }

  static void on_state(void* d, pw_stream_state, pw_stream_state state, const char* err) {
    auto* c = static_cast<Client*>(d);
    if (state == PW_STREAM_STATE_ERROR) {
      c->error = std::string("stream error: ") + (err ? err : "?");
      pw_main_loop_quit(c->loop);
    }
    // Pre-buffered as the guest pre-buffers before START: once the stream is linked and about to run.
    if (state == PW_STREAM_STATE_STREAMING) c->fill();
  }

  // canopy-snd's buffer request: two buffers of one period each (at least 8192 frames of room).
  static void on_param_changed(void* d, uint32_t id, const spa_pod* param) {
    auto* c = static_cast<Client*>(d);
    if (id != SPA_PARAM_Format || !param) return;
    const uint32_t fb = c->frame_bytes();
    const int size = int(std::max<uint32_t>(c->period_frames * fb, 8192 * fb));
    uint8_t buf[256];
    spa_pod_builder b = SPA_POD_BUILDER_INIT(buf, sizeof buf);
    const spa_pod* params[1] = {static_cast<const spa_pod*>(spa_pod_builder_add_object(
        &b, SPA_TYPE_OBJECT_ParamBuffers, SPA_PARAM_Buffers, SPA_PARAM_BUFFERS_buffers,
        SPA_POD_CHOICE_RANGE_Int(2, 1, 2), SPA_PARAM_BUFFERS_blocks, SPA_POD_Int(1), SPA_PARAM_BUFFERS_size,
        SPA_POD_CHOICE_RANGE_Int(size, int(fb), INT32_MAX), SPA_PARAM_BUFFERS_stride, SPA_POD_Int(int(fb))))};
    pw_stream_update_params(c->stream, params, 1);
  }
};

}  // namespace

int main(int argc, char** argv) {
  double period_ms = 0, ms = 1000, level_db = -12, timeout_s = 30;
  Client c;
  std::string target;
  bool force_quantum = true;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--no-force-quantum") {
      force_quantum = false;
      continue;
    }
    if (i + 1 >= argc) return usage();
    const char* v = argv[++i];
    if (k == "--period-ms") period_ms = std::atof(v);
    else if (k == "--ms") ms = std::atof(v);
    else if (k == "--periods") c.periods = uint32_t(std::atoi(v));
    else if (k == "--rate") c.rate = uint32_t(std::atoi(v));
    else if (k == "--channels") c.channels = uint32_t(std::atoi(v));
    else if (k == "--hz") c.hz = std::atof(v);
    else if (k == "--level-db") level_db = std::atof(v);
    else if (k == "--target") target = v;
    else if (k == "--timeout-s") timeout_s = std::atof(v);
    else return usage();
  }
  c.period_frames = uint32_t(std::lround(period_ms * c.rate / 1000.0));
  if (c.period_frames == 0 || c.periods == 0 || ms <= 0 || c.rate == 0 || c.channels == 0 ||
      c.channels > SPA_AUDIO_MAX_CHANNELS || timeout_s <= 0)
    return usage();
  c.total_frames = uint64_t(ms * c.rate / 1000.0);
  c.n_periods = (c.total_frames + c.period_frames - 1) / c.period_frames;
  c.amp = std::pow(10.0, level_db / 20.0);

  pw_init(&argc, &argv);
  c.loop = pw_main_loop_new(nullptr);
  if (!c.loop) {
    std::fprintf(stderr, "pw-reference: FAIL cannot make a loop\n");
    return 1;
  }
  pw_loop* loop = pw_main_loop_get_loop(c.loop);
  c.room = pw_loop_add_event(loop, [](void* d, uint64_t) { static_cast<Client*>(d)->fill(); }, &c);
  char latency[32];
  std::snprintf(latency, sizeof latency, "%u/%u", c.period_frames, c.rate);
  pw_properties* props = pw_properties_new(
      PW_KEY_MEDIA_TYPE, "Audio", PW_KEY_MEDIA_CATEGORY, "Playback", PW_KEY_MEDIA_ROLE, "Music", PW_KEY_NODE_NAME,
      "canopy-pw-reference", PW_KEY_APP_NAME, "canopy-pw-reference", PW_KEY_NODE_LATENCY, latency, nullptr);
  if (force_quantum) pw_properties_setf(props, PW_KEY_NODE_FORCE_QUANTUM, "%u", c.period_frames);
  if (!target.empty()) pw_properties_set(props, PW_KEY_TARGET_OBJECT, target.c_str());
  static const pw_stream_events events = [] {
    pw_stream_events e{};
    e.version = PW_VERSION_STREAM_EVENTS;
    e.process = &Client::on_process;
    e.state_changed = &Client::on_state;
    e.param_changed = &Client::on_param_changed;
    return e;
  }();
  c.stream = pw_stream_new_simple(loop, "canopy-pw-reference", props, &events, &c);
  if (!c.stream) {
    std::fprintf(stderr, "pw-reference: FAIL cannot make a stream (is pipewire running?)\n");
    pw_main_loop_destroy(c.loop);
    return 1;
  }

  spa_audio_info_raw info{};
  info.format = SPA_AUDIO_FORMAT_S16_LE;
  info.rate = c.rate;
  info.channels = c.channels;
  if (c.channels == 2) {
    info.position[0] = SPA_AUDIO_CHANNEL_FL;
    info.position[1] = SPA_AUDIO_CHANNEL_FR;
  } else if (c.channels == 1) {
    info.position[0] = SPA_AUDIO_CHANNEL_MONO;
  } else {
    info.flags = SPA_AUDIO_FLAG_UNPOSITIONED;
  }
  uint8_t buf[1024];
  spa_pod_builder b = SPA_POD_BUILDER_INIT(buf, sizeof buf);
  const spa_pod* params[1] = {spa_format_audio_raw_build(&b, SPA_PARAM_EnumFormat, &info)};
  const int r = pw_stream_connect(c.stream, PW_DIRECTION_OUTPUT, PW_ID_ANY,
                                  pw_stream_flags(PW_STREAM_FLAG_AUTOCONNECT | PW_STREAM_FLAG_MAP_BUFFERS), params, 1);
  if (r < 0) {
    std::fprintf(stderr, "pw-reference: FAIL cannot connect the stream: %s\n", spa_strerror(r));
    pw_stream_destroy(c.stream);
    pw_main_loop_destroy(c.loop);
    return 1;
  }

  // The whole run (linking included) must end in time: a stream that never gets a cycle is a failure.
  static Client* self = &c;
  spa_source* timer = pw_loop_add_timer(
      loop,
      [](void*, uint64_t) {
        if (self->error.empty()) self->error = "timed out";
        pw_main_loop_quit(self->loop);
      },
      nullptr);
  timespec value{};
  value.tv_sec = time_t(timeout_s);
  value.tv_nsec = long((timeout_s - double(value.tv_sec)) * 1e9);
  pw_loop_update_timer(loop, timer, &value, nullptr, false);
  const auto quit = [](void*, int) { pw_main_loop_quit(self->loop); };
  pw_loop_add_signal(loop, SIGINT, quit, nullptr);
  pw_loop_add_signal(loop, SIGTERM, quit, nullptr);

  pw_main_loop_run(c.loop);
  pw_stream_destroy(c.stream);
  pw_main_loop_destroy(c.loop);
  pw_deinit();

  if (!c.finished) {
    std::fprintf(stderr, "pw-reference: FAIL %s (%llu of %llu periods played)\n",
                 c.error.empty() ? "stopped" : c.error.c_str(), (unsigned long long)c.used,
                 (unsigned long long)c.n_periods);
    return 1;
  }
  // Percentiles as canopy-snd's StreamStats::latency_percentile takes them.
  auto pct = [](std::vector<float> v, double p) {
    const size_t k = std::min(v.size() - 1, size_t(p * double(v.size())));
    std::nth_element(v.begin(), v.begin() + long(k), v.end());
    return v[k];
  };
  double sum = 0;
  for (float v : c.latency_ms) sum += v;
  std::vector<uint32_t> req = c.requested;
  std::nth_element(req.begin(), req.begin() + long(req.size() / 2), req.end());
  std::printf(
      "pw-reference: done periods=%zu latency_ms avg=%.2f p50=%.2f p99=%.2f max=%.2f pw_delay_ms_p50=%.2f "
      "requested_frames=%u underruns=%llu\n",
      c.latency_ms.size(), sum / double(c.latency_ms.size()), pct(c.latency_ms, 0.5), pct(c.latency_ms, 0.99),
      pct(c.latency_ms, 1.0), pct(c.pw_delay_ms, 0.5), req[req.size() / 2], (unsigned long long)c.underruns);
  return 0;
}
