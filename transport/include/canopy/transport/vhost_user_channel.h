// A vhost-user message channel over a connected unix stream socket: messages with their file
// descriptors (SCM_RIGHTS). Receiving validates the header (version, payload size cap, fd count)
// before anything else looks at the message.
//
// Threading: one thread sends and one thread receives at a time (the owner serialises).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/transport/vhost_user_proto.h"

namespace canopy::transport::vhost_user {

struct Message {
  Header header{};
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;

  Request request() const { return static_cast<Request>(header.request.get()); }
  uint32_t flags() const { return header.flags.get(); }
  bool need_reply() const { return flags() & kFlagNeedReply; }

  // The payload as T, which must be exactly its size (or at least, for variable-size payloads).
  template <typename T>
  Result<T> exact() const {
    static_assert(std::is_trivially_copyable_v<T>);
    if (payload.size() != sizeof(T)) return make_error(Errc::kProtocol, "vhost-user: payload size mismatch");
    T v;
    std::memcpy(&v, payload.data(), sizeof v);
    return v;
  }
  template <typename T>
  Result<T> prefix() const {
    static_assert(std::is_trivially_copyable_v<T>);
    if (payload.size() < sizeof(T)) return make_error(Errc::kProtocol, "vhost-user: payload too short");
    T v;
    std::memcpy(&v, payload.data(), sizeof v);
    return v;
  }

  static Message make(Request r, uint32_t flags = kVersion) {
    Message m;
    m.header.request = static_cast<uint32_t>(r);
    m.header.flags = flags;
    return m;
  }
  template <typename T>
  static Message make(Request r, const T& body, uint32_t flags = kVersion) {
    static_assert(std::is_trivially_copyable_v<T>);
    Message m = make(r, flags);
    m.payload.resize(sizeof(T));
    std::memcpy(m.payload.data(), &body, sizeof(T));
    return m;
  }
  static Message make_u64(Request r, uint64_t v, uint32_t flags = kVersion) { return make(r, le64(v), flags); }
};

class Channel {
 public:
  Channel() = default;
  explicit Channel(UniqueFd sock) : sock_(std::move(sock)) {}
  bool valid() const { return sock_.valid(); }
  int fd() const { return sock_.get(); }

  // Sends a message; header.size is set from the payload. Fds are borrowed.
  Status send(const Message& m, std::span<const int> fds = {});
  // Receives one message; waits at most timeout_ms for each part (-1: forever). kClosed on EOF.
  // Rejects bad versions, payloads over kMaxPayload and more than kMaxFdsPerMessage fds.
  Result<Message> recv(int timeout_ms = -1);

  void close() { sock_.reset(); }

  // A request that wants the peer's acknowledgement (NEED_REPLY, as on the back-end request channel):
  // sends m with the flag and waits at most timeout_ms for the reply to the same request, whose u64
  // must be 0. Other messages arriving meanwhile are a protocol error.
  Status request_ack(Message m, std::span<const int> fds, int timeout_ms);

 private:
  Status wait_readable(int timeout_ms);
  UniqueFd sock_;
};

// Connects to a unix socket path (retrying until timeout_ms passes, for a backend still starting).
// `type`: SOCK_STREAM (vhost-user) or SOCK_SEQPACKET.
Result<UniqueFd> connect_unix(const char* path, int timeout_ms, int type = SOCK_STREAM);
// Creates a listening unix socket at path (an existing socket file is replaced).
Result<UniqueFd> listen_unix(const char* path);

}  // namespace canopy::transport::vhost_user
