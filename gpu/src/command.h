// Command decode: the layer between queue handling and the device model. Turns the bytes of one
// control- or cursor-queue request into a validated Command: a known type, at least that type's fixed
// size, a header whose flags hold only FENCE / INFO_RING_IDX. Variable parts (memory entries, submit
// streams, debug names) are decoded by the helpers below with checked sizes. Nothing here looks at
// device state; failures map to VIRTIO_GPU_RESP_ERR_UNSPEC, as QEMU and crosvm answer malformed requests.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/protocol/virtio_gpu.h"

namespace canopy::gpu {
namespace proto = ::canopy::protocol::virtio_gpu;  // virtio-gpu's wire format (canopy/protocol/virtio_gpu.h)

enum class Queue { kControl, kCursor };

struct Command {
  proto::CtrlHdr hdr{};
  proto::Cmd type = proto::Cmd::kUndefined;
  std::span<const uint8_t> bytes;  // the whole request (header included)

  // The fixed-size body struct (validated by decode() to fit).
  template <typename T>
  T as() const {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    std::memcpy(&v, bytes.data(), sizeof v);
    return v;
  }
  // The bytes after the fixed part of T.
  template <typename T>
  std::span<const uint8_t> tail() const {
    return bytes.subspan(sizeof(T));
  }
};

// Fixed request size of a command type on a queue; 0 when the type does not belong there.
size_t fixed_size(proto::Cmd type, Queue q);

struct DecodeError {
  proto::Resp resp;
  const char* why;
};

// Errors carry the response type to send: ERR_UNSPEC for short, unknown or wrongly flagged requests.
Result<Command> decode(std::span<const uint8_t> request, Queue q, DecodeError* err);

// `count` memory entries after a request's fixed part. ERR_UNSPEC when the tail is shorter than
// count entries; ERR_OUT_OF_MEMORY when count is over max_entries.
bool decode_entries(std::span<const uint8_t> tail, uint32_t count, uint32_t max_entries,
                    std::vector<proto::MemEntry>& out, DecodeError* err);

}  // namespace canopy::gpu
