#include "canopy/transport/vhost_user_channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

#include "canopy/buffers/fd_passing.h"

namespace canopy::transport::vhost_user {

Status Channel::wait_readable(int timeout_ms) {
  if (timeout_ms < 0) return {};
  pollfd p{sock_.get(), POLLIN, 0};
  for (;;) {
    int r = ::poll(&p, 1, timeout_ms);
    if (r > 0) return {};
    if (r == 0) return make_error(Errc::kTimeout, "vhost-user: timed out waiting for a message");
    if (errno != EINTR) return make_error(Errc::kIo, "vhost-user: poll failed", errno);
  }
}

Status Channel::send(const Message& m, std::span<const int> fds) {
  if (!sock_.valid()) return make_error(Errc::kClosed, "vhost-user: channel closed");
  if (fds.size() > kMaxFdsPerMessage) return make_error(Errc::kLimit, "vhost-user: too many fds");
  if (m.payload.size() > kMaxPayload) return make_error(Errc::kLimit, "vhost-user: payload too large");
  // Header and payload go out as one buffer (at most 12 + 4096 bytes), the fds with its first byte.
  Header h = m.header;
  h.size = uint32_t(m.payload.size());
  uint8_t buf[sizeof(Header) + kMaxPayload];
  std::memcpy(buf, &h, sizeof h);
  if (!m.payload.empty()) std::memcpy(buf + sizeof h, m.payload.data(), m.payload.size());
  return buffers::send_fds(sock_.get(), buf, sizeof h + m.payload.size(), fds);
}

Result<Message> Channel::recv(int timeout_ms) {
  if (!sock_.valid()) return make_error(Errc::kClosed, "vhost-user: channel closed");
  Message m;
  // The header comes with any fds attached to its first byte.
  size_t got = 0;
  auto* hdr = reinterpret_cast<uint8_t*>(&m.header);
  while (got < sizeof(Header)) {
    CANOPY_TRY(wait_readable(timeout_ms));
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
    iovec iov{hdr + got, sizeof(Header) - got};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(sock_.get(), &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == ECONNRESET) return make_error(Errc::kClosed, "vhost-user: connection reset");
      return make_error(Errc::kIo, "vhost-user: recvmsg failed", errno);
    }
    // Take ownership of every received fd first so none leaks on any error path below.
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          m.fds.emplace_back(fd);
        }
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) return make_error(Errc::kProtocol, "vhost-user: too many fds (truncated)");
    if (n == 0) return make_error(Errc::kClosed, "vhost-user: peer closed the connection");
    got += size_t(n);
  }
  if ((m.header.flags.get() & kVersionMask) != kVersion)
    return make_error(Errc::kProtocol, "vhost-user: unsupported protocol version");
  if (m.fds.size() > kMaxFdsPerMessage) return make_error(Errc::kProtocol, "vhost-user: too many fds");
  const uint32_t size = m.header.size;
  if (size > kMaxPayload) return make_error(Errc::kProtocol, "vhost-user: payload size over limit");
  m.payload.resize(size);
  got = 0;
  while (got < size) {
    CANOPY_TRY(wait_readable(timeout_ms));
    ssize_t n = ::recv(sock_.get(), m.payload.data() + got, size - got, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return make_error(Errc::kIo, "vhost-user: recv failed", errno);
    }
    if (n == 0) return make_error(Errc::kClosed, "vhost-user: peer closed mid-message");
    got += size_t(n);
  }
  return m;
}

Status Channel::request_ack(Message m, std::span<const int> fds, int timeout_ms) {
  m.header.flags = m.header.flags.get() | kFlagNeedReply;
  CANOPY_TRY(send(m, fds));
  CANOPY_ASSIGN_OR_RETURN(Message r, recv(timeout_ms));
  if (r.header.request.get() != m.header.request.get() || !(r.flags() & kFlagReply))
    return make_error(Errc::kProtocol, "vhost-user: expected the reply to our request");
  CANOPY_ASSIGN_OR_RETURN(le64 v, r.exact<le64>());
  if (v.get() != 0) return make_error(Errc::kIo, "vhost-user: the peer refused the request");
  return {};
}

Result<UniqueFd> connect_unix(const char* path, int timeout_ms, int type) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (std::strlen(path) >= sizeof addr.sun_path) return make_error(Errc::kInvalidArgument, "socket path too long");
  std::strcpy(addr.sun_path, path);
  timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (!fd) return make_error(Errc::kIo, "socket failed", errno);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
    int err = errno;
    if (err != ENOENT && err != ECONNREFUSED) return make_error(Errc::kIo, "connect failed", err);
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (elapsed >= timeout_ms) return make_error(Errc::kTimeout, "connect timed out", err);
    usleep(10000);
  }
}

Result<UniqueFd> listen_unix(const char* path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (std::strlen(path) >= sizeof addr.sun_path) return make_error(Errc::kInvalidArgument, "socket path too long");
  std::strcpy(addr.sun_path, path);
  struct stat st;
  if (::lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return make_error(Errc::kIo, "socket failed", errno);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return make_error(Errc::kIo, "bind failed", errno);
  if (::listen(fd.get(), 1) != 0) return make_error(Errc::kIo, "listen failed", errno);
  return fd;
}

}  // namespace canopy::transport::vhost_user
