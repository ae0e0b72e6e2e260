// A VM's manifest entries ([vm.gpu], [vm.snd], [[audio.route]]) as its back-ends' command lines:
// canopy-gpu's and canopy-snd's flags (docs/gpu.md, docs/sound.md), the manifest's own args last.
#pragma once

#include <string>
#include <vector>

#include "canopy/config/manifest.h"

namespace canopy::hypervisor {

// canopy-gpu: --scanouts, one --scanout-mode per scanout, and with a compositor --vm and either
// --display-socket (listening) or nothing more (brokered: the device link's --display-fd is the
// DeviceBridge's to add).
std::vector<std::string> gpu_args(const config::VmConfig& c, const std::string& display_socket, bool brokered);
// canopy-snd: --vm, --controls, one --stream per stream (with its [[audio.route]] policy), one --jack
// per jack; written with canopy-snd's own printers (config/snd_options.h).
std::vector<std::string> snd_args(const config::Manifest& m, const config::VmConfig& c);

}  // namespace canopy::hypervisor
