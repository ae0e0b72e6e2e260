#include "playback_tap.h"

#include <cstdio>

#include "canopy/base/log.h"

namespace canopy::audio {

Status PlaybackTap::prepare(const PcmParams& p) {
  if (dir_.empty()) return {};
  const bool same_format = wav_ && p.format == p_.format && p.channels == p_.channels && p.rate == p_.rate;
  p_ = p;
  partial_.clear();  // a frame cut short before this PREPARE never gets its rest
  if (same_format) return {};
  wav_.reset();
  char suffix[16] = "";
  if (files_++) std::snprintf(suffix, sizeof suffix, "-%d", files_);
  const std::string path = dir_ + "/" + vm_ + "-" + stream_ + suffix + ".wav";
  auto w = WavWriter::create(path, p.format, p.channels, p.rate);
  if (!w.ok()) {
    // A recording for tests must not break the guest's playback: said, and the stream plays on.
    CANOPY_ERROR("snd: stream %s: cannot record to %s: %s", stream_.c_str(), path.c_str(), w.error().what);
    return {};
  }
  wav_ = std::move(*w);
  return {};
}

void PlaybackTap::taken(const uint8_t* data, size_t bytes) {
  const size_t fb = p_.frame_bytes();
  if (!wav_ || !bytes || !fb) return;
  if (partial_.empty() && bytes % fb == 0) {
    (void)wav_->write(data, bytes);
    return;
  }
  partial_.insert(partial_.end(), data, data + bytes);
  const size_t whole = partial_.size() - partial_.size() % fb;
  (void)wav_->write(partial_.data(), whole);
  partial_.erase(partial_.begin(), partial_.begin() + long(whole));
}

void PlaybackTap::flush() {
  if (wav_) (void)wav_->flush();
}

}  // namespace canopy::audio
