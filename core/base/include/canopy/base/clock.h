// An injectable monotonic clock: components that act on time (watchdogs, restart back-off, frame
// deadlines) take a Clock&, so tests drive them with a FakeClock in virtual time.
#pragma once

#include <chrono>

namespace canopy {

using TimePoint = std::chrono::steady_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint now() const = 0;
};

class SteadyClock final : public Clock {
 public:
  TimePoint now() const override { return std::chrono::steady_clock::now(); }
};

// A clock that moves only when told to (tests).
class FakeClock final : public Clock {
 public:
  TimePoint now() const override { return now_; }
  void advance(std::chrono::steady_clock::duration d) { now_ += d; }
  void set(TimePoint t) { now_ = t; }

 private:
  TimePoint now_{std::chrono::seconds(1000)};
};

}  // namespace canopy
