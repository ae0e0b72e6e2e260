// Helpers shared by the canopy_buffers tests.
#pragma once

#include <dirent.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <ostream>
#include <utility>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy {
// gtest prints error codes by name.
inline void PrintTo(Errc e, std::ostream* os) { *os << errc_name(e); }
}  // namespace canopy

namespace canopy::buffers::testing {

struct SocketPair {
  UniqueFd a;
  UniqueFd b;
};

inline SocketPair make_socketpair(int type = SOCK_STREAM) {
  int sv[2] = {-1, -1};
  if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0) return {};
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

// Number of descriptors open in this process (for leak checks).
inline int count_open_fds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n - 1;  // the DIR's own descriptor
}

// Kills the whole test binary (SIGALRM) if a test runs longer than `seconds`: a bug cannot hang ctest.
class AlarmGuard {
 public:
  explicit AlarmGuard(unsigned seconds) { ::alarm(seconds); }
  ~AlarmGuard() { ::alarm(0); }
  AlarmGuard(const AlarmGuard&) = delete;
  AlarmGuard& operator=(const AlarmGuard&) = delete;
};

// A forked child running `body`, whose return value becomes its exit status. The child has its own
// alarm, so a stuck child dies by itself. The destructor kills and reaps a child still running.
class Child {
 public:
  explicit Child(const std::function<int()>& body, unsigned alarm_seconds = 20) {
    pid_ = ::fork();
    if (pid_ == 0) {
      ::alarm(alarm_seconds);
      int rc = body();
      ::_exit(rc);
    }
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0; }
  // Reaps the child; returns its raw wait status.
  int wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0) {
      if (errno != EINTR) return -1;
    }
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_ = -1;
};

// Exit codes from a child: 0 ok, otherwise the number of the failed check.
#define CHILD_CHECK(cond, code) \
  do {                          \
    if (!(cond)) return (code); \
  } while (0)

inline bool write_byte(int fd, char c) { return ::write(fd, &c, 1) == 1; }
inline bool read_byte(int fd, char* c) {
  for (;;) {
    ssize_t n = ::read(fd, c, 1);
    if (n == 1) return true;
    if (n < 0 && errno == EINTR) continue;
    return false;
  }
}

}  // namespace canopy::buffers::testing
