#include "canopy/hypervisor/control_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
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
  pollfd p{s.get(), POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) != 1) return make_error(Errc::kTimeout, "no reply on the control socket");
  std::vector<char> buf(1 << 20);
  const ssize_t n = ::recv(s.get(), buf.data(), buf.size(), 0);
  if (n <= 0) return make_error(Errc::kClosed, "the control socket closed the connection");
  return std::string(buf.data(), size_t(n));
}

}  // namespace canopy::hypervisor
