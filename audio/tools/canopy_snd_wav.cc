// canopy-snd-wav: makes test tones and measures recordings (canopy-snd's tests, benchmarks, demo).
//
//   canopy-snd-wav tone OUT.wav --hz 1000 --ms 1000 [--rate 48000] [--channels 2] [--level-db -6]
//                  [--lead-ms 0] [--tail-ms 0] [--format s16|s32|float]
//   canopy-snd-wav analyze FILE [--channel 0] [--threshold-db -40]
//       found=1 onset_ms=.. duration_ms=.. hz=.. level_db=.. gaps=.. longest_gap_ms=.. frames=.. rate=..
//   canopy-snd-wav level FILE --hz H --from-ms A --to-ms B [--channel 0]
//   canopy-snd-wav duck FILE --music-hz M --chime-hz C --expect-db -20 [--settle-ms 80] [--channel 0]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "canopy/audio/wav.h"
#include "canopy/protocol/virtio_snd.h"

namespace canopy::audio {
namespace proto = ::canopy::protocol::virtio_snd;  // virtio-snd's wire format (canopy/protocol/virtio_snd.h)
}  // namespace canopy::audio

using namespace canopy;
using namespace canopy::audio;

namespace {

int usage() {
  std::fprintf(
      stderr,
      "usage: canopy-snd-wav tone OUT.wav --hz H --ms MS [--rate R] [--channels C] [--level-db L]\n"
      "                      [--lead-ms A] [--tail-ms B] [--format s16|s32|float]\n"
      "       canopy-snd-wav analyze FILE [--channel C] [--threshold-db T]\n"
      "       canopy-snd-wav level FILE --hz H --from-ms A --to-ms B [--channel C]\n"
      "       canopy-snd-wav duck FILE --music-hz M --chime-hz C --expect-db D [--settle-ms S] [--channel C]\n");
  return 2;
}

bool options(int argc, char** argv, int from, std::map<std::string, std::string>& out) {
  for (int i = from; i < argc; i += 2) {
    if (std::strncmp(argv[i], "--", 2) != 0 || i + 1 >= argc) return false;
    out[argv[i] + 2] = argv[i + 1];
  }
  return true;
}

double num(const std::map<std::string, std::string>& o, const char* k, double def) {
  auto it = o.find(k);
  return it == o.end() ? def : std::atof(it->second.c_str());
}

Result<Audio> load(const char* path) {
  auto a = read_wav(path);
  if (!a.ok()) std::fprintf(stderr, "canopy-snd-wav: %s: %s\n", path, a.error().what);
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string cmd = argv[1];
  std::map<std::string, std::string> o;
  if (!options(argc, argv, 3, o)) return usage();
  if (cmd == "tone") {
    const uint32_t rate = uint32_t(num(o, "rate", 48000)), ch = uint32_t(num(o, "channels", 2));
    const double hz = num(o, "hz", 1000), ms = num(o, "ms", 1000), level = num(o, "level-db", -6);
    const double lead = num(o, "lead-ms", 0), tail = num(o, "tail-ms", 0);
    const std::string f = o.count("format") ? o["format"] : "s16";
    const uint8_t fmt = f == "float" ? uint8_t(proto::Format::kFloat)
                        : f == "s32" ? uint8_t(proto::Format::kS32)
                                     : uint8_t(proto::Format::kS16);
    auto w = WavWriter::create(argv[2], fmt, ch, rate);
    if (!w.ok()) {
      std::fprintf(stderr, "canopy-snd-wav: %s: %s\n", argv[2], w.error().what);
      return 1;
    }
    const size_t lead_f = size_t(lead * rate / 1000), tone_f = size_t(ms * rate / 1000),
                 tail_f = size_t(tail * rate / 1000);
    const double amp = std::pow(10.0, level / 20.0);
    const uint32_t sb = proto::format_bytes(fmt);
    std::vector<uint8_t> frame(size_t(sb) * ch);
    for (size_t i = 0; i < lead_f + tone_f + tail_f; ++i) {
      const bool on = i >= lead_f && i < lead_f + tone_f;
      const double v = on ? amp * std::sin(2.0 * M_PI * hz * double(i - lead_f) / rate) : 0.0;
      for (uint32_t c = 0; c < ch; ++c) write_sample(fmt, frame.data() + size_t(c) * sb, v);
      if (!(*w)->write(frame.data(), frame.size()).ok()) return 1;
    }
    return (*w)->flush().ok() ? 0 : 1;
  }
  auto a = load(argv[2]);
  if (!a.ok()) return 1;
  const uint32_t ch = uint32_t(num(o, "channel", 0));
  const double ms_per_frame = 1000.0 / a->rate;
  if (cmd == "analyze") {
    const ToneReport r = analyze_tone(*a, ch, num(o, "threshold-db", -40));
    std::printf(
        "found=%d onset_ms=%.2f duration_ms=%.2f hz=%.1f level_db=%.2f gaps=%zu longest_gap_ms=%.1f frames=%zu "
        "rate=%u\n",
        r.found ? 1 : 0, r.onset * ms_per_frame, double(r.end - r.onset) * ms_per_frame, r.hz, r.level_db, r.gaps,
        r.longest_gap * ms_per_frame, a->frames(), a->rate);
    return 0;
  }
  if (cmd == "level") {
    const size_t from = size_t(num(o, "from-ms", 0) * a->rate / 1000), to = size_t(num(o, "to-ms", 0) * a->rate / 1000);
    std::printf("level_db=%.2f\n", tone_level_db(*a, ch, num(o, "hz", 1000), from, to > from ? to - from : 0));
    return 0;
  }
  if (cmd == "duck") {
    const DuckReport r = measure_ducking(*a, ch, num(o, "music-hz", 400), num(o, "chime-hz", 1000),
                                         num(o, "expect-db", -20), num(o, "settle-ms", 80));
    std::printf(
        "chime=%d onset_ms=%.1f chime_end_ms=%.1f before_db=%.2f during_db=%.2f after_db=%.2f ducked_by_db=%.2f "
        "reached_ms=%.1f restored_ms=%.1f\n",
        r.chime_found ? 1 : 0, r.onset_ms, r.chime_end_ms, r.before_db, r.during_db, r.after_db, r.ducked_by_db,
        r.reached_ms, r.restored_ms);
    return 0;
  }
  return usage();
}
