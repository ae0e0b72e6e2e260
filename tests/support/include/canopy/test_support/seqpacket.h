// Test helper: one request and its answer on a SOCK_SEQPACKET control socket (canopy-display's).
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace canopy::test_support {

// Sends `req` to the socket at `path`; the answer, "unreachable" when it cannot connect, "no answer"
// when none comes within `timeout_ms`, "" when the peer closed unanswered. `until_closed`: returns only
// once the peer has closed the connection too (every descriptor it had of it: a count of the peer's
// descriptors taken then does not include it), within the same hang guard.
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
      while (until_closed && n > 0 && ::poll(&p, 1, timeout_ms) == 1 && ::recv(s, buf, sizeof buf, 0) > 0) {
      }
    }
  }
  ::close(s);
  return answer;
}

}  // namespace canopy::test_support
