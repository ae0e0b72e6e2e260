// Restart policy and watchdog of one VM, as pure logic over an injectable clock: the supervisor feeds it
// events (started, heartbeat, exited, stop requested) and asks what is due; tests drive it in virtual
// time (FakeClock), never with sleeps.
//
// Restart policy (manifest `restart`, `max_restarts`):
//   never       an exit is final
//   on-failure  restart after a failure: non-zero exit, killed by a signal, a missed heartbeat
//   always      restart after any exit the operator did not ask for
// Restarts back off: the first is immediate, then 100 ms, 200 ms, ... capped at 5 s. A VM that has run
// for kStablePeriod without failing starts counting afresh. More than max_restarts restarts in a row
// and the VM is given up (state failed); an operator `start`/`restart` clears that.
//
// Watchdog (manifest `watchdog_ms`, 0 = off): from each start and each heartbeat, the VM must send the
// next heartbeat within watchdog_ms; when it does not, poll() says kill it, and the exit that follows
// counts as a failure.
//
// Threading: one thread (the supervisor's).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "canopy/base/clock.h"
#include "canopy/config/manifest.h"

namespace canopy::hypervisor {

// The manifest and its types (canopy/config/manifest.h) are the VMM's vocabulary.
using namespace ::canopy::config;  // NOLINT(google-build-using-namespace)

using TimePoint = canopy::TimePoint;
using Millis = std::chrono::milliseconds;
using canopy::Clock;
using canopy::FakeClock;
using canopy::SteadyClock;

inline constexpr Millis kRestartBackoffBase{100};
inline constexpr Millis kRestartBackoffMax{5000};
inline constexpr Millis kStablePeriod{30000};

enum class VmState { kStopped, kRunning, kStopping, kRestartPending, kFailed };
const char* to_string(VmState s);

enum class ExitCause { kExited, kWatchdog, kStopRequested };

class VmLifecycle {
 public:
  VmLifecycle(RestartPolicy policy, uint32_t max_restarts, Millis watchdog)
      : policy_(policy), max_restarts_(max_restarts), watchdog_(watchdog) {}

  VmState state() const { return state_; }
  uint32_t restarts() const { return restarts_total_; }
  uint32_t consecutive_restarts() const { return consecutive_; }
  uint64_t heartbeats() const { return heartbeats_; }
  uint64_t watchdog_expiries() const { return watchdog_expiries_; }
  const std::string& last_exit() const { return last_exit_; }

  // The VM's process started (first start or restart).
  void on_started(TimePoint now);
  void on_heartbeat(TimePoint now);
  // The operator asked to stop: no restart follows the exit.
  void on_stop_requested();
  // The process is gone. `failure`: non-zero exit or a signal; `description` goes to status.
  // Returns the new state (kRestartPending, kStopped or kFailed).
  VmState on_exit(TimePoint now, bool failure, const std::string& description);
  // An operator start/restart: clears a failed state and the restart count.
  void on_operator_start();

  enum class Action { kNone, kKillForWatchdog, kRestart };
  // What is due at `now`. kKillForWatchdog is returned once per missed deadline; kRestart once per
  // pending restart (the caller then starts the VM and calls on_started).
  Action poll(TimePoint now);
  // The next time poll() may have something to do.
  std::optional<TimePoint> next_deadline() const;

 private:
  RestartPolicy policy_;
  uint32_t max_restarts_;
  Millis watchdog_;
  VmState state_ = VmState::kStopped;
  TimePoint started_{};
  TimePoint last_beat_{};
  TimePoint restart_at_{};
  bool watchdog_fired_ = false;
  bool stop_requested_ = false;
  uint32_t consecutive_ = 0;
  uint32_t restarts_total_ = 0;
  uint64_t heartbeats_ = 0;
  uint64_t watchdog_expiries_ = 0;
  std::string last_exit_;
};

}  // namespace canopy::hypervisor
