// Minimal leveled logging to stderr, with a rate limiter for guest-triggerable messages
// (BRIEF conventions 6). Thread-safe; a message is one write(2).
#pragma once

#include <atomic>
#include <cstdint>

namespace canopy {

enum class LogLevel { kDebug = 0, kInfo, kWarn, kError };

void set_log_level(LogLevel level);
LogLevel log_level();
void set_log_tag(const char* tag);  // program name shown in each line
const char* log_tag();
void log_message(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// Allows `burst` messages per `period_ms`; counts the ones it drops and reports them with the next one let through.
class RateLimiter {
 public:
  explicit RateLimiter(uint32_t burst = 10, uint32_t period_ms = 1000) : burst_(burst), period_ms_(period_ms) {}
  // Returns true when a message may be logged; *suppressed gets the number dropped since the last one allowed.
  bool allow(uint64_t* suppressed);

 private:
  uint32_t burst_;
  uint32_t period_ms_;
  std::atomic<uint64_t> window_start_ms_{0};
  std::atomic<uint32_t> in_window_{0};
  std::atomic<uint64_t> dropped_{0};
};

}  // namespace canopy

#define CANOPY_LOG(level, ...)                                                         \
  do {                                                                                 \
    if ((level) >= ::canopy::log_level()) ::canopy::log_message((level), __VA_ARGS__); \
  } while (0)
#define CANOPY_DEBUG(...) CANOPY_LOG(::canopy::LogLevel::kDebug, __VA_ARGS__)
#define CANOPY_INFO(...) CANOPY_LOG(::canopy::LogLevel::kInfo, __VA_ARGS__)
#define CANOPY_WARN(...) CANOPY_LOG(::canopy::LogLevel::kWarn, __VA_ARGS__)
#define CANOPY_ERROR(...) CANOPY_LOG(::canopy::LogLevel::kError, __VA_ARGS__)

// Rate-limited: one limiter per call site. Use for anything a guest or peer can trigger repeatedly.
#define CANOPY_LOG_RL(level, fmt, ...)                                                                    \
  do {                                                                                                    \
    static ::canopy::RateLimiter canopy_rl_;                                                              \
    uint64_t canopy_sup_ = 0;                                                                             \
    if ((level) >= ::canopy::log_level() && canopy_rl_.allow(&canopy_sup_)) {                             \
      if (canopy_sup_)                                                                                    \
        ::canopy::log_message((level), "(%llu similar suppressed) " fmt, (unsigned long long)canopy_sup_, \
                              ##__VA_ARGS__);                                                             \
      else ::canopy::log_message((level), fmt, ##__VA_ARGS__);                                            \
    }                                                                                                     \
  } while (0)
#define CANOPY_WARN_RL(fmt, ...) CANOPY_LOG_RL(::canopy::LogLevel::kWarn, fmt, ##__VA_ARGS__)
