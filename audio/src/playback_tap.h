// PlaybackTap: what a guest delivered on one playback stream, recorded to a WAV file as it was taken by
// the host (canopy-snd --wav-dir, for either host). Content, not time: the frames in the order the guest
// wrote them, whole frames only, with nothing where the guest was late (the device counts those as
// underruns and underrun_frames), so a test can check a guest's audio sample for sample whatever the
// machine's load. One file per stream, DIR/VM-STREAM.wav, continued across PREPAREs while the sample
// format stays; a new format starts a new file (VM-STREAM-2.wav, -3 ...).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "canopy/audio/device.h"
#include "canopy/audio/wav.h"

namespace canopy::audio {

class PlaybackTap {
 public:
  // dir "" records nothing.
  PlaybackTap(std::string dir, std::string vm, std::string stream)
      : dir_(std::move(dir)), vm_(std::move(vm)), stream_(std::move(stream)) {}
  // The stream's (new) parameters; opens the next file when the format changed (a file that cannot be
  // made is logged, and nothing is recorded: never an error for the guest).
  Status prepare(const PcmParams& p);
  // Bytes the host took from the guest, in order (they may end inside a frame; the rest comes next).
  void taken(const uint8_t* data, size_t bytes);
  // The file's header updated to what it holds (at STOP: readable while the stream rests).
  void flush();

 private:
  std::string dir_, vm_, stream_;
  PcmParams p_;
  std::unique_ptr<WavWriter> wav_;
  int files_ = 0;
  std::vector<uint8_t> partial_;  // the start of a frame, waiting for its rest
};

}  // namespace canopy::audio
