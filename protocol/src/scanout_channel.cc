#include "canopy/protocol/scanout_channel.h"

#include <algorithm>
#include <cstring>

#include "canopy/base/checked.h"
#include "canopy/buffers/fd_passing.h"
#include "canopy/buffers/timeline.h"

namespace canopy::protocol::scanout {
namespace {

Error bad(const char* what) { return make_error(Errc::kProtocol, what); }

bool to_device(Type t) { return t == Type::kRelease || t == Type::kDisplay; }
bool known(uint16_t t) {
  switch (Type(t)) {
    case Type::kHello:
    case Type::kBuffer:
    case Type::kBufferGone:
    case Type::kScanout:
    case Type::kFrame:
    case Type::kCursor:
    case Type::kTimeline:
    case Type::kRelease:
    case Type::kDisplay: return true;
  }
  return false;
}

template <typename T>
T read_at(std::span<const uint8_t> p, size_t off) {
  T v;
  std::memcpy(&v, p.data() + off, sizeof v);
  return v;
}

bool valid_key(const BufferKey& k) { return k.resource.get() != 0 && k.generation.get() != 0 && k.reserved.get() == 0; }

bool valid_name_char(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; }

Status check_hello(std::span<const uint8_t> p) {
  if (p.size() != sizeof(Hello)) return bad("channel: HELLO of the wrong size");
  const Hello h = read_at<Hello>(p, 0);
  size_t len = 0;
  while (len < kMaxNameBytes && h.vm[len] != '\0') ++len;
  if (len == 0) return bad("channel: HELLO without a VM name");
  for (size_t i = 0; i < len; ++i)
    if (!valid_name_char(h.vm[i])) return bad("channel: HELLO: VM name not of a-z, 0-9, -");
  for (size_t i = len; i < kMaxNameBytes; ++i)
    if (h.vm[i] != '\0') return bad("channel: HELLO: bytes after the VM name's end");
  if (h.num_scanouts.get() == 0 || h.num_scanouts.get() > kMaxScanouts)
    return bad("channel: HELLO: scanout count out of range (1..16)");
  if (h.reserved.get() != 0) return bad("channel: HELLO: reserved field set");
  return {};
}

Status check_buffer(std::span<const uint8_t> p, size_t nfds) {
  if (p.size() < sizeof(BufferHdr)) return bad("channel: BUFFER shorter than its header");
  const BufferHdr b = read_at<BufferHdr>(p, 0);
  const uint32_t n = b.num_pieces, first = b.first_piece, total = b.total_pieces;
  if (!valid_key(b.key) || b.reserved.get() != 0)
    return bad("channel: BUFFER resource or generation 0, or reserved field set");
  if (n == 0 || n > kMaxPiecesPerPacket) return bad("channel: BUFFER piece count out of range (1..4096)");
  if (p.size() != sizeof(BufferHdr) + size_t(n) * sizeof(Piece))
    return bad("channel: BUFFER size does not match its piece count");
  if (total == 0 || total > kMaxPiecesPerBuffer) return bad("channel: BUFFER total pieces out of range (1..65536)");
  if (uint64_t(first) + n > total) return bad("channel: BUFFER pieces past the buffer's total");
  if (nfds == 0) return bad("channel: BUFFER without descriptors");
  uint32_t named = 0;  // bit i: descriptor i is named by a piece (nfds <= kMaxFdsPerPacket, checked before)
  for (uint32_t i = 0; i < n; ++i) {
    const Piece pc = read_at<Piece>(p, sizeof(BufferHdr) + size_t(i) * sizeof(Piece));
    if (pc.fd_index.get() >= nfds) return bad("channel: BUFFER piece names a descriptor not sent");
    named |= 1u << pc.fd_index.get();
    if (pc.pages.get() == 0) return bad("channel: BUFFER piece of 0 pages");
    if (pc.offset.get() % kPageSize) return bad("channel: BUFFER piece offset not page aligned");
    auto end = checked_add(pc.offset.get(), uint64_t(pc.pages.get()) * kPageSize);
    if (!end || *end > (uint64_t(1) << 62)) return bad("channel: BUFFER piece past any file's end");
  }
  // A descriptor no piece uses would only be held open: a way to fill the receiver's descriptor table.
  if (named != (1u << nfds) - 1) return bad("channel: BUFFER carries a descriptor no piece names");
  return {};
}

Status check_frame(std::span<const uint8_t> p) {
  if (p.size() < sizeof(FrameMsg)) return bad("channel: FRAME shorter than its header");
  const FrameMsg f = read_at<FrameMsg>(p, 0);
  const uint32_t nd = f.num_damage;
  if (nd > kMaxDamage) return bad("channel: FRAME with more than 16 damage rectangles");
  if (p.size() != sizeof(FrameMsg) + size_t(nd) * sizeof(WireRect))
    return bad("channel: FRAME size does not match its damage count");
  if (f.scanout.get() >= kMaxScanouts) return bad("channel: FRAME scanout out of range");
  if (!valid_key(f.buffer) || f.reserved.get() != 0)
    return bad("channel: FRAME buffer resource or generation 0, or reserved field set");
  const uint32_t w = f.width, h = f.height;
  if (w == 0 || h == 0 || w > kMaxDimension || h > kMaxDimension) return bad("channel: FRAME size out of range");
  if (f.stride.get() < w || f.stride.get() % 4) return bad("channel: FRAME stride too small or not 4-byte aligned");
  if (f.flags.get() & ~kKnownFrameFlags) return bad("channel: FRAME with unknown flags");
  if (f.seq.get() == 0) return bad("channel: FRAME seq 0");
  if (((f.flags.get() & kFrameAcquire) != 0) != (f.acquire_point.get() != 0))
    return bad("channel: FRAME acquire point without the acquire flag, or the flag with point 0");
  for (uint32_t i = 0; i < nd; ++i) {
    const WireRect r = read_at<WireRect>(p, sizeof(FrameMsg) + size_t(i) * sizeof(WireRect));
    if (r.width.get() == 0 || r.height.get() == 0 || uint64_t(r.x.get()) + r.width.get() > w ||
        uint64_t(r.y.get()) + r.height.get() > h)
      return bad("channel: FRAME damage outside the frame");
  }
  return {};
}

}  // namespace

const char* type_name(Type t) {
  switch (t) {
    case Type::kHello: return "HELLO";
    case Type::kBuffer: return "BUFFER";
    case Type::kBufferGone: return "BUFFER_GONE";
    case Type::kScanout: return "SCANOUT";
    case Type::kFrame: return "FRAME";
    case Type::kCursor: return "CURSOR";
    case Type::kTimeline: return "TIMELINE";
    case Type::kRelease: return "RELEASE";
    case Type::kDisplay: return "DISPLAY";
  }
  return "?";
}

std::string Message::vm_name() const {
  const Hello h = fixed<Hello>();
  return std::string(h.vm, strnlen(h.vm, kMaxNameBytes));
}

std::vector<Piece> Message::pieces() const {
  const BufferHdr b = fixed<BufferHdr>();
  std::vector<Piece> out(b.num_pieces.get());
  if (!out.empty()) std::memcpy(out.data(), payload.data() + sizeof b, out.size() * sizeof(Piece));
  return out;
}

std::vector<WireRect> Message::damage() const {
  const FrameMsg f = fixed<FrameMsg>();
  std::vector<WireRect> out(f.num_damage.get());
  if (!out.empty()) std::memcpy(out.data(), payload.data() + sizeof f, out.size() * sizeof(WireRect));
  return out;
}

Result<Message> parse(std::span<const uint8_t> packet, std::vector<UniqueFd> fds, Direction dir) {
  if (packet.size() < kHeaderSize) return bad("channel: packet shorter than its header");
  if (packet.size() > kMaxPacket) return bad("channel: packet larger than the largest message");
  const Header h = read_at<Header>(packet, 0);
  if (h.magic.get() != kMagic) return bad("channel: bad magic");
  if (h.version.get() != kVersion) return bad("channel: unsupported version");
  if (h.reserved.get() != 0) return bad("channel: reserved header field set");
  if (h.size.get() != packet.size() - kHeaderSize) return bad("channel: size field does not match the packet");
  if (!known(h.type.get())) return bad("channel: unknown message type");
  const Type t = Type(h.type.get());
  if (to_device(t) != (dir == Direction::kToDevice)) return bad("channel: message type not valid in this direction");
  if (t != Type::kBuffer && t != Type::kTimeline && t != Type::kCursor && !fds.empty())
    return bad("channel: descriptors with a message that carries none");
  if (fds.size() > kMaxFdsPerPacket) return bad("channel: more than 8 descriptors in one packet");
  const auto p = packet.subspan(kHeaderSize);
  auto exact = [&](size_t n) -> Status {
    if (p.size() != n) return bad("channel: payload of the wrong size for its type");
    return {};
  };
  switch (t) {
    case Type::kHello: CANOPY_TRY(check_hello(p)); break;
    case Type::kBuffer: CANOPY_TRY(check_buffer(p, fds.size())); break;
    case Type::kBufferGone: {
      CANOPY_TRY(exact(sizeof(BufferGone)));
      const auto g = read_at<BufferGone>(p, 0);
      if (!valid_key(g.key)) return bad("channel: BUFFER_GONE resource or generation 0, or reserved field set");
      break;
    }
    case Type::kScanout: {
      CANOPY_TRY(exact(sizeof(ScanoutMsg)));
      const auto s = read_at<ScanoutMsg>(p, 0);
      if (s.scanout.get() >= kMaxScanouts || s.enabled.get() > 1)
        return bad("channel: SCANOUT scanout or flag out of range");
      const uint32_t w = s.width, hh = s.height;
      if (s.enabled.get() ? (w == 0 || hh == 0 || w > kMaxDimension || hh > kMaxDimension) : (w != 0 || hh != 0))
        return bad("channel: SCANOUT size out of range (0x0 when disabled)");
      break;
    }
    case Type::kFrame: CANOPY_TRY(check_frame(p)); break;
    case Type::kCursor: {
      CANOPY_TRY(exact(sizeof(CursorMsg)));
      const auto c = read_at<CursorMsg>(p, 0);
      if (c.scanout.get() >= kMaxScanouts || c.visible.get() > 1 || c.reserved.get() != 0 || c.hot_x.get() >= 64 ||
          c.hot_y.get() >= 64 || c.image.get() > 1)
        return bad("channel: CURSOR field out of range");
      if (fds.size() != c.image.get()) return bad("channel: CURSOR image flag and descriptor count differ");
      break;
    }
    case Type::kTimeline: {
      CANOPY_TRY(exact(sizeof(TimelineMsg)));
      const auto tl = read_at<TimelineMsg>(p, 0);
      if (tl.scanout.get() >= kMaxScanouts) return bad("channel: TIMELINE scanout out of range");
      if (tl.num_fds.get() < 2 || tl.num_fds.get() > 3 || tl.num_fds.get() != fds.size())
        return bad("channel: TIMELINE needs a memfd, an eventfd and optionally a pidfd, as counted");
      break;
    }
    case Type::kRelease: {
      CANOPY_TRY(exact(sizeof(Release)));
      const auto r = read_at<Release>(p, 0);
      if (r.scanout.get() >= kMaxScanouts || r.reserved.get() != 0 || r.seq.get() == 0)
        return bad("channel: RELEASE field out of range");
      break;
    }
    case Type::kDisplay: {
      CANOPY_TRY(exact(sizeof(DisplayMsg)));
      const auto d = read_at<DisplayMsg>(p, 0);
      if (d.scanout.get() >= kMaxScanouts || d.connected.get() > 1 || d.reserved.get() != 0)
        return bad("channel: DISPLAY field out of range");
      if (d.connected.get() && (d.width.get() == 0 || d.height.get() == 0 || d.width.get() > kMaxDimension ||
                                d.height.get() > kMaxDimension || d.refresh_hz.get() == 0 || d.refresh_hz.get() > 1000))
        return bad("channel: DISPLAY mode out of range");
      break;
    }
  }
  Message m;
  m.type = t;
  m.payload.assign(p.begin(), p.end());
  m.fds = std::move(fds);
  return m;
}

std::vector<uint8_t> encode(Type type, std::span<const uint8_t> payload) {
  Header h{};
  h.magic = kMagic;
  h.version = kVersion;
  h.type = uint16_t(type);
  h.size = uint32_t(payload.size());
  std::vector<uint8_t> out(kHeaderSize + payload.size());
  std::memcpy(out.data(), &h, sizeof h);
  if (!payload.empty()) std::memcpy(out.data() + kHeaderSize, payload.data(), payload.size());
  return out;
}

std::vector<uint8_t> encode_hello(const std::string& vm, uint32_t num_scanouts) {
  Hello h{};
  std::memcpy(h.vm, vm.data(), std::min(vm.size(), kMaxNameBytes));
  h.num_scanouts = num_scanouts;
  return encode(Type::kHello, h);
}

std::vector<uint8_t> encode_frame(const FrameMsg& f, std::span<const WireRect> damage) {
  FrameMsg g = f;
  g.num_damage = uint32_t(damage.size());
  std::vector<uint8_t> body(sizeof g + damage.size_bytes());
  std::memcpy(body.data(), &g, sizeof g);
  if (!damage.empty()) std::memcpy(body.data() + sizeof g, damage.data(), damage.size_bytes());
  return encode(Type::kFrame, body);
}

BufferKey buffer_key(uint32_t resource, uint64_t generation) {
  BufferKey k{};
  k.resource = resource;
  k.generation = generation;
  return k;
}

Result<std::vector<BufferPacket>> encode_buffer(BufferKey key, std::span<const PieceRef> pieces,
                                                std::span<const int> fds) {
  if (!valid_key(key) || pieces.empty() || pieces.size() > kMaxPiecesPerBuffer)
    return make_error(Errc::kInvalidArgument, "channel: buffer resource or generation 0, or piece count out of range");
  std::vector<BufferPacket> out;
  for (size_t first = 0; first < pieces.size();) {
    BufferPacket pk;
    std::vector<Piece> wire;
    size_t i = first;
    for (; i < pieces.size() && wire.size() < kMaxPiecesPerPacket; ++i) {
      const PieceRef& r = pieces[i];
      if (r.fd >= fds.size() || r.offset % kPageSize || r.length == 0 || r.length % kPageSize ||
          r.length / kPageSize > 0xffffffffull)
        return make_error(Errc::kInvalidArgument, "channel: piece not page aligned or naming no descriptor");
      // This packet's index of the piece's descriptor (each packet carries the fds its pieces use).
      auto it = std::find(pk.fds.begin(), pk.fds.end(), fds[r.fd]);
      if (it == pk.fds.end()) {
        if (pk.fds.size() == kMaxFdsPerPacket) break;  // the next packet carries it
        pk.fds.push_back(fds[r.fd]);
        it = pk.fds.end() - 1;
      }
      Piece pc{};
      pc.fd_index = uint32_t(it - pk.fds.begin());
      pc.pages = uint32_t(r.length / kPageSize);
      pc.offset = r.offset;
      wire.push_back(pc);
    }
    BufferHdr b{};
    b.key = key;
    b.first_piece = uint32_t(first);
    b.total_pieces = uint32_t(pieces.size());
    b.num_pieces = uint32_t(wire.size());
    std::vector<uint8_t> body(sizeof b + wire.size() * sizeof(Piece));
    std::memcpy(body.data(), &b, sizeof b);
    std::memcpy(body.data() + sizeof b, wire.data(), wire.size() * sizeof(Piece));
    pk.bytes = encode(Type::kBuffer, body);
    out.push_back(std::move(pk));
    first = i;
  }
  return out;
}

Status send_timeline(int sock, uint32_t scanout, const buffers::Timeline& timeline) {
  CANOPY_ASSIGN_OR_RETURN(auto fds, timeline.export_fds());
  std::vector<int> raw{fds.memfd.get(), fds.eventfd.get()};
  if (fds.producer_pidfd.valid()) raw.push_back(fds.producer_pidfd.get());
  TimelineMsg t{};
  t.scanout = scanout;
  t.num_fds = uint32_t(raw.size());
  return send_packet(sock, encode(Type::kTimeline, t), raw);  // the duplicates close on return
}

Status send_packet(int sock, std::span<const uint8_t> packet, std::span<const int> fds) {
  return buffers::send_fds(sock, packet.data(), packet.size(), fds);
}

Result<Message> receive(int sock, Direction dir, int timeout_ms) {
  std::vector<uint8_t> buf(kMaxPacket);
  CANOPY_ASSIGN_OR_RETURN(auto p, buffers::recv_packet(sock, buf.data(), buf.size(), kMaxFdsPerPacket, timeout_ms));
  return parse(std::span<const uint8_t>(buf.data(), p.size), std::move(p.fds), dir);
}

}  // namespace canopy::protocol::scanout
