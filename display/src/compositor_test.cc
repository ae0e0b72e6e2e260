// The compositor with real scanout-channel connections (the wire canopy-gpu speaks), in virtual time:
// the assertions are on frame sequence, pixels and virtual deadlines, never on wall-clock rates.
#include "canopy/display/compositor.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "canopy/buffers/shared_memory.h"
#include "canopy/buffers/timeline.h"
#include "canopy/display/fallback.h"
#include "canopy/display/png.h"
#include "canopy/protocol/scanout_channel.h"

namespace canopy::display {
namespace {

namespace ch = canopy::protocol::scanout;
using std::chrono::milliseconds;

// A GPU device as canopy-gpu is on the channel: one connection, one memfd per buffer.
class FakeDevice {
 public:
  FakeDevice(const std::string& path, const std::string& vm, uint32_t scanouts = 1) {
    sock_ = UniqueFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), path.size());
    EXPECT_EQ(::connect(sock_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    send(ch::encode_hello(vm, scanouts));
  }
  void send(const std::vector<uint8_t>& p, std::span<const int> fds = {}) {
    ASSERT_TRUE(ch::send_packet(sock_.get(), p, fds).ok());
  }
  // A w x h XRGB8888 buffer filled with `colour`; returns its id.
  uint32_t buffer(uint32_t w, uint32_t h, uint32_t colour) {
    const uint64_t bytes = (uint64_t(w) * h * 4 + 4095) & ~4095ull;
    auto shm = buffers::SharedMemory::create("test-frame", bytes);
    EXPECT_TRUE(shm.ok());
    auto map = shm->map();
    auto* px = reinterpret_cast<uint32_t*>(map->data());
    for (uint64_t i = 0; i < uint64_t(w) * h; ++i) px[i] = colour;
    const uint32_t id = next_buffer_++;
    ch::PieceRef piece{0, 0, bytes};
    const int fds[1] = {shm->fd()};
    auto pk = ch::encode_buffer(key(id), {&piece, 1}, fds);
    EXPECT_TRUE(pk.ok());
    send((*pk)[0].bytes, (*pk)[0].fds);
    return id;
  }
  // The test's buffers are resources 1, 2, ... each with its first backing.
  static ch::BufferKey key(uint32_t id) { return ch::buffer_key(id, 1); }
  // Gives scanout 0 an acquire/release timeline this object produces.
  buffers::Timeline& timeline() {
    auto t = buffers::Timeline::create_producer();
    EXPECT_TRUE(t.ok());
    timeline_ = std::move(*t);
    EXPECT_TRUE(ch::send_timeline(sock_.get(), 0, timeline_).ok());
    return timeline_;
  }
  // A frame on scanout 0 complete once the timeline reaches `point`.
  uint64_t fenced_frame(uint32_t buffer, uint32_t w, uint32_t h, uint64_t point) {
    acquire_ = point;
    const uint64_t seq = frame(buffer, w, h);
    acquire_ = 0;
    return seq;
  }
  uint64_t frame(uint32_t buffer, uint32_t w, uint32_t h, uint32_t scanout = 0, uint64_t offset = 0,
                 uint32_t stride = 0, uint64_t present_ns = 0) {
    ch::FrameMsg f{};
    f.scanout = scanout;
    f.buffer = key(buffer);
    f.seq = ++seq_;
    f.fourcc = uint32_t(buffers::Format::kXRGB8888);
    f.width = w;
    f.height = h;
    f.stride = stride ? stride : w * 4;
    f.offset = offset;
    f.flags = ch::kFrameBlob | (acquire_ ? ch::kFrameAcquire : 0);
    f.present_ns = present_ns;
    f.acquire_point = acquire_;
    send(ch::encode_frame(f, {}));
    return seq_;
  }
  // CURSOR on scanout 0; with an image colour, a new 64x64 ARGB8888 image in a memfd sent with it (as
  // canopy-gpu does).
  void cursor(bool visible, int32_t x, int32_t y, uint32_t hot_x, uint32_t hot_y, uint32_t image_argb = 0) {
    ch::CursorMsg m{};
    m.visible = visible ? 1 : 0;
    m.x = uint32_t(x);
    m.y = uint32_t(y);
    m.hot_x = hot_x;
    m.hot_y = hot_y;
    if (!image_argb) return send(ch::encode(ch::Type::kCursor, m));
    auto shm = buffers::SharedMemory::create("test-cursor", 64 * 64 * 4);
    ASSERT_TRUE(shm.ok());
    auto map = shm->map();
    auto* px = reinterpret_cast<uint32_t*>(map->data());
    for (int i = 0; i < 64 * 64; ++i) px[i] = image_argb;
    m.image = 1;
    const int fds[1] = {shm->fd()};
    send(ch::encode(ch::Type::kCursor, m), fds);
  }
  // RELEASEs received so far (seq numbers), without waiting.
  std::vector<uint64_t> releases() {
    for (;;) {
      auto m = ch::receive(sock_.get(), ch::Direction::kToDevice, 0);
      if (!m.ok()) {
        closed_ = m.error().code == Errc::kClosed;
        break;
      }
      if (m->type == ch::Type::kRelease) released_.push_back(m->fixed<ch::Release>().seq.get());
    }
    return released_;
  }
  bool closed() {
    releases();
    return closed_;
  }
  void close() { sock_.reset(); }

 private:
  UniqueFd sock_;
  uint32_t next_buffer_ = 1;
  uint64_t seq_ = 0;
  uint64_t acquire_ = 0;
  buffers::Timeline timeline_;
  std::vector<uint64_t> released_;
  bool closed_ = false;
};

// The demo's cluster display, small: the cluster full screen (safety, 250 ms watchdog), an IVI inset.
Layout cockpit_layout() {
  OutputSpec o;
  o.name = "cluster";
  o.width = 64;
  o.height = 32;
  o.refresh_hz = 60;
  o.criticality = Criticality::kSafety;
  LayerSpec c;
  c.vm = "cluster";
  c.dst = {0, 0, 64, 32};
  c.criticality = Criticality::kSafety;
  c.stale_ms = kDefaultSafetyStaleMs;
  LayerSpec i;
  i.vm = "ivi";
  i.dst = {40, 8, 16, 16};
  i.z = 1;
  i.criticality = Criticality::kNormal;
  o.layers = {c, i};
  Layout l;
  l.outputs.push_back(o);
  return l;
}

// Every test runs with each renderer (Vulkan on whatever device there is: lavapipe in CI; without
// any it skips, except under CANOPY_NO_SKIP=1).
class CompositorTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    dir_ = "/tmp/canopy-compositor-test." + std::to_string(::getpid());
    ::mkdir(dir_.c_str(), 0700);
    CompositorOptions o;
    o.listen_path = dir_ + "/display.sock";
    o.control_path = dir_ + "/control.sock";
    o.control_dir = dir_;
    o.renderer = GetParam();
    auto c = Compositor::create(cockpit_layout(), o, clock);
    if (!c.ok() && o.renderer == "vulkan" && !std::getenv("CANOPY_NO_SKIP")) GTEST_SKIP() << c.error().what;
    ASSERT_TRUE(c.ok()) << c.error().what;
    comp = std::move(*c);
  }
  void TearDown() override {
    comp.reset();
    ::rmdir(dir_.c_str());
  }
  std::string sock() const { return dir_ + "/display.sock"; }
  // A connection to the compositor's control socket (nothing sent yet).
  UniqueFd connect_control() const {
    UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const std::string path = dir_ + "/control.sock";
    std::memcpy(a.sun_path, path.c_str(), path.size());
    EXPECT_EQ(::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return s;
  }
  // Takes every packet that arrived (the connections are local: a few turns suffice).
  void pump() {
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(comp->poll_input(1).ok());
  }
  // Advances virtual time to the next latch point and composes; returns the stats after it.
  const OutputStats& refresh() {
    clock.set(std::max(clock.now(), comp->next_latch()));
    EXPECT_TRUE(comp->compose_due().ok());
    return comp->output_stats(0);
  }
  uint32_t pixel(uint32_t x, uint32_t y) const {
    const Canvas& c = comp->canvas(0);
    uint32_t v;
    std::memcpy(&v, c.data + size_t(y) * c.stride + x * 4, 4);
    return v & 0x00ffffff;
  }

  FakeClock clock;
  std::string dir_;
  std::unique_ptr<Compositor> comp;
};

TEST_P(CompositorTest, FramesFromTwoVmsAreComposedAndReplacedFramesReleased) {
  FakeDevice cluster(sock(), "cluster"), ivi(sock(), "ivi");
  const uint32_t cb = cluster.buffer(64, 32, 0x102030), cb2 = cluster.buffer(64, 32, 0x405060);
  const uint32_t ib = ivi.buffer(32, 32, 0xa0b0c0);
  const uint64_t c1 = cluster.frame(cb, 64, 32);
  ivi.frame(ib, 32, 32);
  pump();
  refresh();
  EXPECT_EQ(pixel(0, 0), 0x102030u);
  EXPECT_EQ(pixel(45, 10), 0xa0b0c0u);  // the inset, scaled 32x32 -> 16x16
  EXPECT_TRUE(cluster.releases().empty());
  cluster.frame(cb2, 64, 32);
  pump();
  const auto& st = refresh();
  EXPECT_EQ(pixel(0, 0), 0x405060u);
  pump();
  EXPECT_EQ(cluster.releases(), std::vector<uint64_t>{c1});  // the first frame, once the second was presented
  EXPECT_EQ(st.layers[0].new_frames, 2u);
  EXPECT_EQ(st.layers[1].reused, 1u);
  const auto conns = comp->connections();
  ASSERT_EQ(conns.size(), 2u);
  for (const auto& c : conns) EXPECT_EQ(c.bytes_copied, 0u);
  // Guest buffers are read where they are mapped: the Vulkan renderer imports each mapping (three
  // buffers and the canvas) and stages nothing.
  EXPECT_EQ(comp->renderer_stats().bytes_staged, 0u);
  if (std::string(GetParam()) == "vulkan") {
    EXPECT_EQ(comp->renderer_stats().imports, 4u);
  }
}

// Frame latency runs from the guest's present as the device reports it (the same monotonic clock),
// to the output's present; a present time ahead of now or from long ago is not believed.
TEST_P(CompositorTest, LatencyStartsAtTheGuestPresentTheDeviceReports) {
  FakeDevice cluster(sock(), "cluster");
  const uint32_t b = cluster.buffer(64, 32, 0x010203);
  auto ns = [](TimePoint t) {
    return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
  };
  clock.set(comp->next_latch() - milliseconds(3));
  cluster.frame(b, 64, 32, 0, 0, 0, ns(clock.now() - milliseconds(4)));  // 4 ms before it arrived
  pump();
  const auto& st = refresh();  // 3 ms after it arrived
  ASSERT_EQ(st.layers[0].latency.count(), 1u);
  EXPECT_EQ(st.layers[0].latency.percentile(0.5), milliseconds(7));
  clock.set(comp->next_latch() - milliseconds(2));
  cluster.frame(b, 64, 32, 0, 0, 0, ns(clock.now() + milliseconds(50)));  // in the future: arrival counts
  pump();
  refresh();
  clock.set(comp->next_latch() - milliseconds(2));
  cluster.frame(b, 64, 32, 0, 0, 0, ns(clock.now() - std::chrono::seconds(11)));  // too old: arrival counts
  pump();
  const auto& st2 = refresh();
  ASSERT_EQ(st2.layers[0].latency.count(), 3u);
  EXPECT_EQ(st2.layers[0].latency.percentile(1.0), milliseconds(7));
  EXPECT_EQ(st2.layers[0].latency.percentile(0.0), milliseconds(2));
}

TEST_P(CompositorTest, BadFramesAreRefusedAndReleasedBadConnectionsClosedOthersGoOn) {
  FakeDevice cluster(sock(), "cluster"), ivi(sock(), "ivi");
  const uint32_t cb = cluster.buffer(64, 32, 0x112233);
  const uint32_t ib = ivi.buffer(32, 32, 0x445566);  // exactly one 4 KiB page
  // Exact bad values: a frame one row taller than its buffer, a stride smaller than a row, and an
  // offset that wraps the sum.
  const uint64_t tall = ivi.frame(ib, 32, 33);
  const uint64_t narrow = ivi.frame(ib, 32, 32, 0, 0, 124);
  const uint64_t wrap = ivi.frame(ib, 32, 32, 0, 0xfffffffffffff000ull);
  pump();
  EXPECT_EQ(ivi.releases(), (std::vector<uint64_t>{tall, narrow, wrap}));
  EXPECT_FALSE(ivi.closed());
  // An unknown buffer closes the connection; the cluster is unaffected.
  ivi.frame(99, 16, 16);
  cluster.frame(cb, 64, 32);
  pump();
  EXPECT_TRUE(ivi.closed());
  refresh();
  EXPECT_EQ(pixel(0, 0), 0x112233u);
  // A scanout the device did not announce, and a BUFFER before HELLO, close those connections too.
  FakeDevice bad(sock(), "ivi");
  bad.frame(1, 16, 16, 3);
  pump();
  EXPECT_TRUE(bad.closed());
  UniqueFd raw(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, sock().c_str(), sock().size());
  ASSERT_EQ(::connect(raw.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  const uint8_t garbage[20] = {1, 2, 3};
  ASSERT_EQ(::send(raw.get(), garbage, sizeof garbage, 0), ssize_t(sizeof garbage));
  pump();
  char b;
  EXPECT_EQ(::recv(raw.get(), &b, 1, MSG_DONTWAIT), 0);  // closed
  EXPECT_EQ(comp->output_stats(0).layers[0].new_frames, 1u);
}

// The guest's cursor is drawn over its scanout where the layer shows it: moved, scaled with an inset,
// clipped to the frame, hidden; its image outlives the buffer that brought it.
TEST_P(CompositorTest, CursorsAreDrawnWhereTheirScanoutShows) {
  FakeDevice cluster(sock(), "cluster"), ivi(sock(), "ivi");
  const uint32_t cb = cluster.buffer(64, 32, 0x101010);
  cluster.frame(cb, 64, 32);
  ivi.frame(ivi.buffer(32, 32, 0x202020), 32, 32);
  cluster.cursor(true, 10, 5, 2, 2, 0xff0000ff);  // opaque blue, its top-left at (8, 3)
  ivi.cursor(true, 16, 0, 0, 0, 0xff00ff00);      // green over the inset's right half (scaled by 1/2)
  pump();
  refresh();
  EXPECT_EQ(pixel(7, 3), 0x101010u);
  EXPECT_EQ(pixel(8, 3), 0x0000ffu);
  EXPECT_EQ(pixel(39, 31), 0x0000ffu) << "clipped at the frame's bottom";
  EXPECT_EQ(pixel(47, 10), 0x202020u);
  EXPECT_EQ(pixel(48, 8), 0x00ff00u);
  EXPECT_EQ(pixel(55, 23), 0x00ff00u);
  cluster.cursor(true, 40, 20, 2, 2);  // moved, same image
  pump();
  refresh();
  EXPECT_EQ(pixel(8, 3), 0x101010u);
  EXPECT_EQ(pixel(38, 18), 0x0000ffu);
  EXPECT_EQ(pixel(37, 18), 0x101010u);
  cluster.cursor(false, 40, 20, 2, 2);
  pump();
  refresh();
  EXPECT_EQ(pixel(38, 18), 0x101010u);
  // A cursor image in a file that could shrink under the mapping, or too small, closes that connection
  // only.
  auto unsealed = buffers::SharedMemory::create("test-cursor", 64 * 64 * 4, 0);
  auto small = buffers::SharedMemory::create("test-cursor", 4096);
  ASSERT_TRUE(unsealed.ok() && small.ok());
  for (int fd : {unsealed->fd(), small->fd()}) {
    FakeDevice bad(sock(), "other");
    ch::CursorMsg m{};
    m.image = 1;
    const int fds[1] = {fd};
    bad.send(ch::encode(ch::Type::kCursor, m), fds);
    pump();
    EXPECT_TRUE(bad.closed());
  }
  EXPECT_FALSE(cluster.closed());
  refresh();
  EXPECT_EQ(pixel(0, 0), 0x101010u);
}

// A buffer is named by the device's resource id and backing generation: a new backing of the same
// resource is a new buffer beside the old one, BUFFER_GONE forgets only the generation it names, and a
// key the connection still has cannot be defined again (it would swap the memory under a live name).
TEST_P(CompositorTest, BuffersAreNamedByResourceAndBackingGeneration) {
  FakeDevice cluster(sock(), "cluster");
  auto define = [&](ch::BufferKey key, uint32_t colour) {
    auto shm = buffers::SharedMemory::create("test-frame", 64 * 32 * 4);
    ASSERT_TRUE(shm.ok());
    auto map = shm->map();
    auto* px = reinterpret_cast<uint32_t*>(map->data());
    for (int i = 0; i < 64 * 32; ++i) px[i] = colour;
    ch::PieceRef piece{0, 0, 64 * 32 * 4};
    const int fds[1] = {shm->fd()};
    auto pk = ch::encode_buffer(key, {&piece, 1}, fds);
    ASSERT_TRUE(pk.ok());
    cluster.send((*pk)[0].bytes, (*pk)[0].fds);
  };
  auto show = [&](ch::BufferKey key) {
    ch::FrameMsg f{};
    f.buffer = key;
    static uint64_t seq = 0;
    f.seq = ++seq;
    f.fourcc = uint32_t(buffers::Format::kXRGB8888);
    f.width = 64;
    f.height = 32;
    f.stride = 64 * 4;
    cluster.send(ch::encode_frame(f, {}));
  };
  define(ch::buffer_key(7, 1), 0x0000aa);
  define(ch::buffer_key(7, 2), 0x0000bb);  // resource 7 with a new backing
  show(ch::buffer_key(7, 1));
  pump();
  refresh();
  EXPECT_EQ(pixel(0, 0), 0x0000aau);
  ch::BufferGone g{};
  g.key = ch::buffer_key(7, 1);
  cluster.send(ch::encode(ch::Type::kBufferGone, g));
  show(ch::buffer_key(7, 2));
  pump();
  refresh();
  EXPECT_EQ(pixel(0, 0), 0x0000bbu) << "generation 2 survived generation 1's BUFFER_GONE";
  for (const auto& c : comp->connections())
    if (c.vm == "cluster") {
      EXPECT_EQ(c.buffers, 1u);
    }
  EXPECT_FALSE(cluster.closed());
  define(ch::buffer_key(7, 2), 0x0000cc);
  pump();
  EXPECT_TRUE(cluster.closed()) << "a live key defined again";
}

// Acquire fences travel as a timeline (TIMELINE) and points on FRAMEs: a frame is shown only once its
// point has signalled; frames no longer read are retired on the timeline (the release fence) as well as
// RELEASEd.
TEST_P(CompositorTest, FramesWaitForTheirAcquireFenceAndRetireTheTimelineWhenReleased) {
  FakeDevice cluster(sock(), "cluster");
  buffers::Timeline& tl = cluster.timeline();
  const uint32_t b1 = cluster.buffer(64, 32, 0x111111), b2 = cluster.buffer(64, 32, 0x222222);
  const uint64_t s1 = cluster.fenced_frame(b1, 64, 32, 1);
  pump();
  // The cluster is critical for its output: the latch is held for the grace, then nothing is new.
  const auto& st0 = refresh();
  EXPECT_EQ(st0.waits, 1u);
  refresh();
  EXPECT_EQ(st0.compositions, 1u);
  EXPECT_EQ(pixel(0, 0), 0u) << "not shown before its fence signalled";
  EXPECT_EQ(st0.layers[0].missed, 1u);
  ASSERT_TRUE(tl.signal(1).ok());
  pump();
  refresh();
  EXPECT_EQ(pixel(0, 0), 0x111111u);
  // The next frame signals while the latch is held for it: composed at once, before the deadline.
  const uint64_t s2 = cluster.fenced_frame(b2, 64, 32, 2);
  pump();
  clock.set(comp->next_latch());
  ASSERT_TRUE(comp->compose_due().ok());
  EXPECT_EQ(comp->output_stats(0).waits, 2u);
  EXPECT_EQ(comp->output_stats(0).compositions, 2u) << "held";
  clock.advance(std::chrono::microseconds(500));
  ASSERT_TRUE(tl.signal(2).ok());
  pump();
  EXPECT_EQ(comp->next_latch(), clock.now());
  ASSERT_TRUE(comp->compose_due().ok());
  const auto& st = comp->output_stats(0);
  EXPECT_EQ(st.compositions, 3u);
  EXPECT_EQ(st.missed_deadlines, 0u);
  EXPECT_EQ(pixel(0, 0), 0x222222u);
  pump();
  EXPECT_EQ(cluster.releases(), std::vector<uint64_t>{s1});
  EXPECT_EQ(tl.retired(), 1u) << "frame 1 is no longer read";
  EXPECT_EQ(tl.lifecycle(2), buffers::PointState::kSignalled) << "frame 2 is on screen";
  (void)s2;
  // A fenced FRAME on a scanout without TIMELINE is a protocol error.
  FakeDevice ivi(sock(), "ivi");
  ivi.fenced_frame(ivi.buffer(16, 16, 0), 16, 16, 1);
  pump();
  EXPECT_TRUE(ivi.closed());
  for (const auto& c : comp->connections())
    if (c.vm == "cluster") {
      EXPECT_EQ(c.fenced_frames, 2u);
    }
}

// Mixed criticality with real connections: whatever the IVI does, the cluster output shows every
// cluster frame at the refresh it was due, with the right pixels, and keeps every deadline.
class MixedCriticality : public CompositorTest {
 protected:
  static constexpr int kFrames = 120;
  void run(const std::function<void(FakeDevice& ivi, uint32_t ivi_buffer, int frame)>& ivi_does) {
    FakeDevice cluster(sock(), "cluster");
    auto ivi = std::make_unique<FakeDevice>(sock(), "ivi");
    const uint32_t cbuf[2] = {cluster.buffer(64, 32, 0x000001), cluster.buffer(64, 32, 0x000002)};
    const uint32_t ib = ivi->buffer(32, 32, 0x00ff00);
    ivi->frame(ib, 32, 32);
    for (int n = 0; n < kFrames; ++n) {
      cluster.frame(cbuf[n % 2], 64, 32);
      if (ivi) {
        ivi_does(*ivi, ib, n);
        if (n == kFrames / 2 && killed_) ivi.reset();  // the IVI VM is killed mid-way
      }
      pump();
      const auto& st = refresh();
      ASSERT_EQ(pixel(0, 0), uint32_t(1 + n % 2)) << "refresh " << n;
      ASSERT_EQ(st.layers[0].new_frames, uint64_t(n + 1));
      ASSERT_EQ(st.missed_deadlines, 0u);
      ASSERT_FALSE(st.layers[0].fallback);
    }
    EXPECT_EQ(comp->output_stats(0).waits, 0u);  // never held for the IVI
  }
  bool killed_ = false;
};

TEST_P(MixedCriticality, IviThatHangsNeverDelaysTheCluster) {
  run([](FakeDevice&, uint32_t, int) {});
  EXPECT_EQ(pixel(45, 10), 0x00ff00u);  // its last good frame stays
  EXPECT_EQ(comp->output_stats(0).layers[1].reused, uint64_t(kFrames - 1));
}

TEST_P(MixedCriticality, IviWhoseFencesNeverSignalNeverDelaysTheCluster) {
  run([](FakeDevice& ivi, uint32_t b, int n) {
    if (n == 0) ivi.timeline();
    ivi.fenced_frame(b, 32, 32, uint64_t(n) + 1);  // never signalled
  });
  EXPECT_EQ(pixel(45, 10), 0x00ff00u);  // its last good frame stays
  const auto& l = comp->output_stats(0).layers[1];
  EXPECT_EQ(l.new_frames, 1u);
  EXPECT_EQ(l.missed, uint64_t(kFrames - 1));
}

TEST_P(MixedCriticality, IviThatFloodsIsBoundedAndNeverDelaysTheCluster) {
  run([](FakeDevice& ivi, uint32_t b, int) {
    for (int k = 0; k < 10; ++k) ivi.frame(b, 32, 32);
    ivi.releases();  // as canopy-gpu does: its loop takes RELEASEs as they come
  });
  const auto& l = comp->output_stats(0).layers[1];
  EXPECT_EQ(l.new_frames, uint64_t(kFrames));                  // one shown per refresh
  EXPECT_EQ(l.dropped, uint64_t(kFrames * 10 + 1 - kFrames));  // the rest released unshown
}

TEST_P(MixedCriticality, IviThatIsKilledNeverDelaysTheCluster) {
  killed_ = true;
  run([](FakeDevice& ivi, uint32_t b, int) { ivi.frame(b, 32, 32); });
  EXPECT_EQ(pixel(45, 10), 0x00ff00u);
  for (const auto& c : comp->connections())
    if (c.vm == "ivi") {
      EXPECT_FALSE(c.connected);
    }
}

TEST_P(CompositorTest, StaleClusterSwitchesToTheFallbackAndBackWhenFramesResume) {
  FakeDevice cluster(sock(), "cluster");
  const uint32_t cb = cluster.buffer(64, 32, 0x203040);
  cluster.frame(cb, 64, 32);
  pump();
  refresh();
  ASSERT_EQ(pixel(0, 0), 0x203040u);
  // No new frame: 250 ms at 60 Hz is the 15th refresh after the last new one.
  int n = 0;
  while (!comp->output_stats(0).layers[0].fallback && n < 100) {
    refresh();
    ++n;
  }
  EXPECT_EQ(n, 15);
  EXPECT_EQ(pixel(0, 0), kFallbackAmber & 0xffffff);  // the fallback's border
  EXPECT_EQ(comp->output_stats(0).layers[0].fallback_entries, 1u);
  cluster.frame(cb, 64, 32);
  pump();
  refresh();
  EXPECT_FALSE(comp->output_stats(0).layers[0].fallback);
  EXPECT_EQ(pixel(0, 0), 0x203040u);
}

TEST_P(CompositorTest, ControlSocketAnswersStatsSnapshotAndTrace) {
  FakeDevice cluster(sock(), "cluster");
  cluster.frame(cluster.buffer(64, 32, 0x010203), 64, 32);
  pump();
  comp->trace_start();
  refresh();
  auto ask = [&](const std::string& req) {
    UniqueFd s = connect_control();
    EXPECT_EQ(::send(s.get(), req.data(), req.size(), 0), ssize_t(req.size()));
    pump();
    char buf[8192];
    const ssize_t n = ::recv(s.get(), buf, sizeof buf, MSG_DONTWAIT);
    return n > 0 ? std::string(buf, size_t(n)) : std::string();
  };
  const std::string stats = ask("stats");
  EXPECT_NE(stats.find("output cluster 64x32@60 criticality=safety"), std::string::npos) << stats;
  EXPECT_NE(stats.find("layer 0 vm=cluster scanout=0 new=1"), std::string::npos) << stats;
  EXPECT_NE(stats.find("vm cluster connected=1 frames=1"), std::string::npos) << stats;
  EXPECT_EQ(ask("snapshot"), "ok\n");
  EXPECT_EQ(::access((dir_ + "/cluster.png").c_str(), R_OK), 0);
  EXPECT_EQ(ask("trace-stop trace.json"), "ok\n");
  FILE* f = std::fopen((dir_ + "/trace.json").c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::string trace(65536, '\0');
  trace.resize(std::fread(trace.data(), 1, trace.size(), f));
  std::fclose(f);
  EXPECT_EQ(trace.rfind("{\"traceEvents\":[", 0), 0u);
  EXPECT_NE(trace.find("\"name\":\"compose\""), std::string::npos);
  EXPECT_EQ(ask("bogus"),
            "error: unknown request (stats | snapshot [DIR] | trace-start | trace-stop FILE | quit | step)\n");
  EXPECT_EQ(ask("step"), "error: the clock is not stepped (--stepped)\n");  // time runs by itself here

  // Nothing is written outside the control folder: not by an absolute path, "..", or a symlink in it
  // (here to a folder beside it).
  const std::string outside = dir_ + ".outside";
  ::mkdir(outside.c_str(), 0700);
  ASSERT_EQ(::symlink(outside.c_str(), (dir_ + "/out").c_str()), 0);
  for (const std::string& req : std::vector<std::string>{
           "snapshot " + outside, "snapshot ..", "snapshot out", "trace-stop " + outside + "/t.json",
           std::string("trace-stop ../t.json"), std::string("trace-stop out/t.json")}) {
    EXPECT_EQ(ask(req).rfind("error: ", 0), 0u) << req;
  }
  EXPECT_NE(::access((outside + "/cluster.png").c_str(), F_OK), 0);
  EXPECT_NE(::access((outside + "/t.json").c_str(), F_OK), 0);
  EXPECT_NE(::access((dir_ + ".outside/../t.json").c_str(), F_OK), 0);
  // Control: the same folder through the symlink is writable where the path is not confined (the
  // operator's own --snapshot-dir at the end of a run).
  EXPECT_TRUE(comp->snapshot(dir_ + "/out").ok());
  EXPECT_EQ(::access((outside + "/cluster.png").c_str(), R_OK), 0);
  ::unlink((outside + "/cluster.png").c_str());
  ::unlink((dir_ + "/out").c_str());
  ::rmdir(outside.c_str());
  EXPECT_EQ(ask("quit"), "ok\n");
  EXPECT_TRUE(comp->quit_requested());
  ::unlink((dir_ + "/cluster.png").c_str());
  ::unlink((dir_ + "/trace.json").c_str());
}

// A control client that connects and does not send (yet) must neither stall the loop nor be dropped:
// the loop serves others meanwhile and answers it once its request comes; silent connections beyond 8
// cost the oldest its slot. (Before, the loop waited up to 1 s in poll for the request and then dropped
// the client: the request it sent afterwards got no reply — the first check below fails that way.)
TEST_P(CompositorTest, ControlSocketServesLateRequestsWithoutWaitingForThem) {
  auto reply = [&](const UniqueFd& s) {
    char buf[8192];
    const ssize_t n = ::recv(s.get(), buf, sizeof buf, MSG_DONTWAIT);
    return n > 0 ? std::string(buf, size_t(n)) : n == 0 ? std::string("(closed)") : std::string();
  };
  UniqueFd late = connect_control();
  pump();  // accepted; its request is not there
  UniqueFd other = connect_control();
  ASSERT_EQ(::send(other.get(), "stats", 5, 0), 5);
  pump();
  EXPECT_NE(reply(other).find("output cluster"), std::string::npos) << "served while the first one is silent";
  ASSERT_EQ(::send(late.get(), "stats", 5, MSG_NOSIGNAL), 5);
  pump();
  EXPECT_NE(reply(late).find("output cluster"), std::string::npos) << "the late request was answered";
  // Nine silent connections: the oldest loses its slot (closed), the newest is still answered.
  std::vector<UniqueFd> silent;
  for (int i = 0; i < 9; ++i) {
    silent.push_back(connect_control());
    pump();
  }
  EXPECT_EQ(reply(silent.front()), "(closed)");
  ASSERT_EQ(::send(silent.back().get(), "stats", 5, MSG_NOSIGNAL), 5);
  pump();
  EXPECT_NE(reply(silent.back()).find("output cluster"), std::string::npos);
}

// A sink with hardware planes, as the KMS sink is on hardware that can scan out guest memory: it takes
// (or refuses) whole compositions and keeps the holds of what it shows until the test lets them go.
struct FakePlaneSink final : OutputSink {
  struct Shown {
    std::vector<Rect> dst;
    std::vector<size_t> pieces;
  };
  bool accept = true;
  std::vector<Shown> shown;
  std::vector<std::vector<std::shared_ptr<void>>> holds;
  size_t canvas_presents = 0;
  const char* name() const override { return "fake-planes"; }
  Status present(const Canvas&) override {
    ++canvas_presents;
    return {};
  }
  bool offers_planes() const override { return true; }
  Result<bool> present_planes(std::span<const PlaneLayer> layers) override {
    if (!accept) return false;
    Shown s;
    std::vector<std::shared_ptr<void>> h;
    for (const auto& l : layers) {
      s.dst.push_back(l.layer->dst);
      s.pieces.push_back(l.pieces.size());
      h.push_back(l.hold);
    }
    shown.push_back(s);
    holds.push_back(std::move(h));
    return true;
  }
};

// Whole compositions go on planes when the sink takes them (the guest's memory, no canvas); a frame on a
// plane goes back to its VM only once the sink lets go of it; compositor-drawn pictures (the fallback)
// and refusals are composed as usual; a snapshot composes what the planes show.
TEST(CompositorPlanes, VmFramesGoOnPlanesAndAreHeldWhileShown) {
  FakeClock clock;
  const std::string dir = "/tmp/canopy-compositor-planes." + std::to_string(::getpid());
  ::mkdir(dir.c_str(), 0700);
  FakePlaneSink* sink = nullptr;
  CompositorOptions o;
  o.listen_path = dir + "/display.sock";
  o.renderer = "pixman";
  o.background = 0x303030;  // not black: planes only when a covering opaque layer is at the bottom
  o.make_sink = [&](const OutputSpec&) {
    auto s = std::make_unique<FakePlaneSink>();
    sink = s.get();
    return s;
  };
  auto c = Compositor::create(cockpit_layout(), o, clock);
  ASSERT_TRUE(c.ok()) << c.error().what;
  auto& comp = *c;
  auto pump = [&] {
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(comp->poll_input(1).ok());
  };
  auto refresh = [&] {
    clock.set(std::max(clock.now(), comp->next_latch()));
    EXPECT_TRUE(comp->compose_due().ok());
  };
  {
    FakeDevice cluster(o.listen_path, "cluster"), ivi(o.listen_path, "ivi");
    const uint32_t cb1 = cluster.buffer(64, 32, 0x0000aa), cb2 = cluster.buffer(64, 32, 0x0000bb);
    const uint64_t c1 = cluster.frame(cb1, 64, 32);
    ivi.frame(ivi.buffer(32, 32, 0x00cc00), 32, 32);
    pump();
    refresh();
    ASSERT_EQ(sink->shown.size(), 1u);
    EXPECT_EQ(sink->shown[0].dst, (std::vector<Rect>{{0, 0, 64, 32}, {40, 8, 16, 16}})) << "back to front";
    EXPECT_EQ(sink->shown[0].pieces, (std::vector<size_t>{1, 1})) << "the guest's memory goes with each";
    EXPECT_EQ(sink->canvas_presents, 0u);
    EXPECT_NE(comp->stats_text().find("on_planes=1"), std::string::npos);
    cluster.frame(cb2, 64, 32);
    pump();
    refresh();
    ASSERT_EQ(sink->shown.size(), 2u);
    pump();
    EXPECT_TRUE(cluster.releases().empty()) << "frame 1 is still held by the sink";
    sink->holds[0].clear();  // the display no longer reads the first composition
    pump();
    EXPECT_EQ(cluster.releases(), std::vector<uint64_t>{c1});
    // A snapshot composes what the planes show.
    ASSERT_TRUE(comp->snapshot(dir).ok());
    auto png = read_png(dir + "/cluster.png");
    ASSERT_TRUE(png.ok()) << png.error().what;
    EXPECT_EQ(png->pixels[0] & 0xffffff, 0x0000bbu);
    ::unlink((dir + "/cluster.png").c_str());
    // Refused: composed and presented as a canvas.
    sink->accept = false;
    cluster.frame(cb1, 64, 32);
    pump();
    refresh();
    EXPECT_EQ(sink->canvas_presents, 1u);
    const Canvas& cv = comp->canvas(0);
    uint32_t px;
    std::memcpy(&px, cv.data, 4);
    EXPECT_EQ(px & 0xffffff, 0x0000aau);
    // The fallback is the compositor's own picture: never on planes.
    sink->accept = true;
    for (int n = 0; n < 20 && !comp->output_stats(0).layers[0].fallback; ++n) refresh();
    ASSERT_TRUE(comp->output_stats(0).layers[0].fallback);
    const size_t on_planes = sink->shown.size(), canvases = sink->canvas_presents;
    for (int n = 0; n < 3; ++n) refresh();
    EXPECT_EQ(sink->shown.size(), on_planes);
    EXPECT_EQ(sink->canvas_presents, canvases + 3);
    sink->holds.clear();
  }
  pump();  // the devices closed
  comp.reset();
  EXPECT_EQ(::rmdir(dir.c_str()), 0);
}

auto renderer_name = [](const auto& info) { return std::string(info.param); };
INSTANTIATE_TEST_SUITE_P(Renderers, CompositorTest, ::testing::Values("pixman", "vulkan"), renderer_name);
INSTANTIATE_TEST_SUITE_P(Renderers, MixedCriticality, ::testing::Values("pixman", "vulkan"), renderer_name);

}  // namespace
}  // namespace canopy::display
