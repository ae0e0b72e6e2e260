#include "canopy/audio/wav.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>

#include "canopy/protocol/virtio_snd.h"

namespace canopy::audio {
namespace proto = ::canopy::protocol::virtio_snd;  // virtio-snd's wire format (canopy/protocol/virtio_snd.h)
}  // namespace canopy::audio

namespace canopy::audio {
namespace {

std::string temp_path(const char* name) {
  return std::string("/tmp/canopy-wav-test-") + std::to_string(getpid()) + name;
}

void write_tone(const std::string& path, uint8_t fmt, double hz, double db, size_t lead, size_t len, size_t gap_at = 0,
                size_t gap_len = 0) {
  auto w = WavWriter::create(path, fmt, 2, 48000);
  ASSERT_TRUE(w.ok());
  const uint32_t sb = proto::format_bytes(fmt);
  std::vector<uint8_t> frame(2 * sb);
  for (size_t i = 0; i < lead + len + 4800; ++i) {
    const bool on = i >= lead && i < lead + len && !(gap_len && i >= gap_at && i < gap_at + gap_len);
    const double v = on ? std::pow(10.0, db / 20) * std::sin(2 * M_PI * hz * double(i) / 48000) : 0;
    write_sample(fmt, frame.data(), v);
    write_sample(fmt, frame.data() + sb, v);
    ASSERT_TRUE((*w)->write(frame.data(), frame.size()).ok());
  }
}

TEST(Wav, AToneIsFoundWithItsOnsetLengthFrequencyAndLevelInEveryFormat) {
  for (auto f :
       {proto::Format::kS16, proto::Format::kS24, proto::Format::kS32, proto::Format::kFloat, proto::Format::kU8}) {
    SCOPED_TRACE(proto::format_name(uint8_t(f)));
    const std::string p = temp_path("tone.wav");
    write_tone(p, uint8_t(f), 1000, -6, 4800, 48000);
    auto a = read_wav(p);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a->rate, 48000u);
    EXPECT_EQ(a->channels, 2u);
    const ToneReport r = analyze_tone(*a, 1);
    ASSERT_TRUE(r.found);
    EXPECT_NEAR(double(r.onset), 4800, 2);
    EXPECT_NEAR(double(r.end - r.onset), 48000, 30);
    EXPECT_NEAR(r.hz, 1000, 2);
    EXPECT_NEAR(r.level_db, -6, f == proto::Format::kU8 ? 0.5 : 0.05);
    EXPECT_EQ(r.gaps, 0u);
    EXPECT_NEAR(tone_level_db(*a, 0, 1000, 9600, 960), -6, 0.1);
    EXPECT_LT(tone_level_db(*a, 0, 400, 9600, 960), -40);
    unlink(p.c_str());
  }
}

TEST(Wav, AGapInsideAToneIsCounted) {
  const std::string p = temp_path("gap.wav");
  write_tone(p, uint8_t(proto::Format::kS16), 1000, -6, 0, 48000, 24000, 480);
  auto a = read_wav(p);
  ASSERT_TRUE(a.ok());
  const ToneReport r = analyze_tone(*a, 0);
  EXPECT_EQ(r.gaps, 1u);
  EXPECT_GE(r.longest_gap, 384u);
  // The pitch is measured where the tone sounds: 10 ms lost in a second do not make it 990 Hz (a sink
  // that missed a period heard the right tone; the gap is reported as a gap).
  EXPECT_NEAR(r.hz, 1000.0, 2.0);
  unlink(p.c_str());
}

TEST(Wav, DuckingIsMeasuredFromTheSignal) {
  // 400 Hz music at -12 dB; a 1000 Hz chime from 0.5 s to 1.0 s; the music ramps down 20 dB over 30 ms
  // from the chime's onset and back over 30 ms after it ends.
  const std::string p = temp_path("duck.wav");
  {
    auto w = WavWriter::create(p, uint8_t(proto::Format::kFloat), 1, 48000);
    ASSERT_TRUE(w.ok());
    for (size_t i = 0; i < 72000; ++i) {
      double duck = 0;
      const double t = i / 48000.0;
      if (t >= 0.5 && t < 1.0) duck = -20 * std::min(1.0, (t - 0.5) / 0.03);
      else if (t >= 1.0) duck = -20 * std::max(0.0, 1 - (t - 1.0) / 0.03);
      float v = float(std::pow(10.0, (-12 + duck) / 20) * std::sin(2 * M_PI * 400 * t));
      if (t >= 0.5 && t < 1.0) v += float(0.5 * std::sin(2 * M_PI * 1000 * t));
      ASSERT_TRUE((*w)->write(&v, 4).ok());
    }
  }
  auto a = read_wav(p);
  ASSERT_TRUE(a.ok());
  const DuckReport r = measure_ducking(*a, 0, 400, 1000, -20, 60);
  ASSERT_TRUE(r.chime_found);
  EXPECT_NEAR(r.onset_ms, 500, 3);
  EXPECT_NEAR(r.chime_end_ms, 1000, 3);
  EXPECT_NEAR(r.before_db, -12, 0.2);
  EXPECT_NEAR(r.ducked_by_db, -20, 0.5);
  EXPECT_GT(r.reached_ms, 15);
  EXPECT_LT(r.reached_ms, 45);
  EXPECT_GE(r.restored_ms, 0);
  EXPECT_NEAR(r.after_db, -12, 0.2);
  unlink(p.c_str());
}

TEST(Wav, ReadingRefusesWhatIsNotAWavFile) {
  const std::string p = temp_path("junk.wav");
  FILE* f = fopen(p.c_str(), "w");
  fputs("RIFF....WAVEjunk", f);
  fclose(f);
  EXPECT_FALSE(read_wav(p).ok());
  EXPECT_FALSE(read_wav(p + ".missing").ok());
  unlink(p.c_str());
}

}  // namespace
}  // namespace canopy::audio
