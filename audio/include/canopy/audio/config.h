// canopy-snd's stream and jack options (docs/sound.md), as canopy-vmm writes them from the manifest:
//   --stream=name=media,dir=output,channels=2,rates=44100:48000,role=media,positions=FL:FR,
//            priority=10,duck-others,duck-db=-20,ramp-ms=50,exclusive,target=NODE
//   --jack=name=speaker,dir=output,device=speaker,connected=1
// Every key is checked; an unknown key or a bad value is an error naming it.
#pragma once

#include <string>

#include "canopy/audio/device.h"
#include "canopy/base/result.h"

namespace canopy::audio {

Result<StreamConfig> parse_stream_spec(const std::string& spec);
Result<JackConfig> parse_jack_spec(const std::string& spec);
// The inverse of parse_stream_spec (canopy-vmm writes its flags with it).
std::string stream_spec(const StreamConfig& s);

}  // namespace canopy::audio
