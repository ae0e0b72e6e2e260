// The virtio-snd device model (virtio 1.2 §5.14 + 1.3 control elements), independent of the transport:
// canopy-snd runs it behind vhost-user (vhost_snd.h), tests and the fuzzer drive it directly.
//
//   SndDevice::create(options, host, board, complete)   one device: jacks, streams, chmaps, controls
//   control(chain)      a controlq request; answered at once (returns the used length)
//   io(queue, chain)    a txq / rxq / eventq buffer; held until it is consumed / filled / needed, then
//                       handed back through `complete(queue, head, used_len)`
//
// Guest input is never trusted: every id, count, size and length is checked against the configuration and
// the chain's own buffers (the QEMU virtio-snd CVE classes are regression-tested in device_test.cc). A
// malformed request gets VIRTIO_SND_S_BAD_MSG; a buffer the device cannot use is handed back at once with
// VIRTIO_SND_S_IO_ERR (or with nothing written when it has no room for a status).
//
// Data: a host backend (host_backend.h; the PipeWire and null hosts in host.h) pulls playback bytes and pushes capture
// bytes through the stream's StreamIo at the host's pace, so tx buffers are completed when the host has taken them (the
// guest's clock is the host's), rx buffers when full. Volume, mute and the policy's ducking are applied there.
//
// Threading: one thread (canopy-snd's event loop) calls everything, host callbacks included.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "canopy/audio/host_backend.h"
#include "canopy/base/result.h"
#include "canopy/config/snd_options.h"
#include "canopy/protocol/virtio_snd.h"
#include "canopy/transport/guest_memory.h"
#include "canopy/transport/virtqueue.h"

namespace canopy::audio {
namespace proto = ::canopy::protocol::virtio_snd;  // virtio-snd's wire format (canopy/protocol/virtio_snd.h)

class PolicyBoard;

// The formats the device offers by default: those it can apply a gain to (U8, S16, S24 in 32 bits, S32,
// FLOAT). PipeWire converts them to whatever the graph runs at.
uint64_t default_formats();

// The usual channel layout for a channel count (MONO; FL FR; ... 7.1), as virtio positions.
std::vector<uint8_t> default_positions(uint8_t channels);

// A stream's and a jack's configuration, and a stream's cross-VM policy: canopy-snd's options
// (canopy/config/snd_options.h, with their parser and printer). formats 0: default_formats().
using config::JackConfig;
using config::StreamConfig;
using config::StreamPolicy;

struct SndOptions {
  std::vector<StreamConfig> streams;
  std::vector<JackConfig> jacks;
  // Offer VIRTIO_SND_F_CTLS (a volume and a switch per stream). Off by default, as QEMU's vhost-user-snd
  // is: it passes the back-end's features through but sizes the config space from its own `controls=`
  // (12 bytes without it), so a guest offered CTLS there reads 0xffffffff controls and fails to probe.
  bool controls = false;
  std::string vm = "vm";             // shown in host node names and logs
  uint32_t max_pending_events = 64;  // events kept while the driver has no eventq buffer
};

struct StreamStats {
  uint64_t tx_buffers = 0, rx_buffers = 0, io_errors = 0;
  uint64_t frames = 0;           // frames moved to / from the host
  uint64_t underruns = 0;        // playback pulls the guest could not fill while running
  uint64_t underrun_frames = 0;  // the frames those pulls lacked (the host plays silence or nothing there)
  uint64_t overruns = 0;         // capture pushes with no guest buffer
  uint64_t xrun_events = 0;
  uint64_t ducks = 0;           // times the policy started attenuating this stream
  double gain_db = 0;           // current policy gain (0 = none)
  double deepest_db = 0;        // the lowest policy gain reached
  double duck_reached_ms = -1;  // how long the last duck took to reach its target (-1: none yet)
  uint32_t last_latency_bytes = 0;
  // Playback latency per tx buffer: from its arrival (the guest's kick) until its last sample is out of
  // the host (taken + the host's delay), in ms. The first 100000 buffers are kept.
  std::vector<float> latency_ms;
  // The p-th percentile (0..1) of latency_ms; -1 when there are none.
  double latency_percentile(double p) const;
};

class SndDevice {
 public:
  // A held buffer is done: the transport writes the used element and notifies the driver.
  using CompleteFn = std::function<void(uint16_t queue, uint16_t head, uint32_t used_len)>;
  // A chain as the device sees it: validated guest segments, readable first.
  struct Chain {
    uint16_t head = 0;
    std::span<const transport::Segment> readable;
    std::span<const transport::Segment> writable;
  };
  static constexpr uint32_t kHeld = 0xffffffffu;

  // Checks the configuration (ids, counts, formats, rates, positions) and opens each stream's host end.
  static Result<std::unique_ptr<SndDevice>> create(SndOptions options, HostBackend* host, PolicyBoard* board,
                                                   CompleteFn complete);
  ~SndDevice();

  uint64_t offered_features() const;
  void set_acked_features(uint64_t f) { acked_ = f; }
  proto::Config config() const;
  uint32_t config_bytes() const;  // 16 with CTLS offered, else 12
  void set_memory(transport::GuestMemory* mem) { mem_ = mem; }

  // A controlq request: the response is written into the chain; returns the used length.
  uint32_t control(const Chain& c);
  // A txq / rxq / eventq buffer: kHeld when the device keeps it, else the used length to return now.
  uint32_t io(uint16_t queue, const Chain& c);
  // The driver reset the device or stopped queue `queue` (-1: all): held buffers are dropped (reset: the
  // rings may be gone) or handed back (stop), streams go back to their initial state.
  void reset();
  void queue_stopped(uint16_t queue, bool resetting);

  // Host-side events.
  Status set_jack(uint32_t jack, bool connected);
  Status set_volume(uint32_t stream, uint32_t volume, bool mute);  // a control changed by the host

  uint32_t num_streams() const;
  // The device side of a stream, as its host backend sees it (tests drive it directly).
  StreamIo* stream_io(uint32_t stream);
  const StreamStats& stats(uint32_t stream) const;
  const char* state_name(uint32_t stream) const;
  uint64_t events_sent() const { return events_sent_; }
  uint64_t events_dropped() const { return events_dropped_; }
  uint64_t bad_requests() const { return bad_requests_; }

  struct Stream;

 private:
  SndDevice() = default;
  uint32_t respond(const Chain& c, proto::Code code, std::span<const uint8_t> payload = {});
  uint32_t query(const Chain& c, uint32_t code, const std::vector<uint8_t>& req);
  uint32_t pcm_command(const Chain& c, proto::Code code, const std::vector<uint8_t>& req);
  uint32_t ctl_command(const Chain& c, proto::Code code, const std::vector<uint8_t>& req);
  uint32_t tx_rx(uint16_t queue, const Chain& c);
  void post_event(uint32_t code, uint32_t data);
  void post_ctl_event(uint32_t control, uint16_t mask);
  void flush_events();
  friend struct Stream;

  SndOptions opt_;
  HostBackend* host_ = nullptr;
  PolicyBoard* board_ = nullptr;
  CompleteFn complete_;
  transport::GuestMemory* mem_ = nullptr;
  uint64_t acked_ = 0;
  std::vector<std::unique_ptr<Stream>> streams_;
  std::vector<uint8_t> jack_connected_;
  struct HeldBuffer {
    uint16_t head = 0;
    std::vector<transport::Segment> writable;
  };
  std::deque<HeldBuffer> event_buffers_;
  std::deque<proto::Event> pending_events_;
  uint64_t events_sent_ = 0, events_dropped_ = 0, bad_requests_ = 0;
};

// Applies a gain ramp to interleaved samples in place: frame i gets db_start + i * db_step (dB, clamped
// at kMuteDb = silence). Supports the formats of default_formats().
using config::kMuteDb;  // silence (config/snd_options.h: the deepest duck-db too)
void apply_gain(uint8_t format, uint8_t* data, size_t frames, uint32_t channels, double db_start, double db_step);

}  // namespace canopy::audio
