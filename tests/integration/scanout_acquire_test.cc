// 3D scanouts' acquire fences end to end: canopy-gpu's device model, its ChannelOutput and the real
// compositor over a real scanout-channel connection, in virtual time. The IVI's renderer is a GPU that
// finishes late: its fences complete only when the test says. The device delivers each 3D frame at once
// with an acquire point and signals it when the pixels are read back after the fence; the compositor shows
// an IVI frame only then, and the cluster beside it keeps every deadline meanwhile.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <string>

#include "canopy/base/clock.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/display/compositor.h"
#include "canopy/gpu/channel_output.h"
#include "canopy/gpu/device.h"
#include "canopy/protocol/scanout_channel.h"

namespace canopy {
namespace {

namespace ch = protocol::scanout;
namespace proto = protocol::virtio_gpu;
using display::Criticality;

// A 3D renderer whose GPU work finishes when the test says: each fence remembers the colour the GPU
// was drawing when it was created, and once completed that is what a read-back of the target sees.
class LateGpu : public gpu::Renderer {
 public:
  const char* name() const override { return "late-gpu"; }
  uint32_t num_capsets() const override { return 1; }
  Result<gpu::CapsetInfo> capset_info(uint32_t index) const override {
    if (index != 0) return make_error(Errc::kInvalidArgument, "no such capset");
    return gpu::CapsetInfo{1, 1, 4};
  }
  Result<std::vector<uint8_t>> capset(uint32_t, uint32_t) const override { return std::vector<uint8_t>(4); }
  Status create_context(uint32_t, uint32_t, std::string_view) override { return {}; }
  void destroy_context(uint32_t) override {}
  Status submit(uint32_t, std::span<const uint8_t>) override { return {}; }
  Result<gpu::HostImage> create_2d(uint32_t id, uint32_t w, uint32_t h) override { return two_d_->create_2d(id, w, h); }
  bool supports_3d() const override { return true; }
  Status create_3d(uint32_t, const gpu::Resource3dArgs&) override { return {}; }
  Status read_pixels(uint32_t, const gpu::Rect& r, uint8_t* dst, uint32_t stride) override {
    ++reads;
    for (uint32_t y = 0; y < r.height; ++y)
      for (uint32_t x = 0; x < r.width; ++x) std::memcpy(dst + uint64_t(y) * stride + x * 4, &finished_, 4);
    return {};
  }
  Status create_fence(uint32_t, uint32_t, bool, uint64_t id) override {
    fences_.push_back({id, drawing});
    return {};
  }
  void set_fence_callback(std::function<void(uint64_t)> cb) override { on_fence_ = std::move(cb); }
  void poll() override {
    for (; completable_ > 0 && !fences_.empty(); --completable_) {
      finished_ = fences_.front().second;
      const uint64_t id = fences_.front().first;
      fences_.pop_front();
      on_fence_(id);
    }
    completable_ = 0;
  }
  // The GPU catches up with the oldest n fences (reported at the device's next poll).
  void finish(size_t n) { completable_ = n; }
  size_t unfinished() const { return fences_.size(); }

  uint32_t drawing = 0;  // the colour the guest's commands are drawing now (XRGB8888)
  int reads = 0;

 private:
  std::unique_ptr<gpu::Renderer> two_d_ = gpu::make_2d_renderer();
  std::deque<std::pair<uint64_t, uint32_t>> fences_;
  size_t completable_ = 0;
  uint32_t finished_ = 0;
  std::function<void(uint64_t)> on_fence_;
};

// The cockpit's cluster output, small: the cluster full screen (safety), the IVI's 32x32 scanout inset
// at (40, 8) scaled to 16x16.
display::Layout cockpit() {
  display::OutputSpec o;
  o.name = "cluster";
  o.width = 64;
  o.height = 32;
  o.refresh_hz = 60;
  o.criticality = Criticality::kSafety;
  display::LayerSpec c;
  c.vm = "cluster";
  c.dst = {0, 0, 64, 32};
  c.criticality = Criticality::kSafety;
  c.stale_ms = display::kDefaultSafetyStaleMs;
  display::LayerSpec i;
  i.vm = "ivi";
  i.dst = {40, 8, 16, 16};
  i.z = 1;
  i.criticality = Criticality::kNormal;
  o.layers = {c, i};
  display::Layout l;
  l.outputs.push_back(o);
  return l;
}

class ScanoutAcquire : public ::testing::Test {
 protected:
  static constexpr uint32_t kRes = 5, kSize = 32;

  void SetUp() override {
    dir_ = "/tmp/canopy-scanout-acquire-test." + std::to_string(::getpid());
    ::mkdir(dir_.c_str(), 0700);
    display::CompositorOptions co;
    co.listen_path = dir_ + "/display.sock";
    co.control_path = dir_ + "/control.sock";
    co.renderer = "pixman";
    auto c = display::Compositor::create(cockpit(), co, clock_);
    ASSERT_TRUE(c.ok()) << c.error().what;
    comp_ = std::move(*c);

    // The IVI: canopy-gpu's device model with the late GPU, its frames to the compositor.
    out_ = std::make_unique<gpu::ChannelOutput>(gpu::ChannelOutput::Options{co.listen_path, "ivi", 1});
    auto gpu_renderer = std::make_unique<LateGpu>();
    gpu_ = gpu_renderer.get();
    gpu::GpuOptions o;
    o.scanouts = {gpu::DisplayMode{kSize, kSize, 60}};
    o.features |= proto::kFVirgl;
    auto d =
        gpu::GpuDevice::create(o, std::move(gpu_renderer), out_.get(), [this](uint64_t, std::span<const uint8_t> b) {
          proto::CtrlHdr h{};
          std::memcpy(&h, b.data(), std::min(sizeof h, b.size()));
          responses_.push_back(h.type.get());
        });
    ASSERT_TRUE(d.ok()) << d.error().what;
    dev_ = std::move(*d);
    UniqueFd ram(memfd_create("scanout-acquire-ram", MFD_CLOEXEC));
    ASSERT_EQ(ftruncate(ram.get(), 1 << 20), 0);
    ASSERT_TRUE(mem_.add_region({0, 1 << 20, 0, 0}, std::move(ram)).ok());
    dev_->set_memory(&mem_);
    dev_->set_acked_features(dev_->offered_features());
    show_3d(kSize);

    // The cluster: a device on the channel showing two buffers in turn.
    cluster_ = UniqueFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, co.listen_path.c_str(), co.listen_path.size());
    ASSERT_EQ(::connect(cluster_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_TRUE(ch::send_packet(cluster_.get(), ch::encode_hello("cluster", 1)).ok());
    for (uint32_t b = 1; b <= 2; ++b) {
      auto shm = buffers::SharedMemory::create("cluster-frame", 64 * 32 * 4);
      ASSERT_TRUE(shm.ok());
      auto map = shm->map();
      ASSERT_TRUE(map.ok());
      for (int i = 0; i < 64 * 32; ++i) reinterpret_cast<uint32_t*>(map->data())[i] = b;
      ch::PieceRef piece{0, 0, 64 * 32 * 4};
      const int fds[1] = {shm->fd()};
      auto pk = ch::encode_buffer(ch::buffer_key(b, 1), {&piece, 1}, fds);
      ASSERT_TRUE(pk.ok());
      ASSERT_TRUE(ch::send_packet(cluster_.get(), (*pk)[0].bytes, (*pk)[0].fds).ok());
    }
  }
  void TearDown() override {
    dev_.reset();
    out_.reset();
    comp_.reset();
    ::rmdir(dir_.c_str());
  }

  // The guest makes 3D resource kRes, size x size XRGB8888, and shows it on scanout 0.
  void show_3d(uint32_t size) {
    proto::ResourceCreate3d rc{};
    rc.hdr = proto::make_hdr(proto::Cmd::kResourceCreate3d);
    rc.resource_id = kRes;
    rc.target = 2;  // PIPE_TEXTURE_2D
    rc.format = 2;  // B8G8R8X8: XRGB8888
    rc.width = size;
    rc.height = size;
    rc.depth = 1;
    rc.array_size = 1;
    ASSERT_EQ(command(rc), uint32_t(proto::Resp::kOkNodata));
    proto::SetScanout ss{};
    ss.hdr = proto::make_hdr(proto::Cmd::kSetScanout);
    ss.resource_id = kRes;
    ss.r.width = size;
    ss.r.height = size;
    ASSERT_EQ(command(ss), uint32_t(proto::Resp::kOkNodata));
  }
  // Runs one control command; its response type (0: none came).
  template <typename T>
  uint32_t command(const T& c) {
    std::vector<uint8_t> req(sizeof c);
    std::memcpy(req.data(), &c, sizeof c);
    responses_.clear();
    dev_->control(++token_, req, 4096);
    return responses_.size() == 1 ? responses_[0] : 0;
  }

  // The guest draws `colour` into the IVI's scanout and flushes it.
  void ivi_draws(uint32_t colour) {
    gpu_->drawing = colour;
    proto::ResourceFlush f{};
    f.hdr = proto::make_hdr(proto::Cmd::kResourceFlush);
    f.resource_id = kRes;
    f.r.width = kSize;
    f.r.height = kSize;
    ASSERT_EQ(command(f), uint32_t(proto::Resp::kOkNodata));
  }
  void cluster_frame(uint32_t buffer) {
    ch::FrameMsg f{};
    f.buffer = ch::buffer_key(buffer, 1);
    f.seq = ++cluster_seq_;
    f.fourcc = uint32_t(buffers::Format::kXRGB8888);
    f.width = 64;
    f.height = 32;
    f.stride = 64 * 4;
    ASSERT_TRUE(ch::send_packet(cluster_.get(), ch::encode_frame(f, {})).ok());
    // RELEASEs for the cluster are not needed here; drain them so the socket never fills.
    while (ch::receive(cluster_.get(), ch::Direction::kToDevice, 0).ok()) {
    }
  }
  // Both sides take what arrived: the device its renderer's fences and RELEASEs, the compositor packets
  // and signalled timelines.
  void pump() {
    dev_->process_renderer();
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(comp_->poll_input(1).ok());
    out_->on_readable();
    dev_->process_releases();
  }
  const display::OutputStats& refresh() {
    clock_.set(std::max(clock_.now(), comp_->next_latch()));
    EXPECT_TRUE(comp_->compose_due().ok());
    return comp_->output_stats(0);
  }
  uint32_t pixel(uint32_t x, uint32_t y) const {
    const display::Canvas& c = comp_->canvas(0);
    uint32_t v;
    std::memcpy(&v, c.data + size_t(y) * c.stride + x * 4, 4);
    return v & 0x00ffffff;
  }

  FakeClock clock_;
  std::string dir_;
  std::unique_ptr<display::Compositor> comp_;
  transport::GuestMemory mem_;
  std::unique_ptr<gpu::ChannelOutput> out_;
  LateGpu* gpu_ = nullptr;
  std::unique_ptr<gpu::GpuDevice> dev_;
  std::vector<uint32_t> responses_;
  uint64_t token_ = 0;
  UniqueFd cluster_;
  uint64_t cluster_seq_ = 0;
};

// Each 3D flush leaves the device as a frame with the next acquire point of its scanout's timeline,
// unsignalled until the renderer's fence completes and the pixels are read back; the compositor shows
// the frame only then.
TEST_F(ScanoutAcquire, ThreeDFramesAreShownOnlyOnceTheirFenceCompletes) {
  cluster_frame(1);
  ivi_draws(0x0000ff);
  pump();
  EXPECT_EQ(out_->stats().fenced_frames, 1u);
  EXPECT_EQ(gpu_->reads, 0) << "nothing is read back before the GPU is done";
  refresh();
  EXPECT_NE(pixel(45, 10), 0x0000ffu) << "not shown before its fence";
  gpu_->finish(1);
  pump();
  EXPECT_EQ(gpu_->reads, 1);
  refresh();
  EXPECT_EQ(pixel(45, 10), 0x0000ffu);
  EXPECT_EQ(pixel(0, 0), 1u);
  for (const auto& c : comp_->connections())
    if (c.vm == "ivi") {
      EXPECT_EQ(c.fenced_frames, 1u);
      EXPECT_TRUE(c.connected);
    }
}

// Mixed criticality with a real producer: the IVI's GPU is late by many refreshes, then catches up.
// Every refresh the cluster shows its own new frame with no missed deadline and the output never waits
// for the IVI; the IVI's layer keeps its last complete frame and shows the newest complete one as soon
// as it is complete.
TEST_F(ScanoutAcquire, AnIviWhoseGpuIsLateNeverDelaysTheCluster) {
  constexpr int kFrames = 60;
  uint32_t shown = 0;  // the IVI colour on screen
  for (int n = 0; n < kFrames; ++n) {
    cluster_frame(1 + n % 2);
    const uint32_t colour = 0x000100u * uint32_t(n + 1);
    ivi_draws(colour);
    if (n % 10 == 9) {  // every tenth refresh the GPU finishes all it had
      gpu_->finish(gpu_->unfinished());
      shown = colour;
    }
    pump();
    const auto& st = refresh();
    ASSERT_EQ(pixel(0, 0), uint32_t(1 + n % 2)) << "refresh " << n;
    ASSERT_EQ(st.layers[0].new_frames, uint64_t(n + 1));
    ASSERT_EQ(st.missed_deadlines, 0u);
    ASSERT_FALSE(st.layers[0].fallback);
    if (shown) {
      ASSERT_EQ(pixel(45, 10), shown) << "refresh " << n;
    }
  }
  EXPECT_EQ(comp_->output_stats(0).waits, 0u);  // never held for the IVI
  EXPECT_EQ(out_->stats().fenced_frames, uint64_t(kFrames));
  EXPECT_EQ(comp_->output_stats(0).layers[1].new_frames, uint64_t(kFrames / 10));
  EXPECT_FALSE(out_->stats().disconnects);
}

// A guest that floods flushes while its GPU is behind cannot grow the device's list of waiting
// read-backs without bound: past 16 the read-back is done at once (the frame complete on arrival).
TEST_F(ScanoutAcquire, AFloodOfFlushesAheadOfTheGpuIsBounded) {
  for (int n = 0; n < 40; ++n) ivi_draws(0x000100u * uint32_t(n + 1));
  const auto st = dev_->stats();
  EXPECT_EQ(st.fenced_readbacks, 16u);
  EXPECT_EQ(st.readbacks_over_cap, 24u);
  EXPECT_EQ(gpu_->reads, 24);
  EXPECT_EQ(gpu_->unfinished(), 16u);
  gpu_->finish(16);
  pump();
  EXPECT_EQ(gpu_->reads, 40);
  ivi_draws(0x0000ff);
  EXPECT_EQ(dev_->stats().fenced_readbacks, 17u) << "below the cap again: fenced";
}

// The guest destroys the resource while its read-back waits, and makes a smaller one with the same id:
// the old read-back is not done into the new resource's host copy (its rectangle would not fit it).
TEST_F(ScanoutAcquire, AReadBackOfAResourceGoneIsNotDoneIntoItsSuccessor) {
  ivi_draws(0x00ff00);
  proto::ResourceUnref u{};
  u.hdr = proto::make_hdr(proto::Cmd::kResourceUnref);
  u.resource_id = kRes;
  ASSERT_EQ(command(u), uint32_t(proto::Resp::kOkNodata));
  show_3d(8);
  gpu_->finish(1);
  pump();
  EXPECT_EQ(gpu_->reads, 0) << "the 32x32 read-back of the old resource into the new 8x8 one";
}

// A device reset drops the resources, and the read-backs still waiting with them: the acquire points
// those frames carry are signalled all the same, so the compositor never waits for frames that cannot
// come (it shows the newest, with whatever its host copy held).
TEST_F(ScanoutAcquire, AResetSignalsThePointsOfReadBacksStillWaiting) {
  cluster_frame(1);
  ivi_draws(0x00ff00);
  ivi_draws(0x00ff01);
  pump();
  refresh();
  EXPECT_EQ(comp_->output_stats(0).layers[1].new_frames, 0u);
  dev_->reset();
  EXPECT_EQ(gpu_->reads, 0) << "the resource is gone: nothing to read";
  pump();
  cluster_frame(2);
  pump();
  refresh();
  EXPECT_EQ(comp_->output_stats(0).layers[1].new_frames, 1u);
  for (const auto& c : comp_->connections())
    if (c.vm == "ivi") {
      EXPECT_EQ(c.fenced_frames, 2u);
      EXPECT_TRUE(c.connected);
    }
}

}  // namespace
}  // namespace canopy
