// A stream's host end, as the device model sees it: the interface between SndDevice (device.h) and
// whatever plays and records — PipeWire (pipewire_host.cc) or the null host (null_host.cc), both made by
// host.h. The device gives each stream a StreamIo to pull playback from and push capture into; the host
// gives back a HostStream the device prepares, starts, stops and releases.
//
// Threading: one thread (canopy-snd's event loop) calls everything, host callbacks included.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/config/snd_options.h"
#include "canopy/protocol/virtio_snd.h"

namespace canopy::audio {
namespace proto = ::canopy::protocol::virtio_snd;  // virtio-snd's wire format (canopy/protocol/virtio_snd.h)
using config::StreamConfig;

// One stream's parameters from PCM_SET_PARAMS.
struct PcmParams {
  uint32_t buffer_bytes = 0;
  uint32_t period_bytes = 0;
  uint32_t features = 0;
  uint8_t channels = 0;
  uint8_t format = 0;  // proto::Format
  uint32_t rate = 0;   // Hz
  uint32_t frame_bytes() const { return channels * proto::format_bytes(format); }
  bool operator==(const PcmParams&) const = default;
};

// The device side of a stream, for its host backend.
class StreamIo {
 public:
  virtual ~StreamIo() = default;
  // Playback: copies up to `bytes` of the guest's queued audio to dst (volume and ducking applied) and
  // completes the tx buffers it empties; returns the bytes copied. Less than asked while running is an
  // underrun (counted, and an XRUN event where negotiated); the caller fills the rest with silence.
  virtual size_t pull(uint8_t* dst, size_t bytes) = 0;
  // Capture: writes `bytes` of host audio into the guest's rx buffers, completing each one filled;
  // returns the bytes taken (less: no buffer, an overrun, counted).
  virtual size_t push(const uint8_t* src, size_t bytes) = 0;
  virtual const PcmParams& params() const = 0;
  virtual const StreamConfig& config() const = 0;
};

// The host end of one virtio stream (a PipeWire stream, a WAV file, nothing).
class HostStream {
 public:
  virtual ~HostStream() = default;
  // PCM_PREPARE: open or reopen the host side for these parameters (not running yet).
  virtual Status prepare(const PcmParams& p) = 0;
  // PCM_START / PCM_STOP. A stopped playback stream plays out what the host already holds.
  virtual void start() = 0;
  virtual void stop() = 0;
  // PCM_RELEASE.
  virtual void release() {}
  // Frames the host holds between pull() and the output (for latency_bytes).
  virtual uint32_t delay_frames() { return 0; }
};

class HostBackend {
 public:
  virtual ~HostBackend() = default;
  virtual const char* name() const = 0;
  virtual Result<std::unique_ptr<HostStream>> open(uint32_t index, StreamIo& io) = 0;
  // Descriptors the event loop polls for the backend, and what to call when one is readable.
  struct Watch {
    int fd;
    std::function<void()> fn;
  };
  virtual std::vector<Watch> watches() { return {}; }
};

}  // namespace canopy::audio
