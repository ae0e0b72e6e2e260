// The partition message transport ("virtio-msg" in the sense of Linaro's proposal): the virtio transport
// for a guest that is a process, not a VM. Where a VM traps on MMIO registers, a partition sends
// messages over a unix SOCK_SEQPACKET socket: device discovery, feature negotiation, status, config
// space and queue set-up. The queues themselves live in the partition's RAM (a memfd the VMM creates
// and hands over in the HELLO reply) and notifications are eventfds that go straight between the
// partition and the device back-end; the VMM is on the control path only.
//
// The wire format is documented in docs/partition-transport.md. Every packet is one message: a 16-byte
// header and a payload whose size is fixed per type (GET_CONFIG/SET_CONFIG carry up to 256 bytes of
// config space). Both sides parse every packet with parse() below, which checks everything about a
// packet that does not need the receiver's state: size, type, direction, flags, payload size and
// descriptor count. Stateful checks (device index, queue index, addresses inside RAM) belong to the
// receiver.
//
// Threading: the functions are pure or act on one socket; a socket is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "canopy/base/le.h"
#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy::transport::msg {

inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kHeaderSize = 16;
inline constexpr size_t kMaxConfigBytes = 256;
inline constexpr size_t kMaxPacket = 512;  // header + the largest payload, rounded up
inline constexpr size_t kMaxFds = 2;
inline constexpr uint16_t kMaxDevices = 32;
// The environment variable that tells a partition which inherited descriptor is its socket.
inline constexpr const char* kPartitionFdEnv = "CANOPY_PARTITION_FD";

// Message types. Requests go partition -> VMM and are answered with the same type and kFlagResponse;
// HEARTBEAT is never answered. Events go VMM -> partition, unsolicited, with id 0.
enum class Type : uint8_t {
  kHello = 0x01,          // -> version; <- version, device count, RAM size (+ the RAM memfd)
  kGetDeviceInfo = 0x02,  // <- virtio device id, vendor, queue count, max queue size, config size
  kGetFeatures = 0x03,    // <- the device's 64 feature bits
  kSetFeatures = 0x04,    // -> the driver's feature bits
  kGetConfig = 0x05,      // -> offset, size; <- generation, size, bytes
  kSetConfig = 0x06,      // -> offset, size, bytes
  kGetStatus = 0x07,      // <- device status
  kSetStatus = 0x08,      // -> status (0 resets); <- the status now in effect
  kSetVqueue = 0x09,      // -> index, size, ring addresses (+ kick and call eventfds)
  kResetVqueue = 0x0a,    // -> index: the queue stops and is forgotten
  kHeartbeat = 0x10,      // -> sequence, progress (watchdog; no reply)
  kEventConfig = 0x20,    // <- status, config generation: config space or status changed
  kEventStop = 0x21,      // <- the VMM asks the partition to shut down (grace period, then SIGKILL)
};

inline constexpr uint8_t kFlagResponse = 0x01;
inline constexpr uint8_t kKnownFlags = kFlagResponse;

// Response status codes (header.status of a response; 0 in requests and events).
enum class Code : uint32_t {
  kOk = 0,
  kInvalid = 1,      // malformed request
  kNoDevice = 2,     // device index out of range
  kUnsupported = 3,  // a request or value this device does not support
  kOutOfRange = 4,   // an address or length outside the partition's RAM / config space
  kState = 5,        // not allowed in the current device status (§3.1.1 order)
  kDeviceError = 6,  // the device back-end failed or is restarting (expect DEVICE_NEEDS_RESET)
};
const char* code_name(Code c);
Code code_from(Errc e);

struct Header {
  uint8_t type;
  uint8_t flags;
  le16 device;
  le32 id;
  le32 size;  // payload bytes after the header
  le32 status;
};
static_assert(sizeof(Header) == kHeaderSize);
static_assert(offsetof(Header, device) == 2 && offsetof(Header, id) == 4 && offsetof(Header, size) == 8 &&
              offsetof(Header, status) == 12);

struct HelloReq {
  le32 version;
  le32 reserved;
};
struct HelloResp {
  le32 version;
  le16 num_devices;
  le16 reserved;
  le64 ram_size;
};
struct DeviceInfo {
  le32 device_id;  // virtio device id (§5)
  le32 vendor_id;
  le16 num_queues;
  le16 max_queue_size;
  le32 config_size;
};
struct Features {
  le64 bits;
};
struct ConfigReq {
  le32 offset;
  le32 size;
};
struct ConfigResp {
  le32 generation;
  le32 size;
};  // followed by `size` bytes
struct SetConfigReq {
  le32 offset;
  le32 size;
};  // followed by `size` bytes
struct StatusMsg {
  le32 status;
};
struct SetVqueue {
  le16 index;
  le16 size;
  le32 reserved;
  le64 desc;
  le64 avail;
  le64 used;
};
struct ResetVqueue {
  le16 index;
  le16 reserved;
};
struct Heartbeat {
  le64 sequence;
  le64 progress;  // an app-defined progress counter (e.g. requests completed), shown by canopyctl
};
struct EventConfig {
  le32 status;
  le32 generation;
};
static_assert(sizeof(HelloReq) == 8 && sizeof(HelloResp) == 16 && sizeof(DeviceInfo) == 16);
static_assert(sizeof(Features) == 8 && sizeof(ConfigReq) == 8 && sizeof(ConfigResp) == 8);
static_assert(sizeof(StatusMsg) == 4 && sizeof(SetVqueue) == 32 && sizeof(ResetVqueue) == 4);
static_assert(sizeof(Heartbeat) == 16 && sizeof(EventConfig) == 8);
static_assert(offsetof(SetVqueue, desc) == 8 && offsetof(SetVqueue, avail) == 16 && offsetof(SetVqueue, used) == 24);
static_assert(offsetof(DeviceInfo, num_queues) == 8 && offsetof(DeviceInfo, config_size) == 12);

// A received, checked packet. payload holds exactly header.size bytes.
struct Message {
  Header header{};
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;

  Type type() const { return Type(header.type); }
  bool is_response() const { return header.flags & kFlagResponse; }
  // The payload as T (its size was checked by parse()). Precondition: sizeof(T) <= payload.size().
  template <typename T>
  T as() const;
  // The bytes after a fixed prefix T (GET_CONFIG responses, SET_CONFIG requests).
  std::span<const uint8_t> tail(size_t prefix) const { return std::span<const uint8_t>(payload).subspan(prefix); }
};

// Which way a packet travels: parse() refuses a packet that the receiver should never get.
enum class Direction { kToVmm, kToPartition };

// Checks one packet (as received: bytes plus the number of descriptors that came with it):
//   size >= 16 and == 16 + header.size; a known type; flags known and consistent with the direction
//   (requests and heartbeats to the VMM; responses and events to the partition); status 0 except in
//   responses; the payload size this type needs (config data <= 256 bytes and matching its own size
//   field; an error response carries no payload); descriptors only where the type has them (SET_VQUEUE
//   request: 2; HELLO response: 1 when ok; none elsewhere).
// Errors are kProtocol with a message naming the rule.
Status check(std::span<const uint8_t> packet, size_t num_fds, Direction dir);
// check() and then the decoded message (the descriptors are moved into it).
Result<Message> parse(std::span<const uint8_t> packet, std::vector<UniqueFd> fds, Direction dir);

// Builds a packet: header + payload bytes.
std::vector<uint8_t> encode(Type type, uint8_t flags, uint16_t device, uint32_t id, Code status,
                            std::span<const uint8_t> payload);
template <typename T>
std::span<const uint8_t> bytes_of(const T& v) {
  return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&v), sizeof v);
}

// Socket I/O (SOCK_SEQPACKET, one packet per message).
// Sends one packet with descriptors (through core/buffers' send_fds). Errors: kClosed (peer gone), kIo
// (among them EAGAIN on a non-blocking socket whose peer does not read).
Status send_packet(int sock, std::span<const uint8_t> packet, std::span<const int> fds = {});
// Receives one packet; waits up to timeout_ms (negative: no limit). Errors: kClosed (end of stream),
// kTimeout, kProtocol (truncated packet or more than kMaxFds descriptors: nothing is kept), kIo.
Result<Message> receive(int sock, Direction dir, int timeout_ms);
// A connected SOCK_SEQPACKET pair, both ends close-on-exec.
Result<std::pair<UniqueFd, UniqueFd>> socket_pair();

template <typename T>
T Message::as() const {
  static_assert(std::is_trivially_copyable_v<T>);
  T v{};
  std::memcpy(&v, payload.data(), sizeof v);
  return v;
}

}  // namespace canopy::transport::msg
