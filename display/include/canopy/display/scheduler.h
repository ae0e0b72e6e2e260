// Mixed-criticality frame scheduling for one output, in the time of an injectable Clock (tests run it in
// virtual time).
//
// Every refresh period has a deadline (the output's commit time). The compositor latches what each layer
// shows at latch point = deadline - budget, composes, and commits by the deadline:
//   - a layer shows its newest frame whose acquire fence has signalled (kNew); older frames are
//     superseded and released at once; the frame shown before is released once the new composition is
//     presented;
//   - a layer with no newly signalled frame shows its last good frame again (kReused); if a frame was
//     waiting on its fence, that is a miss for the layer (the producer was late);
//   - the output never waits on a VM less critical than itself: only layers at least as critical as the
//     output may hold the latch, for at most `grace`, when their frame is submitted but not signalled;
//   - a layer with a stale-frame watchdog (stale_ms) that has had no new frame for that long (or none
//     since the output started) shows the safe fallback until frames resume (kFallback);
//   - a producer that floods gets its older waiting frames dropped (at most max_pending wait).
// A composition presented after its deadline counts as a missed deadline; the next deadline is the first
// one still ahead.
//
// Threading: one compositor thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <utility>
#include <vector>

#include "canopy/base/clock.h"
#include "canopy/display/layout.h"

namespace canopy::display {

using Nanos = std::chrono::nanoseconds;

// Latencies (ns) of the last kCapacity samples, for percentiles, plus a count of all.
class LatencyRecorder {
 public:
  static constexpr size_t kCapacity = 4096;
  void add(Nanos d);
  uint64_t count() const { return count_; }
  // The q-quantile (0..1) of the recorded window; 0 when empty.
  Nanos percentile(double q) const;

 private:
  std::vector<int64_t> ring_;
  size_t next_ = 0;
  uint64_t count_ = 0;
};

struct LayerStats {
  uint64_t new_frames = 0;        // compositions that showed a new frame
  uint64_t reused = 0;            // compositions that showed the previous frame again
  uint64_t missed = 0;            // reused although a frame was waiting on its acquire fence
  uint64_t dropped = 0;           // frames never shown (superseded or flooded out)
  uint64_t fallback_entries = 0;  // times the stale-frame watchdog switched to the fallback
  uint64_t fallback_compositions = 0;
  bool fallback = false;    // showing the fallback now
  LatencyRecorder latency;  // guest present (else submit) -> output present, for frames shown
  // From the output's start (the compositor's) to the presentation of the layer's first frame: with
  // canopy-vmm run --compositor, which starts the compositor before the VMs, start to first frame.
  std::optional<Nanos> first_frame;
};

struct OutputStats {
  uint64_t compositions = 0;
  uint64_t missed_deadlines = 0;  // presented after the deadline
  uint64_t waits = 0;             // latches held for a critical layer's frame
  std::vector<LayerStats> layers;
};

struct SchedulerOptions {
  Nanos budget{std::chrono::milliseconds(4)};  // latch this long before the deadline
  Nanos grace{std::chrono::milliseconds(2)};   // the most a critical layer may hold the latch
  size_t max_pending = 3;                      // frames waiting per layer; older ones are dropped
};

class OutputScheduler {
 public:
  OutputScheduler(const OutputSpec& spec, const Clock& clock, SchedulerOptions options = {});

  const OutputSpec& spec() const { return spec_; }
  Nanos period() const { return period_; }
  TimePoint deadline() const { return deadline_; }
  // When latch() should run next (the latch point, or the end of a grace wait).
  TimePoint next_latch() const;

  // A producer presented frame `id` on layer `layer` (its acquire fence signalled or not yet).
  // `guest_present`: when the guest presented the frame (its flush reached the device), the start of
  // the latency recorded for it; without it, the submission.
  void submit(size_t layer, uint64_t id, bool signalled, std::optional<TimePoint> guest_present = std::nullopt);
  // Frame `id`'s acquire fence signalled (unknown ids are ignored: already dropped). A latch held
  // waiting (Plan::wait) becomes due at once.
  void signal(size_t layer, uint64_t id);

  enum class Show { kNothing, kNew, kReused, kFallback };
  struct LayerPlan {
    Show show = Show::kNothing;
    uint64_t frame = 0;  // kNew / kReused
  };
  struct Plan {
    bool wait = false;  // call latch() again at wait_until or when a frame is signalled
    TimePoint wait_until{};
    TimePoint deadline{};
    std::vector<LayerPlan> layers;
  };
  // Decides what every layer shows for the current deadline (see the file comment).
  Plan latch();
  // The composition of the last plan reached the output now.
  void presented();

  // Frames the compositor no longer reads: (layer, id), to release back to their producers.
  std::vector<std::pair<size_t, uint64_t>> take_releases() { return std::exchange(releases_, {}); }
  const OutputStats& stats() const { return stats_; }

 private:
  struct Pending {
    uint64_t id;
    TimePoint submitted;
    bool signalled;
  };
  struct Layer {
    std::deque<Pending> pending;
    std::optional<Pending> current;  // shown by the last composition
    std::optional<Pending> latched;  // chosen by latch(), shown once presented
    TimePoint last_new;              // when the last new frame was latched (or the start)
  };

  OutputSpec spec_;
  const Clock& clock_;
  SchedulerOptions opt_;
  TimePoint deadline_at(uint64_t n) const;

  Nanos period_;  // rounded down; deadlines themselves are exact (deadline_at)
  TimePoint epoch_;
  uint64_t index_ = 0;
  TimePoint deadline_;
  std::optional<TimePoint> wait_started_;
  std::optional<TimePoint> wait_until_;
  std::vector<Show> shown_;  // per layer, by the last latch()
  std::vector<Layer> layers_;
  std::vector<std::pair<size_t, uint64_t>> releases_;
  OutputStats stats_;
};

}  // namespace canopy::display
