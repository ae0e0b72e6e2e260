// WAV files and signal measurements for canopy-snd's null host, its tests, benchmarks and the demo:
// writing what a stream played, reading what PipeWire captured (pw-record), and measuring a tone in it
// (onset, length, frequency, level, gaps) or one frequency's level over a span (ducking).
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "canopy/base/result.h"

namespace canopy::audio {

// Writes one sample (-1..1) in a virtio format (U8, S16, S24 in 32 bits, S32, FLOAT) at dst.
void write_sample(uint8_t format, uint8_t* dst, double v);

class WavWriter {
 public:
  static Result<std::unique_ptr<WavWriter>> create(const std::string& path, uint8_t virtio_format, uint32_t channels,
                                                   uint32_t rate);
  ~WavWriter();
  Status write(const void* data, size_t bytes);
  Status flush();  // header sizes updated; the file stays open

 private:
  WavWriter() = default;
  FILE* f_ = nullptr;
  uint64_t data_bytes_ = 0;
  bool s24_ = false;
};

// Audio read from a WAV file as interleaved floats in -1..1 (PCM 8/16/24/32 bits and 32-bit float,
// plain or WAVE_FORMAT_EXTENSIBLE).
struct Audio {
  uint32_t rate = 0;
  uint32_t channels = 0;
  std::vector<float> samples;
  size_t frames() const { return channels ? samples.size() / channels : 0; }
};
Result<Audio> read_wav(const std::string& path);

// The amplitude of frequency `hz` in channel `ch` over frames [from, from + len) (Goertzel over a Hann
// window, so a strong tone elsewhere leaks little), in dBFS of a sine's peak (a full-scale sine is 0 dB).
// -200 for an empty span.
double tone_level_db(const Audio& a, uint32_t ch, double hz, size_t from, size_t len);

// A tone in channel `ch`: from its first to its last frame above `threshold_db` (peak dBFS over 1 ms);
// its frequency from zero crossings, its level, and gaps (runs of >= 2 ms below the threshold inside).
struct ToneReport {
  bool found = false;
  size_t onset = 0;  // frames
  size_t end = 0;
  double hz = 0;
  double level_db = -200;
  size_t gaps = 0;
  size_t longest_gap = 0;  // frames
};
ToneReport analyze_tone(const Audio& a, uint32_t ch, double threshold_db = -40);

// Ducking of a `music_hz` tone by a `chime_hz` tone in channel `ch`, from 20 ms Hann windows every 1 ms:
// where the chime starts and ends, the music's level before it, while it plays (after `settle_ms`) and
// after, and how long after the chime's onset the music first came within 1 dB of `expect_db` below
// its level before (and how long after the chime's end it came back within 1 dB).
struct DuckReport {
  bool chime_found = false;
  double onset_ms = 0, chime_end_ms = 0;
  double before_db = -200, during_db = -200, after_db = -200;
  double ducked_by_db = 0;  // during - before
  double reached_ms = -1;   // -1: never within 1 dB of expect_db
  double restored_ms = -1;  // -1: never back
};
DuckReport measure_ducking(const Audio& a, uint32_t ch, double music_hz, double chime_hz, double expect_db,
                           double settle_ms);

}  // namespace canopy::audio
