// The null host: a monotonic timer consumes playback and produces capture at each stream's rate.
// Playback is recorded (--wav-dir) as delivered: the file holds the guest's audio, not the timeline.
#include <sys/timerfd.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "canopy/audio/host.h"
#include "canopy/audio/policy.h"
#include "canopy/base/log.h"
#include "canopy/base/unique_fd.h"
#include "playback_tap.h"

namespace canopy::audio {

namespace {

class NullHost;

class NullStream final : public HostStream {
 public:
  NullStream(NullHost& host, StreamIo& io);
  ~NullStream() override;
  Status prepare(const PcmParams& p) override;
  void start() override;
  void stop() override;
  uint32_t delay_frames() override { return 0; }
  void tick(uint64_t now);
  bool running() const { return running_; }
  uint64_t period_ns() const {
    return p_.rate ? uint64_t(p_.period_bytes / std::max(1u, p_.frame_bytes())) * 1'000'000'000ull / p_.rate : 0;
  }

 private:
  void fill_capture(uint8_t* dst, size_t frames);
  NullHost& host_;
  StreamIo& io_;
  PcmParams p_;
  bool running_ = false;
  uint64_t t0_ = 0;
  uint64_t frames_done_ = 0;
  uint64_t tone_phase_ = 0;
  PlaybackTap tap_;
  std::vector<uint8_t> buf_;
};

class NullHost final : public HostBackend {
 public:
  explicit NullHost(NullHostOptions o) : opt_(std::move(o)) {}
  const char* name() const override { return "null"; }
  Status init() {
    timer_ = UniqueFd(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!timer_.valid()) return make_error(Errc::kIo, "null host: timerfd_create failed", errno);
    return {};
  }
  Result<std::unique_ptr<HostStream>> open(uint32_t, StreamIo& io) override {
    auto s = std::make_unique<NullStream>(*this, io);
    streams_.push_back(s.get());
    return std::unique_ptr<HostStream>(std::move(s));
  }
  std::vector<Watch> watches() override {
    return {{timer_.get(), [this] {
               uint64_t n;
               ssize_t r = ::read(timer_.get(), &n, sizeof n);
               (void)r;
               const uint64_t now = monotonic_ns();
               for (NullStream* s : streams_)
                 if (s->running()) s->tick(now);
             }}};
  }
  // Ticks at a quarter of the shortest running period (at least every 0.5 ms, at most every 10 ms).
  void rearm() {
    uint64_t step = 0;
    for (NullStream* s : streams_)
      if (s->running()) {
        const uint64_t p = std::clamp<uint64_t>(s->period_ns() / 4, 500'000, 10'000'000);
        step = step ? std::min(step, p) : p;
      }
    itimerspec its{};
    its.it_interval.tv_sec = time_t(step / 1'000'000'000ull);
    its.it_interval.tv_nsec = long(step % 1'000'000'000ull);
    its.it_value = its.it_interval;
    timerfd_settime(timer_.get(), 0, &its, nullptr);
  }
  void forget(NullStream* s) { std::erase(streams_, s); }
  const NullHostOptions& options() const { return opt_; }

 private:
  NullHostOptions opt_;
  UniqueFd timer_;
  std::vector<NullStream*> streams_;
};

NullStream::NullStream(NullHost& host, StreamIo& io)
    : host_(host),
      io_(io),
      tap_(io.config().direction == proto::Direction::kOutput ? host.options().wav_dir : std::string(),
           host.options().vm, io.config().name) {}

NullStream::~NullStream() { host_.forget(this); }

Status NullStream::prepare(const PcmParams& p) {
  CANOPY_TRY(tap_.prepare(p));
  p_ = p;
  return {};
}

void NullStream::start() {
  running_ = true;
  t0_ = monotonic_ns();
  frames_done_ = 0;
  host_.rearm();
}

void NullStream::stop() {
  running_ = false;
  tap_.flush();
  host_.rearm();
}

void NullStream::fill_capture(uint8_t* dst, size_t frames) {
  const uint32_t fb = p_.frame_bytes();
  std::memset(dst, proto::silence_byte(p_.format), frames * fb);
  const double hz = host_.options().capture_tone_hz;
  if (hz <= 0) return;
  for (size_t f = 0; f < frames; ++f, ++tone_phase_) {
    const double v = 0.5 * std::sin(2.0 * M_PI * hz * double(tone_phase_) / p_.rate);
    for (uint32_t c = 0; c < p_.channels; ++c)
      write_sample(p_.format, dst + size_t(f) * fb + size_t(c) * (fb / p_.channels), v);
  }
}

void NullStream::tick(uint64_t now) {
  const uint32_t fb = p_.frame_bytes();
  if (!fb) return;
  const uint64_t due = (now - t0_) * p_.rate / 1'000'000'000ull;
  if (due <= frames_done_) return;
  size_t frames = size_t(due - frames_done_);
  frames = std::min<size_t>(frames, p_.rate);  // a stalled loop does not make a burst of more than a second
  frames_done_ = due;
  buf_.resize(frames * fb);
  if (io_.config().direction == proto::Direction::kOutput) {
    // The file gets exactly what the guest delivered (PlaybackTap): a late guest's missing frames are
    // underruns in the device's stats, not silence in the file.
    const size_t got = io_.pull(buf_.data(), buf_.size());
    tap_.taken(buf_.data(), got);
  } else {
    // Capture gets the tone continuously: what the guest had no buffer for (an overrun, counted by the
    // device) is not skipped in the tone, so what a late guest hears is still one unbroken sine.
    fill_capture(buf_.data(), frames);
    const size_t taken = io_.push(buf_.data(), buf_.size());
    if (host_.options().capture_tone_hz > 0) tone_phase_ -= (buf_.size() - taken) / fb;
  }
}

}  // namespace

Result<std::unique_ptr<HostBackend>> make_null_backend(const NullHostOptions& o) {
  auto h = std::make_unique<NullHost>(o);
  CANOPY_TRY(h->init());
  return std::unique_ptr<HostBackend>(std::move(h));
}

}  // namespace canopy::audio
