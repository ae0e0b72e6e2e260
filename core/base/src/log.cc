#include "canopy/base/log.h"

#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "canopy/base/result.h"

namespace canopy {
namespace {

LogLevel initial_level() {
  const char* env = std::getenv("CANOPY_LOG");
  if (!env) return LogLevel::kInfo;
  if (!std::strcmp(env, "debug")) return LogLevel::kDebug;
  if (!std::strcmp(env, "warn")) return LogLevel::kWarn;
  if (!std::strcmp(env, "error")) return LogLevel::kError;
  return LogLevel::kInfo;
}

std::atomic<int> g_level{static_cast<int>(initial_level())};
std::atomic<const char*> g_tag{"canopy"};

uint64_t now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

}  // namespace

const char* errc_name(Errc e) {
  switch (e) {
    case Errc::kOk: return "ok";
    case Errc::kInvalidArgument: return "invalid argument";
    case Errc::kOutOfRange: return "out of range";
    case Errc::kOverflow: return "overflow";
    case Errc::kLimit: return "limit exceeded";
    case Errc::kNoMemory: return "out of memory";
    case Errc::kIo: return "i/o error";
    case Errc::kProtocol: return "protocol error";
    case Errc::kUnsupported: return "unsupported";
    case Errc::kClosed: return "closed";
    case Errc::kTimeout: return "timeout";
    case Errc::kProducerLost: return "producer lost";
    case Errc::kState: return "invalid state";
  }
  return "unknown";
}

void set_log_level(LogLevel level) { g_level.store(static_cast<int>(level)); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }
void set_log_tag(const char* tag) { g_tag.store(tag); }
const char* log_tag() { return g_tag.load(); }

void log_message(LogLevel level, const char* fmt, ...) {
  static const char* const kNames[] = {"debug", "info", "warn", "error"};
  char buf[1024];
  int n = std::snprintf(buf, sizeof buf, "%s[%d] %s: ", g_tag.load(), int(getpid()), kNames[int(level)]);
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(buf + n, sizeof buf - size_t(n), fmt, ap);
  va_end(ap);
  size_t len = size_t(n) + (m < 0 ? 0 : size_t(m));
  if (len > sizeof buf - 2) len = sizeof buf - 2;
  buf[len++] = '\n';
  ssize_t w = ::write(STDERR_FILENO, buf, len);
  (void)w;
}

bool RateLimiter::allow(uint64_t* suppressed) {
  uint64_t now = now_ms();
  uint64_t start = window_start_ms_.load(std::memory_order_relaxed);
  if (now - start >= period_ms_) {
    if (window_start_ms_.compare_exchange_strong(start, now)) in_window_.store(0);
  }
  if (in_window_.fetch_add(1) < burst_) {
    *suppressed = dropped_.exchange(0);
    return true;
  }
  dropped_.fetch_add(1);
  return false;
}

}  // namespace canopy
