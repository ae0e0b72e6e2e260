// canopy-partition-snd-check: a guest partition that drives its virtio-snd device (canopy-snd behind
// canopy-vmm, null host) through the guest-drivers SndClient and checks every request and error code a
// guest can reach: queries (with the CVE-2026-3196 overflow values), the PCM state machine (every
// invalid transition is BAD_MSG), parameters, controls, a 1 s playback tone (canopy_partition_test
// checks the WAV file the null host recorded), an XRUN event, capture of the host's 440 Hz tone, and
// RELEASE handing back pending buffers. Prints "snd-check: ok NAME" / "snd-check: FAIL NAME: ..." and
// "snd-check: done OK FAILED"; exits 0 only when nothing failed.
// Expects streams 0 "music" (output, 2 ch, 48 kHz) and 1 "mic" (input, 1 ch, 48 kHz) and one jack.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "canopy/audio/wav.h"
#include "canopy/guest/partition.h"
#include "canopy/guest/snd_client.h"

using namespace canopy;
using namespace canopy::guest;
using sndp::Code;

namespace {

int ok_count = 0, fail_count = 0;

// Hang guards: every wait below ends on an event (a completion, an event, a reply) in milliseconds on
// an idle machine; these limits only stop a partition that would otherwise hang.
constexpr int kGuardMs = 30000;

void report(bool ok, const char* name, const std::string& detail = "") {
  if (ok) {
    ++ok_count;
    std::fprintf(stderr, "snd-check: ok %s\n", name);
  } else {
    ++fail_count;
    std::fprintf(stderr, "snd-check: FAIL %s: %s\n", name, detail.c_str());
  }
}

void expect_status(const char* name, uint32_t got, Code want) {
  report(got == uint32_t(want), name,
         std::string("got ") + sndp::code_name(got) + ", want " + sndp::code_name(uint32_t(want)));
}

uint32_t status_of(const Status& s, SndClient& c) { return s.ok() ? uint32_t(Code::kOk) : c.last_status(); }

uint32_t query(SndClient& c, Code code, uint32_t start, uint32_t count, uint32_t size, uint32_t payload) {
  sndp::QueryInfo q{};
  q.hdr.code = uint32_t(code);
  q.start_id = start;
  q.count = count;
  q.size = size;
  auto r = c.call_obj(q, payload);
  return r.ok() ? *r : 0;
}

std::vector<uint8_t> tone_period(double hz, uint64_t& phase, uint32_t frames, uint32_t channels) {
  std::vector<uint8_t> b(frames * channels * 2);
  for (uint32_t f = 0; f < frames; ++f, ++phase) {
    const int16_t v = int16_t(std::lround(0.5 * 32767 * std::sin(2 * M_PI * hz * double(phase) / 48000)));
    for (uint32_t c = 0; c < channels; ++c) std::memcpy(&b[(f * channels + c) * 2], &v, 2);
  }
  return b;
}

}  // namespace

int main() {
  auto p = Partition::attach(kGuardMs);
  if (!p.ok()) {
    std::fprintf(stderr, "snd-check: attach failed: %s\n", p.error().what);
    return 2;
  }
  Partition& part = **p;
  auto dev = part.find_device(sndp::kDeviceId);
  if (!dev.ok()) {
    std::fprintf(stderr, "snd-check: no virtio-snd device\n");
    return 2;
  }
  auto t = part.transport(*dev);
  SndClient::Options o;
  o.timeout_ms = kGuardMs;
  auto area = part.alloc(SndClient::kAreaBytes);
  if (!area.ok()) return 2;
  o.area = *area;
  auto sc = SndClient::create(*t, part.memory(), o);
  if (!sc.ok()) {
    std::fprintf(stderr, "snd-check: device init failed: %s\n", sc.error().what);
    return 2;
  }
  SndClient& s = **sc;
  (void)part.heartbeat(1);

  // --- features, config, queries ---
  report(s.has_feature(sndp::kFCtls), "feature CTLS negotiated");
  auto cfg = s.config();
  report(cfg.ok() && cfg->jacks.get() == 1 && cfg->streams.get() == 2 && cfg->chmaps.get() == 2 &&
             cfg->controls.get() == 4,
         "config: 1 jack, 2 streams, 2 chmaps, 4 controls");
  auto pcm = s.pcm_info();
  report(pcm.ok() && pcm->size() == 2 && (*pcm)[0].direction == 0 && (*pcm)[0].channels_max == 2 &&
             (*pcm)[1].direction == 1 && (*pcm)[1].channels_max == 1 && ((*pcm)[0].rates.get() >> 7 & 1),
         "PCM_INFO: music output 2 ch, mic input 1 ch, 48 kHz");
  auto jacks = s.jack_info();
  report(jacks.ok() && jacks->size() == 1 && (*jacks)[0].connected == 1, "JACK_INFO: one connected jack");
  auto maps = s.chmap_info();
  report(maps.ok() && maps->size() == 2 && (*maps)[0].channels == 2 &&
             (*maps)[0].positions[0] == uint8_t(sndp::Pos::kFl) && (*maps)[1].positions[0] == uint8_t(sndp::Pos::kMono),
         "CHMAP_INFO: FL FR and MONO");
  auto ctls = s.ctl_info();
  report(ctls.ok() && ctls->size() == 4 &&
             std::string(reinterpret_cast<const char*>((*ctls)[0].name)) == "music Playback Volume" &&
             std::string(reinterpret_cast<const char*>((*ctls)[3].name)) == "mic Capture Switch",
         "CTL_INFO: volume and switch per stream");

  // --- errors a guest can cause ---
  expect_status("PCM_INFO count 0x80000000 size 2 (CVE-2026-3196)", query(s, Code::kPcmInfo, 0, 0x80000000u, 2, 64),
                Code::kBadMsg);
  expect_status("PCM_INFO start 1 count 0xffffffff", query(s, Code::kPcmInfo, 1, 0xffffffffu, 32, 64), Code::kBadMsg);
  expect_status("PCM_INFO start_id == streams", query(s, Code::kPcmInfo, 2, 1, 32, 32), Code::kBadMsg);
  expect_status("PCM_INFO size below the struct", query(s, Code::kPcmInfo, 0, 1, 16, 32), Code::kBadMsg);
  expect_status("PCM_INFO response too short", query(s, Code::kPcmInfo, 0, 2, 32, 40), Code::kBadMsg);
  expect_status("JACK_INFO count 2", query(s, Code::kJackInfo, 0, 2, 24, 48), Code::kBadMsg);
  expect_status("CHMAP_INFO count 0xffffffff size 0", query(s, Code::kChmapInfo, 0, 0xffffffffu, 0, 64), Code::kBadMsg);
  {
    sndp::Hdr h{};
    h.code = 0x0999;
    auto r = s.call_obj(h);
    expect_status("an unknown request", r.ok() ? *r : 0, Code::kNotSupp);
  }
  expect_status("PCM_START on stream 7", status_of(s.start(7), s), Code::kBadMsg);
  expect_status("PCM_PREPARE before SET_PARAMS", status_of(s.prepare(0), s), Code::kBadMsg);
  expect_status("PCM_START before PREPARE", status_of(s.start(0), s), Code::kBadMsg);
  expect_status("PCM_RELEASE before PREPARE", status_of(s.release(0), s), Code::kBadMsg);
  expect_status("SET_PARAMS 3 channels", status_of(s.set_params(0, 7680, 1920, 3, sndp::Format::kS16, 48000), s),
                Code::kBadMsg);
  expect_status("SET_PARAMS 44100 Hz (not offered)",
                status_of(s.set_params(0, 7680, 1920, 2, sndp::Format::kS16, 44100), s), Code::kBadMsg);
  expect_status("SET_PARAMS format S8", status_of(s.set_params(0, 7680, 1920, 2, sndp::Format::kS8, 48000), s),
                Code::kBadMsg);
  expect_status("SET_PARAMS buffer not whole periods",
                status_of(s.set_params(0, 7681, 1920, 2, sndp::Format::kS16, 48000), s), Code::kBadMsg);
  expect_status("SET_PARAMS MSG_POLLING (not offered)",
                status_of(s.set_params(0, 7680, 1920, 2, sndp::Format::kS16, 48000, sndp::kPcmFMsgPolling), s),
                Code::kBadMsg);

  // --- controls ---
  report(s.ctl_write(0, 80).ok() && s.ctl_read(0).ok() && *s.ctl_read(0) == 80, "CTL_WRITE / CTL_READ volume 80");
  expect_status("CTL_WRITE volume 101", status_of(s.ctl_write(0, 101), s), Code::kBadMsg);
  expect_status("CTL_READ control 9", s.ctl_read(9).ok() ? uint32_t(Code::kOk) : s.last_status(), Code::kBadMsg);
  report(s.ctl_write(0, 100).ok(), "volume back to 100 (0 dB)");

  // --- a buffer before PREPARE: handed back with IO_ERR ---
  {
    std::vector<uint8_t> b(1920, 0);
    report(s.write(0, b).ok(), "tx buffer queued before PREPARE");
    auto c = s.next_tx(kGuardMs);
    expect_status("tx before PREPARE", c.ok() ? c->status : 0, Code::kIoErr);
  }

  // --- playback: 1 s of 1 kHz at -6 dBFS in 10 ms periods, 4 queued ahead ---
  constexpr uint32_t kFrames = 480, kPeriod = kFrames * 4;
  report(s.set_params(0, 4 * kPeriod, kPeriod, 2, sndp::Format::kS16, 48000).ok(),
         "SET_PARAMS music 48 kHz S16 stereo");
  report(s.prepare(0).ok(), "PCM_PREPARE music");
  uint64_t phase = 0;
  int written = 0, completed = 0, bad_status = 0;
  uint32_t max_latency = 0;
  for (; written < 4; ++written) (void)s.write(0, tone_period(1000, phase, kFrames, 2));
  report(s.start(0).ok(), "PCM_START music");
  expect_status("PCM_START twice", status_of(s.start(0), s), Code::kBadMsg);
  expect_status("SET_PARAMS while started",
                status_of(s.set_params(0, 4 * kPeriod, kPeriod, 2, sndp::Format::kS16, 48000), s), Code::kBadMsg);
  while (completed < 100) {
    auto c = s.next_tx(kGuardMs);
    if (!c.ok()) break;
    ++completed;
    bad_status += c->status != uint32_t(Code::kOk);
    max_latency = std::max(max_latency, c->latency_bytes);
    if (written < 100) {
      (void)s.write(0, tone_period(1000, phase, kFrames, 2));
      ++written;
    }
    (void)part.heartbeat(uint64_t(completed));
  }
  report(completed == 100 && bad_status == 0, "100 playback periods completed with S_OK",
         std::to_string(completed) + " completed, " + std::to_string(bad_status) + " not OK");
  report(max_latency > 0 && max_latency <= 5 * kPeriod, "latency_bytes reported (at most the buffer + a period)",
         std::to_string(max_latency));
  report(s.stop(0).ok(), "PCM_STOP music");
  report(s.release(0).ok(), "PCM_RELEASE music");
  expect_status("PCM_STOP after RELEASE", status_of(s.stop(0), s), Code::kBadMsg);

  // --- an underrun with EVT_XRUNS negotiated: the device reports it ---
  report(s.set_params(0, 4 * kPeriod, kPeriod, 2, sndp::Format::kS16, 48000, sndp::kPcmFEvtXruns).ok(),
         "SET_PARAMS with EVT_XRUNS");
  report(s.prepare(0).ok() && s.start(0).ok(), "PCM_PREPARE + PCM_START with no data");
  bool xrun = false;
  const auto xrun_end = std::chrono::steady_clock::now() + std::chrono::milliseconds(kGuardMs);
  while (!xrun && std::chrono::steady_clock::now() < xrun_end)
    for (const auto& e : s.take_events(100))
      xrun |= e.hdr.code.get() == uint32_t(Code::kEvtPcmXrun) && e.data.get() == 0;
  report(xrun, "EVT_PCM_XRUN for stream 0");
  report(s.stop(0).ok() && s.release(0).ok(), "PCM_STOP + PCM_RELEASE after the underrun");

  // --- capture: the null host's 440 Hz tone, 0.5 s in 10 ms periods ---
  constexpr uint32_t kMicPeriod = kFrames * 2;
  report(s.set_params(1, 4 * kMicPeriod, kMicPeriod, 1, sndp::Format::kS16, 48000).ok(),
         "SET_PARAMS mic 48 kHz S16 mono");
  report(s.prepare(1).ok() && s.queue_reads(1, kMicPeriod, 4).ok() && s.start(1).ok(),
         "mic: PREPARE, 4 buffers, START");
  audio::Audio heard;
  heard.rate = 48000;
  heard.channels = 1;
  int periods = 0, short_reads = 0;
  while (periods < 50) {
    auto c = s.next_rx(kGuardMs);
    if (!c.ok()) break;
    ++periods;
    short_reads += c->bytes != kMicPeriod || c->status != uint32_t(Code::kOk);
    for (size_t i = 0; i + 1 < c->data.size(); i += 2) {
      int16_t v;
      std::memcpy(&v, &c->data[i], 2);
      heard.samples.push_back(float(v) / 32768.0f);
    }
    (void)s.queue_reads(1, kMicPeriod, 1);
  }
  report(periods == 50 && short_reads == 0, "50 full capture periods",
         std::to_string(periods) + " periods, " + std::to_string(short_reads) + " short or failed");
  const audio::ToneReport tone = audio::analyze_tone(heard, 0);
  char detail[128];
  std::snprintf(detail, sizeof detail, "found %d, %.1f Hz at %.2f dB, %zu gaps", tone.found, tone.hz, tone.level_db,
                tone.gaps);
  report(tone.found && std::abs(tone.hz - 440) < 3 && std::abs(tone.level_db + 6) < 0.5 && tone.gaps == 0,
         "capture hears the host's 440 Hz tone at -6 dBFS, no gaps", detail);
  report(s.stop(1).ok(), "PCM_STOP mic");
  const uint32_t pending = s.rx_in_flight();
  report(s.release(1).ok(), "PCM_RELEASE mic");
  // Every pending buffer comes back (each one an event); how soon is the device's business.
  int returned = 0;
  while (returned < int(pending) && s.next_rx(kGuardMs).ok()) ++returned;
  report(pending > 0 && returned == int(pending) && s.rx_in_flight() == 0,
         "RELEASE handed every pending capture buffer back",
         std::to_string(returned) + " of " + std::to_string(pending));

  std::fprintf(stderr, "snd-check: done %d %d\n", ok_count, fail_count);
  return fail_count == 0 ? 0 : 1;
}
