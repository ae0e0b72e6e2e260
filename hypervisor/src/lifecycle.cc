// Restart policy and watchdog logic (lifecycle.h).
#include "canopy/hypervisor/lifecycle.h"

#include <algorithm>

namespace canopy::hypervisor {

const char* to_string(VmState s) {
  switch (s) {
    case VmState::kStopped: return "stopped";
    case VmState::kRunning: return "running";
    case VmState::kStopping: return "stopping";
    case VmState::kRestartPending: return "restart-pending";
    case VmState::kFailed: return "failed";
  }
  return "?";
}

void VmLifecycle::on_started(TimePoint now) {
  state_ = VmState::kRunning;
  started_ = now;
  last_beat_ = now;
  watchdog_fired_ = false;
  stop_requested_ = false;
}

void VmLifecycle::on_heartbeat(TimePoint now) {
  if (state_ != VmState::kRunning) return;
  ++heartbeats_;
  last_beat_ = now;
  watchdog_fired_ = false;
}

void VmLifecycle::on_stop_requested() {
  stop_requested_ = true;
  if (state_ == VmState::kRunning) state_ = VmState::kStopping;
  if (state_ == VmState::kRestartPending || state_ == VmState::kFailed) state_ = VmState::kStopped;
}

VmState VmLifecycle::on_exit(TimePoint now, bool failure, const std::string& description) {
  const bool watchdog = watchdog_fired_;
  last_exit_ = watchdog
                   ? "watchdog: no heartbeat for " + std::to_string(watchdog_.count()) + " ms (" + description + ")"
                   : description;
  if (stop_requested_) {
    state_ = VmState::kStopped;
    return state_;
  }
  failure = failure || watchdog;
  const bool restart = policy_ == RestartPolicy::kAlways || (policy_ == RestartPolicy::kOnFailure && failure);
  if (!restart) {
    state_ = failure ? VmState::kFailed : VmState::kStopped;
    return state_;
  }
  if (now - started_ >= kStablePeriod) consecutive_ = 0;  // it ran long enough: a fresh start
  if (consecutive_ >= max_restarts_) {
    state_ = VmState::kFailed;
    last_exit_ += "; gave up after " + std::to_string(consecutive_) + " restarts";
    return state_;
  }
  Millis delay{0};
  if (consecutive_ > 0) {
    delay = kRestartBackoffBase * (1 << std::min<uint32_t>(consecutive_ - 1, 16));
    delay = std::min(delay, kRestartBackoffMax);
  }
  ++consecutive_;
  ++restarts_total_;
  restart_at_ = now + delay;
  state_ = VmState::kRestartPending;
  return state_;
}

void VmLifecycle::on_operator_start() {
  consecutive_ = 0;
  stop_requested_ = false;
}

VmLifecycle::Action VmLifecycle::poll(TimePoint now) {
  if (state_ == VmState::kRestartPending && now >= restart_at_) {
    state_ = VmState::kStopped;  // the caller starts it and reports on_started
    return Action::kRestart;
  }
  if (state_ == VmState::kRunning && watchdog_.count() > 0 && !watchdog_fired_ && now >= last_beat_ + watchdog_) {
    watchdog_fired_ = true;
    ++watchdog_expiries_;
    return Action::kKillForWatchdog;
  }
  return Action::kNone;
}

std::optional<TimePoint> VmLifecycle::next_deadline() const {
  if (state_ == VmState::kRestartPending) return restart_at_;
  if (state_ == VmState::kRunning && watchdog_.count() > 0 && !watchdog_fired_) return last_beat_ + watchdog_;
  return std::nullopt;
}

}  // namespace canopy::hypervisor
