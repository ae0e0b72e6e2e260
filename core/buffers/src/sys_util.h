// Small private helpers for system calls.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdint>

namespace canopy::buffers {

// Calls f() again while it fails with EINTR.
template <typename F>
auto retry_eintr(F&& f) {
  for (;;) {
    auto r = f();
    if (!(r == -1 && errno == EINTR)) return r;
  }
}

inline uint64_t page_size() {
  static const uint64_t p = uint64_t(::sysconf(_SC_PAGESIZE));
  return p;
}

}  // namespace canopy::buffers
