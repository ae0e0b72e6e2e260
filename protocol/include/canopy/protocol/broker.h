// The connection broker: how canopy-vmm gives a shared service (the compositor) a connection that is
// bound to one VM's identity, so that the service never has to believe a name a peer declares itself.
//
// canopy-vmm makes every link below as a SOCK_SEQPACKET socketpair and hands the ends over by
// inheritance: nothing has a path in the filesystem, so a process that was not given an end cannot
// reach either side.
//
//   device link   canopy-vmm <-> one back-end of one VM (canopy-gpu --display-fd N)
//     device -> broker   CONNECT    the service wanted
//     broker -> device   CONNECTED  the service; carries the device's end of a new connection
//     broker -> device   REFUSED    the service and why (it is not running, too many requests)
//   service link  canopy-vmm <-> a service (canopy-display --broker-fd N)
//     broker -> service  ADMIT      the VM's name and criticality, the connection's serial; carries the
//                                   service's end of that connection
//
// The name in ADMIT is the only name the service believes for that connection: it is the name of the VM
// whose back-end holds the device link the request came in on, which canopy-vmm knows because it
// started that back-end. Every packet is one message: a 16-byte header and a fixed payload per type.
// parse() checks sizes, descriptor counts, the direction, names and values. docs/security.md says
// what this protects and what it does not.
//
// Threading: the functions are pure or act on one socket; a socket is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "canopy/base/le.h"
#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy::protocol::broker {

inline constexpr uint32_t kMagic = 0x4b424e43;  // "CNBK"
inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kHeaderSize = 16;
inline constexpr size_t kMaxNameBytes = 32;
inline constexpr size_t kMaxPacket = 128;

enum class Type : uint16_t {
  kConnect = 1,
  kConnected = 2,
  kRefused = 3,
  kAdmit = 4,
};
const char* type_name(Type t);

// Which service a device asks for.
enum class Service : uint32_t { kDisplay = 1 };
// Why a request was refused.
enum class Refusal : uint32_t { kNoService = 1, kTooMany = 2, kBroken = 3 };
// A VM's criticality on the wire: the same order as the manifest's (config/criticality.h), most
// critical first.
enum class Criticality : uint32_t { kSafety = 0, kHigh = 1, kNormal = 2, kLow = 3 };
const char* to_string(Criticality c);

// Who sends a packet: on the device link the device sends CONNECT and the broker the answers; on the
// service link only the broker sends.
enum class Link { kDeviceToBroker, kBrokerToDevice, kBrokerToService };

#pragma pack(push, 1)
struct Header {
  le32 magic;
  le16 version;
  le16 type;
  le32 size;  // payload bytes after the header
  le32 reserved;
};
struct ConnectMsg {  // CONNECT, CONNECTED (one descriptor)
  le32 service;
  le32 reserved;
};
struct RefusedMsg {
  le32 service;
  le32 reason;
};
struct AdmitMsg {          // one descriptor: the service's end of the connection
  char vm[kMaxNameBytes];  // NUL-padded name (a-z, 0-9, -)
  le32 service;
  le32 criticality;
  le64 serial;  // numbers the connections the broker made, from 1, for logs
};
#pragma pack(pop)
static_assert(sizeof(Header) == kHeaderSize && sizeof(ConnectMsg) == 8 && sizeof(RefusedMsg) == 8 &&
              sizeof(AdmitMsg) == 48);

// A checked packet.
struct Message {
  Type type{};
  Service service{};
  Refusal reason{};           // kRefused
  std::string vm;             // kAdmit
  Criticality criticality{};  // kAdmit
  uint64_t serial = 0;        // kAdmit
  UniqueFd fd;                // kConnected, kAdmit
};

// Checks one packet for the link it arrived on. Errors: kProtocol naming the problem.
Result<Message> parse(std::span<const uint8_t> packet, std::vector<UniqueFd> fds, Link link);

// A VM name as the channels carry it: 1 to 31 of a-z, 0-9 and '-'.
bool valid_vm_name(const std::string& name);

std::vector<uint8_t> encode_connect(Service s);
std::vector<uint8_t> encode_connected(Service s);
std::vector<uint8_t> encode_refused(Service s, Refusal why);
// Errors: kInvalidArgument for a name valid_vm_name refuses.
Result<std::vector<uint8_t>> encode_admit(const std::string& vm, Service s, Criticality c, uint64_t serial);

// Sends one packet with at most one descriptor; receives one, waiting up to timeout_ms (0: only what has
// arrived; negative: no limit). receive: kClosed at end of stream, kTimeout, kProtocol.
Status send(int sock, std::span<const uint8_t> packet, int fd = -1);
Result<Message> receive(int sock, Link link, int timeout_ms);

}  // namespace canopy::protocol::broker
