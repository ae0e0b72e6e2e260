// Test helper: one request and its answer on a SOCK_SEQPACKET control socket (canopy-display's).
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>

namespace canopy::test_support {

// Sends `req` to the socket at `path`; the answer, "unreachable" when it cannot connect, "no answer"
// when none comes within `timeout_ms`, "" when the peer closed unanswered. `until_closed`: returns only
// once the peer has closed the connection too (every descriptor it had of it: a count of the peer's
// descriptors taken then does not include it), within the same hang guard; "not closed: ANSWER" when
// it did not.
inline std::string ask_seqpacket(const std::string& path, const std::string& req, int timeout_ms,
                                 bool until_closed = false) {
  const int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) return "unreachable";
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  std::string answer = "unreachable";
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    (void)::send(s, req.data(), req.size(), MSG_NOSIGNAL);
    pollfd p{s, POLLIN, 0};
    answer = "no answer";
    if (::poll(&p, 1, timeout_ms) == 1) {
      char buf[8192];
      const ssize_t n = ::recv(s, buf, sizeof buf, 0);
      answer = n > 0 ? std::string(buf, size_t(n)) : std::string();
      // Until the end of the stream (more packets are read and dropped), within one overall deadline.
      const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
      bool closed = !until_closed || n <= 0;
      while (!closed) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        const int r = ::poll(&p, 1, int(left.count()));
        if (r < 0 && errno == EINTR) continue;
        if (r != 1) break;
        const ssize_t m = ::recv(s, buf, sizeof buf, 0);
        if (m < 0 && errno == EINTR) continue;
        closed = m == 0;
        if (m < 0) break;
      }
      if (!closed) answer = "not closed: " + answer;
    }
  }
  ::close(s);
  return answer;
}

}  // namespace canopy::test_support
