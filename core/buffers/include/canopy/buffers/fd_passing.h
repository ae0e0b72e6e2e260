// Passing file descriptors between processes over AF_UNIX sockets (SCM_RIGHTS).
//
// Both calls retry on EINTR and work on SOCK_STREAM and SOCK_SEQPACKET sockets. A message is `len` bytes
// of payload (at least 1: a stream socket cannot carry descriptors without data) plus up to
// kMaxFdsPerMessage descriptors, which travel with the first byte.
//
// No descriptor leaks: on any error recv_fds closes every descriptor it received; on success the caller owns
// them as UniqueFd. Received descriptors are O_CLOEXEC (MSG_CMSG_CLOEXEC).
//
// Threading: the functions are thread-safe as far as the socket is: two threads must not send (or receive)
// on one stream socket at once, or their messages interleave.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy::buffers {

// Our cap on descriptors per message (the kernel's SCM_MAX_FD is 253).
inline constexpr size_t kMaxFdsPerMessage = 16;

// Sends all `len` bytes of `data` with `fds` attached (sendmsg, MSG_NOSIGNAL). On a stream socket a short
// send is continued without the descriptors (they went with the first part). Errors: kInvalidArgument
// (len 0, more than kMaxFdsPerMessage fds, a negative fd), kClosed (EPIPE / ECONNRESET), kIo.
[[nodiscard]] Status send_fds(int sock, const void* data, size_t len, std::span<const int> fds);

// Receives exactly `len` bytes into `data` and the descriptors that came with them (at most `max_fds`,
// which must be <= kMaxFdsPerMessage). Returns the descriptors (possibly none; the caller checks the count
// it expects). Errors: kClosed (end of stream before the first byte), kProtocol (end of stream inside the
// message; MSG_CTRUNC, i.e. more descriptors than max_fds or the kernel dropped some; more than max_fds
// received; MSG_TRUNC, i.e. a datagram larger than len), kInvalidArgument (len 0 or max_fds too large), kIo.
[[nodiscard]] Result<std::vector<UniqueFd>> recv_fds(int sock, void* data, size_t len, size_t max_fds);

// One datagram of a SOCK_SEQPACKET socket: its bytes (at most `cap`) and descriptors (at most `max_fds`,
// <= kMaxFdsPerMessage), waiting up to timeout_ms (negative: no limit) for it to arrive. Errors: kTimeout,
// kClosed (end of stream, ECONNRESET), kProtocol (a datagram larger than cap, or more descriptors than
// max_fds: nothing is kept), kInvalidArgument (cap 0 or max_fds too large), kIo.
struct Packet {
  size_t size = 0;
  std::vector<UniqueFd> fds;
};
[[nodiscard]] Result<Packet> recv_packet(int sock, void* buf, size_t cap, size_t max_fds, int timeout_ms);

}  // namespace canopy::buffers
