#include "canopy/buffers/fd_passing.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "sys_util.h"

namespace canopy::buffers {

namespace {

// Control buffer for up to kMaxFdsPerMessage descriptors (+1 to detect one too many), aligned for cmsghdr.
union ControlBuffer {
  char buf[CMSG_SPACE(sizeof(int) * (kMaxFdsPerMessage + 1))];
  cmsghdr align;
};

Error io_error(const char* what, int err) {
  if (err == EPIPE || err == ECONNRESET) return make_error(Errc::kClosed, what, err);
  return make_error(Errc::kIo, what, err);
}

// Takes ownership of every SCM_RIGHTS descriptor in msg (so that an error path closes them all).
void collect_fds(msghdr* msg, std::vector<UniqueFd>* out) {
  for (cmsghdr* c = CMSG_FIRSTHDR(msg); c != nullptr; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* p = CMSG_DATA(c);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      std::memcpy(&fd, p + i * sizeof(int), sizeof(int));
      out->emplace_back(fd);
    }
  }
}

}  // namespace

Status send_fds(int sock, const void* data, size_t len, std::span<const int> fds) {
  if (len == 0 || data == nullptr) return make_error(Errc::kInvalidArgument, "send_fds: empty payload");
  if (fds.size() > kMaxFdsPerMessage) return make_error(Errc::kInvalidArgument, "send_fds: too many fds");
  for (int fd : fds) {
    if (fd < 0) return make_error(Errc::kInvalidArgument, "send_fds: negative fd");
  }
  ControlBuffer control;
  std::memset(&control, 0, sizeof(control));
  const char* p = static_cast<const char*>(data);
  size_t sent = 0;
  bool fds_sent = fds.empty();
  while (sent < len) {
    iovec iov{const_cast<char*>(p + sent), len - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (!fds_sent) {
      const size_t bytes = sizeof(int) * fds.size();
      msg.msg_control = control.buf;
      msg.msg_controllen = CMSG_SPACE(bytes);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(bytes);
      std::memcpy(CMSG_DATA(c), fds.data(), bytes);
    }
    ssize_t n = retry_eintr([&] { return ::sendmsg(sock, &msg, MSG_NOSIGNAL); });
    if (n < 0) return io_error("send_fds: sendmsg", errno);
    if (n == 0) return make_error(Errc::kClosed, "send_fds: sent nothing");
    fds_sent = true;
    sent += size_t(n);
  }
  return ok_status();
}

Result<std::vector<UniqueFd>> recv_fds(int sock, void* data, size_t len, size_t max_fds) {
  if (len == 0 || data == nullptr) return make_error(Errc::kInvalidArgument, "recv_fds: empty payload");
  if (max_fds > kMaxFdsPerMessage) return make_error(Errc::kInvalidArgument, "recv_fds: max_fds above cap");
  std::vector<UniqueFd> fds;  // owns every received fd from the moment it arrives: errors close them
  char* p = static_cast<char*>(data);
  size_t got = 0;
  ControlBuffer control;
  while (got < len) {
    iovec iov{p + got, len - got};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (max_fds > 0) {
      std::memset(&control, 0, sizeof(control));
      msg.msg_control = control.buf;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * max_fds);
    }
    ssize_t n = retry_eintr([&] { return ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); });
    if (n < 0) return io_error("recv_fds: recvmsg", errno);
    collect_fds(&msg, &fds);
    if (msg.msg_flags & MSG_CTRUNC) return make_error(Errc::kProtocol, "recv_fds: descriptors truncated");
    if (msg.msg_flags & MSG_TRUNC) return make_error(Errc::kProtocol, "recv_fds: message larger than expected");
    if (fds.size() > max_fds) return make_error(Errc::kProtocol, "recv_fds: more descriptors than expected");
    if (n == 0) {
      if (got == 0) return make_error(Errc::kClosed, "recv_fds: end of stream");
      return make_error(Errc::kProtocol, "recv_fds: end of stream inside a message");
    }
    got += size_t(n);
  }
  return fds;
}

Result<Packet> recv_packet(int sock, void* buf, size_t cap, size_t max_fds, int timeout_ms) {
  if (cap == 0 || buf == nullptr) return make_error(Errc::kInvalidArgument, "recv_packet: no buffer");
  if (max_fds > kMaxFdsPerMessage) return make_error(Errc::kInvalidArgument, "recv_packet: max_fds above cap");
  pollfd pfd{sock, POLLIN, 0};
  for (;;) {
    const int r = ::poll(&pfd, 1, timeout_ms);
    if (r > 0) break;
    if (r == 0) return make_error(Errc::kTimeout, "recv_packet: nothing within the timeout");
    if (errno != EINTR) return make_error(Errc::kIo, "recv_packet: poll", errno);
  }
  ControlBuffer control;
  std::memset(&control, 0, sizeof(control));
  iovec iov{buf, cap};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  // Room for one descriptor more than allowed, so that too many show up as a count, not a truncation.
  msg.msg_control = control.buf;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * (max_fds + 1));
  ssize_t n = retry_eintr([&] { return ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT); });
  if (n < 0) {
    if (errno == EAGAIN) return make_error(Errc::kTimeout, "recv_packet: nothing there (spurious wake-up)");
    return io_error("recv_packet: recvmsg", errno);
  }
  Packet p;
  collect_fds(&msg, &p.fds);  // owned from here: every error below closes them
  if (n == 0) return make_error(Errc::kClosed, "recv_packet: end of stream");
  if (msg.msg_flags & MSG_TRUNC) return make_error(Errc::kProtocol, "recv_packet: datagram larger than allowed");
  if (msg.msg_flags & MSG_CTRUNC) return make_error(Errc::kProtocol, "recv_packet: descriptors truncated");
  if (p.fds.size() > max_fds) return make_error(Errc::kProtocol, "recv_packet: more descriptors than allowed");
  p.size = size_t(n);
  return p;
}

}  // namespace canopy::buffers
