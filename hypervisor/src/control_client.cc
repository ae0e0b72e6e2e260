#include "canopy/hypervisor/control_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "canopy/base/unique_fd.h"

namespace canopy::hypervisor {

Result<std::string> control_request(const std::string& path, std::string_view request, int timeout_ms) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return make_error(Errc::kInvalidArgument, "control socket path too long");
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!s.valid() || ::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return make_error(Errc::kIo, "cannot reach the control socket", errno);
  if (::send(s.get(), request.data(), request.size(), MSG_NOSIGNAL) != ssize_t(request.size()))
    return make_error(Errc::kIo, "send on the control socket failed", errno);
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  auto wait_readable = [&] {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    pollfd p{s.get(), POLLIN, 0};
    int r;
    while ((r = ::poll(&p, 1, int(std::max<int64_t>(0, left)))) < 0 && errno == EINTR) {
    }
    return r == 1;
  };
  if (!wait_readable()) return make_error(Errc::kTimeout, "no reply on the control socket");
  std::vector<char> buf(1 << 20);
  const ssize_t n = ::recv(s.get(), buf.data(), buf.size(), 0);
  if (n <= 0) return make_error(Errc::kClosed, "the control socket closed the connection");
  std::string reply(buf.data(), size_t(n));
  // Half-close and wait for the server's end to close (its EOF): an event, not a guess at how long the
  // server takes to notice. A server that never closes costs the rest of timeout_ms, no more.
  if (::shutdown(s.get(), SHUT_WR) == 0) {
    char c;
    while (wait_readable() && ::recv(s.get(), &c, 1, MSG_DONTWAIT) > 0) {
    }
  }
  return reply;
}

}  // namespace canopy::hypervisor
