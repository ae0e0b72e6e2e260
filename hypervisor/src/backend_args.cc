// A VM's manifest entries as its back-ends' command lines (backend_args.h).
#include "backend_args.h"

#include "canopy/config/snd_options.h"
#include "canopy/protocol/virtio_snd.h"

namespace canopy::hypervisor {

using namespace config;  // NOLINT(google-build-using-namespace): the manifest's vocabulary

std::vector<std::string> gpu_args(const VmConfig& c, const std::string& display_socket, bool brokered) {
  std::vector<std::string> args{"--scanouts=" + std::to_string(c.gpu->scanouts.size())};
  for (size_t k = 0; k < c.gpu->scanouts.size(); ++k) {
    const auto& s = c.gpu->scanouts[k];
    args.push_back("--scanout-mode=" + std::to_string(k) + ":" + std::to_string(s.width) + "x" +
                   std::to_string(s.height) + "@" + std::to_string(s.refresh_hz));
  }
  if (brokered) {
    args.push_back("--vm=" + c.name);
  } else if (!display_socket.empty()) {
    args.push_back("--display-socket=" + display_socket);
    args.push_back("--vm=" + c.name);
  }
  args.insert(args.end(), c.gpu->args.begin(), c.gpu->args.end());
  return args;
}

// canopy-snd's flags for a VM's [vm.snd] (docs/sound.md): --vm, --controls, one --stream per stream with its channel
// map and the policy of its [[audio.route]] (priority, ducking, exclusivity, the host sink), one --jack
// per jack; the manifest's own args come last.
std::vector<std::string> snd_args(const Manifest& m, const VmConfig& c) {
  // --controls: canopy-vmm's front-end sizes the config space for the controls field (16 bytes).
  std::vector<std::string> args{"--vm=" + c.name, "--controls"};
  for (const SndStream& s : c.snd->streams) {
    // The manifest's stream as canopy-snd's own configuration, written by its one printer.
    namespace snd = protocol::virtio_snd;
    StreamConfig sc;
    sc.name = s.name;
    sc.direction = s.direction == StreamDirection::kOutput ? snd::Direction::kOutput : snd::Direction::kInput;
    sc.channels_max = uint8_t(s.channels);
    for (uint32_t hz : s.rates) sc.rates |= 1ull << snd::rate_bit(hz);  // checked by the loader
    sc.role = to_string(s.role);
    for (const std::string& p : s.positions) sc.positions.push_back(uint8_t(snd::position_from_name(p.c_str())));
    for (const AudioRoute& r : m.audio_routes) {
      if (r.vm != c.name || r.stream != s.name) continue;
      sc.policy = {r.priority, r.duck_others, r.duck_db, r.ramp_ms, r.exclusive};
      if (r.sink != "default") sc.target = r.sink;
      break;
    }
    args.push_back("--stream=" + stream_spec(sc));
  }
  for (const SndJack& j : c.snd->jacks) {
    JackConfig jc;
    jc.name = j.name;
    jc.direction = j.direction == StreamDirection::kOutput ? protocol::virtio_snd::Direction::kOutput
                                                           : protocol::virtio_snd::Direction::kInput;
    switch (j.device) {
      case JackDevice::kLineOut: jc.hda_device = protocol::virtio_snd::kHdaDevLineOut; break;
      case JackDevice::kSpeaker: jc.hda_device = protocol::virtio_snd::kHdaDevSpeaker; break;
      case JackDevice::kHeadphone: jc.hda_device = protocol::virtio_snd::kHdaDevHpOut; break;
      case JackDevice::kLineIn: jc.hda_device = protocol::virtio_snd::kHdaDevLineIn; break;
      case JackDevice::kMic: jc.hda_device = protocol::virtio_snd::kHdaDevMicIn; break;
    }
    jc.connected = j.connected;
    args.push_back("--jack=" + jack_spec(jc));
  }
  args.insert(args.end(), c.snd->args.begin(), c.snd->args.end());
  return args;
}

}  // namespace canopy::hypervisor
