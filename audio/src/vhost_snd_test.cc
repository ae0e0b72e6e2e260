// VhostSnd at its queues: a guest's chains published on the control, tx and event rings of a real
// vhost-user session (canopy_transport_testing's rig: the back-end on its thread with the null host, the
// test as front-end and driver), the used ring read back. Tx buffers are held while the stream is
// prepared and all handed back before the RELEASE that ends it is answered (§5.14.6.6.5.1); played ones
// come back in order with their status; truncated, looping and over-long chains are answered or handed
// back and the queues go on.
#include "canopy/audio/vhost_snd.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "canopy/transport/testing/vhost_user_rig.h"

namespace canopy::audio {
namespace {

using proto::Code;
using transport::testing::RawRing;
using transport::testing::VhostUserRig;

constexpr uint64_t kRings = 0x1000, kSlots = 0x40000;
constexpr uint16_t kSize = 64;
constexpr uint32_t kPeriod = 480 * 4;  // 10 ms of S16 stereo at 48 kHz

class VhostSndQueues : public ::testing::Test {
 protected:
  void SetUp() override {
    SndOptions o;
    StreamConfig out;
    out.name = "out";
    out.rates = 1ull << proto::rate_bit(48000);
    StreamConfig in;
    in.name = "in";
    in.direction = proto::Direction::kInput;
    in.rates = 1ull << proto::rate_bit(48000);
    o.streams = {out, in};
    o.vm = "queues";
    auto host = make_null_backend(NullHostOptions{});
    ASSERT_TRUE(host.ok());
    auto d = VhostSnd::create(std::move(o), std::move(*host), nullptr);
    ASSERT_TRUE(d.ok()) << d.error().what;
    snd = std::move(*d);
    rig = std::make_unique<VhostUserRig>(*snd);
    rig->handshake();
    for (uint32_t q = 0; q < proto::kNumQueues; ++q) rig->layout_ring(q, kRings + 0x2000ull * q, kSize);
    rig->start(proto::kControlQ);
  }
  void TearDown() override {
    if (rig) {
      EXPECT_TRUE(rig->stop().ok());
    }
  }

  // Publishes `readable` bytes (as one or two descriptors: header, then data) and `writable` bytes of
  // room on ring q; returns the head. Kicks unless told not to (a ring not started yet).
  uint16_t submit(uint32_t q, std::span<const uint8_t> header, std::span<const uint8_t> data, uint32_t writable,
                  bool kick = true) {
    return rig->post(q, {header, data}, writable, kick);
  }
  template <typename T>
  std::span<const uint8_t> bytes(const T& v) {
    return {reinterpret_cast<const uint8_t*>(&v), sizeof v};
  }
  // The status the device wrote for the used ring's i-th entry of ring q (first 4 bytes of the room).
  uint32_t status_of(uint32_t q, uint16_t used_i, uint16_t* head = nullptr, uint32_t* len = nullptr) {
    const auto e = rig->ring(q).used(used_i);
    if (head) *head = uint16_t(e.id.get());
    if (len) *len = e.len.get();
    le32 s{};
    EXPECT_TRUE(rig->guest().read(rig->answer_at(q, uint16_t(e.id.get())), &s, sizeof s).ok());
    return s.get();
  }
  // One control request, waited for; its status.
  template <typename T>
  uint32_t control(const T& req, uint32_t room = sizeof(proto::Hdr)) {
    const uint16_t want = uint16_t(rig->ring(proto::kControlQ).used_idx() + 1);
    submit(proto::kControlQ, bytes(req), {}, room);
    EXPECT_TRUE(rig->wait_used(proto::kControlQ, want));
    return status_of(proto::kControlQ, uint16_t(want - 1));
  }
  uint32_t pcm(Code code, uint32_t stream = 0) {
    proto::PcmHdr h{};
    h.hdr.code = uint32_t(code);
    h.stream_id = stream;
    return control(h);
  }
  // Stream 0 ("out") by default; 1 is "in".
  void set_params_and_prepare(uint32_t stream = 0) {
    proto::PcmSetParams p{};
    p.hdr.hdr.code = uint32_t(Code::kPcmSetParams);
    p.hdr.stream_id = stream;
    p.buffer_bytes = 4 * kPeriod;
    p.period_bytes = kPeriod;
    p.channels = 2;
    p.format = uint8_t(proto::Format::kS16);
    p.rate = uint8_t(proto::rate_bit(48000));
    ASSERT_EQ(control(p), uint32_t(Code::kOk));
    ASSERT_EQ(pcm(Code::kPcmPrepare, stream), uint32_t(Code::kOk));
  }
  uint16_t submit_period(bool kick = true) {
    proto::PcmXfer x{};
    x.stream_id = 0;
    const std::vector<uint8_t> pcm(kPeriod, 0x11);
    return submit(proto::kTxQ, bytes(x), pcm, sizeof(proto::PcmStatus), kick);
  }

  std::unique_ptr<VhostSnd> snd;
  std::unique_ptr<VhostUserRig> rig;
};

// Held while prepared (not started), all handed back with OK before RELEASE is answered. The buffers
// are published before the tx ring starts, so the device has taken them when its ENABLE is acknowledged.
TEST_F(VhostSndQueues, TxBuffersAreHeldWhilePreparedAndHandedBackBeforeReleaseIsAnswered) {
  set_params_and_prepare();
  const uint16_t a = submit_period(false), b = submit_period(false);
  rig->start(proto::kTxQ);
  EXPECT_EQ(rig->ring(proto::kTxQ).used_idx(), 0u) << "a prepared stream's buffer was answered before it played";
  ASSERT_EQ(pcm(Code::kPcmRelease), uint32_t(Code::kOk));
  // §5.14.6.6.5.1: the device returned them before it answered the RELEASE.
  ASSERT_EQ(rig->ring(proto::kTxQ).used_idx(), 2u);
  uint16_t head = 0;
  uint32_t len = 0;
  EXPECT_EQ(status_of(proto::kTxQ, 0, &head, &len), uint32_t(Code::kOk));
  EXPECT_EQ(head, a);
  EXPECT_EQ(len, sizeof(proto::PcmStatus));
  EXPECT_EQ(status_of(proto::kTxQ, 1, &head), uint32_t(Code::kOk));
  EXPECT_EQ(head, b);
}

// A hostile driver republishes a tx head the device holds (a prepared stream keeps its buffers), as
// often as the ring has room for. The transport refuses the second copy and breaks the ring, so
// canopy-snd holds the buffer once: RELEASE hands back exactly one. (Without the check every copy was
// appended to the stream, again at each turn of the ring: memory without bound, and 64 used entries for
// one buffer.) Published before the ring starts, so all is taken before ENABLE is acknowledged.
TEST_F(VhostSndQueues, ATxHeadRepublishedWhileHeldIsHeldOnce) {
  set_params_and_prepare();
  const uint16_t a = submit_period(false);
  for (int i = 1; i < kSize; ++i) rig->ring(proto::kTxQ).publish(a);
  rig->start(proto::kTxQ);
  ASSERT_EQ(pcm(Code::kPcmRelease), uint32_t(Code::kOk));
  EXPECT_EQ(rig->ring(proto::kTxQ).used_idx(), 1u) << "the held buffer is handed back once";
  uint16_t head = 0;
  EXPECT_EQ(status_of(proto::kTxQ, 0, &head), uint32_t(Code::kOk));
  EXPECT_EQ(head, a);
}

// The same on the rx queue: a capture stream, prepared, holds its buffers; copies of a held head are
// refused, so RELEASE hands back exactly one.
TEST_F(VhostSndQueues, AnRxHeadRepublishedWhileHeldIsHeldOnce) {
  set_params_and_prepare(1);  // "in"
  proto::PcmXfer x{};
  x.stream_id = 1;
  const uint16_t a = submit(proto::kRxQ, bytes(x), {}, kPeriod + sizeof(proto::PcmStatus), false);
  for (int i = 1; i < kSize; ++i) rig->ring(proto::kRxQ).publish(a);
  rig->start(proto::kRxQ);
  ASSERT_EQ(pcm(Code::kPcmRelease, 1), uint32_t(Code::kOk));
  EXPECT_EQ(rig->ring(proto::kRxQ).used_idx(), 1u) << "the held buffer is handed back once";
  EXPECT_EQ(rig->ring(proto::kRxQ).used(0).id.get(), a);
}

// And on the event queue, whose buffers wait for events: stopping the ring hands the held buffer back
// once.
TEST_F(VhostSndQueues, AnEventBufferRepublishedWhileHeldIsHeldOnce) {
  const uint16_t a = submit(proto::kEventQ, {}, {}, sizeof(proto::Event), false);
  for (int i = 1; i < kSize; ++i) rig->ring(proto::kEventQ).publish(a);
  rig->start(proto::kEventQ);
  ASSERT_TRUE(rig->frontend().get_vring_base(proto::kEventQ).ok());  // stops the ring
  EXPECT_EQ(rig->ring(proto::kEventQ).used_idx(), 1u) << "the held buffer is handed back once";
  EXPECT_EQ(rig->ring(proto::kEventQ).used(0).id.get(), a);
}

// Started: each period comes back once the host took it, in order, OK, with a latency within the buffer.
TEST_F(VhostSndQueues, PlayedBuffersComeBackInOrderWithTheirStatus) {
  set_params_and_prepare();
  rig->start(proto::kTxQ);
  ASSERT_EQ(pcm(Code::kPcmStart), uint32_t(Code::kOk));
  std::vector<uint16_t> heads;
  for (int i = 0; i < 3; ++i) heads.push_back(submit_period());
  ASSERT_TRUE(rig->wait_used(proto::kTxQ, 3));
  for (uint16_t i = 0; i < 3; ++i) {
    uint16_t head = 0;
    uint32_t len = 0;
    EXPECT_EQ(status_of(proto::kTxQ, i, &head, &len), uint32_t(Code::kOk)) << i;
    EXPECT_EQ(head, heads[i]);
    EXPECT_EQ(len, sizeof(proto::PcmStatus));
    proto::PcmStatus st{};
    ASSERT_TRUE(rig->guest().read(rig->answer_at(proto::kTxQ, head), &st, sizeof st).ok());
    EXPECT_LE(st.latency_bytes.get(), 4 * kPeriod);
  }
  ASSERT_EQ(pcm(Code::kPcmStop), uint32_t(Code::kOk));
}

// Truncated: a control request shorter than its header is BAD_MSG; a tx buffer whose header is cut
// short gets BAD_MSG in its status; one without room for a status is handed back with nothing written.
// A looping chain is handed back empty. An over-long control request is read up to the device's cap
// (4 KiB), not whole. The queues go on after each.
TEST_F(VhostSndQueues, TruncatedLoopingAndOverLongChainsAreAnsweredAndTheQueuesGoOn) {
  const uint8_t two[2] = {0x00, 0x01};
  ASSERT_EQ(control(two), uint32_t(Code::kBadMsg));
  set_params_and_prepare();
  rig->start(proto::kTxQ);
  submit(proto::kTxQ, two, {}, sizeof(proto::PcmStatus));  // a cut PcmXfer
  ASSERT_TRUE(rig->wait_used(proto::kTxQ, 1));
  uint32_t len = 0;
  EXPECT_EQ(status_of(proto::kTxQ, 0, nullptr, &len), uint32_t(Code::kBadMsg));
  EXPECT_EQ(len, sizeof(proto::PcmStatus));
  proto::PcmXfer x{};
  submit(proto::kTxQ, bytes(x), std::vector<uint8_t>(kPeriod, 1), 0);  // no room for the status
  ASSERT_TRUE(rig->wait_used(proto::kTxQ, 2));
  EXPECT_EQ(rig->ring(proto::kTxQ).used(1).len.get(), 0u);
  // A loop on the control ring: descriptor 0 -> 1 -> 0.
  RawRing& ctrl = rig->ring(proto::kControlQ);
  const uint16_t used_before = ctrl.used_idx();
  const uint16_t first = 0;
  ctrl.set_desc(first, kSlots, 8, transport::kVirtqDescFNext, 1);
  ctrl.set_desc(1, kSlots + 0x3000, 8, uint16_t(transport::kVirtqDescFNext | transport::kVirtqDescFWrite), first);
  ctrl.publish(first);
  rig->kick(proto::kControlQ);
  ASSERT_TRUE(rig->wait_used(proto::kControlQ, uint16_t(used_before + 1)));
  EXPECT_EQ(ctrl.used(used_before).id.get(), first);
  EXPECT_EQ(ctrl.used(used_before).len.get(), 0u);
  // Over-long: a PCM_INFO query followed by a megabyte; the device reads 4 KiB of it.
  const uint64_t copied = rig->backend_bytes_copied();
  proto::QueryInfo q{};
  q.hdr.code = uint32_t(Code::kPcmInfo);
  q.start_id = 0;
  q.count = 2;
  q.size = sizeof(proto::PcmInfo);
  std::vector<uint8_t> big(1u << 20, 0xee);
  std::memcpy(big.data(), &q, sizeof q);
  const uint16_t want = uint16_t(ctrl.used_idx() + 1);
  submit(proto::kControlQ, big, {}, sizeof(proto::Hdr) + 2 * sizeof(proto::PcmInfo));
  ASSERT_TRUE(rig->wait_used(proto::kControlQ, want));
  EXPECT_EQ(status_of(proto::kControlQ, uint16_t(want - 1)), uint32_t(Code::kOk));
  EXPECT_LE(rig->backend_bytes_copied() - copied, 4096u + 2 * sizeof(proto::PcmInfo) + 512u);
  ASSERT_EQ(pcm(Code::kPcmRelease), uint32_t(Code::kOk));
}

}  // namespace
}  // namespace canopy::audio
