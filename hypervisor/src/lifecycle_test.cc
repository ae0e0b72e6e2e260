// Restart policy and watchdog in virtual time (FakeClock): no sleeps.
#include "canopy/hypervisor/lifecycle.h"

#include <gtest/gtest.h>

namespace canopy::hypervisor {
namespace {

using Action = VmLifecycle::Action;
using namespace std::chrono_literals;

TEST(VmLifecycle, OnFailureRestartsAFailedVmImmediatelyThenBacksOff) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kOnFailure, 5, 0ms);
  l.on_started(clk.now());
  EXPECT_EQ(l.on_exit(clk.now(), true, "killed by signal 9"), VmState::kRestartPending);
  EXPECT_EQ(l.poll(clk.now()), Action::kRestart);  // first restart: no delay
  l.on_started(clk.now());
  clk.advance(10ms);
  EXPECT_EQ(l.on_exit(clk.now(), true, "x"), VmState::kRestartPending);
  EXPECT_EQ(l.poll(clk.now()), Action::kNone);
  EXPECT_EQ(*l.next_deadline() - clk.now(), 100ms);
  clk.advance(99ms);
  EXPECT_EQ(l.poll(clk.now()), Action::kNone);
  clk.advance(1ms);
  EXPECT_EQ(l.poll(clk.now()), Action::kRestart);
  l.on_started(clk.now());
  EXPECT_EQ(l.on_exit(clk.now(), true, "x"), VmState::kRestartPending);
  EXPECT_EQ(*l.next_deadline() - clk.now(), 200ms);
  EXPECT_EQ(l.restarts(), 3u);
}

TEST(VmLifecycle, BackoffIsCappedAtFiveSeconds) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kAlways, 1000, 0ms);
  Millis last{0};
  for (int i = 0; i < 12; ++i) {
    l.on_started(clk.now());
    ASSERT_EQ(l.on_exit(clk.now(), true, "x"), VmState::kRestartPending);
    last = std::chrono::duration_cast<Millis>(*l.next_deadline() - clk.now());
    clk.advance(last);
    ASSERT_EQ(l.poll(clk.now()), Action::kRestart);
  }
  EXPECT_EQ(last, kRestartBackoffMax);
}

TEST(VmLifecycle, OnFailureLeavesACleanExitStopped) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kOnFailure, 3, 0ms);
  l.on_started(clk.now());
  EXPECT_EQ(l.on_exit(clk.now(), false, "exited with status 0"), VmState::kStopped);
  EXPECT_EQ(l.poll(clk.now()), Action::kNone);
  EXPECT_FALSE(l.next_deadline().has_value());
}

TEST(VmLifecycle, AlwaysRestartsACleanExit) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kAlways, 3, 0ms);
  l.on_started(clk.now());
  EXPECT_EQ(l.on_exit(clk.now(), false, "exited with status 0"), VmState::kRestartPending);
}

TEST(VmLifecycle, NeverMarksAFailureFailed) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kNever, 3, 0ms);
  l.on_started(clk.now());
  EXPECT_EQ(l.on_exit(clk.now(), true, "exited with status 1"), VmState::kFailed);
  EXPECT_EQ(l.last_exit(), "exited with status 1");
}

TEST(VmLifecycle, GivesUpAfterMaxRestartsInARowAndOperatorStartClearsIt) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kOnFailure, 2, 0ms);
  for (int i = 0; i < 2; ++i) {
    l.on_started(clk.now());
    ASSERT_EQ(l.on_exit(clk.now(), true, "x"), VmState::kRestartPending);
    clk.advance(1s);
    ASSERT_EQ(l.poll(clk.now()), Action::kRestart);
  }
  l.on_started(clk.now());
  EXPECT_EQ(l.on_exit(clk.now(), true, "x"), VmState::kFailed);
  EXPECT_EQ(l.last_exit(), "x; gave up after 2 restarts");
  l.on_operator_start();
  l.on_started(clk.now());
  EXPECT_EQ(l.on_exit(clk.now(), true, "x"), VmState::kRestartPending);
}

TEST(VmLifecycle, AStableRunResetsTheRestartCount) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kOnFailure, 1, 0ms);
  l.on_started(clk.now());
  ASSERT_EQ(l.on_exit(clk.now(), true, "x"), VmState::kRestartPending);
  ASSERT_EQ(l.poll(clk.now()), Action::kRestart);
  l.on_started(clk.now());
  clk.advance(kStablePeriod);
  EXPECT_EQ(l.on_exit(clk.now(), true, "x"), VmState::kRestartPending);
  EXPECT_EQ(l.poll(clk.now()), Action::kRestart) << "first restart after a stable run is immediate";
}

TEST(VmLifecycle, WatchdogFiresOnceWhenHeartbeatsStop) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kOnFailure, 3, 500ms);
  l.on_started(clk.now());
  EXPECT_EQ(*l.next_deadline() - clk.now(), 500ms);
  clk.advance(400ms);
  l.on_heartbeat(clk.now());
  clk.advance(400ms);
  EXPECT_EQ(l.poll(clk.now()), Action::kNone) << "a heartbeat moved the deadline";
  clk.advance(100ms);
  EXPECT_EQ(l.poll(clk.now()), Action::kKillForWatchdog);
  EXPECT_EQ(l.poll(clk.now()), Action::kNone) << "reported once";
  EXPECT_FALSE(l.next_deadline().has_value());
  EXPECT_EQ(l.watchdog_expiries(), 1u);
  // The kill that follows counts as a failure even if the process reports a clean exit.
  EXPECT_EQ(l.on_exit(clk.now(), false, "killed by signal 9"), VmState::kRestartPending);
  EXPECT_EQ(l.last_exit(), "watchdog: no heartbeat for 500 ms (killed by signal 9)");
}

TEST(VmLifecycle, WatchdogOffMeansNoDeadline) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kOnFailure, 3, 0ms);
  l.on_started(clk.now());
  clk.advance(std::chrono::hours(1));
  EXPECT_EQ(l.poll(clk.now()), Action::kNone);
  EXPECT_FALSE(l.next_deadline().has_value());
}

TEST(VmLifecycle, RequestedStopIsNeverRestarted) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kAlways, 3, 100ms);
  l.on_started(clk.now());
  l.on_stop_requested();
  EXPECT_EQ(l.state(), VmState::kStopping);
  clk.advance(1s);
  EXPECT_EQ(l.poll(clk.now()), Action::kNone) << "no watchdog while stopping";
  EXPECT_EQ(l.on_exit(clk.now(), true, "killed by signal 15"), VmState::kStopped);
}

TEST(VmLifecycle, StopCancelsAPendingRestart) {
  FakeClock clk;
  VmLifecycle l(RestartPolicy::kAlways, 3, 0ms);
  l.on_started(clk.now());
  clk.advance(1s);
  ASSERT_EQ(l.on_exit(clk.now(), true, "x"), VmState::kRestartPending);
  ASSERT_EQ(l.poll(clk.now()), Action::kRestart);
  l.on_started(clk.now());
  ASSERT_EQ(l.on_exit(clk.now(), true, "x"), VmState::kRestartPending);  // restart due in 100 ms
  l.on_stop_requested();
  EXPECT_EQ(l.state(), VmState::kStopped);
  EXPECT_EQ(l.poll(clk.now() + 1h), Action::kNone);
}

}  // namespace
}  // namespace canopy::hypervisor
