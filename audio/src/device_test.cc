#include <gtest/gtest.h>

#include <cmath>

#include "canopy/audio/policy.h"
#include "snd_test_util.h"

namespace canopy::audio {
namespace {

using proto::Code;
using testing::Harness;
using transport::Segment;

constexpr uint32_t kOk = uint32_t(Code::kOk), kBad = uint32_t(Code::kBadMsg), kNotSupp = uint32_t(Code::kNotSupp),
                   kIoErr = uint32_t(Code::kIoErr);
constexpr uint8_t k48k = 7;

// A 48 kHz stereo S16 stream with 4 periods of 480 frames (10 ms).
constexpr uint32_t kPeriod = 480 * 4, kBuffer = 4 * kPeriod;

void prepare_music(Harness& h, uint32_t features = 0) {
  ASSERT_EQ(h.set_params(0, kBuffer, kPeriod, 2, proto::Format::kS16, k48k, features), kOk);
  ASSERT_EQ(h.pcm(Code::kPcmPrepare, 0), kOk);
}

std::vector<uint8_t> ramp_bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(seed + i * 7);
  return v;
}

TEST(SndDevice, ConfigCountsJacksStreamsChmapsAndControls) {
  Harness h;
  const proto::Config c = h.dev->config();
  EXPECT_EQ(c.jacks.get(), 1u);
  EXPECT_EQ(c.streams.get(), 2u);
  EXPECT_EQ(c.chmaps.get(), 2u);
  EXPECT_EQ(c.controls.get(), 4u);
  EXPECT_EQ(h.dev->config_bytes(), 16u);
  EXPECT_EQ(h.dev->offered_features(), proto::kFCtls);
  SndOptions o = Harness::default_options();
  o.controls = false;
  Harness n(o);
  EXPECT_EQ(n.dev->config_bytes(), 12u);
  EXPECT_EQ(n.dev->offered_features(), 0u);
}

// QEMU's vhost-user-snd sizes its config space without the controls field unless it is given
// controls=on, yet passes whatever the back-end offers through: a device that offered CTLS by default
// made Linux read 0xffffffff controls there and fail to probe (-ENOMEM). Controls are asked for.
TEST(SndDevice, OffersControlsOnlyWhenAskedAsQemusDefaultSizesNoControlsField) {
  EXPECT_FALSE(SndOptions{}.controls);
  SndOptions o = Harness::default_options();
  o.controls = SndOptions{}.controls;
  Harness d(o);
  EXPECT_EQ(d.dev->offered_features() & proto::kFCtls, 0u);
  EXPECT_EQ(d.dev->config_bytes(), proto::kConfigBytesNoCtls);
}

TEST(SndDevice, PcmInfoDescribesEveryStream) {
  Harness h;
  proto::QueryInfo q{};
  q.hdr.code = uint32_t(Code::kPcmInfo);
  q.count = 2;
  q.size = sizeof(proto::PcmInfo);
  auto r = h.control(q, 2 * sizeof(proto::PcmInfo));
  ASSERT_EQ(r.code, kOk);
  EXPECT_EQ(r.used, 4 + 2 * sizeof(proto::PcmInfo));
  auto out = h.get_obj<proto::PcmInfo>(r.payload_gpa);
  auto in = h.get_obj<proto::PcmInfo>(r.payload_gpa + sizeof(proto::PcmInfo));
  EXPECT_EQ(out.hdr.hda_fn_nid.get(), 0u);
  EXPECT_EQ(out.direction, 0);
  EXPECT_EQ(out.channels_min, 1);
  EXPECT_EQ(out.channels_max, 2);
  EXPECT_EQ(out.formats.get(), default_formats());
  EXPECT_EQ(out.rates.get(), 1u << 7);
  EXPECT_EQ(out.features.get(), proto::kPcmFEvtXruns | proto::kPcmFEvtShmemPeriods);
  EXPECT_EQ(in.direction, 1);
  EXPECT_EQ(in.channels_max, 1);
  EXPECT_EQ(in.rates.get(), (1u << 3) | (1u << 7));
  for (uint8_t b : out.padding) EXPECT_EQ(b, 0);
}

TEST(SndDevice, JackAndChmapInfo) {
  Harness h;
  proto::QueryInfo q{};
  q.hdr.code = uint32_t(Code::kJackInfo);
  q.count = 1;
  q.size = sizeof(proto::JackInfo);
  auto r = h.control(q, sizeof(proto::JackInfo));
  ASSERT_EQ(r.code, kOk);
  auto j = h.get_obj<proto::JackInfo>(r.payload_gpa);
  EXPECT_EQ(j.connected, 1);
  EXPECT_EQ((j.hda_reg_defconf.get() >> 20) & 0xf, proto::kHdaDevSpeaker);
  EXPECT_TRUE(j.hda_reg_caps.get() & proto::kHdaCapPresenceDetect);
  q.hdr.code = uint32_t(Code::kChmapInfo);
  q.count = 2;
  q.size = sizeof(proto::ChmapInfo);
  r = h.control(q, 2 * sizeof(proto::ChmapInfo));
  ASSERT_EQ(r.code, kOk);
  auto m0 = h.get_obj<proto::ChmapInfo>(r.payload_gpa);
  auto m1 = h.get_obj<proto::ChmapInfo>(r.payload_gpa + sizeof(proto::ChmapInfo));
  EXPECT_EQ(m0.channels, 2);
  EXPECT_EQ(m0.positions[0], uint8_t(proto::Pos::kFl));
  EXPECT_EQ(m0.positions[1], uint8_t(proto::Pos::kFr));
  EXPECT_EQ(m1.direction, 1);
  EXPECT_EQ(m1.positions[0], uint8_t(proto::Pos::kMono));
  // JACK_REMAP: accepted for an existing jack only.
  proto::JackRemap rm{};
  rm.hdr.hdr.code = uint32_t(Code::kJackRemap);
  rm.hdr.jack_id = 0;
  EXPECT_EQ(h.control(rm).code, kOk);
  rm.hdr.jack_id = 1;
  EXPECT_EQ(h.control(rm).code, kBad);
}

// CVE-2026-3196: a guest-supplied count that overflows start_id + count or count * size must not size
// anything; each of these gets BAD_MSG.
TEST(SndDevice, QueryCountsThatOverflowAreRefusedCve2026_3196) {
  Harness h;
  for (Code c : {Code::kPcmInfo, Code::kJackInfo, Code::kChmapInfo, Code::kCtlInfo}) {
    const uint32_t sz = c == Code::kCtlInfo ? 96 : c == Code::kPcmInfo ? 32 : 24;
    SCOPED_TRACE(proto::code_name(uint32_t(c)));
    EXPECT_EQ(h.query(c, 0, 0x80000000u, 2, 64), kBad);   // count * size wraps to 0 in 32 bits
    EXPECT_EQ(h.query(c, 0, 0xffffffffu, 0, 64), kBad);   // size 0
    EXPECT_EQ(h.query(c, 1, 0xffffffffu, sz, 64), kBad);  // start + count wraps to 0
    EXPECT_EQ(h.query(c, 0x7fffffffu, 0x80000002u, sz, 64), kBad);
    EXPECT_EQ(h.query(c, h.dev->config().streams.get() + 5, 1, sz, 64), kBad);  // start past the end
    EXPECT_EQ(h.query(c, 0, 1, sz - 1, 64), kBad);                              // items smaller than the struct
    EXPECT_EQ(h.query(c, 0, 1, 0x10000000u, 64), kBad);                         // absurd item size
    EXPECT_EQ(h.query(c, 0, 1, sz, sz - 1), kBad);                              // response buffer too short
    EXPECT_EQ(h.query(c, 0, 1, sz, sz), kOk);
  }
  EXPECT_EQ(h.query(Code::kPcmInfo, 2, 1, 32, 32), kBad);  // start_id == streams
  EXPECT_EQ(h.query(Code::kPcmInfo, 2, 0, 32, 0), kOk);    // an empty query at the end is fine
  // A larger item size is a stride: each item zero-padded.
  EXPECT_EQ(h.query(Code::kPcmInfo, 0, 2, 40, 80), kOk);
}

TEST(SndDevice, MalformedControlRequestsGetBadMsgOrNotSupp) {
  Harness h;
  uint8_t two[2] = {1, 1};
  EXPECT_EQ(h.control_bytes(two, 2, 0).code, kBad);  // shorter than a header
  proto::Hdr unknown{};
  unknown.code = 0x4242;
  EXPECT_EQ(h.control(unknown).code, kNotSupp);
  proto::Hdr short_pcm{};
  short_pcm.code = uint32_t(Code::kPcmStart);
  EXPECT_EQ(h.control(short_pcm).code, kBad);  // no stream id
  EXPECT_EQ(h.pcm(Code::kPcmStart, 2), kBad);  // no such stream
  EXPECT_EQ(h.pcm(Code::kPcmStart, 0xffffffffu), kBad);
  // No room for even the status header: nothing written.
  proto::PcmHdr p{};
  p.hdr.code = uint32_t(Code::kPcmStop);
  EXPECT_EQ(h.control_bytes(&p, sizeof p, 0, 3).used, 0u);
}

TEST(SndDevice, SetParamsValidatesEveryField) {
  Harness h;
  using F = proto::Format;
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 2, F::kS16, k48k), kOk);
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 3, F::kS16, k48k), kBad);          // channels > max
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 0, F::kS16, k48k), kBad);          // channels < min
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 2, F::kS8, k48k), kBad);           // format not offered
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 2, F(200), k48k), kBad);           // no such format
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 2, F::kS16, 6), kBad);             // 44100 not offered here
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 2, F::kS16, 14), kBad);            // no such rate
  EXPECT_EQ(h.set_params(0, kBuffer, 0, 2, F::kS16, k48k), kBad);                // period 0
  EXPECT_EQ(h.set_params(0, 0, kPeriod, 2, F::kS16, k48k), kBad);                // buffer 0
  EXPECT_EQ(h.set_params(0, kBuffer + 4, kPeriod, 2, F::kS16, k48k), kBad);      // buffer not whole periods
  EXPECT_EQ(h.set_params(0, 4 * 1002, 1002, 2, F::kS16, k48k), kBad);            // period not whole frames
  EXPECT_EQ(h.set_params(0, 0xfffffff0u, 0x3ffffffcu, 2, F::kS16, k48k), kBad);  // buffer above the cap
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 2, F::kS16, k48k, proto::kPcmFMsgPolling), kBad);  // not offered
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 2, F::kS16, k48k, proto::kPcmFShmemHost), kBad);
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 2, F::kS16, k48k, proto::kPcmFEvtXruns), kOk);
  EXPECT_EQ(h.set_params(1, 4 * 640, 640, 1, F::kS32, 3), kOk);  // the mic at 16 kHz, S32
}

TEST(SndDevice, TheSpecsStateMachineAndBadMsgForEveryInvalidTransition) {
  Harness h;
  EXPECT_EQ(h.pcm(Code::kPcmPrepare, 0), kBad);  // no parameters yet
  EXPECT_EQ(h.pcm(Code::kPcmStart, 0), kBad);
  EXPECT_EQ(h.pcm(Code::kPcmStop, 0), kBad);
  EXPECT_EQ(h.pcm(Code::kPcmRelease, 0), kBad);
  prepare_music(h);
  EXPECT_STREQ(h.dev->state_name(0), "prepared");
  EXPECT_EQ(h.pcm(Code::kPcmPrepare, 0), kOk);  // PREPARE may repeat
  EXPECT_EQ(h.pcm(Code::kPcmStop, 0), kBad);
  EXPECT_EQ(h.pcm(Code::kPcmStart, 0), kOk);
  EXPECT_EQ(h.pcm(Code::kPcmStart, 0), kBad);
  EXPECT_EQ(h.pcm(Code::kPcmPrepare, 0), kBad);
  EXPECT_EQ(h.pcm(Code::kPcmRelease, 0), kBad);
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 2, proto::Format::kS16, k48k), kBad);
  EXPECT_EQ(h.pcm(Code::kPcmStop, 0), kOk);
  EXPECT_EQ(h.pcm(Code::kPcmStop, 0), kBad);
  EXPECT_EQ(h.pcm(Code::kPcmStart, 0), kOk);  // STOP -> START (pause / resume)
  EXPECT_EQ(h.pcm(Code::kPcmStop, 0), kOk);
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 2, proto::Format::kS16, k48k), kBad);
  EXPECT_EQ(h.pcm(Code::kPcmRelease, 0), kOk);
  EXPECT_EQ(h.pcm(Code::kPcmStart, 0), kBad);
  EXPECT_EQ(h.pcm(Code::kPcmRelease, 0), kBad);
  EXPECT_EQ(h.pcm(Code::kPcmPrepare, 0), kOk);  // RELEASE -> PREPARE
  EXPECT_EQ(h.pcm(Code::kPcmRelease, 0), kOk);
  EXPECT_EQ(h.set_params(0, kBuffer, kPeriod, 1, proto::Format::kS16, k48k), kOk);  // RELEASE -> SET_PARAMS
  const std::vector<std::string> want = {"prepare 0 48000", "prepare 0 48000", "start 0",         "stop 0",   "start 0",
                                         "stop 0",          "release 0",       "prepare 0 48000", "release 0"};
  EXPECT_EQ(h.host.log, want);
  // The host refusing the parameters is an I/O error, and the stream stays where it was.
  h.host.refuse_prepare = true;
  EXPECT_EQ(h.pcm(Code::kPcmPrepare, 0), kIoErr);
  EXPECT_STREQ(h.dev->state_name(0), "params-set");
}

// A guest can make the host refuse its parameters as often as it likes (PCM_PREPARE in a loop): the
// warning that says so is rate limited (a burst of 10 a second, then a count; 50 allows for a slow run),
// so the guest cannot flood canopy-snd's log. Before, each of the 200 requests below wrote a line.
TEST(SndDevice, AGuestCannotFloodTheLogWithHostRefusedPrepares) {
  Harness h;
  ASSERT_EQ(h.set_params(0, kBuffer, kPeriod, 2, proto::Format::kS16, k48k), kOk);
  h.host.refuse_prepare = true;
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 200; ++i) ASSERT_EQ(h.pcm(Code::kPcmPrepare, 0), kIoErr);
  const std::string err = ::testing::internal::GetCapturedStderr();
  size_t lines = 0;
  for (size_t at = 0; (at = err.find("refused the parameters", at)) != std::string::npos; ++at) ++lines;
  EXPECT_GE(lines, 1u) << err;  // it is still said
  EXPECT_LE(lines, 50u) << lines << " warnings for 200 refused PREPAREs";
}

TEST(SndDevice, PlaybackBuffersCompleteWhenTheHostTookThemWithLatency) {
  Harness h;
  h.host.delay = 100;  // frames
  prepare_music(h);
  std::vector<std::vector<uint8_t>> periods;
  std::vector<Harness::Io> ios;
  for (int i = 0; i < 3; ++i) {
    periods.push_back(ramp_bytes(kPeriod, uint8_t(i * 50)));
    ios.push_back(h.tx(0, periods.back()));
    EXPECT_EQ(ios.back().result, SndDevice::kHeld);  // pre-buffered before START
  }
  StreamIo* io = h.dev->stream_io(0);
  std::vector<uint8_t> got(kPeriod * 3 / 2);
  EXPECT_EQ(io->pull(got.data(), got.size()), 0u);  // not started: nothing taken
  ASSERT_EQ(h.pcm(Code::kPcmStart, 0), kOk);
  EXPECT_TRUE(h.done.empty());
  ASSERT_EQ(io->pull(got.data(), got.size()), got.size());
  // Period 0 taken whole (completed), period 1 half: only the first is back.
  ASSERT_EQ(h.done.size(), 1u);
  EXPECT_EQ(h.done[0].queue, proto::kTxQ);
  EXPECT_EQ(h.done[0].head, ios[0].head);
  EXPECT_EQ(h.done[0].used, 8u);
  auto st = h.get_obj<proto::PcmStatus>(ios[0].status_gpa);
  EXPECT_EQ(st.status.get(), kOk);
  // Latency when it completed: the two periods queued behind it + the host's delay (100 frames of 4 bytes).
  EXPECT_EQ(st.latency_bytes.get(), kPeriod * 2 + 400);
  EXPECT_TRUE(std::equal(periods[0].begin(), periods[0].end(), got.begin()));
  EXPECT_TRUE(std::equal(periods[1].begin(), periods[1].begin() + kPeriod / 2, got.begin() + kPeriod));
  // The rest, and one period more than there is: an underrun, no XRUN event (not negotiated).
  std::vector<uint8_t> rest(kPeriod * 2 + kPeriod);
  EXPECT_EQ(io->pull(rest.data(), rest.size()), kPeriod * 3 / 2);
  ASSERT_EQ(h.done.size(), 3u);
  EXPECT_EQ(h.dev->stats(0).underruns, 1u);
  EXPECT_EQ(h.dev->stats(0).underrun_frames, (kPeriod * 3 / 2) / 4u);  // the bytes it lacked, in 4-byte frames
  EXPECT_EQ(h.dev->stats(0).xrun_events, 0u);
  EXPECT_TRUE(std::equal(periods[2].begin(), periods[2].end(), rest.begin() + kPeriod / 2));
}

TEST(SndDevice, UnderrunsSendOneXrunEventPerEpisodeWhenNegotiated) {
  Harness h;
  h.event_buffer();
  h.event_buffer();
  prepare_music(h, proto::kPcmFEvtXruns);
  ASSERT_EQ(h.pcm(Code::kPcmStart, 0), kOk);
  StreamIo* io = h.dev->stream_io(0);
  std::vector<uint8_t> b(kPeriod);
  EXPECT_EQ(io->pull(b.data(), b.size()), 0u);
  EXPECT_EQ(io->pull(b.data(), b.size()), 0u);  // the same episode: no second event
  auto ev = h.events();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].hdr.code.get(), uint32_t(Code::kEvtPcmXrun));
  EXPECT_EQ(ev[0].data.get(), 0u);
  h.tx(0, ramp_bytes(kPeriod, 1));
  EXPECT_EQ(io->pull(b.data(), b.size()), kPeriod);  // data again: the episode ends
  EXPECT_EQ(io->pull(b.data(), b.size()), 0u);       // a new one
  EXPECT_EQ(h.events().size(), 2u);
  EXPECT_EQ(h.dev->stats(0).underruns, 3u);
}

TEST(SndDevice, PeriodElapsedEventsWhenNegotiated) {
  Harness h;
  for (int i = 0; i < 4; ++i) h.event_buffer();
  prepare_music(h, proto::kPcmFEvtShmemPeriods);
  for (int i = 0; i < 3; ++i) h.tx(0, ramp_bytes(kPeriod, uint8_t(i)));
  ASSERT_EQ(h.pcm(Code::kPcmStart, 0), kOk);
  std::vector<uint8_t> b(kPeriod * 5 / 2);
  ASSERT_EQ(h.dev->stream_io(0)->pull(b.data(), b.size()), b.size());
  auto ev = h.events();
  ASSERT_EQ(ev.size(), 2u);  // two and a half periods taken: two elapsed
  EXPECT_EQ(ev[0].hdr.code.get(), uint32_t(Code::kEvtPcmPeriodElapsed));
  EXPECT_EQ(ev[1].data.get(), 0u);
}

TEST(SndDevice, ReleaseReturnsEveryPendingBufferBeforeItIsAnswered) {
  Harness h;
  prepare_music(h);
  auto a = h.tx(0, ramp_bytes(kPeriod, 1));
  auto b = h.tx(0, ramp_bytes(kPeriod, 2));
  ASSERT_EQ(h.pcm(Code::kPcmStart, 0), kOk);
  ASSERT_EQ(h.pcm(Code::kPcmStop, 0), kOk);
  EXPECT_TRUE(h.done.empty());  // STOP keeps them
  ASSERT_EQ(h.pcm(Code::kPcmRelease, 0), kOk);
  ASSERT_EQ(h.done.size(), 2u);
  EXPECT_EQ(h.done[0].head, a.head);
  EXPECT_EQ(h.done[1].head, b.head);
  EXPECT_EQ(h.get_obj<proto::PcmStatus>(a.status_gpa).status.get(), kOk);
}

TEST(SndDevice, TxBuffersTheDeviceCannotUseComeBackAtOnce) {
  Harness h;
  // Before PREPARE: an I/O error.
  auto early = h.tx(0, ramp_bytes(16, 0));
  EXPECT_EQ(early.result, 8u);
  EXPECT_EQ(h.get_obj<proto::PcmStatus>(early.status_gpa).status.get(), kIoErr);
  prepare_music(h);
  // No xfer header (2 readable bytes): BAD_MSG.
  {
    const uint64_t r = h.alloc(2), s = h.alloc(8);
    std::vector<Segment> rs{{r, 2}}, ws{{s, 8}};
    EXPECT_EQ(h.dev->io(proto::kTxQ, {900, rs, ws}), 8u);
    EXPECT_EQ(h.get_obj<proto::PcmStatus>(s).status.get(), kBad);
  }
  EXPECT_EQ(h.get_obj<proto::PcmStatus>(h.tx(7, ramp_bytes(16, 0)).status_gpa).status.get(), kBad);  // no stream 7
  EXPECT_EQ(h.get_obj<proto::PcmStatus>(h.tx(1, ramp_bytes(16, 0)).status_gpa).status.get(),
            kBad);                                                                      // capture stream on txq
  EXPECT_EQ(h.get_obj<proto::PcmStatus>(h.tx(0, {}).status_gpa).status.get(), kIoErr);  // no payload
  EXPECT_EQ(h.get_obj<proto::PcmStatus>(h.tx(0, ramp_bytes(kBuffer + 4, 0)).status_gpa).status.get(),
            kIoErr);  // > buffer
  // No room for a status: handed back with nothing written.
  {
    const uint64_t r = h.put_obj(proto::PcmXfer{}), s = h.alloc(8);
    std::vector<Segment> rs{{r, 4}}, ws{{s, 7}};
    EXPECT_EQ(h.dev->io(proto::kTxQ, {901, rs, ws}), 0u);
    std::vector<Segment> none;
    EXPECT_EQ(h.dev->io(proto::kTxQ, {902, rs, none}), 0u);
  }
  // A payload pointing outside guest memory fails when the host reads it, without a crash.
  {
    const uint64_t r = h.put_obj(proto::PcmXfer{}), s = h.alloc(8);
    std::vector<Segment> rs{{r, 4}, {Harness::kRam - 16, 64}}, ws{{s, 8}};
    EXPECT_EQ(h.dev->io(proto::kTxQ, {903, rs, ws}), SndDevice::kHeld);
    ASSERT_EQ(h.pcm(Code::kPcmStart, 0), kOk);
    std::vector<uint8_t> b(64);
    EXPECT_EQ(h.dev->stream_io(0)->pull(b.data(), b.size()), 0u);
    EXPECT_EQ(h.done.back().head, 903);
    EXPECT_EQ(h.get_obj<proto::PcmStatus>(s).status.get(), kIoErr);
  }
}

// CVE-2024-7730 and its incomplete fix CVE-2026-3195: the device must never write more capture data
// than the guest's buffer holds (its writable part minus the 8-byte status), whatever period_bytes says
// and however the data arrives.
TEST(SndDevice, CaptureNeverWritesPastTheGuestsBufferCve2024_7730) {
  Harness h;
  ASSERT_EQ(h.set_params(1, 4 * 4096, 4096, 1, proto::Format::kS16, k48k), kOk);
  ASSERT_EQ(h.pcm(Code::kPcmPrepare, 1), kOk);
  ASSERT_EQ(h.pcm(Code::kPcmStart, 1), kOk);
  StreamIo* io = h.dev->stream_io(1);
  const std::vector<uint8_t> canary(64, 0xcc);

  // 1. Exactly 8 writable bytes (status only): no data area. Handed back at once, nothing else written.
  {
    const uint64_t w = h.alloc(8 + 64);
    ASSERT_TRUE(h.mem.write(w + 8, canary.data(), canary.size()).ok());
    auto r = h.rx_segs(1, {{w, 8}});
    EXPECT_EQ(r.result, 8u);
    EXPECT_EQ(h.get_obj<proto::PcmStatus>(w).status.get(), kIoErr);
    EXPECT_EQ(h.get(w + 8, 64), canary);
  }
  // 2. Fewer than 8 writable bytes: nothing written at all (no size underflow).
  for (uint32_t n : {0u, 1u, 7u}) {
    const uint64_t w = h.alloc(64);
    ASSERT_TRUE(h.mem.write(w, canary.data(), canary.size()).ok());
    std::vector<Segment> ws;
    if (n) ws.push_back({w, n});
    EXPECT_EQ(h.rx_segs(1, ws).result, 0u);
    EXPECT_EQ(h.get(w, 64), canary);
  }
  // 3. 16 bytes of data + status although a period is 4096: a push of a whole period writes 16 bytes,
  //    the buffer completes with used = 8 + 16 and the rest is an overrun.
  {
    const uint64_t w = h.alloc(16 + 8 + 64);
    ASSERT_TRUE(h.mem.write(w + 24, canary.data(), canary.size()).ok());
    ASSERT_EQ(h.rx_segs(1, {{w, 24}}).result, SndDevice::kHeld);
    std::vector<uint8_t> period(4096, 0x11);
    h.done.clear();
    EXPECT_EQ(io->push(period.data(), period.size()), 16u);
    ASSERT_EQ(h.done.size(), 1u);
    EXPECT_EQ(h.done[0].used, 24u);
    EXPECT_EQ(h.get(w, 16), std::vector<uint8_t>(16, 0x11));
    EXPECT_EQ(h.get_obj<proto::PcmStatus>(w + 16).status.get(), kOk);
    EXPECT_EQ(h.get(w + 24, 64), canary);
    EXPECT_EQ(h.dev->stats(1).overruns, 1u);
  }
  // 4. Data arriving in small pieces (7 bytes at a time) into a 20-byte buffer split over odd
  //    descriptors, the status straddling two: exactly 20 bytes land, in order.
  {
    const uint64_t a = h.alloc(64), b = h.alloc(64), c = h.alloc(64);
    for (uint64_t g : {a, b, c}) ASSERT_TRUE(h.mem.write(g, canary.data(), canary.size()).ok());
    ASSERT_EQ(h.rx_segs(1, {{a, 13}, {b, 10}, {c, 5}}).result, SndDevice::kHeld);  // 28 = 20 data + 8 status
    h.done.clear();
    std::vector<uint8_t> piece(7);
    size_t taken = 0;
    for (int i = 0; i < 4; ++i) {
      for (size_t k = 0; k < 7; ++k) piece[k] = uint8_t(i * 7 + k + 1);
      taken += io->push(piece.data(), piece.size());
    }
    EXPECT_EQ(taken, 20u);
    ASSERT_EQ(h.done.size(), 1u);
    EXPECT_EQ(h.done[0].used, 28u);
    std::vector<uint8_t> data = h.get(a, 13), more = h.get(b, 7);
    data.insert(data.end(), more.begin(), more.end());
    for (size_t k = 0; k < 20; ++k) EXPECT_EQ(data[k], uint8_t(k + 1));
    std::vector<uint8_t> status = h.get(b + 7, 3), tail = h.get(c, 5);
    status.insert(status.end(), tail.begin(), tail.end());
    proto::PcmStatus st;
    std::memcpy(&st, status.data(), 8);
    EXPECT_EQ(st.status.get(), kOk);
    EXPECT_EQ(h.get(b + 10, 54), std::vector<uint8_t>(54, 0xcc));
    EXPECT_EQ(h.get(c + 5, 59), std::vector<uint8_t>(59, 0xcc));
  }
  // 5. A data area larger than the stream's buffer: refused at once.
  {
    const uint64_t w = h.alloc(4 * 4096 + 16);
    EXPECT_EQ(h.rx_segs(1, {{w, 4 * 4096 + 16}}).result, 8u);
  }
}

TEST(SndDevice, CaptureBuffersReturnOnlyWhenFullOrOnRelease) {
  Harness h;
  ASSERT_EQ(h.set_params(1, 4 * 960, 960, 1, proto::Format::kS16, k48k), kOk);
  ASSERT_EQ(h.pcm(Code::kPcmPrepare, 1), kOk);
  const uint64_t w = h.alloc(968);
  ASSERT_EQ(h.rx_segs(1, {{w, 968}}).result, SndDevice::kHeld);
  ASSERT_EQ(h.pcm(Code::kPcmStart, 1), kOk);
  std::vector<uint8_t> half(480, 0x22);
  EXPECT_EQ(h.dev->stream_io(1)->push(half.data(), half.size()), 480u);
  EXPECT_TRUE(h.done.empty());
  ASSERT_EQ(h.pcm(Code::kPcmStop, 1), kOk);
  ASSERT_EQ(h.pcm(Code::kPcmRelease, 1), kOk);
  ASSERT_EQ(h.done.size(), 1u);
  EXPECT_EQ(h.done[0].used, 8u + 480u);
  // The status sits in the buffer's last 8 bytes even when it is handed back partly filled.
  EXPECT_EQ(h.get_obj<proto::PcmStatus>(w + 960).status.get(), kOk);
}

TEST(SndDevice, ControlsReadWriteTlvAndHostChangesNotify) {
  Harness h;
  proto::QueryInfo q{};
  q.hdr.code = uint32_t(Code::kCtlInfo);
  q.count = 4;
  q.size = sizeof(proto::CtlInfo);
  auto r = h.control(q, 4 * sizeof(proto::CtlInfo));
  ASSERT_EQ(r.code, kOk);
  auto vol = h.get_obj<proto::CtlInfo>(r.payload_gpa);
  auto sw = h.get_obj<proto::CtlInfo>(r.payload_gpa + 96);
  auto micvol = h.get_obj<proto::CtlInfo>(r.payload_gpa + 192);
  EXPECT_STREQ(reinterpret_cast<const char*>(vol.name), "music Playback Volume");
  EXPECT_STREQ(reinterpret_cast<const char*>(sw.name), "music Playback Switch");
  EXPECT_STREQ(reinterpret_cast<const char*>(micvol.name), "mic Capture Volume");
  EXPECT_EQ(vol.type.get(), uint32_t(proto::CtlType::kInteger));
  EXPECT_EQ(vol.value.integer.max.get(), 100u);
  EXPECT_EQ(vol.count.get(), 1u);
  EXPECT_TRUE(vol.access.get() & proto::kCtlAccessTlvRead);
  EXPECT_EQ(sw.type.get(), uint32_t(proto::CtlType::kBoolean));
  // An i386 guest's layout (92 bytes, no padding before the value union).
  q.size = 92;
  r = h.control(q, 4 * 92);
  ASSERT_EQ(r.code, kOk);
  le32 max92;
  ASSERT_TRUE(h.mem.read(r.payload_gpa + 68 + 4, &max92, 4).ok());
  EXPECT_EQ(max92.get(), 100u);
  EXPECT_EQ(h.query(Code::kCtlInfo, 0, 4, 95, 4 * 95), kOk);  // odd strides in between: packed, zero-filled

  proto::CtlHdr c{};
  c.hdr.code = uint32_t(Code::kCtlRead);
  c.control_id = 0;
  r = h.control(c, sizeof(proto::CtlValue));
  ASSERT_EQ(r.code, kOk);
  EXPECT_EQ(h.get_obj<le32>(r.payload_gpa).get(), 100u);
  EXPECT_EQ(h.control(c, 16).code, kBad);  // response too short for a value
  struct {
    proto::CtlHdr h;
    proto::CtlValue v;
  } w{};
  w.h.hdr.code = uint32_t(Code::kCtlWrite);
  w.h.control_id = 0;
  w.v.integer[0] = 60;
  EXPECT_EQ(h.control(w).code, kOk);
  w.v.integer[0] = 101;
  EXPECT_EQ(h.control(w).code, kBad);
  w.h.control_id = 1;
  w.v.integer[0] = 2;
  EXPECT_EQ(h.control(w).code, kBad);
  w.v.integer[0] = 0;  // switch off = mute
  EXPECT_EQ(h.control(w).code, kOk);
  w.h.control_id = 4;
  EXPECT_EQ(h.control(w).code, kBad);  // no such control
  c.control_id = 0;
  r = h.control(c, sizeof(proto::CtlValue));
  EXPECT_EQ(h.get_obj<le32>(r.payload_gpa).get(), 60u);
  c.control_id = 1;
  r = h.control(c, sizeof(proto::CtlValue));
  EXPECT_EQ(h.get_obj<le32>(r.payload_gpa).get(), 0u);

  c.hdr.code = uint32_t(Code::kCtlTlvRead);
  c.control_id = 0;
  r = h.control(c, 16);
  ASSERT_EQ(r.code, kOk);
  EXPECT_EQ(h.get_obj<le32>(r.payload_gpa).get(), proto::kTlvDbScale);
  EXPECT_EQ(int32_t(h.get_obj<le32>(r.payload_gpa + 8).get()), -5000);
  c.hdr.code = uint32_t(Code::kCtlTlvWrite);
  EXPECT_EQ(h.control(c).code, kBad);
  c.hdr.code = uint32_t(Code::kCtlEnumItems);
  EXPECT_EQ(h.control(c, 64).code, kBad);

  // A host-side change reaches the driver as CTL_NOTIFY (control id and VALUE mask in the event).
  h.event_buffer();
  ASSERT_TRUE(h.dev->set_volume(0, 30, true).ok());
  auto ev = h.events();
  ASSERT_EQ(ev.size(), 1u);  // only the volume changed (the switch was already off)
  EXPECT_EQ(ev[0].hdr.code.get(), uint32_t(Code::kEvtCtlNotify));
  EXPECT_EQ(ev[0].data.get(), 0u | (uint32_t(proto::kCtlEvtMaskValue) << 16));
  EXPECT_FALSE(h.dev->set_volume(0, 101, false).ok());

  // Without CTLS negotiated: NOT_SUPP.
  h.dev->set_acked_features(0);
  c.hdr.code = uint32_t(Code::kCtlRead);
  EXPECT_EQ(h.control(c, 512).code, kNotSupp);
  EXPECT_EQ(h.query(Code::kCtlInfo, 0, 1, 96, 96), kNotSupp);
}

TEST(SndDevice, VolumeAndMuteScaleWhatThHostTakes) {
  Harness h;
  prepare_music(h);
  std::vector<uint8_t> p(kPeriod);
  for (size_t i = 0; i < p.size(); i += 2) {
    const int16_t v = 16000;
    std::memcpy(&p[i], &v, 2);
  }
  h.tx(0, p);
  h.tx(0, p);
  ASSERT_TRUE(h.dev->set_volume(0, 60, false).ok());  // -20 dB
  ASSERT_EQ(h.pcm(Code::kPcmStart, 0), kOk);
  std::vector<uint8_t> got(kPeriod);
  ASSERT_EQ(h.dev->stream_io(0)->pull(got.data(), got.size()), got.size());
  int16_t s;
  std::memcpy(&s, &got[100], 2);
  EXPECT_EQ(s, 1600);
  ASSERT_TRUE(h.dev->set_volume(0, 60, true).ok());
  ASSERT_EQ(h.dev->stream_io(0)->pull(got.data(), got.size()), got.size());
  EXPECT_EQ(got, std::vector<uint8_t>(kPeriod, 0));
}

TEST(SndDevice, JackEventsAndPendingEventsWaitForBuffers) {
  SndOptions o = Harness::default_options();
  o.max_pending_events = 2;
  Harness h(o);
  ASSERT_TRUE(h.dev->set_jack(0, false).ok());
  ASSERT_TRUE(h.dev->set_jack(0, false).ok());  // no change: no event
  ASSERT_TRUE(h.dev->set_jack(0, true).ok());
  ASSERT_TRUE(h.dev->set_jack(0, false).ok());  // third pending: the oldest is dropped
  EXPECT_FALSE(h.dev->set_jack(1, true).ok());
  EXPECT_EQ(h.dev->events_dropped(), 1u);
  h.event_buffer();
  h.event_buffer();
  h.event_buffer();
  auto ev = h.events();
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].hdr.code.get(), uint32_t(Code::kEvtJackConnected));
  EXPECT_EQ(ev[1].hdr.code.get(), uint32_t(Code::kEvtJackDisconnected));
  EXPECT_EQ(ev[1].data.get(), 0u);
  // An event buffer too small for an event is handed back empty.
  const uint64_t e = h.alloc(8);
  std::vector<Segment> ws{{e, 4}};
  EXPECT_EQ(h.dev->io(proto::kEventQ, {77, {}, ws}), 0u);
}

TEST(SndDevice, ResetDropsHeldBuffersAndStreamsStartOver) {
  Harness h;
  prepare_music(h);
  h.tx(0, ramp_bytes(kPeriod, 3));
  ASSERT_EQ(h.pcm(Code::kPcmStart, 0), kOk);
  h.dev->reset();
  EXPECT_TRUE(h.done.empty());  // the rings may be gone: nothing is completed
  EXPECT_STREQ(h.dev->state_name(0), "initial");
  h.dev->set_acked_features(proto::kFCtls);
  prepare_music(h);
  std::vector<uint8_t> b(kPeriod);
  ASSERT_EQ(h.pcm(Code::kPcmStart, 0), kOk);
  EXPECT_EQ(h.dev->stream_io(0)->pull(b.data(), b.size()), 0u);  // the old buffer is gone
  // A queue stop (not a reset) hands held buffers back as I/O errors.
  auto t = h.tx(0, ramp_bytes(kPeriod, 4));
  h.dev->queue_stopped(proto::kTxQ, false);
  ASSERT_FALSE(h.done.empty());
  EXPECT_EQ(h.done.back().head, t.head);
  EXPECT_EQ(h.get_obj<proto::PcmStatus>(t.status_gpa).status.get(), kIoErr);
}

TEST(SndDevice, CreateRefusesBadConfigurations) {
  auto make = [](SndOptions o) {
    return SndDevice::create(std::move(o), nullptr, nullptr, [](uint16_t, uint16_t, uint32_t) {}).ok();
  };
  SndOptions o = Harness::default_options();
  EXPECT_TRUE(make(o));
  SndOptions a = o;
  a.streams.clear();
  EXPECT_FALSE(make(a));
  a = o;
  a.streams[0].channels_min = 3;
  EXPECT_FALSE(make(a));
  a = o;
  a.streams[0].formats = 1u << uint8_t(proto::Format::kImaAdpcm);
  EXPECT_FALSE(make(a));
  a = o;
  a.streams[0].positions = {uint8_t(proto::Pos::kFl)};
  EXPECT_FALSE(make(a));
  a = o;
  a.streams[0].positions = {uint8_t(proto::Pos::kFl), 99};
  EXPECT_FALSE(make(a));
  a = o;
  a.streams[0].policy.duck_db = 5;
  EXPECT_FALSE(make(a));
}

}  // namespace
}  // namespace canopy::audio
