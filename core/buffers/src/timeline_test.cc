#include "canopy/buffers/timeline.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <thread>

#include "canopy/buffers/fd_passing.h"
#include "canopy/buffers/shared_memory.h"
#include "test_util.h"

namespace canopy::buffers {
namespace {

using namespace std::chrono_literals;
using testing::count_open_fds;
using testing::make_socketpair;

constexpr auto kLong = 10s;  // deadlines that only a bug would reach

Timeline consumer_of(const Timeline& t) { return Timeline::import(t.export_fds().value()).value(); }

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

void wait_for_sleeper(const Timeline& t) {
  while (t.waiter_count() == 0) std::this_thread::yield();
}

TEST(Timeline, StartsAtZeroWithoutProducer) {
  auto t = Timeline::create();
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->signalled(), 0u);
  EXPECT_EQ(t->retired(), 0u);
  EXPECT_EQ(t->producer_state(), ProducerState::kNone);
  EXPECT_FALSE(t->is_producer());
  EXPECT_EQ(t->producer_pidfd(), -1);
  EXPECT_TRUE(t->wait_for(0, 0ns).ok());
}

TEST(Timeline, SignalWakesSleepingWaiter) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  Timeline c = consumer_of(*t);
  Status result = make_error(Errc::kState, "not run");
  std::thread waiter([&] { result = c.wait(5, Timeline::Clock::now() + kLong); });
  wait_for_sleeper(*t);
  ASSERT_TRUE(t->signal(5).ok());
  waiter.join();
  EXPECT_TRUE(result.ok()) << result.error().what;
  EXPECT_EQ(c.signalled(), 5u);
}

TEST(Timeline, LowerSignalIsRejectedAndEqualIsNoOp) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(t->signal(5).ok());
  EXPECT_EQ(t->signal(3).code(), Errc::kInvalidArgument);
  EXPECT_EQ(t->signalled(), 5u);
  EXPECT_TRUE(t->consume_event());
  EXPECT_TRUE(t->signal(5).ok());
  EXPECT_FALSE(t->consume_event());  // no-op: no event
}

TEST(Timeline, OnlyTheProducerSignals) {
  auto t = Timeline::create();
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->signal(1).code(), Errc::kState);
  Timeline empty;
  EXPECT_EQ(empty.signal(1).code(), Errc::kState);
  EXPECT_EQ(empty.wait_for(1, 0ns).code(), Errc::kState);
  ASSERT_TRUE(t->attach_producer().ok());
  Timeline c = consumer_of(*t);
  EXPECT_EQ(c.signal(1).code(), Errc::kState);
  EXPECT_TRUE(t->signal(1).ok());
}

TEST(Timeline, WaitTimesOutWhenNotSignalled) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->wait_for(1, 30ms).code(), Errc::kTimeout);
  EXPECT_EQ(t->wait(1, Timeline::Clock::now() - 1s).code(), Errc::kTimeout);
}

TEST(Timeline, WaitWithoutAnyProducerTimesOut) {
  auto t = Timeline::create();
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->wait_for(1, 30ms).code(), Errc::kTimeout);
}

TEST(Timeline, EventfdBecomesReadableOnSignal) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  Timeline c = consumer_of(*t);
  EXPECT_FALSE(readable(c.eventfd()));
  ASSERT_TRUE(t->signal(1).ok());
  EXPECT_TRUE(readable(c.eventfd()));
  EXPECT_TRUE(c.consume_event());
  EXPECT_FALSE(readable(c.eventfd()));
  EXPECT_FALSE(c.consume_event());
}

TEST(Timeline, SignalsWriteEventfdOnceUntilConsumed) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  Timeline c = consumer_of(*t);
  for (uint64_t v = 1; v <= 3; ++v) ASSERT_TRUE(t->signal(v).ok());
  uint64_t count = 0;
  ASSERT_EQ(::read(c.eventfd(), &count, sizeof(count)), ssize_t(sizeof(count)));
  EXPECT_EQ(count, 1u);             // one write for three signals: nobody had drained it
  EXPECT_FALSE(c.consume_event());  // re-arms
  ASSERT_TRUE(t->signal(4).ok());
  EXPECT_TRUE(readable(c.eventfd()));
}

TEST(Timeline, RetireFollowsSignalAndDrivesLifecycle) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  Timeline c = consumer_of(*t);
  EXPECT_EQ(c.lifecycle(1), PointState::kSubmitted);
  EXPECT_EQ(c.retire(1).code(), Errc::kInvalidArgument);  // not signalled yet
  ASSERT_TRUE(t->signal(3).ok());
  EXPECT_EQ(c.lifecycle(3), PointState::kSignalled);
  ASSERT_TRUE(c.retire(2).ok());
  EXPECT_EQ(c.retire(1).code(), Errc::kInvalidArgument);  // below the retired value
  EXPECT_TRUE(c.retire(2).ok());
  EXPECT_EQ(t->retired(), 2u);
  EXPECT_EQ(t->lifecycle(0), PointState::kRetired);
  EXPECT_EQ(t->lifecycle(2), PointState::kRetired);
  EXPECT_EQ(t->lifecycle(3), PointState::kSignalled);
  EXPECT_EQ(t->lifecycle(4), PointState::kSubmitted);
}

TEST(Timeline, RetireWakesProducerWaitingForIt) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  Timeline c = consumer_of(*t);
  ASSERT_TRUE(t->signal(1).ok());
  Status result = make_error(Errc::kState, "not run");
  std::thread waiter([&] { result = t->wait_retired(1, Timeline::Clock::now() + kLong); });
  wait_for_sleeper(c);
  ASSERT_TRUE(c.retire(1).ok());
  waiter.join();
  EXPECT_TRUE(result.ok());
  EXPECT_EQ(t->wait_retired(2, Timeline::Clock::now() + 20ms).code(), Errc::kTimeout);
}

TEST(Timeline, SecondProducerIsRejected) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  Timeline c = consumer_of(*t);
  EXPECT_EQ(c.attach_producer().code(), Errc::kState);
  EXPECT_TRUE(t->attach_producer().ok());  // already the producer: no-op
  EXPECT_EQ(c.check_producer(), ProducerState::kAttached);
}

TEST(Timeline, DetachMarksLostAndWakesWaiter) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  Timeline c = consumer_of(*t);
  Status result;
  std::thread waiter([&] { result = c.wait(1, Timeline::Clock::now() + kLong); });
  wait_for_sleeper(c);
  t->detach();
  waiter.join();
  EXPECT_EQ(result.code(), Errc::kProducerLost);
  EXPECT_EQ(c.producer_state(), ProducerState::kLost);
  EXPECT_TRUE(readable(c.eventfd()));
  EXPECT_FALSE(t->is_producer());
  EXPECT_EQ(t->signal(1).code(), Errc::kState);
  EXPECT_EQ(c.attach_producer().code(), Errc::kState);  // lost is sticky
  EXPECT_EQ(t->attach_producer().code(), Errc::kState);
}

TEST(Timeline, DestroyingProducerMarksLost) {
  Timeline c;
  {
    auto t = Timeline::create_producer();
    ASSERT_TRUE(t.ok());
    c = consumer_of(*t);
  }
  EXPECT_EQ(c.producer_state(), ProducerState::kLost);
  EXPECT_EQ(c.wait_for(1, kLong).code(), Errc::kProducerLost);
}

TEST(Timeline, SignalledValueStillSatisfiesWaitAfterLoss) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  Timeline c = consumer_of(*t);
  ASSERT_TRUE(t->signal(3).ok());
  t->detach();
  EXPECT_TRUE(c.wait_for(3, kLong).ok());
  EXPECT_EQ(c.wait_for(4, kLong).code(), Errc::kProducerLost);
}

TEST(Timeline, ConsumerDestructionDoesNotAffectProducer) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  {
    Timeline c = consumer_of(*t);
  }
  EXPECT_EQ(t->producer_state(), ProducerState::kAttached);
  EXPECT_EQ(t->check_producer(), ProducerState::kAttached);
  EXPECT_TRUE(t->signal(1).ok());
}

TEST(Timeline, MovedProducerStaysAttachedAndMovedFromIsEmpty) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  Timeline moved = std::move(*t);
  EXPECT_FALSE(t->valid());
  EXPECT_EQ(t->signalled(), 0u);
  EXPECT_EQ(t->eventfd(), -1);
  t->detach();  // no-op on an empty object
  EXPECT_TRUE(moved.is_producer());
  EXPECT_EQ(moved.producer_state(), ProducerState::kAttached);
  EXPECT_TRUE(moved.signal(2).ok());
}

TEST(Timeline, ExportIncludesProducerPidfdOnlyWhenKnown) {
  auto none = Timeline::create();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->export_fds().value().producer_pidfd.valid());
  auto p = Timeline::create_producer();
  ASSERT_TRUE(p.ok());
  auto fds = p->export_fds();
  ASSERT_TRUE(fds.ok());
  EXPECT_TRUE(fds->producer_pidfd.valid());
  EXPECT_FALSE(readable(fds->producer_pidfd.get()));  // this process is alive
  Timeline c = Timeline::import(std::move(*fds)).value();
  EXPECT_GE(c.producer_pidfd(), 0);
}

TEST(Timeline, ImportRejectsWrongSizedPage) {
  auto shm = SharedMemory::create("t", 8192, kSealFixedSize);
  ASSERT_TRUE(shm.ok());
  TimelineFds fds{shm->dup_fd().value(), UniqueFd(::eventfd(0, EFD_CLOEXEC)), {}};
  EXPECT_EQ(Timeline::import(std::move(fds)).code(), Errc::kInvalidArgument);
}

TEST(Timeline, ImportRejectsUnsealedPage) {
  auto shm = SharedMemory::create("t", kTimelinePageSize, 0);
  ASSERT_TRUE(shm.ok());
  TimelineFds fds{shm->dup_fd().value(), UniqueFd(::eventfd(0, EFD_CLOEXEC)), {}};
  EXPECT_EQ(Timeline::import(std::move(fds)).code(), Errc::kInvalidArgument);
}

TEST(Timeline, ImportRejectsPageWithoutTimelineMagic) {
  auto shm = SharedMemory::create("t", kTimelinePageSize, kSealFixedSize);
  ASSERT_TRUE(shm.ok());
  TimelineFds fds{shm->dup_fd().value(), UniqueFd(::eventfd(0, EFD_CLOEXEC)), {}};
  EXPECT_EQ(Timeline::import(std::move(fds)).code(), Errc::kInvalidArgument);
}

TEST(Timeline, ImportRejectsEventfdThatIsNotAnEventfd) {
  auto t = Timeline::create();
  ASSERT_TRUE(t.ok());
  auto fds = t->export_fds().value();
  fds.eventfd = fds.memfd.dup();  // e.g. a file a hostile peer wants us to write into
  EXPECT_EQ(Timeline::import(std::move(fds)).code(), Errc::kInvalidArgument);
  TimelineFds missing;
  EXPECT_EQ(Timeline::import(std::move(missing)).code(), Errc::kInvalidArgument);
}

TEST(Timeline, SendsAndReceivesOverSocket) {
  auto sp = make_socketpair();
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(send_timeline(sp.a.get(), *t).ok());
  auto c = recv_timeline(sp.b.get());
  ASSERT_TRUE(c.ok());
  EXPECT_GE(c->producer_pidfd(), 0);
  ASSERT_TRUE(t->signal(9).ok());
  EXPECT_EQ(c->signalled(), 9u);
}

TEST(Timeline, ReceiveRejectsBadHeaderAndLeaksNothing) {
  auto sp = make_socketpair();
  auto t = Timeline::create();
  ASSERT_TRUE(t.ok());
  auto fds = t->export_fds().value();
  const int raw[2] = {fds.memfd.get(), fds.eventfd.get()};
  const uint32_t bad[2] = {0x12345678u, 2u};
  ASSERT_TRUE(send_fds(sp.a.get(), bad, sizeof(bad), raw).ok());
  const int before = count_open_fds();
  EXPECT_EQ(recv_timeline(sp.b.get()).code(), Errc::kProtocol);
  EXPECT_EQ(count_open_fds(), before);
  const uint32_t wrong_count[2] = {0x53544e43u, 3u};  // says 3, carries 2
  ASSERT_TRUE(send_fds(sp.a.get(), wrong_count, sizeof(wrong_count), raw).ok());
  EXPECT_EQ(recv_timeline(sp.b.get()).code(), Errc::kProtocol);
  EXPECT_EQ(count_open_fds(), before);
}

TEST(Timeline, ManySignalsFromOneThreadAreAllObserved) {
  auto t = Timeline::create_producer();
  ASSERT_TRUE(t.ok());
  Timeline c = consumer_of(*t);
  constexpr uint64_t kN = 2000;
  bool ok = true;
  std::thread waiter([&] {
    for (uint64_t v = 1; v <= kN; ++v) ok = ok && c.wait(v, Timeline::Clock::now() + kLong).ok();
  });
  for (uint64_t v = 1; v <= kN; ++v) ASSERT_TRUE(t->signal(v).ok());
  waiter.join();
  EXPECT_TRUE(ok);
}

}  // namespace
}  // namespace canopy::buffers
