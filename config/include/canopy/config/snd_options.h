// canopy-snd's stream and jack options (docs/sound.md): the types, their one parser and their one
// printer. canopy-snd parses its flags with these; canopy-vmm writes them from the manifest with these.
//   --stream=name=media,dir=output,channels=2,rates=44100:48000,role=media,positions=FL:FR,
//            priority=10,duck-others,duck-db=-20,ramp-ms=50,exclusive,target=NODE
//   --jack=name=speaker,dir=output,device=speaker,connected=1
// Every key is checked; an unknown key or a bad value is an error naming it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/protocol/virtio_snd.h"

namespace canopy::config {

// A gain at or below this is silence (dB); the deepest duck-db.
inline constexpr double kMuteDb = -96.0;

// Cross-VM policy of one stream (docs/audio-policy.md).
struct StreamPolicy {
  uint32_t priority = 50;    // 0..100, higher wins
  bool duck_others = false;  // while this stream runs, lower-priority streams are attenuated ...
  double duck_db = -20.0;    // ... by this much (dB, < 0) ...
  uint32_t ramp_ms = 50;     // ... over this ramp (and restored over the same ramp)
  bool exclusive = false;    // while this stream runs, lower-priority streams are muted
};

struct StreamConfig {
  std::string name;
  protocol::virtio_snd::Direction direction = protocol::virtio_snd::Direction::kOutput;
  uint8_t channels_min = 1;
  uint8_t channels_max = 2;
  uint64_t formats = 0;            // virtio format bits; 0: the device's default formats
  uint64_t rates = 0;              // virtio rate bits; 0: 44100 and 48000
  std::vector<uint8_t> positions;  // channel map (channels_max entries); empty: the usual layout
  std::string role = "media";      // media.role of the host stream
  std::string target;              // host sink / source node name; empty: the default one
  StreamPolicy policy;
};

struct JackConfig {
  std::string name;
  protocol::virtio_snd::Direction direction = protocol::virtio_snd::Direction::kOutput;
  uint32_t hda_device = protocol::virtio_snd::kHdaDevLineOut;  // HDA default device (Line Out, Speaker ...)
  bool connected = true;
};

Result<StreamConfig> parse_stream_spec(const std::string& spec);
Result<JackConfig> parse_jack_spec(const std::string& spec);
// The inverses: parse(print(x)) == x.
std::string stream_spec(const StreamConfig& s);
std::string jack_spec(const JackConfig& j);

}  // namespace canopy::config
