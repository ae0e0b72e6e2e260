// Host ends of canopy-snd's streams (host_backend.h's HostBackend):
//   PipeWire  one pw_stream per virtio stream (node properties carry the VM, the stream and the manifest's
//             media.role; node.latency asks for a quantum of one guest period); PipeWire converts format,
//             rate and channel layout to the graph's.
//   null      no audio system: a timer takes playback at the stream's rate (optionally recorded to a WAV
//             file per stream: the content the guest delivered) and gives capture a tone (unbroken:
//             frames the guest had no buffer for are not skipped) or silence. For tests and machines
//             without audio.
// Both run on the device's event loop thread (their descriptors come from watches()).
#pragma once

#include <memory>
#include <string>

#include "canopy/audio/host_backend.h"

namespace canopy::audio {

struct NullHostOptions {
  // Playback of stream S of VM V is written to WAV_DIR/V-S.wav ("" = discarded): exactly the frames the
  // guest delivered, in order, with no silence where it was late (those are underruns in the stats).
  std::string wav_dir;
  double capture_tone_hz = 0;  // capture streams hear this sine at -6 dBFS (0 = silence)
  std::string vm = "vm";
};
Result<std::unique_ptr<HostBackend>> make_null_backend(const NullHostOptions& o);

struct PipeWireHostOptions {
  std::string vm = "vm";
  bool force_quantum = false;  // also force the graph's quantum to one period (node.force-quantum)
  int connect_timeout_ms = 3000;
  // As NullHostOptions::wav_dir: each playback stream's content as the guest delivered it, before the
  // silence PipeWire gets where the guest was late (a test's check of content whatever the load).
  std::string wav_dir;
  // A connection to the daemon made for this process (canopy-vmm's, for a back-end under another uid),
  // taken over; -1: connect as usual.
  int fd = -1;
};
// Connects to the PipeWire daemon (PIPEWIRE_REMOTE / XDG_RUNTIME_DIR as usual, or through
// PipeWireHostOptions::fd); an error when none answers.
Result<std::unique_ptr<HostBackend>> make_pipewire_backend(const PipeWireHostOptions& o);

}  // namespace canopy::audio
