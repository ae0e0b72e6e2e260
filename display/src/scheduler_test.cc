// Mixed-criticality scheduling in virtual time: the assertions are on frame sequence and virtual
// deadlines, never on wall-clock rates.
#include "canopy/display/scheduler.h"

#include <gtest/gtest.h>

namespace canopy::display {
namespace {

using std::chrono::milliseconds;
using Show = OutputScheduler::Show;

// A safety output at 60 Hz: layer 0 the cluster (safety, 250 ms watchdog), layer 1 an IVI inset (normal).
OutputSpec cockpit() {
  OutputSpec o;
  o.name = "cluster";
  o.width = 1920;
  o.height = 720;
  o.refresh_hz = 60;
  o.criticality = Criticality::kSafety;
  LayerSpec c;
  c.vm = "cluster";
  c.criticality = Criticality::kSafety;
  c.stale_ms = 250;
  LayerSpec i;
  i.vm = "ivi";
  i.criticality = Criticality::kNormal;
  o.layers = {c, i};
  return o;
}

class SchedulerTest : public ::testing::Test {
 protected:
  FakeClock clock;
  OutputScheduler s{cockpit(), clock};
  uint64_t next_id = 1;

  // One refresh as the compositor runs it: wake at the latch point (or the end of a wait), latch,
  // compose in `compose` time, present. Returns the plan that was presented.
  OutputScheduler::Plan refresh(Nanos compose = milliseconds(1)) {
    clock.set(std::max(clock.now(), s.next_latch()));
    auto p = s.latch();
    while (p.wait) {
      clock.set(p.wait_until);
      p = s.latch();
    }
    clock.advance(compose);
    s.presented();
    return p;
  }
  uint64_t produce(size_t layer, bool signalled = true) {
    const uint64_t id = next_id++;
    s.submit(layer, id, signalled);
    return id;
  }
};

// Start to first frame: from the output's start to the presentation that first showed a layer's frame,
// in virtual time; a layer that showed none has none.
TEST_F(SchedulerTest, EachLayerKnowsWhenItsFirstFrameWasShown) {
  const TimePoint start = clock.now();  // the scheduler's, made with the fixture
  refresh();
  refresh();  // two refreshes with nothing to show
  clock.advance(milliseconds(100));
  produce(0);
  refresh(milliseconds(1));  // latched at the next latch point, presented 1 ms later
  const TimePoint shown = clock.now();
  produce(0);
  refresh();
  ASSERT_TRUE(s.stats().layers[0].first_frame.has_value());
  EXPECT_EQ(*s.stats().layers[0].first_frame, shown - start) << "the first frame's presentation, not the last";
  EXPECT_FALSE(s.stats().layers[1].first_frame.has_value());
}

TEST_F(SchedulerTest, NewFramesShowAndThePreviousOneIsReleasedOncePresented) {
  const uint64_t a = produce(0);
  auto p = refresh();
  ASSERT_EQ(p.layers.size(), 2u);
  EXPECT_EQ(p.layers[0].show, Show::kNew);
  EXPECT_EQ(p.layers[0].frame, a);
  EXPECT_EQ(p.layers[1].show, Show::kNothing);
  EXPECT_TRUE(s.take_releases().empty()) << "a is on screen";
  const uint64_t b = produce(0);
  p = refresh();
  EXPECT_EQ(p.layers[0].frame, b);
  EXPECT_EQ(s.take_releases(), (std::vector<std::pair<size_t, uint64_t>>{{0, a}}));
  p = refresh();
  EXPECT_EQ(p.layers[0].show, Show::kReused);
  EXPECT_EQ(p.layers[0].frame, b);
  const auto& st = s.stats();
  EXPECT_EQ(st.compositions, 3u);
  EXPECT_EQ(st.missed_deadlines, 0u);
  EXPECT_EQ(st.layers[0].new_frames, 2u);
  EXPECT_EQ(st.layers[0].reused, 1u);
  EXPECT_EQ(st.layers[0].missed, 0u) << "nothing was waiting";
}

TEST_F(SchedulerTest, DeadlinesFollowTheRefreshPeriodInVirtualTime) {
  const TimePoint start = clock.now();
  EXPECT_EQ(s.period(), Nanos(16'666'666));
  EXPECT_EQ(s.deadline(), start + s.period());
  EXPECT_EQ(s.next_latch(), s.deadline() - milliseconds(4));
  refresh();
  EXPECT_EQ(s.deadline(), start + Nanos(2'000'000'000) / 60);
}

TEST_F(SchedulerTest, AnIviThatStopsSignallingNeverDelaysTheCluster) {
  // The IVI submits frames whose fences never signal; the cluster keeps producing.
  constexpr int kFrames = 600;
  for (int i = 0; i < kFrames; ++i) {
    const uint64_t c = produce(0);
    produce(1, /*signalled=*/false);
    const TimePoint latch_at = s.next_latch();
    auto p = refresh();
    EXPECT_FALSE(s.stats().waits) << "never held for a less critical VM";
    EXPECT_EQ(p.layers[0].show, Show::kNew);
    EXPECT_EQ(p.layers[0].frame, c);
    EXPECT_EQ(p.layers[1].show, Show::kNothing) << "never had a good frame";
    EXPECT_LE(clock.now(), p.deadline);
    EXPECT_EQ(clock.now(), latch_at + milliseconds(1)) << "latched on time, composed, presented";
  }
  const auto& st = s.stats();
  EXPECT_EQ(st.missed_deadlines, 0u);
  EXPECT_EQ(st.layers[0].new_frames, uint64_t(kFrames));
  EXPECT_EQ(st.layers[1].missed, uint64_t(kFrames));
  EXPECT_EQ(st.layers[1].dropped, uint64_t(kFrames - 3)) << "at most 3 wait; older ones are dropped";
}

TEST_F(SchedulerTest, TheIviShowsItsLastGoodFrameWhileHung) {
  const uint64_t good = produce(1);
  produce(0);
  refresh();
  produce(1, false);  // hangs from here on
  for (int i = 0; i < 10; ++i) {
    produce(0);
    auto p = refresh();
    EXPECT_EQ(p.layers[1].show, Show::kReused);
    EXPECT_EQ(p.layers[1].frame, good);
  }
  EXPECT_EQ(s.stats().layers[1].missed, 10u);
  EXPECT_EQ(s.stats().layers[1].fallback_entries, 0u) << "no watchdog on normal layers";
}

TEST_F(SchedulerTest, ACriticalLayerHoldsTheLatchForAtMostGrace) {
  produce(0);
  refresh();
  // The cluster's next frame is submitted, its fence signals 1 ms after the latch point.
  const uint64_t c = produce(0, false);
  clock.set(s.next_latch());
  auto p = s.latch();
  ASSERT_TRUE(p.wait);
  EXPECT_EQ(p.wait_until, clock.now() + milliseconds(2));
  clock.advance(milliseconds(1));
  s.signal(0, c);
  EXPECT_EQ(s.next_latch(), clock.now()) << "the held latch is due as soon as the frame signals";
  p = s.latch();
  ASSERT_FALSE(p.wait);
  EXPECT_EQ(p.layers[0].show, Show::kNew);
  EXPECT_EQ(p.layers[0].frame, c);
  clock.advance(milliseconds(1));
  s.presented();
  EXPECT_EQ(s.stats().waits, 1u);
  EXPECT_EQ(s.stats().missed_deadlines, 0u);

  // This time it never signals: after the grace the previous frame is shown again, still in time.
  produce(0, false);
  p = refresh();
  EXPECT_EQ(p.layers[0].show, Show::kReused);
  EXPECT_EQ(p.layers[0].frame, c);
  EXPECT_EQ(s.stats().layers[0].missed, 1u);
  EXPECT_EQ(s.stats().missed_deadlines, 0u);
}

TEST_F(SchedulerTest, AFloodingProducerIsBoundedAndItsFramesReleased) {
  produce(0);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 100; ++i) ids.push_back(produce(1));
  auto p = refresh();
  EXPECT_EQ(p.layers[1].frame, ids.back()) << "the newest signalled frame wins";
  auto rel = s.take_releases();
  EXPECT_EQ(rel.size(), 99u) << "every other frame handed back, none kept";
  EXPECT_EQ(s.stats().layers[1].dropped, 99u);
  EXPECT_EQ(s.stats().layers[0].new_frames, 1u);
}

TEST_F(SchedulerTest, StaleClusterSwitchesToTheFallbackAndBackWhenFramesResume) {
  produce(0);
  refresh();
  int until_fallback = 0;
  OutputScheduler::Plan p;
  do {
    p = refresh();
    ++until_fallback;
  } while (p.layers[0].show != Show::kFallback && until_fallback < 100);
  ASSERT_EQ(p.layers[0].show, Show::kFallback);
  // 250 ms at 60 Hz: exactly the 15th refresh after the last new frame (deadlines do not drift).
  EXPECT_EQ(until_fallback, 15);
  EXPECT_TRUE(s.stats().layers[0].fallback);
  EXPECT_EQ(s.stats().layers[0].fallback_entries, 1u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(refresh().layers[0].show, Show::kFallback);
  EXPECT_EQ(s.stats().layers[0].fallback_entries, 1u) << "one entry while it lasts";
  const uint64_t back = produce(0);
  p = refresh();
  EXPECT_EQ(p.layers[0].show, Show::kNew);
  EXPECT_EQ(p.layers[0].frame, back);
  EXPECT_FALSE(s.stats().layers[0].fallback);
  EXPECT_EQ(s.stats().layers[0].fallback_compositions, 6u);
}

TEST_F(SchedulerTest, ACriticalLayerThatNeverProducedShowsTheFallback) {
  // Counted from the output's start; the 15th latch point is 246 ms in, the 16th 262 ms.
  for (int i = 0; i < 15; ++i) EXPECT_EQ(refresh().layers[0].show, Show::kNothing) << i;
  EXPECT_EQ(refresh().layers[0].show, Show::kFallback);
}

TEST_F(SchedulerTest, LatePresentationCountsAsAMissAndSkipsToTheNextDeadlineAhead) {
  produce(0);
  const TimePoint first = s.deadline();
  const TimePoint start = first - Nanos(1'000'000'000) / 60;
  refresh(milliseconds(40));  // composing took 40 ms: two periods late
  EXPECT_EQ(s.stats().missed_deadlines, 1u);
  EXPECT_GT(s.deadline(), clock.now());
  EXPECT_EQ(s.deadline(), start + Nanos(4'000'000'000) / 60) << "the 4th deadline, the first still ahead";
  refresh();
  EXPECT_EQ(s.stats().missed_deadlines, 1u);
}

TEST_F(SchedulerTest, FramesForUnknownLayersGoStraightBack) {
  s.submit(7, 42, true);
  EXPECT_EQ(s.take_releases(), (std::vector<std::pair<size_t, uint64_t>>{{7, 42}}));
  s.signal(7, 42);  // ignored
}

TEST(LatencyRecorder, Percentiles) {
  LatencyRecorder r;
  EXPECT_EQ(r.percentile(0.5), Nanos(0));
  for (int i = 1; i <= 100; ++i) r.add(milliseconds(i));
  EXPECT_EQ(r.count(), 100u);
  EXPECT_EQ(r.percentile(0.5), milliseconds(51));
  EXPECT_EQ(r.percentile(0.99), milliseconds(100));
  for (int i = 0; i < 5000; ++i) r.add(milliseconds(1));
  EXPECT_EQ(r.percentile(0.99), milliseconds(1)) << "a window of the latest samples";
}

}  // namespace
}  // namespace canopy::display
