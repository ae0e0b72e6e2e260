// ChannelOutput against a compositor end of the scanout channel: buffers defined once, frames as small
// packets, RELEASE releases, and a missing, stuck or gone compositor never holds the guest's frames.
#include "canopy/gpu/channel_output.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "canopy/buffers/shared_memory.h"
#include "canopy/protocol/scanout_channel.h"

namespace canopy::gpu {
namespace {

namespace ch = canopy::protocol::scanout;

class ChannelOutputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = "/tmp/canopy-channel-output-test." + std::to_string(::getpid());
    listen_ = UniqueFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path_.c_str(), path_.size());
    ::unlink(path_.c_str());
    ASSERT_EQ(::bind(listen_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(::listen(listen_.get(), 4), 0);
    auto shm = buffers::SharedMemory::create("frame", 3 * 4096);
    ASSERT_TRUE(shm.ok());
    auto dup = shm->dup_fd();
    ASSERT_TRUE(dup.ok());
    UniqueFd fd = std::move(*dup);
    fd_ = std::make_shared<UniqueFd>(std::move(fd));
    pieces_ = std::make_shared<std::vector<FramePiece>>(
        std::vector<FramePiece>{{fd_, 8192, 4096}, {fd_, 0, 4096}});  // scattered, page aligned
    cache_ = std::make_shared<Frame::ViewCache>();
  }
  void TearDown() override { ::unlink(path_.c_str()); }

  std::shared_ptr<Frame> frame(uint64_t seq, int* released) {
    auto f = std::make_shared<Frame>();
    f->seq = seq;
    f->drm_fourcc = 0x34325258;  // XR24
    f->width = 32;
    f->height = 64;
    f->stride = 128;
    f->blob = true;
    f->pieces = pieces_;
    f->view_cache = cache_;
    f->release_token = seq;
    f->on_release = [released](uint64_t) { ++*released; };
    return f;
  }
  UniqueFd accept() {
    UniqueFd s(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    EXPECT_TRUE(s.valid());
    return s;
  }
  ch::Message next(int sock) {
    auto m = ch::receive(sock, ch::Direction::kToCompositor, 2000);
    EXPECT_TRUE(m.ok()) << (m.ok() ? "" : m.error().what);
    return m.ok() ? std::move(*m) : ch::Message{};
  }

  std::string path_;
  UniqueFd listen_;
  SharedFd fd_;
  FramePieces pieces_;
  std::shared_ptr<Frame::ViewCache> cache_;
};

TEST_F(ChannelOutputTest, BufferOnceFramesAsPacketsReleaseOnRelease) {
  int released = 0;  // outlives out, whose destructor releases what it holds
  ChannelOutput out({path_, "cluster", 1});
  out.on_frame(frame(1, &released));
  UniqueFd comp = accept();
  EXPECT_EQ(next(comp.get()).vm_name(), "cluster");
  auto buf = next(comp.get());
  ASSERT_EQ(buf.type, ch::Type::kBuffer);
  ASSERT_EQ(buf.pieces().size(), 2u);
  EXPECT_EQ(buf.pieces()[0].offset.get(), 8192u);
  EXPECT_EQ(buf.fds.size(), 1u);  // one descriptor for both pieces of the same file
  auto f1 = next(comp.get());
  ASSERT_EQ(f1.type, ch::Type::kFrame);
  EXPECT_EQ(f1.fixed<ch::FrameMsg>().seq.get(), 1u);
  EXPECT_EQ(f1.fixed<ch::FrameMsg>().bytes_copied.get(), 0u);
  EXPECT_EQ(f1.fixed<ch::FrameMsg>().flags.get(), ch::kFrameBlob);
  EXPECT_EQ(f1.fixed<ch::FrameMsg>().present_ns.get(), 0u);  // the test's frame has no present time
  auto f2 = frame(2, &released);
  f2->presented = Frame::Clock::time_point(std::chrono::nanoseconds(123456789));
  out.on_frame(f2);
  const auto m2 = next(comp.get());
  ASSERT_EQ(m2.type, ch::Type::kFrame);  // no second BUFFER for the same backing
  EXPECT_EQ(m2.fixed<ch::FrameMsg>().present_ns.get(), 123456789u);
  EXPECT_EQ(released, 0);
  EXPECT_EQ(out.held(), 2u);
  ch::Release r{};
  r.seq = 1;
  ASSERT_TRUE(ch::send_packet(comp.get(), ch::encode(ch::Type::kRelease, r)).ok());
  r.seq = 77;  // unknown: ignored
  ASSERT_TRUE(ch::send_packet(comp.get(), ch::encode(ch::Type::kRelease, r)).ok());
  out.on_readable();
  EXPECT_EQ(released, 1);
  EXPECT_EQ(out.held(), 1u);
  // The compositor goes away: what it held is released, nothing waits for it.
  comp.reset();
  out.on_readable();
  EXPECT_FALSE(out.connected());
  EXPECT_EQ(released, 2);
}

// Pieces that are not page aligned cannot be sent as they are: the output reads them (Frame::map) and
// copies them into a memfd of its own, once per backing. The FRAME that made the copy carries both
// copies on top of the device's own figure; the next FRAME of the same backing only the device's.
TEST_F(ChannelOutputTest, FramesOfPiecesThatAreNotPageAlignedCarryTheOutputsCopies) {
  pieces_ = std::make_shared<std::vector<FramePiece>>(std::vector<FramePiece>{{fd_, 100, 32 * 64 * 4}});
  int released = 0;  // outlives out, whose destructor releases what it holds
  ChannelOutput out({path_, "ivi", 1});
  auto f1 = frame(1, &released);
  f1->bytes_copied = 5;  // the device's copies for this frame
  out.on_frame(f1);
  UniqueFd comp = accept();
  EXPECT_EQ(next(comp.get()).vm_name(), "ivi");
  auto buf = next(comp.get());
  ASSERT_EQ(buf.type, ch::Type::kBuffer);
  ASSERT_EQ(buf.pieces().size(), 1u);  // the output's own memfd copy
  EXPECT_EQ(buf.pieces()[0].offset.get(), 0u);
  auto m1 = next(comp.get());
  ASSERT_EQ(m1.type, ch::Type::kFrame);
  constexpr uint64_t kBytes = 32 * 64 * 4;
  EXPECT_EQ(m1.fixed<ch::FrameMsg>().bytes_copied.get(), 5 + 2 * kBytes);  // device + read + memfd copy
  EXPECT_EQ(out.stats().bytes_copied, 2 * kBytes);
  auto f2 = frame(2, &released);
  f2->bytes_copied = 0;
  out.on_frame(f2);
  auto m2 = next(comp.get());
  ASSERT_EQ(m2.type, ch::Type::kFrame);  // the same buffer: no copy this time
  EXPECT_EQ(m2.fixed<ch::FrameMsg>().bytes_copied.get(), 0u);
  EXPECT_EQ(out.stats().bytes_copied, 2 * kBytes);
}

TEST_F(ChannelOutputTest, NoCompositorMeansFramesAreReleasedAtOnce) {
  listen_.reset();
  ::unlink(path_.c_str());
  int released = 0;  // outlives out, whose destructor releases what it holds
  ChannelOutput out({path_, "ivi", 1});
  for (uint64_t s = 1; s <= 3; ++s) out.on_frame(frame(s, &released));
  EXPECT_EQ(released, 3);
  EXPECT_EQ(out.stats().frames_released_unsent, 3u);
}

TEST_F(ChannelOutputTest, ACompositorThatNeverReleasesCannotHoldMoreThanTheCap) {
  int released = 0;  // outlives out, whose destructor releases what it holds
  ChannelOutput out({path_, "ivi", 1, 500, 8});
  out.on_frame(frame(1, &released));
  UniqueFd comp = accept();
  for (uint64_t s = 2; s <= 20; ++s) out.on_frame(frame(s, &released));
  EXPECT_EQ(out.held(), 8u);
  EXPECT_EQ(released, 12);
  EXPECT_EQ(out.stats().frames_released_over_cap, 12u);
}

TEST_F(ChannelOutputTest, AMalformedPacketFromTheCompositorDropsTheConnection) {
  int released = 0;  // outlives out, whose destructor releases what it holds
  ChannelOutput out({path_, "ivi", 1});
  out.on_frame(frame(1, &released));
  UniqueFd comp = accept();
  const uint8_t junk[24] = {0xde, 0xad};
  ASSERT_EQ(::send(comp.get(), junk, sizeof junk, 0), ssize_t(sizeof junk));
  out.on_readable();
  EXPECT_FALSE(out.connected());
  EXPECT_EQ(released, 1);
}

// Buffer ids wrap: neither a frame's backing nor a cursor image may get id 0 (the wire's "no buffer"). A
// cursor that took the last id left 0 for the next backing, whose frames were then never sent.
TEST_F(ChannelOutputTest, BufferIdsSkipZeroWhenTheyWrapCursorImagesToo) {
  int released = 0;  // outlives out, whose destructor releases what it holds
  ChannelOutput::Options o{path_, "ivi", 1};
  o.first_buffer_id = 0xfffffffe;
  ChannelOutput out(o);
  out.on_frame(frame(1, &released));
  UniqueFd comp = accept();
  EXPECT_EQ(next(comp.get()).type, ch::Type::kHello);
  auto buf = next(comp.get());
  ASSERT_EQ(buf.type, ch::Type::kBuffer);
  EXPECT_EQ(buf.fixed<ch::BufferHdr>().id.get(), 0xfffffffeu);
  EXPECT_EQ(next(comp.get()).type, ch::Type::kFrame);
  auto image = std::make_shared<CursorImage>();
  image->argb.assign(size_t{64} * 64, 0xff00ff00u);
  CursorUpdate c;
  c.visible = true;
  c.image_changed = true;
  c.image = image;
  std::vector<uint32_t> cursor_ids;
  for (int i = 0; i < 2; ++i) {
    out.on_cursor(c);
    auto b = next(comp.get());
    ASSERT_EQ(b.type, ch::Type::kBuffer);
    cursor_ids.push_back(b.fixed<ch::BufferHdr>().id.get());
    auto m = next(comp.get());
    ASSERT_EQ(m.type, ch::Type::kCursor);
    EXPECT_EQ(m.fixed<ch::CursorMsg>().buffer_id.get(), cursor_ids.back());
    EXPECT_EQ(next(comp.get()).type, ch::Type::kBufferGone);
  }
  EXPECT_EQ(cursor_ids, (std::vector<uint32_t>{0xffffffffu, 1u}));
  // A new backing after the wrap is defined and its frame sent.
  cache_ = std::make_shared<Frame::ViewCache>();
  out.on_frame(frame(2, &released));
  buf = next(comp.get());
  ASSERT_EQ(buf.type, ch::Type::kBuffer);
  EXPECT_EQ(buf.fixed<ch::BufferHdr>().id.get(), 2u);
  auto f = next(comp.get());
  ASSERT_EQ(f.type, ch::Type::kFrame);
  EXPECT_EQ(f.fixed<ch::FrameMsg>().buffer_id.get(), 2u);
  EXPECT_EQ(out.stats().frames_released_unsent, 0u);
}

}  // namespace
}  // namespace canopy::gpu
