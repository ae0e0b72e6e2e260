// The scanout channel: how a GPU device back-end (canopy-gpu) hands its scanouts' frames to the
// compositor (canopy-display) and gets them back, with zero copies: frames are (memfd, offset, length)
// pieces of guest memory (or the device's host storage) that the compositor maps back to back.
//
// One unix SOCK_SEQPACKET connection per GPU device; every packet is one message: a 16-byte header and
// a payload whose layout is fixed per type (counts inside it size its arrays). Descriptors travel with
// BUFFER, TIMELINE and image-carrying CURSOR packets only.
//
// A buffer is named by what it is on the device: the guest's resource id and the generation of that
// resource's backing (BufferKey). The device numbers backings from 1 and never reuses a generation, so a
// resource whose backing is replaced (ATTACH_BACKING after DETACH, a new blob) is a new buffer, and the
// key of a buffer the compositor still maps can never come back with other memory behind it. parse() checks everything
// that does not need the receiver's state (sizes, counts against the caps, descriptor indices, overflow, names, flags);
// the receiver checks ids against what it knows. Wire format and caps: docs/display.md.
//
//   device -> compositor
//     HELLO        vm name, scanout count (first message)
//     BUFFER       defines buffer `key` (a view: its pieces, in order), possibly over several packets
//                  (first_piece / total_pieces); carries the descriptors its pieces name
//     BUFFER_GONE  buffer `key` will not be used again (its backing was detached or replaced, or its
//                  resource destroyed); frames on screen keep their mapping
//     SCANOUT      scanout enabled with a size, or disabled
//     TIMELINE     the scanout's acquire/release timeline (canopy/buffers/timeline.h): its memfd, eventfd
//                  and, when known, the producer's pidfd; at most one per scanout and connection
//     FRAME        scanout shows buffer `key` from now on: format, size, stride, offset, damage, seq; with
//                  kFrameAcquire, only once the scanout's timeline has signalled `acquire_point` (else the
//                  frame is complete on arrival, as 2D and blob frames are)
//     CURSOR       position, hotspot, visibility and, with `image` 1, a new 64x64 ARGB8888 image: a sealed
//                  memfd of at least 16 KiB sent with the packet (stride 256, offset 0)
//   compositor -> device
//     RELEASE      the compositor no longer reads frame `seq` of `scanout`; for frames with an acquire
//                  point it also retires the timeline up to the highest point whose frames (and all
//                  before) it no longer reads: the release fence a producer can wait on
//     DISPLAY      the output behind a scanout changed (connected, mode): the device tells its guest
//
// Threading: the functions are pure or act on one socket; a socket is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "canopy/base/le.h"
#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy::buffers {
class Timeline;
}

namespace canopy::protocol::scanout {

inline constexpr uint32_t kMagic = 0x53444e43;  // "CNDS"
inline constexpr uint16_t kVersion = 3;
inline constexpr size_t kHeaderSize = 16;
inline constexpr uint32_t kMaxScanouts = 16;
inline constexpr uint32_t kMaxPiecesPerPacket = 4096;     // a packet stays under 64 KiB of payload
inline constexpr uint32_t kMaxPiecesPerBuffer = 1 << 16;  // 256 MiB of 4 KiB pages
inline constexpr uint32_t kMaxFdsPerPacket = 8;
inline constexpr uint32_t kMaxDamage = 16;
inline constexpr uint32_t kMaxDimension = 16384;
inline constexpr size_t kMaxNameBytes = 32;
inline constexpr size_t kMaxPacket = kHeaderSize + 32 + size_t(kMaxPiecesPerPacket) * 16;

enum class Type : uint16_t {
  kHello = 1,
  kBuffer = 2,
  kBufferGone = 3,
  kScanout = 4,
  kFrame = 5,
  kCursor = 6,
  kTimeline = 7,
  kRelease = 0x101,
  kDisplay = 0x102,
};
const char* type_name(Type t);

enum class Direction { kToCompositor, kToDevice };

#pragma pack(push, 1)
struct Header {
  le32 magic;
  le16 version;
  le16 type;
  le32 size;  // payload bytes after the header
  le32 reserved;
};
struct Hello {
  char vm[kMaxNameBytes];  // NUL-padded name (a-z, 0-9, -)
  le32 num_scanouts;
  le32 reserved;
};
// A buffer's name: the resource it belongs to and the generation of that resource's backing.
struct BufferKey {
  le32 resource;    // the guest's resource id, nonzero
  le32 reserved;    // 0 (keeps the generation 8-byte aligned where a message places the key)
  le64 generation;  // nonzero, never reused by the device
};
struct BufferHdr {
  BufferKey key;
  le32 first_piece;   // index of this packet's first piece in the buffer
  le32 total_pieces;  // the buffer's piece count (same in every packet of it)
  le32 num_pieces;    // pieces in this packet; Piece[num_pieces] follow
  le32 reserved;
};
struct Piece {
  le32 fd_index;  // into this packet's descriptors
  le32 pages;     // length in 4 KiB pages
  le64 offset;    // in the file, 4 KiB aligned
};
struct BufferGone {
  BufferKey key;
};
struct ScanoutMsg {
  le32 scanout;
  le32 enabled;
  le32 width, height;
};
struct WireRect {
  le32 x, y, width, height;
};
struct FrameMsg {
  le32 scanout;
  le32 reserved;
  BufferKey buffer;
  le64 seq;
  le32 fourcc;
  le32 width, height;
  le32 stride;
  le64 offset;         // of pixel (0,0) in the buffer's view
  le64 bytes_copied;   // device-side copies made for this frame
  le32 flags;          // kFrameBlob | kFrameAliased
  le32 num_damage;     // WireRect[num_damage] follow (0: the whole frame)
  le64 present_ns;     // CLOCK_MONOTONIC when the device took the guest's flush; 0: unknown
  le64 acquire_point;  // with kFrameAcquire: the scanout's timeline value that makes the frame complete
};
struct TimelineMsg {
  le32 scanout;
  le32 num_fds;  // 2 (memfd, eventfd) or 3 (+ the producer's pidfd), in that order
};
struct CursorMsg {
  le32 scanout;
  le32 visible;
  le32 x, y;
  le32 hot_x, hot_y;
  le32 image;  // 1: the packet carries a new image's memfd; 0: the image is unchanged
  le32 reserved;
};
struct Release {
  le32 scanout;
  le32 reserved;
  le64 seq;
};
struct DisplayMsg {
  le32 scanout;
  le32 connected;
  le32 width, height;
  le32 refresh_hz;
  le32 reserved;
};
#pragma pack(pop)
static_assert(sizeof(Header) == kHeaderSize && sizeof(Hello) == 40 && sizeof(BufferKey) == 16 &&
              sizeof(BufferHdr) == 32 && sizeof(BufferGone) == 16 && sizeof(Piece) == 16 && sizeof(FrameMsg) == 88 &&
              sizeof(TimelineMsg) == 8 && sizeof(CursorMsg) == 32 && sizeof(Release) == 16 &&
              sizeof(DisplayMsg) == 24 && sizeof(WireRect) == 16 && sizeof(ScanoutMsg) == 16);

inline constexpr uint32_t kFrameBlob = 1u << 0;
inline constexpr uint32_t kFrameAliased = 1u << 1;
inline constexpr uint32_t kFrameAcquire = 1u << 2;
inline constexpr uint32_t kKnownFrameFlags = kFrameBlob | kFrameAliased | kFrameAcquire;
inline constexpr uint64_t kPageSize = 4096;

// A parsed packet: the header's type, the fixed part, the arrays, the descriptors.
struct Message {
  Type type{};
  std::vector<uint8_t> payload;  // as received
  std::vector<UniqueFd> fds;
  // Typed views (valid for the matching type; parse() has checked the sizes).
  template <typename T>
  T fixed() const {
    T v;
    std::memcpy(&v, payload.data(), sizeof v);
    return v;
  }
  std::string vm_name() const;           // kHello
  std::vector<Piece> pieces() const;     // kBuffer
  std::vector<WireRect> damage() const;  // kFrame
};

// Checks one packet (see the file comment). Errors: kProtocol with a message naming the problem.
Result<Message> parse(std::span<const uint8_t> packet, std::vector<UniqueFd> fds, Direction dir);

// Packets. BUFFER definitions longer than kMaxPiecesPerPacket are split by encode_buffer.
std::vector<uint8_t> encode(Type type, std::span<const uint8_t> payload);
template <typename T>
  requires(std::is_trivially_copyable_v<T> && !std::is_convertible_v<const T&, std::span<const uint8_t>>)
std::vector<uint8_t> encode(Type type, const T& fixed) {
  return encode(type, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&fixed), sizeof fixed));
}
std::vector<uint8_t> encode_hello(const std::string& vm, uint32_t num_scanouts);
std::vector<uint8_t> encode_frame(const FrameMsg& f, std::span<const WireRect> damage);
// One packet per kMaxPiecesPerPacket pieces; each packet's pieces name fds by index into the fds
// that packet carries, which encode_buffer lists in `packet_fds` (indices into `fds`).
struct BufferPacket {
  std::vector<uint8_t> bytes;
  std::vector<int> fds;  // borrowed
};
// pieces: (index into fds, offset, length) with offset and length page aligned.
struct PieceRef {
  uint32_t fd;
  uint64_t offset;
  uint64_t length;
};
Result<std::vector<BufferPacket>> encode_buffer(BufferKey key, std::span<const PieceRef> pieces,
                                                std::span<const int> fds);
BufferKey buffer_key(uint32_t resource, uint64_t generation);
// A key as a map key: (resource, generation).
inline std::pair<uint32_t, uint64_t> key_pair(const BufferKey& k) { return {k.resource.get(), k.generation.get()}; }

// Sends / receives one packet (SOCK_SEQPACKET). receive: kClosed at end of stream, kTimeout, kProtocol.
Status send_packet(int sock, std::span<const uint8_t> packet, std::span<const int> fds = {});
// TIMELINE for `scanout`: duplicates of the timeline's descriptors (the producer's pidfd when known).
Status send_timeline(int sock, uint32_t scanout, const buffers::Timeline& timeline);
Result<Message> receive(int sock, Direction dir, int timeout_ms);

}  // namespace canopy::protocol::scanout
