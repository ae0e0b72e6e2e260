// Cross-process tests: images and timelines sent over a socketpair (SCM_RIGHTS) to a forked child.
// Every blocking step has a deadline and every test an alarm, so a bug fails the test instead of hanging.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <vector>

#include "canopy/buffers/image.h"
#include "canopy/buffers/timeline.h"
#include "test_util.h"

namespace canopy::buffers {
namespace {

using namespace std::chrono_literals;
using testing::AlarmGuard;
using testing::Child;
using testing::make_socketpair;
using testing::read_byte;
using testing::write_byte;

constexpr auto kLong = 10s;  // deadlines that only a bug would reach
constexpr unsigned kTestAlarm = 30;

Timeline::Clock::time_point deadline() { return Timeline::Clock::now() + kLong; }

uint8_t pattern(uint32_t plane, uint32_t y, uint32_t x) { return uint8_t(x * 7 + y * 13 + plane * 101 + 1); }

// Fills every pixel row (not the stride padding) with the pattern.
void fill(const ImageMapping& m) {
  for (uint32_t p = 0; p < plane_count(m.layout().format); ++p) {
    const uint32_t rows = plane_rows(m.layout().format, m.layout().height, p).value();
    for (uint32_t y = 0; y < rows; ++y) {
      auto row = m.row(p, y);
      for (uint32_t x = 0; x < row.size(); ++x) row[x] = std::byte{pattern(p, y, x)};
    }
  }
}

// The whole backing as the child should have left it: pattern in rows, zero padding.
std::vector<uint8_t> expected_bytes(const ImageLayout& l, uint64_t size) {
  std::vector<uint8_t> e(size, 0);
  for (uint32_t p = 0; p < plane_count(l.format); ++p) {
    const uint32_t rows = plane_rows(l.format, l.height, p).value();
    const uint32_t row_bytes = min_stride(l.format, l.width, p).value();
    for (uint32_t y = 0; y < rows; ++y)
      for (uint32_t x = 0; x < row_bytes; ++x)
        e[l.planes[p].offset + uint64_t(y) * l.planes[p].stride + x] = pattern(p, y, x);
  }
  return e;
}

// Child side of the pixel test: receive image + timeline, become the producer, draw, signal 1, wait for
// the parent to retire it.
int draw_and_signal(int sock) {
  auto img = recv_image(sock, kSealShrink);
  CHILD_CHECK(img.ok(), 10);
  auto tl = recv_timeline(sock);
  CHILD_CHECK(tl.ok(), 11);
  CHILD_CHECK(tl->attach_producer().ok(), 12);
  auto m = img->map();
  CHILD_CHECK(m.ok(), 13);
  fill(*m);
  CHILD_CHECK(tl->signal(1).ok(), 14);
  CHILD_CHECK(tl->wait_retired(1, deadline()).ok(), 15);
  return 0;
}

void run_pixel_exchange(Format format, uint32_t width, uint32_t height) {
  AlarmGuard alarm(kTestAlarm);
  auto sp = make_socketpair();
  auto img = ImageBuffer::allocate(format, width, height);
  ASSERT_TRUE(img.ok());
  auto tl = Timeline::create();
  ASSERT_TRUE(tl.ok());
  Child child([&] {
    sp.a.reset();
    return draw_and_signal(sp.b.get());
  });
  ASSERT_TRUE(child.started());
  sp.b.reset();
  ASSERT_TRUE(send_image(sp.a.get(), *img).ok());
  ASSERT_TRUE(send_timeline(sp.a.get(), *tl).ok());

  auto r = tl->wait(1, deadline());
  ASSERT_TRUE(r.ok()) << errc_name(r.code());
  auto m = img->map(Access::kRead);
  ASSERT_TRUE(m.ok());
  const auto want = expected_bytes(img->layout(), img->backing_size());
  ASSERT_EQ(m->bytes().size(), want.size());
  EXPECT_EQ(std::memcmp(m->bytes().data(), want.data(), want.size()), 0);
  EXPECT_EQ(tl->lifecycle(1), PointState::kSignalled);
  ASSERT_TRUE(tl->retire(1).ok());
  EXPECT_EQ(tl->lifecycle(1), PointState::kRetired);

  const int status = child.wait();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(CrossProcess, ChildDrawsXrgbAndSignalsParentSeesExactPixels) { run_pixel_exchange(Format::kXRGB8888, 64, 48); }

TEST(CrossProcess, ChildDrawsOddSizedNv12AndSignalsParentSeesExactPixels) { run_pixel_exchange(Format::kNV12, 33, 17); }

TEST(CrossProcess, KilledProducerIsReportedLostToWaitingParent) {
  AlarmGuard alarm(kTestAlarm);
  auto sp = make_socketpair();
  auto tl = Timeline::create();
  ASSERT_TRUE(tl.ok());
  Child child([&] {
    sp.a.reset();
    auto t = recv_timeline(sp.b.get());
    CHILD_CHECK(t.ok(), 10);
    CHILD_CHECK(t->attach_producer().ok(), 11);
    CHILD_CHECK(write_byte(sp.b.get(), 'A'), 12);
    char c;
    read_byte(sp.b.get(), &c);  // blocks until killed (the parent never writes)
    return 13;
  });
  ASSERT_TRUE(child.started());
  sp.b.reset();
  ASSERT_TRUE(send_timeline(sp.a.get(), *tl).ok());
  char ack = 0;
  ASSERT_TRUE(read_byte(sp.a.get(), &ack));
  ASSERT_EQ(tl->producer_state(), ProducerState::kAttached);

  // Kill the producer once this thread is asleep in wait().
  std::thread killer([&] {
    while (tl->waiter_count() == 0) std::this_thread::yield();
    ::kill(child.pid(), SIGKILL);
  });
  const auto r = tl->wait(1, deadline());
  killer.join();
  EXPECT_EQ(r.code(), Errc::kProducerLost);

  const int status = child.wait();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

  // The parent carries on: lost is sticky, later waits return at once, pollers were woken.
  EXPECT_EQ(tl->producer_state(), ProducerState::kLost);
  EXPECT_EQ(tl->wait(1, deadline()).code(), Errc::kProducerLost);
  pollfd p{tl->eventfd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 1);
  EXPECT_EQ(tl->signalled(), 0u);
  auto fresh = Timeline::create_producer();
  ASSERT_TRUE(fresh.ok());
  EXPECT_TRUE(fresh->signal(1).ok());
}

TEST(CrossProcess, DetachedProducerIsReportedLostToWaitingChild) {
  AlarmGuard alarm(kTestAlarm);
  auto sp = make_socketpair();
  Child child([&] {
    sp.a.reset();
    auto t = recv_timeline(sp.b.get());
    CHILD_CHECK(t.ok(), 10);
    CHILD_CHECK(t->wait(1, deadline()).ok(), 11);
    CHILD_CHECK(write_byte(sp.b.get(), 'W'), 12);  // now waiting for 2, which never comes
    const auto r = t->wait(2, deadline());
    CHILD_CHECK(r.code() == Errc::kProducerLost, 13);
    CHILD_CHECK(t->signalled() == 1, 14);
    return 0;
  });
  ASSERT_TRUE(child.started());
  sp.b.reset();
  auto tl = Timeline::create_producer();
  ASSERT_TRUE(tl.ok());
  ASSERT_TRUE(send_timeline(sp.a.get(), *tl).ok());
  ASSERT_TRUE(tl->signal(1).ok());
  char ack = 0;
  ASSERT_TRUE(read_byte(sp.a.get(), &ack));
  while (tl->waiter_count() == 0) std::this_thread::yield();  // the child sleeps in wait(2)
  tl = Timeline();                                            // the producer object goes away

  const int status = child.wait();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(CrossProcess, DestroyedProducerWakesPollingChildThroughEventfd) {
  AlarmGuard alarm(kTestAlarm);
  auto sp = make_socketpair();
  Child child([&] {
    sp.a.reset();
    auto t = recv_timeline(sp.b.get());
    CHILD_CHECK(t.ok(), 10);
    CHILD_CHECK(write_byte(sp.b.get(), 'P'), 11);
    pollfd p{t->eventfd(), POLLIN, 0};
    CHILD_CHECK(::poll(&p, 1, 10000) == 1, 12);
    CHILD_CHECK(t->consume_event(), 13);
    CHILD_CHECK(t->producer_state() == ProducerState::kLost, 14);
    return 0;
  });
  ASSERT_TRUE(child.started());
  sp.b.reset();
  auto tl = Timeline::create_producer();
  ASSERT_TRUE(tl.ok());
  ASSERT_TRUE(send_timeline(sp.a.get(), *tl).ok());
  char ack = 0;
  ASSERT_TRUE(read_byte(sp.a.get(), &ack));
  tl->detach();

  const int status = child.wait();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(CrossProcess, PollingParentSeesProducerPidfdWhenProducerDies) {
  AlarmGuard alarm(kTestAlarm);
  auto sp = make_socketpair();
  Child child([&] {
    sp.a.reset();
    auto t = Timeline::create_producer();
    CHILD_CHECK(t.ok(), 10);
    CHILD_CHECK(send_timeline(sp.b.get(), *t).ok(), 11);
    char c;
    read_byte(sp.b.get(), &c);  // blocks until killed
    return 12;
  });
  ASSERT_TRUE(child.started());
  sp.b.reset();
  auto tl = recv_timeline(sp.a.get());
  ASSERT_TRUE(tl.ok());
  ASSERT_GE(tl->producer_pidfd(), 0);
  EXPECT_EQ(tl->check_producer(), ProducerState::kAttached);

  ::kill(child.pid(), SIGKILL);
  pollfd fds[2] = {{tl->eventfd(), POLLIN, 0}, {tl->producer_pidfd(), POLLIN, 0}};
  ASSERT_GE(::poll(fds, 2, 10000), 1);
  ASSERT_TRUE(fds[1].revents & POLLIN);
  EXPECT_EQ(tl->check_producer(), ProducerState::kLost);
  EXPECT_EQ(tl->wait(1, deadline()).code(), Errc::kProducerLost);
  const int status = child.wait();
  EXPECT_TRUE(WIFSIGNALED(status));
}

TEST(CrossProcess, ForkedChildOfProducerDoesNotKeepItAlive) {
  AlarmGuard alarm(kTestAlarm);
  auto sp = make_socketpair();
  auto hold = make_socketpair();  // the grandchild lives until the parent closes hold.a
  Child child([&] {
    sp.a.reset();
    hold.a.reset();
    auto t = Timeline::create_producer();
    CHILD_CHECK(t.ok(), 10);
    CHILD_CHECK(send_timeline(sp.b.get(), *t).ok(), 11);
    pid_t grandchild = ::fork();
    if (grandchild == 0) {
      ::alarm(20);
      sp.b.reset();
      char c;
      read_byte(hold.b.get(), &c);  // until the parent closes its end
      ::_exit(t->is_producer() ? 1 : 0);
    }
    CHILD_CHECK(grandchild > 0, 12);
    CHILD_CHECK(write_byte(sp.b.get(), 'F'), 13);
    char c;
    read_byte(sp.b.get(), &c);  // blocks until killed
    return 14;
  });
  ASSERT_TRUE(child.started());
  sp.b.reset();
  hold.b.reset();
  auto tl = recv_timeline(sp.a.get());
  ASSERT_TRUE(tl.ok());
  char ack = 0;
  ASSERT_TRUE(read_byte(sp.a.get(), &ack));  // the grandchild exists and holds copies of every descriptor

  ::kill(child.pid(), SIGKILL);
  const int status = child.wait();
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(tl->wait(1, deadline()).code(), Errc::kProducerLost);
  hold.a.reset();  // lets the grandchild exit
}

}  // namespace
}  // namespace canopy::buffers
