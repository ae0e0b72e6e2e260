// SndDevice's inside (internal to audio/src): its limits, the PCM stream (SndDevice::Stream) and the PCM
// command state machine, shared by the files that hold the device's parts —
//   device.cc      the device: configuration, the control queue (queries, jacks, controls), events,
//                  queue stops and reset;
//   pcm_stream.cc  a PCM stream: the PCM commands through the transition table below, tx / rx buffers
//                  held and moved to and from the host, xruns, period events, the policy's gain ramp;
//   gain.cc        a gain (and its ramp) applied to the samples of each format.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>

#include "canopy/audio/device.h"
#include "canopy/audio/policy.h"
#include "canopy/base/log.h"

namespace canopy::audio {

using proto::Code;
using transport::Segment;

namespace detail {

constexpr uint32_t kMaxBufferBytes = 4u << 20;  // per stream; Linux asks for at most ~1 MiB (160 ms of 8ch/192k/32bit)
constexpr uint32_t kMaxRequestBytes = 4096;     // control requests we read (no TLV writes are offered)
constexpr uint32_t kMaxItemSize = 1024;         // query_info.size accepted (the structs are 24..96 bytes)
constexpr uint32_t kVolumeMax = 100;            // volume control: 0..100 = -50 dB..0 dB in 0.5 dB steps
constexpr int32_t kVolumeMinCdb = -5000, kVolumeStepCdb = 50;
// XRUN events, and PERIOD_ELAPSED events each time a period's worth of frames went to / came from the
// host (meant for the shared-memory transport, which is not offered; informational over messages).
constexpr uint32_t kOfferedPcmFeatures = proto::kPcmFEvtXruns | proto::kPcmFEvtShmemPeriods;

// The bytes of a chain part (each segment is at most 4 GiB - 1: no overflow in 64 bits).
inline uint64_t bytes_of(std::span<const Segment> segs) {
  uint64_t n = 0;
  for (const Segment& s : segs) n += s.len;
  return n;
}

inline double volume_db(uint32_t v) { return (kVolumeMinCdb + int32_t(v) * kVolumeStepCdb) / 100.0; }

template <typename T>
T load(const std::vector<uint8_t>& b) {
  T v{};
  std::memcpy(&v, b.data(), std::min(sizeof v, b.size()));
  return v;
}

enum class PcmState { kInitial, kSetParams, kPrepared, kStarted, kStopped, kReleased };
inline const char* pcm_state_name(PcmState s) {
  switch (s) {
    case PcmState::kInitial: return "initial";
    case PcmState::kSetParams: return "params-set";
    case PcmState::kPrepared: return "prepared";
    case PcmState::kStarted: return "started";
    case PcmState::kStopped: return "stopped";
    case PcmState::kReleased: return "released";
  }
  return "?";
}

// The PCM command state machine (virtio 1.2 §5.14.6.6.1): each command, the states it may come in and
// the state it leaves the stream in. In any other state the command is refused with BAD_MSG (a PREPARE
// also needs parameters set). Release hands every held buffer back first (§5.14.6.6.5.1).
constexpr uint32_t state_bit(PcmState s) { return 1u << uint32_t(s); }
struct PcmTransition {
  Code command;
  uint32_t from;  // state_bit() of every state the command may come in
  PcmState to;
};
inline constexpr PcmTransition kPcmTransitions[] = {
    {Code::kPcmSetParams,
     state_bit(PcmState::kInitial) | state_bit(PcmState::kSetParams) | state_bit(PcmState::kPrepared) |
         state_bit(PcmState::kReleased),
     PcmState::kSetParams},
    {Code::kPcmPrepare,
     state_bit(PcmState::kSetParams) | state_bit(PcmState::kPrepared) | state_bit(PcmState::kReleased),
     PcmState::kPrepared},
    {Code::kPcmStart, state_bit(PcmState::kPrepared) | state_bit(PcmState::kStopped), PcmState::kStarted},
    {Code::kPcmStop, state_bit(PcmState::kStarted), PcmState::kStopped},
    {Code::kPcmRelease, state_bit(PcmState::kPrepared) | state_bit(PcmState::kStopped), PcmState::kReleased},
};
inline const PcmTransition* pcm_transition(Code c) {
  for (const PcmTransition& t : kPcmTransitions)
    if (t.command == c) return &t;
  return nullptr;
}

}  // namespace detail

using namespace detail;  // NOLINT(google-build-using-namespace): the device's own parts

struct SndDevice::Stream final : StreamIo {
  SndDevice* dev = nullptr;
  uint32_t id = 0;
  StreamConfig cfg;
  PcmParams params_;
  bool has_params = false;
  PcmState state = PcmState::kInitial;
  std::unique_ptr<HostStream> host;
  int slot = -1;  // policy board slot
  // Control values.
  uint32_t volume = kVolumeMax;
  bool mute = false;
  // I/O buffers held: data segments, status segments, bytes done.
  struct Io {
    uint16_t head = 0;
    std::vector<Segment> data;
    std::vector<Segment> status;
    uint32_t size = 0;
    uint32_t done = 0;
    uint64_t arrived_ns = 0;
  };
  std::deque<Io> held;
  uint64_t queued_bytes = 0;  // playback bytes held and not yet taken
  bool in_xrun = false;
  uint64_t period_progress = 0;  // bytes moved since the last PERIOD_ELAPSED
  // Policy ramp.
  double policy_db = 0;
  double ramp_db_per_frame = 0;
  uint32_t last_ramp_ms = 50;
  double last_target = 0;
  uint64_t duck_started_frame = 0;
  bool ducking = false;
  StreamStats st;
  std::vector<uint8_t> scratch;

  const PcmParams& params() const override { return params_; }
  const StreamConfig& config() const override { return cfg; }
  uint16_t queue() const { return cfg.direction == proto::Direction::kOutput ? proto::kTxQ : proto::kRxQ; }

  uint32_t latency_bytes() const;

  void finish(Io& io, uint32_t status, uint32_t used_data);

  // Hands back every held buffer (RELEASE, queue stop): playback ones as played, capture ones with what
  // they hold.
  void return_all(uint32_t status);

  void set_state(PcmState s);

  // After a pull / push: a short one is an underrun / overrun (counted in `counter`); the first of an
  // episode is reported as EVT_PCM_XRUN where negotiated; a full one ends the episode.
  void xrun(bool short_transfer, uint64_t& counter);

  void moved(size_t bytes);

  // The policy + control gain for the next `frames` frames, applied to `data`.
  void gain(uint8_t* data, size_t frames);

  size_t pull(uint8_t* dst, size_t bytes) override;

  size_t push(const uint8_t* src, size_t bytes) override;
};

}  // namespace canopy::audio
