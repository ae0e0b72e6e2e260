// VhostGpu at its queues: a guest's chains published on the control and cursor rings of a real
// vhost-user session (canopy_transport_testing's rig: the back-end on its thread, the test as front-end
// and driver), the used ring read back. A fenced flush is answered only when its frame is released, after
// unfenced commands behind it; a truncated chain gets the spec's error; a looping chain is handed back
// empty; a command over the size cap is refused; the cursor queue reads at most its cap of a chain.
#include "canopy/gpu/vhost_gpu.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <vector>

#include "canopy/transport/testing/vhost_user_rig.h"

namespace canopy::gpu {
namespace {

using proto::Cmd;
using proto::Resp;
using transport::testing::RawRing;
using transport::testing::VhostUserRig;

// Keeps every frame until the test releases it: a compositor that has not shown it yet.
class HoldingOutput : public ScanoutOutput {
 public:
  void on_scanout(const ScanoutState&) override {}
  void on_frame(std::shared_ptr<Frame> f) override {
    std::lock_guard<std::mutex> lk(mu_);
    frames_.push_back(std::move(f));
  }
  void on_cursor(const CursorUpdate& c) override {
    last_cursor_x = c.x;
    ++cursors;
  }
  size_t held() {
    std::lock_guard<std::mutex> lk(mu_);
    return frames_.size();
  }
  void release_all() {
    std::vector<std::shared_ptr<Frame>> f;
    {
      std::lock_guard<std::mutex> lk(mu_);
      f.swap(frames_);
    }
    for (auto& x : f) x->release();
  }
  std::atomic<int> cursors{0};
  std::atomic<uint32_t> last_cursor_x{0};

 private:
  std::mutex mu_;
  std::vector<std::shared_ptr<Frame>> frames_;
};

constexpr uint64_t kCtrlRing = 0x1000, kCursorRing = 0x8000, kSlots = 0x10000,
                   kPixels = 0x200000;  // below the rig's scratch half
constexpr uint16_t kCtrlSize = 64, kCursorSize = 16;
constexpr uint32_t kW = 64, kH = 64;

class VhostGpuQueues : public ::testing::Test {
 protected:
  void SetUp() override {
    auto g = VhostGpu::create(VhostGpuOptions{}, &out);
    ASSERT_TRUE(g.ok()) << g.error().what;
    gpu = std::move(*g);
    rig = std::make_unique<VhostUserRig>(*gpu);
    rig->handshake();
    ctrl = &rig->start_ring(0, kCtrlRing, kCtrlSize);
    cursor = &rig->start_ring(1, kCursorRing, kCursorSize);
  }
  void TearDown() override {
    if (rig) {
      EXPECT_TRUE(rig->stop().ok());
    }
    out.release_all();
  }

  // Publishes a chain of `request` (readable) and `resp_len` writable bytes on ring `q` and kicks it;
  // returns the chain's head.
  uint16_t submit(uint32_t q, std::span<const uint8_t> request, uint32_t resp_len = sizeof(proto::CtrlHdr)) {
    return rig->post(q, {request}, resp_len);
  }
  template <typename T>
  uint16_t submit_obj(uint32_t q, const T& body, uint32_t resp_len = sizeof(proto::CtrlHdr)) {
    return submit(q, std::span(reinterpret_cast<const uint8_t*>(&body), sizeof body), resp_len);
  }
  // The used ring's i-th entry, and the response header the device wrote for it.
  proto::CtrlHdr response(uint32_t q, uint16_t used_i, uint16_t* head = nullptr, uint32_t* len = nullptr) {
    RawRing& ring = q == 0 ? *ctrl : *cursor;
    const auto e = ring.used(used_i);
    if (head) *head = uint16_t(e.id.get());
    if (len) *len = e.len.get();
    proto::CtrlHdr h{};
    EXPECT_TRUE(rig->guest().read(rig->answer_at(q, uint16_t(e.id.get())), &h, sizeof h).ok());
    return h;
  }
  // Sends one unfenced command and waits for its answer; returns the response type.
  template <typename T>
  uint32_t call(const T& body) {
    const uint16_t want = uint16_t(ctrl->used_idx() + 1);
    submit_obj(0, body);
    EXPECT_TRUE(rig->wait_used(0, want));
    return response(0, uint16_t(want - 1)).type.get();
  }
  void scanout_64x64() {
    proto::ResourceCreate2d c{};
    c.hdr = proto::make_hdr(Cmd::kResourceCreate2d);
    c.resource_id = 1;
    c.format = uint32_t(proto::Format::kB8G8R8X8);
    c.width = kW;
    c.height = kH;
    ASSERT_EQ(call(c), uint32_t(Resp::kOkNodata));
    struct {
      proto::ResourceAttachBacking a;
      proto::MemEntry e;
    } ab{};
    ab.a.hdr = proto::make_hdr(Cmd::kResourceAttachBacking);
    ab.a.resource_id = 1;
    ab.a.nr_entries = 1;
    ab.e.addr = kPixels;
    ab.e.length = kW * kH * 4;
    ASSERT_EQ(call(ab), uint32_t(Resp::kOkNodata));
    proto::SetScanout s{};
    s.hdr = proto::make_hdr(Cmd::kSetScanout);
    s.resource_id = 1;
    s.r.width = kW;
    s.r.height = kH;
    ASSERT_EQ(call(s), uint32_t(Resp::kOkNodata));
  }

  // A RESOURCE_FLUSH of the whole 64x64 resource 1 with fence `fence`, published and kicked; its head.
  uint16_t fenced_flush(uint64_t fence) {
    proto::ResourceFlush f{};
    f.hdr = proto::make_hdr(Cmd::kResourceFlush, proto::kFlagFence, fence);
    f.resource_id = 1;
    f.r.width = kW;
    f.r.height = kH;
    return submit_obj(0, f);
  }

  HoldingOutput out;
  std::unique_ptr<VhostGpu> gpu;
  std::unique_ptr<VhostUserRig> rig;
  RawRing* ctrl = nullptr;
  RawRing* cursor = nullptr;
};

// A fenced RESOURCE_FLUSH is in flight (no used entry) while its frame is held; an unfenced command
// published after it is answered first; the release answers the flush with its fence.
TEST_F(VhostGpuQueues, AFencedFlushIsAnsweredWhenItsFrameIsReleasedAfterLaterCommands) {
  scanout_64x64();
  const uint16_t before = ctrl->used_idx();
  const uint16_t flush = fenced_flush(7);
  proto::CtrlHdr info{};
  info.type = uint32_t(Cmd::kGetDisplayInfo);
  const uint16_t later = submit_obj(0, info, sizeof(proto::RespDisplayInfo));
  ASSERT_TRUE(rig->wait_used(0, uint16_t(before + 1)));
  uint16_t head = 0;
  EXPECT_EQ(response(0, before, &head).type.get(), uint32_t(Resp::kOkDisplayInfo));
  EXPECT_EQ(head, later);
  EXPECT_EQ(ctrl->used_idx(), uint16_t(before + 1)) << "the fenced flush was answered while its frame was held";
  ASSERT_GE(out.held(), 1u);
  out.release_all();
  ASSERT_TRUE(rig->wait_used(0, uint16_t(before + 2)));
  uint32_t len = 0;
  const proto::CtrlHdr r = response(0, uint16_t(before + 1), &head, &len);
  EXPECT_EQ(head, flush);
  EXPECT_EQ(len, sizeof(proto::CtrlHdr));
  EXPECT_EQ(r.type.get(), uint32_t(Resp::kOkNodata));
  EXPECT_TRUE(r.flags.get() & proto::kFlagFence);
  EXPECT_EQ(r.fence_id.get(), 7u);
}

// A hostile driver republishes the head of a fenced flush the device holds (its frame is not released
// yet) as often as the ring has room: the queue refuses the first copy and breaks (the front-end hears
// it on the ring's error eventfd), so the flush is answered once, when its frame goes back, and no
// copy became a command of its own.
TEST_F(VhostGpuQueues, AControlHeadRepublishedWhileHeldIsAnsweredOnce) {
  scanout_64x64();
  UniqueFd err(::eventfd(0, EFD_CLOEXEC));
  ASSERT_TRUE(rig->frontend().set_vring_err(0, err.get()).ok());
  const uint16_t before = ctrl->used_idx();
  const uint16_t flush = fenced_flush(9);
  proto::CtrlHdr info{};
  info.type = uint32_t(Cmd::kGetDisplayInfo);
  submit_obj(0, info, sizeof(proto::RespDisplayInfo));
  ASSERT_TRUE(rig->wait_used(0, uint16_t(before + 1)));  // the flush before it was taken: it is held
  const size_t frames = out.held();
  ASSERT_GE(frames, 1u);
  for (int i = 2; i < kCtrlSize; ++i) ctrl->publish(flush);
  rig->kick(0);
  pollfd p{err.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 30000), 1) << "the ring did not break";
  EXPECT_EQ(out.held(), frames) << "a copy of the flush made another frame";
  out.release_all();
  ASSERT_TRUE(rig->wait_used(0, uint16_t(before + 2)));
  uint16_t head = 0;
  EXPECT_EQ(response(0, uint16_t(before + 1), &head).fence_id.get(), 9u);
  EXPECT_EQ(head, flush);
  EXPECT_EQ(ctrl->used_idx(), uint16_t(before + 2)) << "the held flush is answered once";
}

// Half a header: the spec's ERR_UNSPEC in the response room; a chain without response room is handed
// back with nothing written; the queue goes on.
TEST_F(VhostGpuQueues, TruncatedChainsAreAnsweredAndTheQueueGoesOn) {
  const uint8_t half[8] = {0x00, 0x01};
  submit(0, half);
  ASSERT_TRUE(rig->wait_used(0, 1));
  uint32_t len = 0;
  EXPECT_EQ(response(0, 0, nullptr, &len).type.get(), uint32_t(Resp::kErrUnspec));
  EXPECT_EQ(len, sizeof(proto::CtrlHdr));
  proto::CtrlHdr info{};
  info.type = uint32_t(Cmd::kGetDisplayInfo);
  submit_obj(0, info, 0);
  ASSERT_TRUE(rig->wait_used(0, 2));
  EXPECT_EQ(ctrl->used(1).len.get(), 0u);
  EXPECT_EQ(call(info), uint32_t(Resp::kOkDisplayInfo));
}

// A chain whose descriptors loop (the last one's next is the first) is handed back with length 0; a
// command longer than caps.max_command_bytes is refused with ERR_OUT_OF_MEMORY; the queue goes on.
TEST_F(VhostGpuQueues, LoopingAndOverLongChainsAreRefusedAndTheQueueGoesOn) {
  proto::CtrlHdr info{};
  info.type = uint32_t(Cmd::kGetDisplayInfo);
  ASSERT_TRUE(rig->guest().write(kSlots, &info, sizeof info).ok());
  ctrl->set_desc(0, kSlots, sizeof info, transport::kVirtqDescFNext, 1);
  ctrl->set_desc(1, kSlots + 0x1000, 24, uint16_t(transport::kVirtqDescFNext | transport::kVirtqDescFWrite), 0);
  ctrl->publish(0);
  rig->kick(0);
  ASSERT_TRUE(rig->wait_used(0, 1));
  EXPECT_EQ(ctrl->used(0).id.get(), 0u);
  EXPECT_EQ(ctrl->used(0).len.get(), 0u);
  // Over the cap: the readable part is one byte past it (the header is a valid GET_DISPLAY_INFO).
  std::vector<uint8_t> big(size_t(VhostGpuOptions{}.gpu.caps.max_command_bytes) + 1, 0);
  std::memcpy(big.data(), &info, sizeof info);
  submit(0, big);  // head 0 again (the loop's descriptors were handed back)
  ASSERT_TRUE(rig->wait_used(0, 2));
  EXPECT_EQ(response(0, 1).type.get(), uint32_t(Resp::kErrOutOfMemory));
  EXPECT_EQ(call(info), uint32_t(Resp::kOkDisplayInfo));
}

// The cursor queue reads at most 4 KiB of a chain however long its readable part: a MOVE_CURSOR with a
// megabyte behind it moves the cursor and costs the back-end no megabyte copy.
TEST_F(VhostGpuQueues, TheCursorQueueReadsAtMostItsCapOfAChain) {
  scanout_64x64();
  const uint64_t copied = rig->backend_bytes_copied();
  proto::UpdateCursor m{};
  m.hdr = proto::make_hdr(Cmd::kMoveCursor);
  m.pos.x = 17;
  m.pos.y = 5;
  std::vector<uint8_t> request(1u << 20, 0xee);
  std::memcpy(request.data(), &m, sizeof m);
  submit(1, request);
  ASSERT_TRUE(rig->wait_used(1, 1));
  uint32_t len = 0;
  EXPECT_EQ(response(1, 0, nullptr, &len).type.get(), uint32_t(Resp::kOkNodata));
  EXPECT_EQ(len, sizeof(proto::CtrlHdr));
  EXPECT_GE(out.cursors.load(), 1);
  EXPECT_EQ(out.last_cursor_x.load(), 17u);
  // 4096 bytes of the request, the chain's descriptors, the response's copy-out: nowhere near 1 MiB.
  EXPECT_LE(rig->backend_bytes_copied() - copied, 4096u + 256u);
}

}  // namespace
}  // namespace canopy::gpu
