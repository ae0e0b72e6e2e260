#include "playback_tap.h"

#include <cstdio>

namespace canopy::audio {

Status PlaybackTap::prepare(const PcmParams& p) {
  if (dir_.empty()) return {};
  const bool same_format = wav_ && p.format == p_.format && p.channels == p_.channels && p.rate == p_.rate;
  p_ = p;
  if (same_format) return {};
  wav_.reset();
  partial_.clear();
  char suffix[16] = "";
  if (files_++) std::snprintf(suffix, sizeof suffix, "-%d", files_);
  auto w = WavWriter::create(dir_ + "/" + vm_ + "-" + stream_ + suffix + ".wav", p.format, p.channels, p.rate);
  if (!w.ok()) return w.error();
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
