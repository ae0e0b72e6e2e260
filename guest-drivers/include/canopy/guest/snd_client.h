// The guest side of virtio-snd (virtio 1.2 §5.14 + 1.3 controls) for partition apps: queries, the PCM
// commands, period-sized playback and capture buffers, events.
//
//   SndClient::Options o;  o.area = *part.alloc(SndClient::kAreaBytes);
//   auto snd = SndClient::create(*part.transport(dev), part.memory(), o);
//   snd->set_params(0, 4 * 1920, 1920, 2, proto::Format::kS16, 48000);  snd->prepare(0);
//   snd->write(0, period);  ...  snd->start(0);  ...  snd->drain(0);  snd->stop(0);  snd->release(0);
//
// Control requests are synchronous; a device status other than S_OK becomes an error and last_status()
// tells which. Playback: write() queues one buffer (waiting for a free one when kIoSlots are in flight);
// completions carry the device's status and latency_bytes and the time from write to completion.
// Capture: queue_reads() posts empty buffers, read() takes the next filled one.
//
// Threading: one thread uses a SndClient.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/guest/virtio_driver.h"
#include "canopy/protocol/virtio_snd.h"

namespace canopy::guest {

namespace sndp = canopy::protocol::virtio_snd;

class SndClient {
 public:
  static constexpr uint64_t kRingBytes = 64 << 10;
  static constexpr uint64_t kCtlBytes = 64 << 10;  // one control request and its response
  static constexpr uint32_t kIoSlots = 32;
  static constexpr uint64_t kIoSlotBytes = 32 << 10;  // periods up to 32 KiB - 16
  static constexpr uint32_t kEventSlots = 16;
  static constexpr uint64_t kAreaBytes = kRingBytes + kCtlBytes + kIoSlots * kIoSlotBytes + 4096;

  struct Options {
    GuestArea area;        // at least kAreaBytes
    bool controls = true;  // negotiate VIRTIO_SND_F_CTLS when offered
    int timeout_ms = 3000;
  };
  struct Completion {
    uint32_t stream = 0;
    uint32_t status = 0;
    uint32_t latency_bytes = 0;
    uint32_t bytes = 0;         // playback: bytes written; capture: bytes recorded
    uint64_t submitted_ns = 0;  // CLOCK_MONOTONIC
    uint64_t completed_ns = 0;
    uint32_t queued_after = 0;  // playback: bytes of this stream's later buffers still with the device
    std::vector<uint8_t> data;  // capture only
    // Playback: how long after completion its last sample is heard (latency_bytes counts the later
    // buffers too; they play after it), in ms at `bytes_per_ms`.
    double host_delay_ms(double bytes_per_ms) const {
      return latency_bytes > queued_after ? (latency_bytes - queued_after) / bytes_per_ms : 0.0;
    }
  };

  static Result<std::unique_ptr<SndClient>> create(VirtioTransport& transport, transport::GuestMemory& mem,
                                                   const Options& options);

  bool has_feature(uint64_t f) const { return driver_.has_feature(f); }
  Result<sndp::Config> config();

  // Raw control request: `request` bytes, `payload` bytes of response after the status header. The
  // status is returned (not checked); the payload lands in `out` when given.
  Result<uint32_t> call(std::span<const uint8_t> request, uint32_t payload = 0, std::vector<uint8_t>* out = nullptr);
  template <typename T>
  Result<uint32_t> call_obj(const T& request, uint32_t payload = 0, std::vector<uint8_t>* out = nullptr) {
    return call(std::span(reinterpret_cast<const uint8_t*>(&request), sizeof request), payload, out);
  }

  // Queries (all items): errors carry the status in last_status().
  Result<std::vector<sndp::PcmInfo>> pcm_info();
  Result<std::vector<sndp::JackInfo>> jack_info();
  Result<std::vector<sndp::ChmapInfo>> chmap_info();
  Result<std::vector<sndp::CtlInfo>> ctl_info();

  Status set_params(uint32_t stream, uint32_t buffer_bytes, uint32_t period_bytes, uint8_t channels, sndp::Format f,
                    uint32_t rate_hz, uint32_t features = 0);
  Status prepare(uint32_t stream) { return pcm(sndp::Code::kPcmPrepare, stream); }
  Status start(uint32_t stream) { return pcm(sndp::Code::kPcmStart, stream); }
  Status stop(uint32_t stream) { return pcm(sndp::Code::kPcmStop, stream); }
  Status release(uint32_t stream) { return pcm(sndp::Code::kPcmRelease, stream); }
  Status pcm(sndp::Code code, uint32_t stream);
  Result<uint32_t> ctl_read(uint32_t control);
  Status ctl_write(uint32_t control, uint32_t value);

  // Playback: one buffer of `data` for `stream`.
  Status write(uint32_t stream, std::span<const uint8_t> data);
  // Capture: posts `count` empty buffers of `bytes` each.
  Status queue_reads(uint32_t stream, uint32_t bytes, uint32_t count);
  // The next completed tx / rx buffer (in completion order), waiting up to timeout_ms.
  Result<Completion> next_tx(int timeout_ms);
  Result<Completion> next_rx(int timeout_ms);
  // Waits until every tx buffer is back.
  Status drain_tx(int timeout_ms);
  uint32_t tx_in_flight() const;
  // Takes what the device returned, without waiting (next_tx / next_rx then answer at once).
  Status poll() { return pump(0); }
  uint32_t rx_in_flight() const;
  // Events received so far (taken).
  std::vector<sndp::Event> take_events(int wait_ms = 0);

  uint32_t last_status() const { return last_status_; }
  VirtioDriver& driver() { return driver_; }

 private:
  SndClient(VirtioTransport& t, transport::GuestMemory& mem) : driver_(t, mem), mem_(mem) {}
  Status pump(int timeout_ms);
  // Pumps until done() or timeout_ms (kTimeout with `what`).
  Status wait(int timeout_ms, const std::function<bool()>& done, const char* what);
  Status post_event(uint32_t slot);
  Result<uint32_t> take_io_slot(int timeout_ms);
  template <typename T>
  Result<std::vector<T>> query(sndp::Code code, uint32_t count);

  struct Io {
    bool busy = false;
    bool tx = false;
    uint32_t stream = 0;
    uint32_t bytes = 0;
    uint64_t submitted_ns = 0;
  };
  VirtioDriver driver_;
  transport::GuestMemory& mem_;
  Options opt_;
  uint64_t ctl_gpa_ = 0, io_gpa_ = 0, ev_gpa_ = 0;
  std::vector<Io> io_;
  std::deque<Completion> tx_done_, rx_done_;
  std::deque<sndp::Event> events_;
  std::optional<uint32_t> ctl_used_;
  uint32_t last_status_ = 0;
};

}  // namespace canopy::guest
