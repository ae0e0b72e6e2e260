#include "canopy/audio/wav.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "canopy/protocol/virtio_snd.h"

namespace canopy::audio {
namespace proto = ::canopy::protocol::virtio_snd;  // virtio-snd's wire format (canopy/protocol/virtio_snd.h)
}  // namespace canopy::audio

namespace canopy::audio {

void write_sample(uint8_t format, uint8_t* dst, double v) {
  v = std::clamp(v, -1.0, 1.0);
  using F = proto::Format;
  switch (F(format)) {
    case F::kU8: dst[0] = uint8_t(std::lround(v * 127.0) + 128); break;
    case F::kS16: {
      const int16_t s = int16_t(std::lround(v * 32767.0));
      std::memcpy(dst, &s, 2);
      break;
    }
    case F::kS24: {
      const int32_t s = int32_t(std::lround(v * 8388607.0));
      std::memcpy(dst, &s, 4);
      break;
    }
    case F::kS32: {
      const int32_t s = int32_t(std::llround(v * 2147483647.0));
      std::memcpy(dst, &s, 4);
      break;
    }
    case F::kFloat: {
      const float s = float(v);
      std::memcpy(dst, &s, 4);
      break;
    }
    default: break;
  }
}

namespace {
void put16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v), p[1] = uint8_t(v >> 8); }
void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
uint16_t get16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
uint32_t get32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

struct WavFormat {
  uint16_t tag = 1;  // 1 PCM, 3 IEEE float
  uint16_t bits = 16;
};
WavFormat wav_format(uint8_t virtio_format) {
  using F = proto::Format;
  switch (F(virtio_format)) {
    case F::kU8: return {1, 8};
    case F::kS16: return {1, 16};
    case F::kS24: return {1, 32};  // shifted to 32-bit PCM by write()
    case F::kS32: return {1, 32};
    case F::kFloat: return {3, 32};
    default: return {1, 16};
  }
}
}  // namespace

Result<std::unique_ptr<WavWriter>> WavWriter::create(const std::string& path, uint8_t virtio_format, uint32_t channels,
                                                     uint32_t rate) {
  if (!proto::format_bytes(virtio_format) || channels == 0 || channels > 64 || rate == 0)
    return make_error(Errc::kInvalidArgument, "wav: unsupported format");
  std::unique_ptr<WavWriter> w(new WavWriter());
  w->f_ = std::fopen(path.c_str(), "wb");
  if (!w->f_) return make_error(Errc::kIo, "wav: cannot create the file", errno);
  const WavFormat wf = wav_format(virtio_format);
  uint8_t h[44] = {};
  std::memcpy(h, "RIFF", 4);
  std::memcpy(h + 8, "WAVEfmt ", 8);
  put32(h + 16, 16);
  put16(h + 20, wf.tag);
  put16(h + 22, uint16_t(channels));
  put32(h + 24, rate);
  put32(h + 28, rate * channels * wf.bits / 8);
  put16(h + 32, uint16_t(channels * wf.bits / 8));
  put16(h + 34, wf.bits);
  std::memcpy(h + 36, "data", 4);
  if (fwrite(h, 1, sizeof h, w->f_) != sizeof h) return make_error(Errc::kIo, "wav: write failed", errno);
  w->s24_ = virtio_format == uint8_t(proto::Format::kS24);
  return w;
}

WavWriter::~WavWriter() {
  if (f_) {
    (void)flush();
    std::fclose(f_);
  }
}

Status WavWriter::write(const void* data, size_t bytes) {
  if (s24_) {
    // S24 (the value in the low 24 bits of 32) is written as 32-bit PCM: shifted to the top.
    std::vector<uint8_t> t(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + bytes);
    for (size_t i = 0; i + 4 <= t.size(); i += 4) {
      uint32_t v;
      std::memcpy(&v, &t[i], 4);
      v <<= 8;
      std::memcpy(&t[i], &v, 4);
    }
    if (fwrite(t.data(), 1, t.size(), f_) != t.size()) return make_error(Errc::kIo, "wav: write failed", errno);
  } else if (fwrite(data, 1, bytes, f_) != bytes) {
    return make_error(Errc::kIo, "wav: write failed", errno);
  }
  data_bytes_ += bytes;
  return {};
}

Status WavWriter::flush() {
  const long pos = std::ftell(f_);
  uint8_t b[4];
  const uint32_t data = uint32_t(std::min<uint64_t>(data_bytes_, 0xffffffffu - 36));
  put32(b, 36 + data);
  std::fseek(f_, 4, SEEK_SET);
  std::fwrite(b, 1, 4, f_);
  put32(b, data);
  std::fseek(f_, 40, SEEK_SET);
  std::fwrite(b, 1, 4, f_);
  std::fseek(f_, pos, SEEK_SET);
  if (std::fflush(f_) != 0) return make_error(Errc::kIo, "wav: flush failed", errno);
  return {};
}

Result<Audio> read_wav(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return make_error(Errc::kIo, "wav: cannot open the file", errno);
  std::vector<uint8_t> b;
  uint8_t chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) b.insert(b.end(), chunk, chunk + n);
  std::fclose(f);
  if (b.size() < 12 || std::memcmp(b.data(), "RIFF", 4) != 0 || std::memcmp(b.data() + 8, "WAVE", 4) != 0)
    return make_error(Errc::kInvalidArgument, "wav: not a RIFF/WAVE file");
  Audio a;
  uint16_t tag = 0, bits = 0;
  size_t pos = 12;
  const uint8_t* data = nullptr;
  size_t data_len = 0;
  while (pos + 8 <= b.size()) {
    const uint32_t len = get32(&b[pos + 4]);
    const size_t body = pos + 8;
    const size_t avail = std::min<size_t>(len, b.size() - body);
    if (!std::memcmp(&b[pos], "fmt ", 4) && avail >= 16) {
      tag = get16(&b[body]);
      a.channels = get16(&b[body + 2]);
      a.rate = get32(&b[body + 4]);
      bits = get16(&b[body + 14]);
      if (tag == 0xfffe && avail >= 26) tag = get16(&b[body + 24]);  // WAVE_FORMAT_EXTENSIBLE: the sub-format
    } else if (!std::memcmp(&b[pos], "data", 4)) {
      data = &b[body];
      // pw-record (libsndfile) may leave the size at its maximum while recording: take what is there.
      data_len = (len == 0 || len == 0xffffffffu) ? b.size() - body : avail;
      break;
    }
    pos = body + len + (len & 1);
  }
  if (!data || !a.channels || !a.rate) return make_error(Errc::kInvalidArgument, "wav: no fmt or data chunk");
  const size_t sb = bits / 8;
  if (!((tag == 1 && (bits == 8 || bits == 16 || bits == 24 || bits == 32)) || (tag == 3 && bits == 32)))
    return make_error(Errc::kUnsupported, "wav: only 8/16/24/32-bit PCM and 32-bit float");
  const size_t count = data_len / sb;
  a.samples.resize(count - count % a.channels);
  for (size_t i = 0; i < a.samples.size(); ++i) {
    const uint8_t* p = data + i * sb;
    float v = 0;
    if (tag == 3) {
      std::memcpy(&v, p, 4);
    } else if (bits == 8) {
      v = (float(p[0]) - 128.0f) / 128.0f;
    } else if (bits == 16) {
      v = float(int16_t(get16(p))) / 32768.0f;
    } else if (bits == 24) {
      v = float(int32_t(uint32_t(p[0]) << 8 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 24) >> 8) / 8388608.0f;
    } else {
      v = float(double(int32_t(get32(p))) / 2147483648.0);
    }
    a.samples[i] = v;
  }
  return a;
}

double tone_level_db(const Audio& a, uint32_t ch, double hz, size_t from, size_t len) {
  if (ch >= a.channels || from >= a.frames()) return -200;
  len = std::min(len, a.frames() - from);
  if (len == 0) return -200;
  const double w = 2.0 * M_PI * hz / a.rate;
  const double coeff = 2.0 * std::cos(w);
  double s1 = 0, s2 = 0, wsum = 0;
  for (size_t i = 0; i < len; ++i) {
    const double hann = len > 1 ? 0.5 - 0.5 * std::cos(2.0 * M_PI * double(i) / double(len - 1)) : 1.0;
    wsum += hann;
    const double s = hann * a.samples[(from + i) * a.channels + ch] + coeff * s1 - s2;
    s2 = s1;
    s1 = s;
  }
  const double power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  const double amp = wsum > 0 ? 2.0 * std::sqrt(std::max(power, 0.0)) / wsum : 0;
  return amp > 0 ? 20.0 * std::log10(amp) : -200;
}

ToneReport analyze_tone(const Audio& a, uint32_t ch, double threshold_db) {
  ToneReport r;
  if (ch >= a.channels || !a.rate) return r;
  const size_t win = std::max<size_t>(1, a.rate / 1000);  // 1 ms
  const size_t nwin = a.frames() / win;
  const double thr = std::pow(10.0, threshold_db / 20.0);
  std::vector<uint8_t> loud(nwin);
  for (size_t w = 0; w < nwin; ++w) {
    float peak = 0;
    for (size_t i = 0; i < win; ++i) peak = std::max(peak, std::abs(a.samples[(w * win + i) * a.channels + ch]));
    loud[w] = peak >= thr;
  }
  size_t first = nwin, last = 0;
  for (size_t w = 0; w < nwin; ++w)
    if (loud[w]) first = std::min(first, w), last = w;
  if (first == nwin) return r;
  r.found = true;
  // Sample-exact ends: the first / last sample above the threshold in the edge windows.
  r.onset = first * win;
  while (r.onset < (first + 1) * win && std::abs(a.samples[r.onset * a.channels + ch]) < thr) ++r.onset;
  r.end = (last + 1) * win;
  while (r.end > last * win && std::abs(a.samples[(r.end - 1) * a.channels + ch]) < thr) --r.end;
  size_t run = 0, gap_frames = 0;
  for (size_t w = first; w <= last; ++w) {
    if (!loud[w]) {
      ++run;
      continue;
    }
    if (run >= 2) {
      ++r.gaps;
      r.longest_gap = std::max(r.longest_gap, run * win);
      gap_frames += run * win;
    }
    run = 0;
  }
  // Frequency from zero crossings over the tone, level from its RMS (a sine's peak is RMS * sqrt 2).
  size_t crossings = 0;
  double sumsq = 0;
  for (size_t i = r.onset; i < r.end; ++i) {
    const float v = a.samples[i * a.channels + ch];
    sumsq += double(v) * v;
    if (i > r.onset) {
      const float p = a.samples[(i - 1) * a.channels + ch];
      if ((p < 0 && v >= 0) || (p >= 0 && v < 0)) ++crossings;
    }
  }
  // Over the time the tone sounds: a gap (samples a sink lost) has no crossings and would lower the pitch.
  const size_t span = r.end - r.onset;
  const double secs = double(span > gap_frames ? span - gap_frames : span) / a.rate;
  r.hz = secs > 0 ? crossings / 2.0 / secs : 0;
  const double rms = std::sqrt(sumsq / double(std::max<size_t>(1, r.end - r.onset)));
  r.level_db = rms > 0 ? 20.0 * std::log10(rms * std::sqrt(2.0)) : -200;
  return r;
}

DuckReport measure_ducking(const Audio& a, uint32_t ch, double music_hz, double chime_hz, double expect_db,
                           double settle_ms) {
  DuckReport r;
  if (!a.rate || ch >= a.channels) return r;
  const size_t win = a.rate / 50, hop = a.rate / 1000;  // 20 ms windows every 1 ms
  if (a.frames() < win) return r;
  const size_t n = (a.frames() - win) / hop + 1;
  std::vector<double> music(n), chime(n);
  double chime_peak = -200;
  for (size_t i = 0; i < n; ++i) {
    music[i] = tone_level_db(a, ch, music_hz, i * hop, win);
    chime[i] = tone_level_db(a, ch, chime_hz, i * hop, win);
    chime_peak = std::max(chime_peak, chime[i]);
  }
  if (chime_peak < -60) return r;
  // The chime is there where its level is within 6 dB of its peak: a Hann window half covered by a
  // tone sees half its amplitude, so the first and last such windows are centred on its edges.
  const double thr = chime_peak - 6;
  // The first chime: its first window above the threshold to the last one before it falls below for
  // more than 50 ms (a later chime is not this one).
  size_t first = n, last = 0;
  for (size_t i = 0; i < n; ++i) {
    if (chime[i] < thr) {
      if (first < n && i > last + 50) break;
      continue;
    }
    if (first == n) first = i;
    last = i;
  }
  r.chime_found = true;
  const double ms_per_hop = 1000.0 * double(hop) / a.rate;
  const double centre = 10.0;
  r.onset_ms = first * ms_per_hop + centre;
  r.chime_end_ms = last * ms_per_hop + centre;
  auto median = [&](double from_ms, double to_ms) {
    std::vector<double> v;
    for (size_t i = 0; i < n; ++i) {
      const double t = i * ms_per_hop + centre;
      if (t >= from_ms && t <= to_ms) v.push_back(music[i]);
    }
    if (v.empty()) return -200.0;
    std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(v.size() / 2), v.end());
    return v[v.size() / 2];
  };
  r.before_db = median(std::max(0.0, r.onset_ms - 300), r.onset_ms - 15);
  r.during_db = median(r.onset_ms + settle_ms, r.chime_end_ms - 15);
  r.after_db = median(r.chime_end_ms + settle_ms + 15, r.chime_end_ms + settle_ms + 300);
  r.ducked_by_db = r.during_db - r.before_db;
  for (size_t i = 0; i < n; ++i) {
    const double t = i * ms_per_hop + centre;
    if (r.reached_ms < 0 && t >= r.onset_ms && t <= r.chime_end_ms && music[i] <= r.before_db + expect_db + 1.0)
      r.reached_ms = t - r.onset_ms;
    if (r.restored_ms < 0 && t >= r.chime_end_ms && music[i] >= r.before_db - 1.0) r.restored_ms = t - r.chime_end_ms;
  }
  return r;
}

}  // namespace canopy::audio
