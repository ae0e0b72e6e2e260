#include "canopy/base/proc_stat.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "canopy/base/unique_fd.h"

namespace canopy {

std::optional<long long> proc_stat_field(pid_t pid, int field) {
  if (field < 4) return std::nullopt;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", int(pid));
  UniqueFd f(::open(path, O_RDONLY | O_CLOEXEC));
  if (!f.valid()) return std::nullopt;
  // 52 fields of at most 20 digits and a name of at most 64 bytes fit.
  char buf[1536];
  size_t len = 0;
  for (;;) {
    const ssize_t n = ::read(f.get(), buf + len, sizeof buf - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += size_t(n);
    if (len == sizeof buf - 1) break;
  }
  buf[len] = '\0';
  const char* close = std::strrchr(buf, ')');
  if (close == nullptr) return std::nullopt;
  // After ") ": field 3, the state, then the numbers.
  const char* p = close + 1;
  for (int at = 3; at < field; ++at) {
    while (*p == ' ') ++p;
    if (*p == '\0' || *p == '\n') return std::nullopt;
    while (*p != ' ' && *p != '\0' && *p != '\n') ++p;
  }
  while (*p == ' ') ++p;
  if (!(*p == '-' || (*p >= '0' && *p <= '9'))) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(p, &end, 10);
  if (errno != 0 || end == p || (*end != ' ' && *end != '\n' && *end != '\0')) return std::nullopt;
  return v;
}

}  // namespace canopy
