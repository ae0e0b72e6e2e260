#include "canopy/display/scheduler.h"

#include <algorithm>

namespace canopy::display {

void LatencyRecorder::add(Nanos d) {
  if (ring_.size() < kCapacity) ring_.push_back(d.count());
  else ring_[next_] = d.count();
  next_ = (next_ + 1) % kCapacity;
  ++count_;
}

Nanos LatencyRecorder::percentile(double q) const {
  if (ring_.empty()) return Nanos(0);
  std::vector<int64_t> v = ring_;
  const size_t k = std::min(v.size() - 1, size_t(std::clamp(q, 0.0, 1.0) * double(v.size())));
  std::nth_element(v.begin(), v.begin() + long(k), v.end());
  return Nanos(v[k]);
}

OutputScheduler::OutputScheduler(const OutputSpec& spec, const Clock& clock, SchedulerOptions options)
    : spec_(spec), clock_(clock), opt_(options) {
  period_ = Nanos(1'000'000'000 / std::max<uint32_t>(spec_.refresh_hz, 1));
  opt_.budget = std::clamp(opt_.budget, Nanos(0), period_);
  opt_.grace = std::clamp(opt_.grace, Nanos(0), opt_.budget);
  opt_.max_pending = std::max<size_t>(opt_.max_pending, 1);
  const TimePoint now = clock_.now();
  epoch_ = now;
  index_ = 1;
  deadline_ = deadline_at(index_);
  layers_.resize(spec_.layers.size());
  for (auto& l : layers_) l.last_new = now;
  stats_.layers.resize(spec_.layers.size());
  shown_.assign(spec_.layers.size(), Show::kNothing);
}

TimePoint OutputScheduler::deadline_at(uint64_t n) const {
  // Exact multiples of 1/refresh from the start: no drift from rounding the period.
  const uint64_t hz = std::max<uint32_t>(spec_.refresh_hz, 1);
  return epoch_ + Nanos(int64_t(n / hz * 1'000'000'000 + (n % hz) * 1'000'000'000 / hz));
}

TimePoint OutputScheduler::next_latch() const {
  if (wait_until_) return *wait_until_;
  return deadline_ - opt_.budget;
}

void OutputScheduler::submit(size_t layer, uint64_t id, bool signalled, std::optional<TimePoint> guest_present) {
  if (layer >= layers_.size()) {
    releases_.emplace_back(layer, id);  // no such layer: hand it straight back
    return;
  }
  Layer& l = layers_[layer];
  const TimePoint now = clock_.now();
  l.pending.push_back(Pending{id, guest_present && *guest_present <= now ? *guest_present : now, signalled});
  while (l.pending.size() > opt_.max_pending) {
    releases_.emplace_back(layer, l.pending.front().id);
    ++stats_.layers[layer].dropped;
    l.pending.pop_front();
  }
}

void OutputScheduler::signal(size_t layer, uint64_t id) {
  if (layer >= layers_.size()) return;
  for (auto& p : layers_[layer].pending)
    if (p.id == id) {
      p.signalled = true;
      // A latch held for this frame may go on now.
      if (wait_until_) wait_until_ = std::min(*wait_until_, clock_.now());
    }
}

OutputScheduler::Plan OutputScheduler::latch() {
  const TimePoint now = clock_.now();
  Plan plan;
  plan.deadline = deadline_;
  // Hold the latch (briefly) only for layers at least as critical as the output whose every waiting
  // frame is still unsignalled.
  bool hold = false;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!at_least(spec_.layers[i].criticality, spec_.criticality)) continue;
    const auto& pend = layers_[i].pending;
    if (!pend.empty() && std::none_of(pend.begin(), pend.end(), [](const Pending& p) { return p.signalled; }))
      hold = true;
  }
  if (hold) {
    if (!wait_started_) {
      wait_started_ = now;
      ++stats_.waits;
    }
    const TimePoint until = std::min(*wait_started_ + opt_.grace, deadline_);
    if (now < until) {
      wait_until_ = until;
      plan.wait = true;
      plan.wait_until = until;
      return plan;
    }
  }
  wait_started_.reset();
  wait_until_.reset();

  plan.layers.resize(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    Layer& l = layers_[i];
    LayerStats& st = stats_.layers[i];
    LayerPlan& lp = plan.layers[i];
    // The newest signalled frame wins; everything waiting before it is superseded.
    size_t k = l.pending.size();
    for (size_t j = l.pending.size(); j-- > 0;) {
      if (l.pending[j].signalled) {
        k = j;
        break;
      }
    }
    if (k < l.pending.size()) {
      for (size_t j = 0; j < k; ++j) {
        releases_.emplace_back(i, l.pending[j].id);
        ++st.dropped;
      }
      if (l.latched) {  // latched earlier but never presented: superseded too
        releases_.emplace_back(i, l.latched->id);
        ++st.dropped;
      }
      l.latched = l.pending[k];
      l.pending.erase(l.pending.begin(), l.pending.begin() + long(k) + 1);
      l.last_new = now;
      lp = {Show::kNew, l.latched->id};
    } else {
      if (!l.pending.empty()) ++st.missed;
      if (l.latched) lp = {Show::kNew, l.latched->id};
      else if (l.current) lp = {Show::kReused, l.current->id};
    }
    const uint32_t stale_ms = spec_.layers[i].stale_ms;
    if (stale_ms && lp.show != Show::kNew && now - l.last_new >= std::chrono::milliseconds(stale_ms)) {
      if (!st.fallback) {
        st.fallback = true;
        ++st.fallback_entries;
      }
      lp = {Show::kFallback, 0};
    }
    if (lp.show == Show::kNew) st.fallback = false;
  }
  for (size_t i = 0; i < layers_.size(); ++i) shown_[i] = plan.layers[i].show;
  return plan;
}

void OutputScheduler::presented() {
  const TimePoint now = clock_.now();
  ++stats_.compositions;
  if (now > deadline_) ++stats_.missed_deadlines;
  for (size_t i = 0; i < layers_.size(); ++i) {
    Layer& l = layers_[i];
    LayerStats& st = stats_.layers[i];
    switch (shown_[i]) {
      case Show::kNew:
        if (l.latched) {
          if (l.current) releases_.emplace_back(i, l.current->id);
          l.current = l.latched;
          l.latched.reset();
          ++st.new_frames;
          st.latency.add(now - l.current->submitted);
          if (!st.first_frame) st.first_frame = now - epoch_;
        }
        break;
      case Show::kReused: ++st.reused; break;
      case Show::kFallback: ++st.fallback_compositions; break;
      case Show::kNothing: break;
    }
    shown_[i] = Show::kNothing;
  }
  do deadline_ = deadline_at(++index_);
  while (deadline_ <= now);
}

}  // namespace canopy::display
