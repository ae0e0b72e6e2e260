// ChannelOutput against a compositor end of the scanout channel: buffers defined once, frames as small
// packets, RELEASE releases, and a missing, stuck or gone compositor never holds the guest's frames.
#include "canopy/gpu/channel_output.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "canopy/buffers/shared_memory.h"
#include "canopy/gpu/testing/frames.h"
#include "canopy/protocol/broker.h"
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
    return gpu::testing::blob_frame(seq, generation_, pieces_, cache_, [released](uint64_t) { ++*released; });
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
  uint64_t generation_ = 1;
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
  // Guest memory goes to the compositor read-only: it cannot be mapped writable nor written (control: the
  // device's own descriptor of the same file can).
  ASSERT_EQ(buf.fds.size(), 1u);
  EXPECT_EQ(::fcntl(buf.fds[0].get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_EQ(::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, buf.fds[0].get(), 0), MAP_FAILED);
  EXPECT_EQ(::pwrite(buf.fds[0].get(), "x", 1, 0), -1);
  void* rw = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd_->get(), 0);
  EXPECT_NE(rw, MAP_FAILED);
  if (rw != MAP_FAILED) ::munmap(rw, 4096);
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

// A buffer is named by (resource id, backing generation), never by an object's address: frames of one
// generation share one BUFFER, a new generation is a new BUFFER, and the device's on_backing_gone sends
// BUFFER_GONE for exactly the generation it names (once, and only for a buffer this connection has).
TEST_F(ChannelOutputTest, BuffersAreNamedByResourceAndGenerationAndGoneWhenTheDeviceSays) {
  int released = 0;  // outlives out, whose destructor releases what it holds
  ChannelOutput out({path_, "ivi", 1});
  out.on_frame(frame(1, &released));
  UniqueFd comp = accept();
  EXPECT_EQ(next(comp.get()).type, ch::Type::kHello);
  auto buf = next(comp.get());
  ASSERT_EQ(buf.type, ch::Type::kBuffer);
  EXPECT_EQ(ch::key_pair(buf.fixed<ch::BufferHdr>().key), std::make_pair(5u, uint64_t{1}));
  auto f = next(comp.get());
  EXPECT_EQ(ch::key_pair(f.fixed<ch::FrameMsg>().buffer), std::make_pair(5u, uint64_t{1}));
  // The same memory under a new generation (a re-attached backing) is a new buffer; the old one stays
  // defined until the device says it is gone.
  generation_ = 2;
  out.on_frame(frame(2, &released));
  buf = next(comp.get());
  ASSERT_EQ(buf.type, ch::Type::kBuffer);
  EXPECT_EQ(ch::key_pair(buf.fixed<ch::BufferHdr>().key), std::make_pair(5u, uint64_t{2}));
  EXPECT_EQ(next(comp.get()).type, ch::Type::kFrame);
  out.on_backing_gone(5, 1);
  auto gone = next(comp.get());
  ASSERT_EQ(gone.type, ch::Type::kBufferGone);
  EXPECT_EQ(ch::key_pair(gone.fixed<ch::BufferGone>().key), std::make_pair(5u, uint64_t{1}));
  out.on_backing_gone(5, 1);  // already gone: nothing
  out.on_backing_gone(9, 1);  // never sent: nothing
  out.on_frame(frame(3, &released));
  f = next(comp.get());
  ASSERT_EQ(f.type, ch::Type::kFrame) << "generation 2 is still defined";
  EXPECT_EQ(out.stats().buffers_sent, 2u);
  EXPECT_EQ(out.stats().buffers_gone, 1u);
  // A frame without a generation names no buffer: it is released, not sent.
  generation_ = 0;
  out.on_frame(frame(4, &released));
  EXPECT_EQ(out.stats().frames_released_unsent, 1u);
}

// Cursor images travel as a sealed memfd with their CURSOR packet: no buffer name is taken for them.
TEST_F(ChannelOutputTest, CursorImagesComeWithTheirCursorPacket) {
  int released = 0;
  ChannelOutput out({path_, "ivi", 1});
  out.on_frame(frame(1, &released));
  UniqueFd comp = accept();
  EXPECT_EQ(next(comp.get()).type, ch::Type::kHello);
  EXPECT_EQ(next(comp.get()).type, ch::Type::kBuffer);
  EXPECT_EQ(next(comp.get()).type, ch::Type::kFrame);
  auto image = std::make_shared<CursorImage>();
  image->argb.assign(size_t{64} * 64, 0xff00ff00u);
  CursorUpdate c;
  c.visible = true;
  c.image_changed = true;
  c.image = image;
  out.on_cursor(c);
  auto m = next(comp.get());
  ASSERT_EQ(m.type, ch::Type::kCursor);
  EXPECT_EQ(m.fixed<ch::CursorMsg>().image.get(), 1u);
  ASSERT_EQ(m.fds.size(), 1u);
  EXPECT_TRUE(fcntl(m.fds[0].get(), F_GET_SEALS) & F_SEAL_SHRINK);
  auto shm = buffers::SharedMemory::import(std::move(m.fds[0]), 64 * 64 * 4);
  ASSERT_TRUE(shm.ok());
  auto map = shm->map(buffers::Access::kRead);
  ASSERT_TRUE(map.ok());
  EXPECT_EQ(reinterpret_cast<const uint32_t*>(map->data())[64 * 64 - 1], 0xff00ff00u);
  c.image_changed = false;
  c.x = 7;
  out.on_cursor(c);
  m = next(comp.get());
  ASSERT_EQ(m.type, ch::Type::kCursor);
  EXPECT_EQ(m.fixed<ch::CursorMsg>().image.get(), 0u);
  EXPECT_TRUE(m.fds.empty());
}

}  // namespace
}  // namespace canopy::gpu

namespace canopy::gpu {
namespace {

namespace bk = canopy::protocol::broker;

// With canopy-vmm's broker (--display-fd): the output asks on its device link for each connection and
// gets it there, or a refusal (then it has none and asks again later); a broker that is gone is not
// asked again. The broker here answers from a thread: the output waits for its answer.
TEST_F(ChannelOutputTest, ConnectionsComeFromTheBrokerWhenThereIsOne) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd device_link(sv[0]), broker_link(sv[1]);
  UniqueFd compositor_end;
  std::thread broker([&] {
    // First request: refused; second: a connection.
    auto r1 = bk::receive(broker_link.get(), bk::Link::kDeviceToBroker, 5000);
    ASSERT_TRUE(r1.ok()) << r1.error().what;
    EXPECT_EQ(r1->type, bk::Type::kConnect);
    ASSERT_TRUE(bk::send(broker_link.get(), bk::encode_refused(bk::Service::kDisplay, bk::Refusal::kNoService)).ok());
    auto r2 = bk::receive(broker_link.get(), bk::Link::kDeviceToBroker, 5000);
    ASSERT_TRUE(r2.ok()) << r2.error().what;
    int pair[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
    compositor_end = UniqueFd(pair[0]);
    UniqueFd theirs(pair[1]);
    ASSERT_TRUE(bk::send(broker_link.get(), bk::encode_connected(bk::Service::kDisplay), theirs.get()).ok());
  });
  int released = 0;  // outlives out
  ChannelOutput::Options o{"", "cluster", 1};
  o.broker_fd = device_link.get();
  o.retry_ms = 0;
  ChannelOutput out(o);
  out.on_frame(frame(1, &released));
  EXPECT_FALSE(out.connected());
  EXPECT_EQ(out.stats().broker_refusals, 1u);
  EXPECT_EQ(released, 1);  // nowhere to send it: released at once
  out.on_frame(frame(2, &released));
  broker.join();
  ASSERT_TRUE(out.connected());
  EXPECT_EQ(next(compositor_end.get()).vm_name(), "cluster");
  EXPECT_EQ(next(compositor_end.get()).type, ch::Type::kBuffer);
  EXPECT_EQ(next(compositor_end.get()).fixed<ch::FrameMsg>().seq.get(), 2u);
  // The compositor and the broker go away: the output lets go of its frames and asks no more.
  compositor_end.reset();
  broker_link.reset();
  out.on_readable();
  EXPECT_FALSE(out.connected());
  out.on_frame(frame(3, &released));
  out.on_frame(frame(4, &released));
  EXPECT_FALSE(out.connected());
  EXPECT_EQ(released, 4);
}

}  // namespace
}  // namespace canopy::gpu
