// The device model with the virgl renderer: virglrenderer on this machine's OpenGL (llvmpipe in CI),
// driven with the commands a guest's Mesa virgl driver sends, and a virgl command stream of our own.
#include "canopy/gpu/renderer_virgl.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>

#include "egl_probe.h"
#include "gpu_test_util.h"

namespace canopy::gpu {
namespace {

using proto::Cmd;
using proto::Resp;
using testing::Harness;

uint32_t R(Resp r) { return uint32_t(r); }

// The virgl protocol's numbers (virglrenderer 0.10 src/virgl_protocol.h and virgl_hw.h, Gallium's
// p_defines.h): the library installs none of these headers.
constexpr uint32_t kCcmdCreateObject = 1, kCcmdSetFramebufferState = 5, kCcmdClear = 7;
constexpr uint32_t kObjectSurface = 8;
constexpr uint32_t kTargetTexture2d = 2, kFormatB8G8R8X8 = 2;
constexpr uint32_t kBindRenderTarget = 1u << 1, kBindSamplerView = 1u << 3, kBindScanout = 1u << 18;
constexpr uint32_t kClearColor0 = 1u << 2;
uint32_t cmd0(uint32_t cmd, uint32_t obj, uint32_t len) { return cmd | obj << 8 | len << 16; }
uint32_t f32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

constexpr uint32_t kCtx = 3, kRes = 7, kW = 64, kH = 48;
constexpr uint64_t kBacking = 0x100000;

class VirglDevice : public ::testing::Test {
 protected:
  virtual VirglOptions options() const { return {}; }
  void SetUp() override {
    if (!virgl_available()) GTEST_SKIP() << "built without virglrenderer";
    auto r = make_virgl_renderer(options());
    ASSERT_TRUE(r.ok()) << r.error().what;  // CI has EGL on llvmpipe: a failure here is a failure
    GpuOptions o;
    o.features |= proto::kFVirgl;
    renderer = r->get();
    h = std::make_unique<Harness>(o, HeadlessOutput::Options{.checksum = true}, std::move(*r));
  }

  // Runs the renderer until token t is answered (5 s at most).
  bool wait(uint64_t t) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!h->answered(t) && std::chrono::steady_clock::now() < end) {
      pollfd p{h->dev->renderer_fd(), POLLIN, 0};
      (void)::poll(&p, 1, 10);
      h->dev->process_renderer();
    }
    return h->answered(t);
  }

  uint32_t ctx_create(uint32_t ctx, uint32_t capset) {
    proto::CtxCreate c{};
    c.hdr = proto::make_hdr(Cmd::kCtxCreate, 0, 0, ctx);
    c.context_init = capset;
    c.nlen = 4;
    std::memcpy(c.debug_name, "test", 4);
    return h->call(c);
  }
  proto::ResourceCreate3d create_3d_cmd(uint32_t id, uint32_t w, uint32_t hgt) {
    proto::ResourceCreate3d c{};
    c.hdr = proto::make_hdr(Cmd::kResourceCreate3d);
    c.resource_id = id;
    c.target = kTargetTexture2d;
    c.format = kFormatB8G8R8X8;
    c.bind = kBindRenderTarget | kBindSamplerView | kBindScanout;
    c.width = w;
    c.height = hgt;
    c.depth = 1;
    c.array_size = 1;
    return c;
  }
  uint32_t ctx_attach(uint32_t ctx, uint32_t res) {
    proto::CtxResource a{};
    a.hdr = proto::make_hdr(Cmd::kCtxAttachResource, 0, 0, ctx);
    a.resource_id = res;
    return h->call(a);
  }
  uint64_t submit(uint32_t ctx, const std::vector<uint32_t>& words, uint32_t flags = 0, uint64_t fence = 0) {
    proto::CmdSubmit s{};
    s.hdr = proto::make_hdr(Cmd::kSubmit3d, flags, fence, ctx);
    s.size = uint32_t(words.size() * 4);
    return h->send(s, std::span(reinterpret_cast<const uint8_t*>(words.data()), words.size() * 4));
  }
  proto::TransferHost3d transfer_cmd(Cmd type, uint32_t res, uint32_t w, uint32_t hgt, uint32_t flags = 0,
                                     uint64_t fence = 0) {
    proto::TransferHost3d t{};
    t.hdr = proto::make_hdr(type, flags, fence, kCtx);
    t.resource_id = res;
    t.box.w = w;
    t.box.h = hgt;
    t.box.d = 1;
    t.stride = w * 4;
    return t;
  }
  // A context with a kW x kH render target backed by guest memory at kBacking.
  void render_target() {
    ASSERT_EQ(ctx_create(kCtx, 2), R(Resp::kOkNodata));
    ASSERT_EQ(h->call(create_3d_cmd(kRes, kW, kH)), R(Resp::kOkNodata));
    ASSERT_EQ(h->attach(kRes, {Harness::entry(kBacking, kW * kH * 4)}), R(Resp::kOkNodata));
    ASSERT_EQ(ctx_attach(kCtx, kRes), R(Resp::kOkNodata));
  }
  // Surface 1 on the resource, bound as the only colour buffer, cleared to (r, g, b).
  std::vector<uint32_t> clear_stream(float r, float g, float b) {
    std::vector<uint32_t> w = {cmd0(kCcmdCreateObject, kObjectSurface, 5),
                               1,
                               kRes,
                               kFormatB8G8R8X8,
                               0,
                               0,
                               cmd0(kCcmdSetFramebufferState, 0, 3),
                               1,
                               0,
                               1,
                               cmd0(kCcmdClear, 0, 8),
                               kClearColor0,
                               f32(r),
                               f32(g),
                               f32(b),
                               f32(1.0f)};
    const double depth = 1.0;
    uint32_t d[2];
    std::memcpy(d, &depth, 8);
    w.push_back(d[0]);
    w.push_back(d[1]);
    w.push_back(0);  // stencil
    return w;
  }

  std::unique_ptr<Harness> h;
  Renderer* renderer = nullptr;  // h's

  // A clear through our command stream, read back with a fenced TRANSFER_FROM_HOST_3D, scanned out.
  void clear_read_back_and_scan_out() {
    render_target();
    const uint64_t s = submit(kCtx, clear_stream(1.0f, 0.0f, 0.0f));
    ASSERT_EQ(h->response(s).type.get(), R(Resp::kOkNodata));
    h->fill_ram(kBacking, kW * kH * 4, 0x12345678);
    const uint64_t t = h->send(transfer_cmd(Cmd::kTransferFromHost3d, kRes, kW, kH, proto::kFlagFence, 11));
    EXPECT_FALSE(h->answered(t));  // the fence is the renderer's: nothing answers it before poll()
    ASSERT_TRUE(wait(t));
    EXPECT_EQ(h->response(t).type.get(), R(Resp::kOkNodata));
    EXPECT_EQ(h->response(t).fence_id.get(), 11u);
    std::vector<uint32_t> px(kW * kH);
    ASSERT_TRUE(h->mem.read(kBacking, px.data(), px.size() * 4).ok());
    size_t red = 0;
    for (uint32_t p : px) red += (p & 0x00ffffff) == 0x00ff0000;
    EXPECT_EQ(red, px.size()) << "first pixel " << std::hex << px[0];

    ASSERT_EQ(h->set_scanout(0, kRes, kW, kH), R(Resp::kOkNodata));
    const uint64_t before = h->dev->stats().bytes_copied;
    const uint64_t f = h->send(h->flush_cmd(kRes, kW, kH, proto::kFlagFence, 12));
    ASSERT_TRUE(wait(f));
    const auto st = h->out.stats(0);
    EXPECT_EQ(st.frames, 1u);
    EXPECT_EQ(st.last_width, kW);
    EXPECT_EQ(st.last_crc, image_crc32(reinterpret_cast<const uint8_t*>(px.data()), kW * 4, kH, kW * 4));
    EXPECT_EQ(st.bytes_copied, uint64_t(kW) * kH * 4);
    EXPECT_EQ(h->dev->stats().bytes_copied - before, uint64_t(kW) * kH * 4);

    // Cleared again to blue: the next flush shows it.
    ASSERT_EQ(h->response(submit(kCtx, clear_stream(0.0f, 0.0f, 1.0f))).type.get(), R(Resp::kOkNodata));
    ASSERT_TRUE(wait(h->send(h->flush_cmd(kRes, kW, kH, proto::kFlagFence, 13))));
    std::vector<uint32_t> blue(kW * kH, 0xff0000ff);
    EXPECT_EQ(h->out.stats(0).last_crc, image_crc32(reinterpret_cast<const uint8_t*>(blue.data()), kW * 4, kH, kW * 4));
  }
};

TEST_F(VirglDevice, OffersVirglWithTheVirglAndVirgl2Capsets) {
  EXPECT_TRUE(h->dev->offered_features() & proto::kFVirgl);
  EXPECT_EQ(h->dev->config().num_capsets.get(), 2u);
  EXPECT_GE(h->dev->renderer_fd(), 0);
  for (uint32_t index = 0; index < 2; ++index) {
    proto::GetCapsetInfo g{};
    g.hdr = proto::make_hdr(Cmd::kGetCapsetInfo);
    g.capset_index = index;
    const uint64_t t = h->send(g);
    ASSERT_EQ(h->response(t).type.get(), R(Resp::kOkCapsetInfo));
    proto::RespCapsetInfo info{};
    ASSERT_EQ(h->responses[t].size(), sizeof info);
    std::memcpy(&info, h->responses[t].data(), sizeof info);
    EXPECT_EQ(info.capset_id.get(), index + 1);
    EXPECT_GE(info.capset_max_version.get(), 1u);
    EXPECT_GT(info.capset_max_size.get(), 4u);
    proto::GetCapset c{};
    c.hdr = proto::make_hdr(Cmd::kGetCapset);
    c.capset_id = info.capset_id;
    c.capset_version = info.capset_max_version;
    const uint64_t t2 = h->send(c);
    ASSERT_EQ(h->response(t2).type.get(), R(Resp::kOkCapset));
    ASSERT_EQ(h->responses[t2].size(), sizeof(proto::CtrlHdr) + info.capset_max_size.get());
    uint32_t max_version;  // both capsets start with the version they describe
    std::memcpy(&max_version, h->responses[t2].data() + sizeof(proto::CtrlHdr), 4);
    EXPECT_EQ(max_version, info.capset_max_version.get());
    c.capset_version = 0;  // what Mesa's virgl driver asks for through Linux (found with kmscube)
    EXPECT_EQ(h->call(c), R(Resp::kOkCapset));
    c.capset_version = info.capset_max_version.get() + 1;
    EXPECT_EQ(h->call(c), R(Resp::kErrInvalidParameter));
  }
  proto::GetCapsetInfo g{};
  g.hdr = proto::make_hdr(Cmd::kGetCapsetInfo);
  g.capset_index = 2;
  EXPECT_EQ(h->call(g), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(ctx_create(1, 4), R(Resp::kErrInvalidParameter));  // venus: not served by this renderer
  EXPECT_EQ(ctx_create(1, 1), R(Resp::kOkNodata));
  EXPECT_EQ(ctx_create(2, 2), R(Resp::kOkNodata));
}

// The whole 3D path: a command stream clears the render target on the host's GPU, a fenced
// TRANSFER_FROM_HOST_3D brings the pixels into guest memory and is answered only once the renderer's
// fence has signalled, and a scanout of the resource shows them (a counted read-back copy).
TEST_F(VirglDevice, ClearsARenderTargetReadsItBackAndScansItOut) { clear_read_back_and_scan_out(); }

// An output that waits for acquire points itself (as the compositor's channel does): it keeps each frame
// as delivered and reads it only when asked.
class WaitingOutput : public HeadlessOutput {
 public:
  bool takes_acquire_fences() const override { return true; }
  void on_frame(std::shared_ptr<Frame> f) override { frames.push_back(std::move(f)); }
  std::vector<std::shared_ptr<Frame>> frames;
};

// For such an output a 3D scanout's flush does not read the pixels back at once: the frame leaves with the
// next point of its scanout's acquire timeline, the device reads back once virglrenderer's fence after
// the GPU work so far has signalled, and only then signals the point; the frame's pixels are complete.
TEST_F(VirglDevice, ThreeDFramesForAnOutputThatWaitsCarryAcquirePointsSignalledAfterTheFence) {
  h.reset();  // one virgl renderer per process: the fixture's goes first
  auto r = make_virgl_renderer({});
  ASSERT_TRUE(r.ok()) << r.error().what;
  WaitingOutput waiting;
  GpuOptions o;
  o.features |= proto::kFVirgl;
  h = std::make_unique<Harness>(o, HeadlessOutput::Options{}, std::move(*r), &waiting);
  render_target();
  ASSERT_EQ(h->set_scanout(0, kRes, kW, kH), R(Resp::kOkNodata));
  auto colour_of = [&](const Frame& f) -> uint32_t {
    auto view = f.map();
    if (!view.ok()) return 0xdeadbeef;
    uint32_t first = 0, odd = 0;
    std::memcpy(&first, (*view)->data() + f.offset, 4);
    for (uint32_t y = 0; y < f.height; ++y)
      for (uint32_t x = 0; x < f.width; ++x) {
        uint32_t p;
        std::memcpy(&p, (*view)->data() + f.offset + uint64_t(y) * f.stride + x * 4, 4);
        odd += p != first;
      }
    return odd ? 0xdeadbeef : first & 0x00ffffff;
  };
  const std::pair<std::vector<float>, uint32_t> clears[] = {{{1.0f, 0.0f, 0.0f}, 0xff0000},
                                                            {{0.0f, 0.0f, 1.0f}, 0x0000ff}};
  for (size_t n = 0; n < 2; ++n) {
    const auto& [rgb, want] = clears[n];
    ASSERT_EQ(h->response(submit(kCtx, clear_stream(rgb[0], rgb[1], rgb[2]))).type.get(), R(Resp::kOkNodata));
    const uint64_t copied = h->dev->stats().bytes_copied;
    ASSERT_EQ(h->call(h->flush_cmd(kRes, kW, kH)), R(Resp::kOkNodata));
    ASSERT_EQ(waiting.frames.size(), n + 1);
    const auto f = waiting.frames.back();
    ASSERT_TRUE(f->acquire_timeline);
    EXPECT_EQ(f->acquire_point, n + 1);
    EXPECT_LT(f->acquire_timeline->signalled(), f->acquire_point) << "read back before the device saw the fence";
    EXPECT_EQ(h->dev->stats().bytes_copied - copied, uint64_t(kW) * kH * 4) << "the read-back is counted";
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (f->acquire_timeline->signalled() < f->acquire_point && std::chrono::steady_clock::now() < end) {
      pollfd p{h->dev->renderer_fd(), POLLIN, 0};
      (void)::poll(&p, 1, 10);
      h->dev->process_renderer();
    }
    ASSERT_TRUE(f->wait_acquire(0)) << "the fence did not signal within 5 s";
    EXPECT_EQ(colour_of(*f), want) << "frame " << n;
  }
  EXPECT_EQ(waiting.frames[0]->acquire_timeline, waiting.frames[1]->acquire_timeline) << "one timeline per scanout";
  waiting.frames.clear();
  h.reset();  // before `waiting`, which the device calls until it goes
}

TEST_F(VirglDevice, UploadsGuestPixelsAndReadsThemBack) {
  render_target();
  std::vector<uint32_t> in(kW * kH);
  for (uint32_t i = 0; i < in.size(); ++i) in[i] = 0xff000000u | (i * 2654435761u >> 8);
  ASSERT_TRUE(h->mem.write(kBacking, in.data(), in.size() * 4).ok());
  ASSERT_EQ(h->call(transfer_cmd(Cmd::kTransferToHost3d, kRes, kW, kH)), R(Resp::kOkNodata));
  h->fill_ram(kBacking, kW * kH * 4, 0);
  const uint64_t t = h->send(transfer_cmd(Cmd::kTransferFromHost3d, kRes, kW, kH, proto::kFlagFence, 5));
  ASSERT_TRUE(wait(t));
  std::vector<uint32_t> out(kW * kH);
  ASSERT_TRUE(h->mem.read(kBacking, out.data(), out.size() * 4).ok());
  EXPECT_EQ(out, in);
  // virglrenderer read and wrote the guest's pages in place: only the test's own write, fill and read
  // went through GuestMemory's copies.
  EXPECT_EQ(h->mem.bytes_copied(), 3u * kW * kH * 4);
}

// A memory-table change reaches the renderer before the old mapping goes: virglrenderer's iovecs (venus
// reads guest blobs from its own threads) point into the new mapping as soon as the device is told, not
// at the next command. A table that names the same file again (QEMU resends its table with fresh
// descriptors) keeps the mapping, and the iovecs stay as they were.
TEST_F(VirglDevice, AMemoryTableChangeReHandsTheRenderersIovecsAtOnce) {
  render_target();
  const size_t bytes = size_t{kW} * kH * 4;
  const auto first = renderer->backing_3d(kRes);
  ASSERT_EQ(first.size(), 1u);
  auto host = h->mem.host_ranges(kBacking, bytes);
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(first[0].base, (*host)[0].base);
  {
    auto file = h->mem.file_ranges(0, 1);
    ASSERT_TRUE(file.ok());
    std::vector<transport::GuestMemory::TableEntry> same;
    same.push_back({{0, Harness::kRam, 0, 0}, UniqueFd(::fcntl((*file)[0].fd, F_DUPFD_CLOEXEC, 0))});
    transport::GuestMemory retired;
    const uint64_t layout = h->mem.layout();
    ASSERT_TRUE(h->mem.replace_table(std::move(same), retired).ok());
    EXPECT_EQ(retired.region_count(), 0u);
    EXPECT_EQ(h->mem.layout(), layout);
    h->dev->memory_changed();
    ASSERT_EQ(renderer->backing_3d(kRes).size(), 1u);
    EXPECT_EQ(renderer->backing_3d(kRes)[0].base, first[0].base);
  }
  // Another file: re-handed when the device is told, while the old mapping is still there.
  UniqueFd other(memfd_create("gpu-test-ram-2", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(other.get(), off_t(Harness::kRam)), 0);
  std::vector<transport::GuestMemory::TableEntry> moved;
  moved.push_back({{0, Harness::kRam, 0, 0}, std::move(other)});
  transport::GuestMemory retired;
  ASSERT_TRUE(h->mem.replace_table(std::move(moved), retired).ok());
  EXPECT_EQ(retired.region_count(), 1u);
  h->dev->memory_changed();
  const auto now = renderer->backing_3d(kRes);
  host = h->mem.host_ranges(kBacking, bytes);
  ASSERT_TRUE(host.ok());
  ASSERT_EQ(now.size(), 1u);
  EXPECT_EQ(now[0].base, (*host)[0].base);
  EXPECT_NE(now[0].base, first[0].base);
  retired = transport::GuestMemory();  // the old mapping goes
  // The renderer works from the new memory: pixels uploaded from it come back.
  std::vector<uint32_t> in(kW * kH);
  for (uint32_t i = 0; i < in.size(); ++i) in[i] = 0xff000000u | (i * 40503u);
  ASSERT_TRUE(h->mem.write(kBacking, in.data(), bytes).ok());
  ASSERT_EQ(h->call(transfer_cmd(Cmd::kTransferToHost3d, kRes, kW, kH)), R(Resp::kOkNodata));
  h->fill_ram(kBacking, bytes, 0);
  const uint64_t t = h->send(transfer_cmd(Cmd::kTransferFromHost3d, kRes, kW, kH, proto::kFlagFence, 5));
  ASSERT_TRUE(wait(t));
  std::vector<uint32_t> out(kW * kH);
  ASSERT_TRUE(h->mem.read(kBacking, out.data(), bytes).ok());
  EXPECT_EQ(out, in);
}

TEST_F(VirglDevice, RefusesBadThreeDCommandsAndKeepsServing) {
  ASSERT_EQ(ctx_create(kCtx, 2), R(Resp::kOkNodata));
  auto c = create_3d_cmd(kRes, 0, kH);
  EXPECT_EQ(h->call(c), R(Resp::kErrInvalidParameter));  // width 0
  c = create_3d_cmd(kRes, kW, kH);
  c.target = 99;
  EXPECT_EQ(h->call(c), R(Resp::kErrInvalidParameter));  // refused by virglrenderer
  c = create_3d_cmd(0, kW, kH);
  EXPECT_EQ(h->call(c), R(Resp::kErrInvalidResourceId));
  ASSERT_EQ(h->call(create_3d_cmd(kRes, kW, kH)), R(Resp::kOkNodata));
  EXPECT_EQ(h->call(create_3d_cmd(kRes, kW, kH)), R(Resp::kErrInvalidResourceId));  // taken
  // No backing yet; then a box past the resource; an unknown resource; a 2D transfer on a 3D one.
  EXPECT_EQ(h->call(transfer_cmd(Cmd::kTransferFromHost3d, kRes, kW, kH)), R(Resp::kErrUnspec));
  ASSERT_EQ(h->attach(kRes, {Harness::entry(kBacking, kW * kH * 4)}), R(Resp::kOkNodata));
  ASSERT_EQ(ctx_attach(kCtx, kRes), R(Resp::kOkNodata));
  EXPECT_EQ(h->call(transfer_cmd(Cmd::kTransferFromHost3d, kRes, kW + 1, kH)), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h->call(transfer_cmd(Cmd::kTransferFromHost3d, 99, kW, kH)), R(Resp::kErrInvalidResourceId));
  EXPECT_EQ(h->transfer(kRes, kW, kH), R(Resp::kErrInvalidParameter));
  // Streams: to an unknown context, not in dwords, one virglrenderer refuses (an unknown command).
  EXPECT_EQ(h->response(submit(9, clear_stream(1, 1, 1))).type.get(), R(Resp::kErrInvalidContextId));
  proto::CmdSubmit odd{};
  odd.hdr = proto::make_hdr(Cmd::kSubmit3d, 0, 0, kCtx);
  odd.size = 3;
  const uint8_t three[3] = {1, 2, 3};
  EXPECT_EQ(h->call(odd, three), R(Resp::kErrInvalidParameter));
  EXPECT_NE(h->response(submit(kCtx, {cmd0(250, 0, 0)})).type.get(), 0u);
  // virglrenderer marks a context that erred as lost (its later streams are refused), but the device
  // and the VM's other contexts go on: a new context clears and reads back.
  ASSERT_EQ(ctx_create(kCtx + 1, 2), R(Resp::kOkNodata));
  ASSERT_EQ(ctx_attach(kCtx + 1, kRes), R(Resp::kOkNodata));
  ASSERT_EQ(h->response(submit(kCtx + 1, clear_stream(0, 1, 0))).type.get(), R(Resp::kOkNodata));
  auto rb = transfer_cmd(Cmd::kTransferFromHost3d, kRes, kW, kH, proto::kFlagFence, 1);
  rb.hdr.ctx_id = kCtx + 1;
  ASSERT_TRUE(wait(h->send(rb)));
  uint32_t p = 0;
  ASSERT_TRUE(h->mem.read(kBacking, &p, 4).ok());
  EXPECT_EQ(p & 0x00ffffff, 0x0000ff00u);
}

// Which way up a 3D resource reaches the display: with VIRGL_RESOURCE_Y_0_TOP (Linux's dumb buffers)
// row 0 is the top, as the guest wrote it; without it (what a guest's GL driver renders) row 0 is
// OpenGL's bottom, so the display shows the rows in reverse, as QEMU's virgl display does.
TEST_F(VirglDevice, ScanoutsFollowTheResourcesWayUp) {
  ASSERT_EQ(ctx_create(kCtx, 2), R(Resp::kOkNodata));
  std::vector<uint32_t> rows(kW * kH), reversed(kW * kH);
  for (uint32_t y = 0; y < kH; ++y)
    for (uint32_t x = 0; x < kW; ++x) {
      rows[y * kW + x] = 0xff000000u | y << 16 | x;
      reversed[(kH - 1 - y) * kW + x] = rows[y * kW + x];
    }
  const uint32_t crc_rows = image_crc32(reinterpret_cast<const uint8_t*>(rows.data()), kW * 4, kH, kW * 4);
  const uint32_t crc_reversed = image_crc32(reinterpret_cast<const uint8_t*>(reversed.data()), kW * 4, kH, kW * 4);
  for (uint32_t flags : {proto::kResourceFlagY0Top, 0u}) {
    const uint32_t id = flags ? 30 : 31;
    auto c = create_3d_cmd(id, kW, kH);
    c.flags = flags;
    ASSERT_EQ(h->call(c), R(Resp::kOkNodata));
    ASSERT_EQ(h->attach(id, {Harness::entry(kBacking, kW * kH * 4)}), R(Resp::kOkNodata));
    ASSERT_EQ(ctx_attach(kCtx, id), R(Resp::kOkNodata));
    ASSERT_TRUE(h->mem.write(kBacking, rows.data(), rows.size() * 4).ok());
    ASSERT_EQ(h->call(transfer_cmd(Cmd::kTransferToHost3d, id, kW, kH)), R(Resp::kOkNodata));
    ASSERT_EQ(h->set_scanout(0, id, kW, kH), R(Resp::kOkNodata));
    ASSERT_TRUE(wait(h->send(h->flush_cmd(id, kW, kH, proto::kFlagFence, id))));
    EXPECT_EQ(h->out.stats(0).last_crc, flags ? crc_rows : crc_reversed) << "flags " << flags;
    // A damaged band at the top of the display comes from the matching rows too.
    ASSERT_TRUE(wait(h->send(h->flush_cmd(id, kW, 8, proto::kFlagFence, id + 100))));
    EXPECT_EQ(h->out.stats(0).last_crc, flags ? crc_rows : crc_reversed) << "band, flags " << flags;
  }
}

// A context destroyed while a fence on one of its rings is outstanding: virglrenderer forgets the fence,
// the guest still waits for the answer.
TEST_F(VirglDevice, RingFencesOfADestroyedContextAreAnswered) {
  render_target();
  const uint64_t t = submit(kCtx, clear_stream(1, 0, 0), proto::kFlagFence | proto::kFlagInfoRingIdx, 41);
  EXPECT_FALSE(h->answered(t));
  proto::CtxDestroy d{};
  d.hdr = proto::make_hdr(Cmd::kCtxDestroy, 0, 0, kCtx);
  ASSERT_EQ(h->call(d), R(Resp::kOkNodata));
  ASSERT_TRUE(wait(t));
  EXPECT_EQ(h->response(t).type.get(), R(Resp::kOkNodata));
  EXPECT_EQ(h->response(t).fence_id.get(), 41u);
}

// Mesa's virgl driver makes buffers (PIPE_BUFFER) whose width is their size in bytes, well past any
// texture dimension (glmark2 refused them before); the 3D budget caps what a guest can have made.
TEST_F(VirglDevice, BuffersAreSizedInBytesAndTheThreeDBudgetHolds) {
  auto buf = create_3d_cmd(20, 1 << 20, 1);
  buf.target = 0;
  buf.format = 64;     // VIRGL_FORMAT_R8_UNORM, as Mesa's buffers
  buf.bind = 1u << 4;  // VIRGL_BIND_VERTEX_BUFFER
  EXPECT_EQ(h->call(buf), R(Resp::kOkNodata));
  EXPECT_EQ(h->dev->stats().gpu_bytes, 1u << 20);
  buf.resource_id = 21;
  buf.height = 2;
  EXPECT_EQ(h->call(buf), R(Resp::kErrInvalidParameter));  // a buffer is one row
  h.reset();
  auto r = make_virgl_renderer();
  ASSERT_TRUE(r.ok());
  GpuOptions o;
  o.features |= proto::kFVirgl;
  o.caps.max_3d_bytes = 4 * kW * kH + 100;
  h = std::make_unique<Harness>(o, HeadlessOutput::Options{}, std::move(*r));
  // The same texture with its mip chain costs a third more: over the budget (it was charged as one level).
  auto mipped = create_3d_cmd(kRes, kW, kH);
  mipped.last_level = 6;
  EXPECT_EQ(h->call(mipped), R(Resp::kErrOutOfMemory));
  EXPECT_EQ(h->call(create_3d_cmd(kRes, kW, kH)), R(Resp::kOkNodata));
  EXPECT_EQ(h->call(create_3d_cmd(kRes + 1, 8, 8)), R(Resp::kErrOutOfMemory));  // 256 bytes over the 100 left
  proto::ResourceUnref u{};
  u.hdr = proto::make_hdr(Cmd::kResourceUnref);
  u.resource_id = kRes;
  ASSERT_EQ(h->call(u), R(Resp::kOkNodata));
  EXPECT_EQ(h->dev->stats().gpu_bytes, 0u);
  EXPECT_EQ(h->call(create_3d_cmd(kRes + 1, 8, 8)), R(Resp::kOkNodata));
}

// Found by fuzz_gpu_3d: a fenced CTX_DESTROY on a ring of the context it destroys left no ring to put
// the renderer's fence on; it goes on the global timeline and is answered.
TEST_F(VirglDevice, FencedContextDestroyOnItsOwnRingIsAnswered) {
  ASSERT_EQ(ctx_create(kCtx, 2), R(Resp::kOkNodata));
  proto::CtxDestroy d{};
  d.hdr = proto::make_hdr(Cmd::kCtxDestroy, proto::kFlagFence | proto::kFlagInfoRingIdx, 21, kCtx, 0);
  const uint64_t t = h->send(d);
  ASSERT_TRUE(wait(t));
  EXPECT_EQ(h->response(t).type.get(), R(Resp::kOkNodata));
  EXPECT_EQ(h->response(t).fence_id.get(), 21u);
  EXPECT_EQ(ctx_create(kCtx, 2), R(Resp::kOkNodata));  // the id is free again
}

TEST_F(VirglDevice, ResetDropsContextsAndResourcesInTheRenderer) {
  render_target();
  h->dev->reset();
  h->dev->set_acked_features(h->dev->offered_features());
  EXPECT_EQ(h->dev->stats().resources, 0u);
  // The same ids are free again in virglrenderer too.
  render_target();
  ASSERT_EQ(h->response(submit(kCtx, clear_stream(1, 1, 1))).type.get(), R(Resp::kOkNodata));
}

// VirglOptions::priority: canopy-gpu's own EGL display and contexts, asked for at a priority level.
// Where the display has EGL_IMG_context_priority (an independent look at it: egl_probe.h) the contexts
// must get the level asked for; only where it lacks the extension (llvmpipe) the default, said so.
// Either way everything renders as through virglrenderer's own EGL setup.
class VirglOwnContexts : public VirglDevice {
 protected:
  VirglOptions options() const override {
    VirglOptions o;
    o.priority = VirglOptions::Priority::kHigh;
    return o;
  }
};

TEST_F(VirglOwnContexts, RenderFenceAndScanOutWithCanopysOwnContexts) {
  const std::string granted = virgl_priority_granted();
  std::fprintf(stderr, "GL context priority granted: %s\n", granted.c_str());
  const auto ext = test_support::egl_display_extensions();
  ASSERT_TRUE(ext.has_value()) << "the renderer started, yet no EGL display initialises";
  if (ext->find("EGL_IMG_context_priority") != std::string::npos) {
    EXPECT_EQ(granted, "high");
  } else {
    EXPECT_EQ(granted, "default (driver has no EGL_IMG_context_priority)");
  }
  clear_read_back_and_scan_out();
}

TEST(VirglRenderer, OnePerProcess) {
  if (!virgl_available()) GTEST_SKIP() << "built without virglrenderer";
  auto a = make_virgl_renderer();
  ASSERT_TRUE(a.ok()) << a.error().what;
  auto b = make_virgl_renderer();
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().code, Errc::kState);
  a->reset();
  auto c = make_virgl_renderer();  // after the first one is gone, a new one starts
  EXPECT_TRUE(c.ok());
}

// ---- venus: host blobs mapped into the host-visible region ---------------------------------------

// The host-visible region as canopy-vmm keeps it: a reserved, inaccessible range of this process into
// which map() puts the blob's file (MAP_FIXED) and unmap() puts the reservation back.
class TestRegion final : public HostVisibleRegion {
 public:
  explicit TestRegion(uint64_t size) : size_(size) {
    base_ = static_cast<uint8_t*>(mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  }
  ~TestRegion() override { munmap(base_, size_); }
  uint64_t size() const override { return size_; }
  bool usable() const override { return true; }
  Status map(uint64_t offset, int fd, uint64_t fd_offset, uint64_t len, bool writable) override {
    maps.emplace(offset, len);
    void* p = mmap(base_ + offset, len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED | MAP_FIXED, fd,
                   off_t(fd_offset));
    return p == MAP_FAILED ? Status(make_error(Errc::kIo, "mmap failed", errno)) : Status();
  }
  Status unmap(uint64_t offset, uint64_t len) override {
    if (fail_unmaps) return make_error(Errc::kIo, "front-end refused");
    auto it = maps.find(offset);
    if (it == maps.end() || it->second != len) return make_error(Errc::kInvalidArgument, "no such mapping");
    maps.erase(it);
    mmap(base_ + offset, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    return {};
  }
  uint8_t* at(uint64_t offset) { return base_ + offset; }
  std::map<uint64_t, uint64_t> maps;
  bool fail_unmaps = false;

 private:
  uint64_t size_;
  uint8_t* base_;
};

constexpr uint32_t kCapsetVenus = 4;

class VenusDevice : public VirglDevice {
 protected:
  void SetUp() override {
    if (!virgl_available()) GTEST_SKIP() << "built without virglrenderer";
    VirglOptions vo;
    vo.venus = true;
    auto r = make_virgl_renderer(vo);
    ASSERT_TRUE(r.ok()) << r.error().what;  // lavapipe in CI
    GpuOptions o;
    o.features |= proto::kFVirgl;
    o.caps.max_3d_bytes = 4 << 20;
    h = std::make_unique<Harness>(o, HeadlessOutput::Options{}, std::move(*r));
    h->dev->set_host_visible(&region);
  }
  uint32_t create_blob(uint32_t id, uint32_t ctx, uint64_t size, uint32_t flags = proto::kBlobFlagMappable,
                       uint32_t mem = uint32_t(proto::BlobMem::kHost3d)) {
    proto::ResourceCreateBlob b{};
    b.hdr = proto::make_hdr(Cmd::kResourceCreateBlob, 0, 0, ctx);
    b.resource_id = id;
    b.blob_mem = mem;
    b.blob_flags = flags;
    b.blob_id = 0;  // fresh shared memory (what venus's command ring is made of)
    b.size = size;
    return h->call(b);
  }
  // MAP_BLOB: the response type and the map_info it carries.
  std::pair<uint32_t, uint32_t> map(uint32_t id, uint64_t offset) {
    proto::ResourceMapBlob m{};
    m.hdr = proto::make_hdr(Cmd::kResourceMapBlob);
    m.resource_id = id;
    m.offset = offset;
    const uint64_t t = h->send(m);
    proto::RespMapInfo info{};
    const auto& bytes = h->responses[t];
    std::memcpy(&info, bytes.data(), std::min(sizeof info, bytes.size()));
    return {info.hdr.type.get(), info.map_info.get()};
  }
  uint32_t unmap(uint32_t id) {
    proto::ResourceUnmapBlob u{};
    u.hdr = proto::make_hdr(Cmd::kResourceUnmapBlob);
    u.resource_id = id;
    return h->call(u);
  }
  TestRegion region{16 << 20};
};

TEST_F(VenusDevice, OffersTheVenusCapsetAndContexts) {
  bool venus = false;
  for (uint32_t i = 0; i < 8; ++i) {
    proto::GetCapsetInfo g{};
    g.hdr = proto::make_hdr(Cmd::kGetCapsetInfo);
    g.capset_index = i;
    const uint64_t t = h->send(g);
    proto::RespCapsetInfo info{};
    std::memcpy(&info, h->responses[t].data(), std::min(sizeof info, h->responses[t].size()));
    if (info.hdr.type.get() != R(Resp::kOkCapsetInfo)) break;
    venus |= info.capset_id.get() == kCapsetVenus && info.capset_max_size.get() > 0;
  }
  EXPECT_TRUE(venus);
  EXPECT_EQ(ctx_create(kCtx, kCapsetVenus), R(Resp::kOkNodata));
  EXPECT_EQ(ctx_create(kCtx + 1, 3), R(Resp::kErrInvalidParameter));  // a capset the renderer lacks
}

TEST_F(VenusDevice, HostBlobIsMappedIntoTheRegionAndKeepsItsContents) {
  ASSERT_EQ(ctx_create(kCtx, kCapsetVenus), R(Resp::kOkNodata));
  ASSERT_EQ(create_blob(10, kCtx, 64 << 10), R(Resp::kOkNodata));
  EXPECT_EQ(h->dev->stats().gpu_bytes, 64u << 10);
  auto [type, info] = map(10, 0x10000);
  ASSERT_EQ(type, R(Resp::kOkMapInfo));
  EXPECT_EQ(info, proto::kMapCacheCached);
  EXPECT_EQ(region.maps, (std::map<uint64_t, uint64_t>{{0x10000, 64 << 10}}));
  EXPECT_EQ(h->dev->stats().blobs_mapped, 1u);
  // The guest's view: memory it writes through the region is the blob's.
  for (uint32_t i = 0; i < (64 << 10); i += 4096) region.at(0x10000)[i] = uint8_t(i >> 12 | 0x80);
  EXPECT_EQ(unmap(10), R(Resp::kOkNodata));
  EXPECT_TRUE(region.maps.empty());
  ASSERT_EQ(map(10, 0).first, R(Resp::kOkMapInfo));  // somewhere else: the same memory
  for (uint32_t i = 0; i < (64 << 10); i += 4096) ASSERT_EQ(region.at(0)[i], uint8_t(i >> 12 | 0x80)) << i;
  // Unref of a mapped blob takes the mapping back.
  EXPECT_EQ(h->call(proto::ResourceUnref{proto::make_hdr(Cmd::kResourceUnref), 10, 0}), R(Resp::kOkNodata));
  EXPECT_TRUE(region.maps.empty());
  EXPECT_EQ(h->dev->stats().gpu_bytes, 0u);
  EXPECT_EQ(h->dev->stats().blobs_mapped, 0u);
}

TEST_F(VenusDevice, MapBlobRefusesWhatTheRegionCannotHold) {
  ASSERT_EQ(ctx_create(kCtx, kCapsetVenus), R(Resp::kOkNodata));
  ASSERT_EQ(create_blob(10, kCtx, 64 << 10), R(Resp::kOkNodata));
  ASSERT_EQ(create_blob(11, kCtx, 8192), R(Resp::kOkNodata));
  // Fresh shared memory is only for mapping: virglrenderer refuses it without MAPPABLE.
  EXPECT_EQ(create_blob(12, kCtx, 4096, 0), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(map(10, 100).first, R(Resp::kErrInvalidParameter));                // not page aligned
  EXPECT_EQ(map(10, (16 << 20) - 4096).first, R(Resp::kErrInvalidParameter));  // runs past the region
  EXPECT_EQ(map(10, uint64_t(1) << 63).first, R(Resp::kErrInvalidParameter));
  EXPECT_EQ(unmap(11), R(Resp::kErrInvalidParameter));  // not mapped
  EXPECT_EQ(map(99, 0).first, R(Resp::kErrInvalidResourceId));
  ASSERT_EQ(map(10, 0x20000).first, R(Resp::kOkMapInfo));
  EXPECT_EQ(map(10, 0x40000).first, R(Resp::kErrInvalidParameter));  // mapped already
  EXPECT_EQ(map(11, 0x2f000).first, R(Resp::kErrInvalidParameter));  // overlaps 10's end
  EXPECT_EQ(map(11, 0x1f000).first, R(Resp::kErrInvalidParameter));  // overlaps 10's start
  EXPECT_EQ(map(11, 0x1e000).first, R(Resp::kOkMapInfo));            // just before it
  EXPECT_EQ(region.maps.size(), 2u);
  // A device reset takes every mapping back.
  h->dev->reset();
  EXPECT_TRUE(region.maps.empty());
}

TEST_F(VenusDevice, ARangeTheFrontEndDidNotTakeBackStaysTakenUntilAReset) {
  ASSERT_EQ(ctx_create(kCtx, kCapsetVenus), R(Resp::kOkNodata));
  ASSERT_EQ(create_blob(10, kCtx, 8192), R(Resp::kOkNodata));
  ASSERT_EQ(create_blob(11, kCtx, 8192), R(Resp::kOkNodata));
  ASSERT_EQ(map(10, 0x4000).first, R(Resp::kOkMapInfo));
  region.fail_unmaps = true;
  EXPECT_EQ(unmap(10), R(Resp::kOkNodata));  // the guest's request is done; the front-end failed
  region.fail_unmaps = false;
  EXPECT_EQ(map(11, 0x4000).first, R(Resp::kErrInvalidParameter));  // the guest may still reach 10 there
  EXPECT_EQ(map(11, 0x8000).first, R(Resp::kOkMapInfo));
  EXPECT_EQ(map(10, 0x10000).first, R(Resp::kOkMapInfo));  // the blob itself can be mapped elsewhere
  h->dev->reset();
  region.maps.clear();  // canopy-vmm empties the region at a reset
  h->dev->set_acked_features(h->dev->offered_features());
  ASSERT_EQ(ctx_create(kCtx, kCapsetVenus), R(Resp::kOkNodata));
  ASSERT_EQ(create_blob(12, kCtx, 8192), R(Resp::kOkNodata));
  EXPECT_EQ(map(12, 0x4000).first, R(Resp::kOkMapInfo));  // a reset frees the range
}

// A guest blob is the renderer's too (QEMU's virgl device does the same): a venus context can be given
// one (Mesa's venus puts its command ring in guest memory where the renderer has no shared-memory blobs),
// and it still scans out from guest memory without a copy.
TEST_F(VenusDevice, GuestBlobsAreTheRenderersTooAndStillScanOutWithoutCopies) {
  ASSERT_EQ(ctx_create(kCtx, kCapsetVenus), R(Resp::kOkNodata));
  constexpr uint32_t kBw = 64, kBh = 64;
  const std::vector<proto::MemEntry> entries{Harness::entry(0x80000, 8192), Harness::entry(0x20000, 8192)};
  proto::ResourceCreateBlob b{};
  b.hdr = proto::make_hdr(Cmd::kResourceCreateBlob, 0, 0, kCtx);
  b.resource_id = 20;
  b.blob_mem = uint32_t(proto::BlobMem::kGuest);
  b.blob_flags = proto::kBlobFlagMappable;
  b.nr_entries = uint32_t(entries.size());
  b.size = kBw * kBh * 4;
  ASSERT_EQ(h->call(b, std::span(reinterpret_cast<const uint8_t*>(entries.data()), entries.size() * sizeof entries[0])),
            R(Resp::kOkNodata));
  EXPECT_EQ(ctx_attach(kCtx, 20), R(Resp::kOkNodata));
  EXPECT_EQ(create_blob(20, kCtx, 4096), R(Resp::kErrInvalidResourceId));  // the id is taken
  for (const auto& e : entries) h->fill_ram(e.addr, e.length, 0xff00ff00);
  proto::SetScanoutBlob sb{};
  sb.hdr = proto::make_hdr(Cmd::kSetScanoutBlob);
  sb.resource_id = 20;
  sb.width = kBw;
  sb.height = kBh;
  sb.format = uint32_t(proto::Format::kB8G8R8X8);
  sb.strides[0] = kBw * 4;
  sb.r.width = kBw;
  sb.r.height = kBh;
  ASSERT_EQ(h->call(sb), R(Resp::kOkNodata));
  ASSERT_EQ(h->call(h->flush_cmd(20, kBw, kBh)), R(Resp::kOkNodata));
  EXPECT_EQ(h->out.stats(0).frames, 1u);
  EXPECT_EQ(h->out.stats(0).bytes_copied, 0u);
  EXPECT_EQ(h->call(proto::ResourceUnref{proto::make_hdr(Cmd::kResourceUnref), 20, 0}), R(Resp::kOkNodata));
  // Gone from the renderer too (it refuses an id it still has): the id can be a host blob now.
  EXPECT_EQ(create_blob(20, kCtx, 4096), R(Resp::kOkNodata));
}

TEST_F(VenusDevice, HostBlobsAreCheckedAndBudgeted) {
  ASSERT_EQ(ctx_create(kCtx, kCapsetVenus), R(Resp::kOkNodata));
  EXPECT_EQ(create_blob(10, kCtx + 1, 4096), R(Resp::kErrInvalidContextId));
  EXPECT_EQ(create_blob(10, kCtx, 0), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(create_blob(10, kCtx, 4096, 0x100), R(Resp::kErrInvalidParameter));  // unknown flag
  EXPECT_EQ(create_blob(10, kCtx, 4096, proto::kBlobFlagMappable, 9), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(create_blob(10, kCtx, 5 << 20), R(Resp::kErrOutOfMemory));  // over max_3d_bytes (4 MiB)
  ASSERT_EQ(create_blob(10, kCtx, 3 << 20), R(Resp::kOkNodata));
  EXPECT_EQ(create_blob(11, kCtx, 2 << 20), R(Resp::kErrOutOfMemory));  // together over it
  EXPECT_EQ(create_blob(10, kCtx, 4096), R(Resp::kErrInvalidResourceId));
  // Without a region (a front-end that maps nothing), MAP_BLOB fails and nothing else does.
  h->dev->set_host_visible(nullptr);
  EXPECT_EQ(map(10, 0).first, R(Resp::kErrUnspec));
  EXPECT_EQ(create_blob(11, kCtx, 4096), R(Resp::kOkNodata));
}

TEST(GpuDevice2d, ThreeDCommandsNeedAThreeDRenderer) {
  Harness h;
  proto::ResourceCreate3d c{};
  c.hdr = proto::make_hdr(Cmd::kResourceCreate3d);
  c.resource_id = 1;
  c.width = c.height = c.depth = c.array_size = 1;
  EXPECT_EQ(h.call(c), R(Resp::kErrUnspec));
  proto::TransferHost3d t{};
  t.hdr = proto::make_hdr(Cmd::kTransferToHost3d);
  t.resource_id = 1;
  EXPECT_EQ(h.call(t), R(Resp::kErrUnspec));
  EXPECT_FALSE(h.dev->offered_features() & proto::kFVirgl);
  EXPECT_EQ(h.dev->renderer_fd(), -1);
}

}  // namespace
}  // namespace canopy::gpu
