// canopy-partition-tone: a guest partition that plays a sine through its virtio-snd device with the
// guest-drivers SndClient, for the audio policy test and the audio benchmark.
//   canopy-partition-tone [--hz 1000] [--ms 500] [--delay-ms 0] [--level-db -6] [--period-ms 10]
//                         [--periods 4] [--stream 0] [--channels 2] [--rate 48000]
//                         [--start-after-file PATH] [--until-file PATH]
// Waits --delay-ms after the device is up (or, with --start-after-file, until PATH exists: an event
// from the test), pre-buffers --periods periods, starts, keeps the buffer full until --ms of tone were
// written (or, with --until-file, until PATH exists), drains, stops and releases. Waits for
// completions with a 30 s hang guard. Prints
//   tone: started at T ms / tone: done periods=N latency_ms avg=A p50=.. p99=.. max=M (write -> heard:
//   write -> completion plus the host delay in latency_bytes) late_completions=G
// and exits 0, or prints "tone: FAIL ..." and exits 1.
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "canopy/guest/partition.h"
#include "canopy/guest/snd_client.h"

using namespace canopy;
using namespace canopy::guest;

namespace {

uint64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

int fail(const char* what, const char* detail = "") {
  std::fprintf(stderr, "tone: FAIL %s %s\n", what, detail);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  double hz = 1000, ms = 500, delay_ms = 0, level_db = -6, period_ms = 10;
  uint32_t periods = 4, stream = 0, channels = 2, rate = 48000;
  std::string start_file, until_file;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const double v = std::atof(argv[i + 1]);
    if (k == "--start-after-file") start_file = argv[i + 1];
    else if (k == "--until-file") until_file = argv[i + 1];
    else if (k == "--hz") hz = v;
    else if (k == "--ms") ms = v;
    else if (k == "--delay-ms") delay_ms = v;
    else if (k == "--level-db") level_db = v;
    else if (k == "--period-ms") period_ms = v;
    else if (k == "--periods") periods = uint32_t(v);
    else if (k == "--stream") stream = uint32_t(v);
    else if (k == "--channels") channels = uint32_t(v);
    else if (k == "--rate") rate = uint32_t(v);
    else return fail("unknown option", argv[i]);
  }
  constexpr int kGuardMs = 30000;  // hang guards: every wait ends on an event
  auto p = Partition::attach(kGuardMs);
  if (!p.ok()) return fail("attach", p.error().what);
  Partition& part = **p;
  auto dev = part.find_device(sndp::kDeviceId);
  if (!dev.ok()) return fail("no virtio-snd device");
  auto t = part.transport(*dev);
  SndClient::Options o;
  o.timeout_ms = kGuardMs;
  auto area = part.alloc(SndClient::kAreaBytes);
  if (!area.ok()) return fail("alloc");
  o.area = *area;
  auto sc = SndClient::create(*t, part.memory(), o);
  if (!sc.ok()) return fail("device init", sc.error().what);
  SndClient& s = **sc;
  const uint32_t frames = uint32_t(std::lround(period_ms * rate / 1000.0));
  const uint32_t period = frames * channels * 2;
  if (!s.set_params(stream, periods * period, period, uint8_t(channels), sndp::Format::kS16, rate).ok())
    return fail("SET_PARAMS", sndp::code_name(s.last_status()));
  if (!s.prepare(stream).ok()) return fail("PREPARE", sndp::code_name(s.last_status()));
  const uint64_t t0 = now_ms();
  auto waiting = [&] {
    return start_file.empty() ? now_ms() - t0 < uint64_t(delay_ms) : access(start_file.c_str(), F_OK) != 0;
  };
  while (waiting()) {
    if (!start_file.empty() && now_ms() - t0 > uint64_t(4 * kGuardMs)) return fail("no", start_file.c_str());
    (void)part.heartbeat(1);
    struct timespec d{0, 5'000'000};
    nanosleep(&d, nullptr);
  }
  // --until-file: no length of its own; the end is set once the file exists.
  const uint64_t total = until_file.empty() ? uint64_t(ms * rate / 1000.0) : UINT64_MAX;
  const double amp = std::pow(10.0, level_db / 20.0);
  uint64_t phase = 0;
  std::vector<uint8_t> buf(period);
  auto next_period = [&] {
    for (uint32_t f = 0; f < frames; ++f, ++phase) {
      const double v = phase < total ? amp * std::sin(2.0 * M_PI * hz * double(phase) / rate) : 0.0;
      const int16_t x = int16_t(std::lround(v * 32767.0));
      for (uint32_t c = 0; c < channels; ++c) std::memcpy(&buf[(f * channels + c) * 2], &x, 2);
    }
    return s.write(stream, buf);
  };
  uint64_t n_periods = until_file.empty() ? (total + frames - 1) / frames : UINT64_MAX;
  uint64_t written = 0, done = 0;
  for (; written < std::min<uint64_t>(periods, n_periods); ++written)
    if (!next_period().ok()) return fail("write");
  if (!s.start(stream).ok()) return fail("START", sndp::code_name(s.last_status()));
  std::fprintf(stderr, "tone: started at %llu ms (%.0f Hz, %.0f ms, period %u frames)\n",
               (unsigned long long)(now_ms() - t0), hz, until_file.empty() ? ms : -1.0, frames);
  std::vector<double> lat;
  uint64_t gaps = 0, last_done_ms = now_ms();
  while (done < n_periods) {
    auto c = s.next_tx(kGuardMs);
    if (!c.ok()) return fail("tx completion", c.error().what);
    ++done;
    if (c->status != uint32_t(sndp::Code::kOk)) return fail("tx status", sndp::code_name(c->status));
    // Write -> heard: in the device until the host took it, then the host's own delay.
    lat.push_back((c->completed_ns - c->submitted_ns) / 1e6 + c->host_delay_ms(channels * 2.0 * rate / 1000.0));
    // Completions further apart than two periods: the device had to play silence in between.
    const uint64_t n = now_ms();
    if (n - last_done_ms > uint64_t(2 * period_ms) && done > 1) ++gaps;
    last_done_ms = n;
    if (!until_file.empty() && n_periods == UINT64_MAX && access(until_file.c_str(), F_OK) == 0) n_periods = written;
    if (written < n_periods) {
      if (!next_period().ok()) return fail("write");
      ++written;
    }
    (void)part.heartbeat(done);
  }
  (void)s.drain_tx(kGuardMs);
  (void)s.stop(stream);
  (void)s.release(stream);
  std::sort(lat.begin(), lat.end());
  double sum = 0;
  for (double v : lat) sum += v;
  auto pct = [&](double q) { return lat.empty() ? 0.0 : lat[std::min(lat.size() - 1, size_t(q * lat.size()))]; };
  std::fprintf(stderr, "tone: done periods=%llu latency_ms avg=%.2f p50=%.2f p99=%.2f max=%.2f late_completions=%llu\n",
               (unsigned long long)done, lat.empty() ? 0 : sum / lat.size(), pct(0.5), pct(0.99),
               lat.empty() ? 0 : lat.back(), (unsigned long long)gaps);
  // Stay up (heartbeating) until the VMM stops us: the test reads the sink meanwhile.
  for (;;) {
    (void)part.heartbeat(done);
    struct timespec d{0, 100'000'000};
    nanosleep(&d, nullptr);
  }
}
