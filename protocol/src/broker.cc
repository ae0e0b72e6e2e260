#include "canopy/protocol/broker.h"

#include <cstring>

#include "canopy/buffers/fd_passing.h"

namespace canopy::protocol::broker {
namespace {

Error bad(const char* what) { return make_error(Errc::kProtocol, what); }

template <typename T>
T read_fixed(std::span<const uint8_t> payload) {
  T v;
  std::memcpy(&v, payload.data(), sizeof v);
  return v;
}

std::vector<uint8_t> packet(Type t, const void* payload, size_t len) {
  Header h{};
  h.magic = kMagic;
  h.version = kVersion;
  h.type = uint16_t(t);
  h.size = uint32_t(len);
  std::vector<uint8_t> out(sizeof h + len);
  std::memcpy(out.data(), &h, sizeof h);
  std::memcpy(out.data() + sizeof h, payload, len);
  return out;
}

bool known_service(uint32_t s) { return s == uint32_t(Service::kDisplay); }

}  // namespace

const char* type_name(Type t) {
  switch (t) {
    case Type::kConnect: return "CONNECT";
    case Type::kConnected: return "CONNECTED";
    case Type::kRefused: return "REFUSED";
    case Type::kAdmit: return "ADMIT";
  }
  return "?";
}

const char* to_string(Criticality c) {
  switch (c) {
    case Criticality::kSafety: return "safety";
    case Criticality::kHigh: return "high";
    case Criticality::kNormal: return "normal";
    case Criticality::kLow: return "low";
  }
  return "?";
}

bool valid_vm_name(const std::string& name) {
  if (name.empty() || name.size() >= kMaxNameBytes) return false;
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  return true;
}

Result<Message> parse(std::span<const uint8_t> bytes, std::vector<UniqueFd> fds, Link link) {
  if (bytes.size() < kHeaderSize) return bad("broker: packet shorter than its header");
  const auto h = read_fixed<Header>(bytes);
  if (h.magic.get() != kMagic) return bad("broker: bad magic");
  if (h.version.get() != kVersion) return bad("broker: unsupported version");
  if (h.reserved.get() != 0) return bad("broker: reserved header bits set");
  if (h.size.get() != bytes.size() - kHeaderSize) return bad("broker: payload size does not match the packet");
  const auto payload = bytes.subspan(kHeaderSize);
  Message m;
  m.type = Type(h.type.get());
  size_t want_size = 0, want_fds = 0;
  Link from{};
  switch (m.type) {
    case Type::kConnect: want_size = sizeof(ConnectMsg), from = Link::kDeviceToBroker; break;
    case Type::kConnected: want_size = sizeof(ConnectMsg), want_fds = 1, from = Link::kBrokerToDevice; break;
    case Type::kRefused: want_size = sizeof(RefusedMsg), from = Link::kBrokerToDevice; break;
    case Type::kAdmit: want_size = sizeof(AdmitMsg), want_fds = 1, from = Link::kBrokerToService; break;
    default: return bad("broker: unknown packet type");
  }
  if (from != link) return bad("broker: packet type not sent in this direction");
  if (payload.size() != want_size) return bad("broker: payload size wrong for its type");
  if (fds.size() != want_fds) return bad("broker: wrong number of descriptors for the packet type");
  switch (m.type) {
    case Type::kConnect:
    case Type::kConnected: {
      const auto c = read_fixed<ConnectMsg>(payload);
      if (c.reserved.get() != 0) return bad("broker: reserved field set");
      if (!known_service(c.service.get())) return bad("broker: unknown service");
      m.service = Service(c.service.get());
      break;
    }
    case Type::kRefused: {
      const auto r = read_fixed<RefusedMsg>(payload);
      if (!known_service(r.service.get())) return bad("broker: unknown service");
      if (r.reason.get() < uint32_t(Refusal::kNoService) || r.reason.get() > uint32_t(Refusal::kBroken))
        return bad("broker: unknown refusal reason");
      m.service = Service(r.service.get());
      m.reason = Refusal(r.reason.get());
      break;
    }
    case Type::kAdmit: {
      const auto a = read_fixed<AdmitMsg>(payload);
      const size_t len = strnlen(a.vm, kMaxNameBytes);
      if (len == kMaxNameBytes) return bad("broker: ADMIT: VM name not terminated");
      for (size_t i = len; i < kMaxNameBytes; ++i)
        if (a.vm[i] != '\0') return bad("broker: ADMIT: bytes after the VM name's end");
      m.vm.assign(a.vm, len);
      if (!valid_vm_name(m.vm)) return bad("broker: ADMIT: VM name empty or not of a-z, 0-9, -");
      if (!known_service(a.service.get())) return bad("broker: unknown service");
      if (a.criticality.get() > uint32_t(Criticality::kLow)) return bad("broker: ADMIT: unknown criticality");
      if (a.serial.get() == 0) return bad("broker: ADMIT: serial 0");
      m.service = Service(a.service.get());
      m.criticality = Criticality(a.criticality.get());
      m.serial = a.serial.get();
      break;
    }
  }
  if (want_fds) m.fd = std::move(fds[0]);
  return m;
}

std::vector<uint8_t> encode_connect(Service s) {
  ConnectMsg c{};
  c.service = uint32_t(s);
  return packet(Type::kConnect, &c, sizeof c);
}

std::vector<uint8_t> encode_connected(Service s) {
  ConnectMsg c{};
  c.service = uint32_t(s);
  return packet(Type::kConnected, &c, sizeof c);
}

std::vector<uint8_t> encode_refused(Service s, Refusal why) {
  RefusedMsg r{};
  r.service = uint32_t(s);
  r.reason = uint32_t(why);
  return packet(Type::kRefused, &r, sizeof r);
}

Result<std::vector<uint8_t>> encode_admit(const std::string& vm, Service s, Criticality c, uint64_t serial) {
  if (!valid_vm_name(vm)) return make_error(Errc::kInvalidArgument, "broker: not a VM name");
  AdmitMsg a{};
  std::memcpy(a.vm, vm.data(), vm.size());
  a.service = uint32_t(s);
  a.criticality = uint32_t(c);
  a.serial = serial;
  return packet(Type::kAdmit, &a, sizeof a);
}

Status send(int sock, std::span<const uint8_t> p, int fd) {
  if (fd < 0) return buffers::send_fds(sock, p.data(), p.size(), {});
  return buffers::send_fds(sock, p.data(), p.size(), std::span<const int>(&fd, 1));
}

Result<Message> receive(int sock, Link link, int timeout_ms) {
  uint8_t buf[kMaxPacket];
  CANOPY_ASSIGN_OR_RETURN(auto p, buffers::recv_packet(sock, buf, sizeof buf, 1, timeout_ms));
  return parse(std::span<const uint8_t>(buf, p.size), std::move(p.fds), link);
}

}  // namespace canopy::protocol::broker
