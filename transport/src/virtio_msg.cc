// The partition message transport: packet checks, encoding and SEQPACKET I/O (virtio_msg.h).
#include "canopy/transport/virtio_msg.h"

#include <sys/socket.h>

#include <cerrno>

#include "canopy/buffers/fd_passing.h"

namespace canopy::transport::msg {

const char* code_name(Code c) {
  switch (c) {
    case Code::kOk: return "ok";
    case Code::kInvalid: return "invalid request";
    case Code::kNoDevice: return "no such device";
    case Code::kUnsupported: return "unsupported";
    case Code::kOutOfRange: return "out of range";
    case Code::kState: return "not allowed in this device status";
    case Code::kDeviceError: return "device error";
  }
  return "unknown code";
}

Code code_from(Errc e) {
  switch (e) {
    case Errc::kOk: return Code::kOk;
    case Errc::kInvalidArgument:
    case Errc::kProtocol:
    case Errc::kOverflow: return Code::kInvalid;
    case Errc::kOutOfRange:
    case Errc::kLimit: return Code::kOutOfRange;
    case Errc::kUnsupported: return Code::kUnsupported;
    case Errc::kState: return Code::kState;
    default: return Code::kDeviceError;
  }
}

namespace {

// What a type carries: fixed payload bytes (or a config-data prefix), descriptors.
struct Shape {
  bool allowed = false;
  size_t payload = 0;
  bool config_tail = false;  // payload = prefix (offset/size or generation/size) + le32 size at +4 bytes
  size_t fds = 0;
};

Shape request_shape(Type t) {
  switch (t) {
    case Type::kHello: return {true, sizeof(HelloReq)};
    case Type::kGetDeviceInfo:
    case Type::kGetFeatures:
    case Type::kGetStatus: return {true, 0};
    case Type::kSetFeatures: return {true, sizeof(Features)};
    case Type::kGetConfig: return {true, sizeof(ConfigReq)};
    case Type::kSetConfig: return {true, sizeof(SetConfigReq), true};
    case Type::kSetStatus: return {true, sizeof(StatusMsg)};
    case Type::kSetVqueue: return {true, sizeof(SetVqueue), false, 2};
    case Type::kResetVqueue: return {true, sizeof(ResetVqueue)};
    case Type::kHeartbeat: return {true, sizeof(Heartbeat)};
    default: return {};
  }
}

Shape response_shape(Type t) {
  switch (t) {
    case Type::kHello: return {true, sizeof(HelloResp), false, 1};
    case Type::kGetDeviceInfo: return {true, sizeof(DeviceInfo)};
    case Type::kGetFeatures: return {true, sizeof(Features)};
    case Type::kGetConfig: return {true, sizeof(ConfigResp), true};
    case Type::kGetStatus:
    case Type::kSetStatus: return {true, sizeof(StatusMsg)};
    case Type::kSetFeatures:
    case Type::kSetConfig:
    case Type::kSetVqueue:
    case Type::kResetVqueue: return {true, 0};
    default: return {};  // heartbeats are not answered; events are not requests
  }
}

Shape event_shape(Type t) {
  switch (t) {
    case Type::kEventConfig: return {true, sizeof(EventConfig)};
    case Type::kEventStop: return {true, 0};
    default: return {};
  }
}

bool known_type(uint8_t t) { return (t >= 0x01 && t <= 0x0a) || t == 0x10 || t == 0x20 || t == 0x21; }

Error bad(const char* what) { return make_error(Errc::kProtocol, what); }

}  // namespace

Status check(std::span<const uint8_t> packet, size_t num_fds, Direction dir) {
  if (packet.size() < kHeaderSize) return bad("packet shorter than the 16-byte header");
  if (packet.size() > kMaxPacket) return bad("packet larger than 512 bytes");
  Header h;
  std::memcpy(&h, packet.data(), sizeof h);
  if (packet.size() != kHeaderSize + uint64_t(h.size.get())) return bad("header size does not match the packet");
  if (!known_type(h.type)) return bad("unknown message type");
  if (h.flags & ~kKnownFlags) return bad("unknown flag bits");
  const Type type = Type(h.type);
  const bool response = h.flags & kFlagResponse;
  const bool event = h.type >= 0x20;
  Shape shape;
  if (dir == Direction::kToVmm) {
    if (response) return bad("a response sent to the VMM");
    if (event) return bad("an event sent to the VMM");
    if (h.status.get() != 0) return bad("non-zero status in a request");
    shape = request_shape(type);
  } else if (response) {
    shape = response_shape(type);
    if (!shape.allowed) return bad("a response to a message that has none");
    const uint32_t st = h.status.get();
    if (st > uint32_t(Code::kDeviceError)) return bad("unknown response status");
    if (st != 0) shape = Shape{true, 0, false, 0};  // errors carry nothing
  } else {
    if (!event) return bad("a request sent to the partition");
    if (h.status.get() != 0) return bad("non-zero status in an event");
    if (h.id.get() != 0) return bad("an event with a non-zero id");
    shape = event_shape(type);
  }
  if (!shape.allowed) return bad("message type not valid in this direction");
  const size_t payload = h.size.get();
  if (shape.config_tail) {
    if (payload < shape.payload) return bad("config message shorter than its fixed part");
    le32 size;
    std::memcpy(&size, packet.data() + kHeaderSize + 4, sizeof size);
    if (size.get() > kMaxConfigBytes) return bad("config data over 256 bytes");
    if (payload != shape.payload + size.get()) return bad("config data size does not match the packet");
  } else if (payload != shape.payload) {
    return bad("payload size wrong for the message type");
  }
  if (num_fds != shape.fds) return bad("wrong number of descriptors for the message type");
  return {};
}

Result<Message> parse(std::span<const uint8_t> packet, std::vector<UniqueFd> fds, Direction dir) {
  CANOPY_TRY(check(packet, fds.size(), dir));
  Message m;
  std::memcpy(&m.header, packet.data(), sizeof m.header);
  m.payload.assign(packet.begin() + kHeaderSize, packet.end());
  m.fds = std::move(fds);
  return m;
}

std::vector<uint8_t> encode(Type type, uint8_t flags, uint16_t device, uint32_t id, Code status,
                            std::span<const uint8_t> payload) {
  Header h{};
  h.type = uint8_t(type);
  h.flags = flags;
  h.device = device;
  h.id = id;
  h.size = uint32_t(payload.size());
  h.status = uint32_t(status);
  std::vector<uint8_t> out(kHeaderSize + payload.size());
  std::memcpy(out.data(), &h, sizeof h);
  if (!payload.empty()) std::memcpy(out.data() + kHeaderSize, payload.data(), payload.size());
  return out;
}

Status send_packet(int sock, std::span<const uint8_t> packet, std::span<const int> fds) {
  if (fds.size() > kMaxFds) return make_error(Errc::kInvalidArgument, "too many descriptors for one packet");
  // On SOCK_SEQPACKET one sendmsg carries the whole packet: send_fds' partial-write loop never repeats.
  return buffers::send_fds(sock, packet.data(), packet.size(), fds);
}

Result<Message> receive(int sock, Direction dir, int timeout_ms) {
  uint8_t buf[kMaxPacket];
  CANOPY_ASSIGN_OR_RETURN(auto p, buffers::recv_packet(sock, buf, sizeof buf, kMaxFds, timeout_ms));
  return parse(std::span<const uint8_t>(buf, p.size), std::move(p.fds), dir);
}

Result<std::pair<UniqueFd, UniqueFd>> socket_pair() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return make_error(Errc::kIo, "socketpair failed", errno);
  return std::make_pair(UniqueFd(sv[0]), UniqueFd(sv[1]));
}

}  // namespace canopy::transport::msg
