// The VM manifest: which VMs canopy-vmm runs, their devices, the displays, the layout of guest scanouts on
// those displays and the audio routing. Loaded from TOML; the schema is documented in docs/manifest.md.
//
// The loader checks everything it can before anything starts: types, ranges, unknown keys (typos must not
// pass silently), cross references (layout -> display/VM/scanout, audio route -> VM/stream, start_after ->
// VM) and boot-order cycles. It collects every error (up to kMaxErrors), each naming file, line, column and
// key path, e.g.  cockpit.toml:12:3: vm[1].memory: "12Q" is not a size (use e.g. 512M, 2G)
//
// Threading: the functions are pure (no shared state); call them from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "canopy/config/criticality.h"

namespace canopy::config {

// Documented caps (docs/manifest.md "Limits").
inline constexpr size_t kMaxManifestBytes = 1 << 20;
inline constexpr size_t kMaxErrors = 100;
inline constexpr size_t kMaxVms = 16;
inline constexpr size_t kMaxDisplays = 8;
inline constexpr size_t kMaxLayouts = 64;
inline constexpr size_t kMaxScanouts = 16;
inline constexpr size_t kMaxStreams = 32;
inline constexpr size_t kMaxJacks = 16;
inline constexpr size_t kMaxRates = 16;
inline constexpr size_t kMaxAudioRoutes = 64;
inline constexpr size_t kMaxArgs = 64;
inline constexpr size_t kMaxStartAfter = 16;
inline constexpr size_t kMaxStringBytes = 4096;
inline constexpr uint64_t kMinVmMemory = 16ull << 20;
inline constexpr uint64_t kMaxVmMemory = 64ull << 30;
inline constexpr uint32_t kMaxVcpus = 64;
inline constexpr uint32_t kMaxDimension = 8192;
// A virtio-gpu scanout's mode must fit an EDID detailed timing (canopy-gpu's limit).
inline constexpr uint32_t kMaxStaleMs = 60000;
inline constexpr uint32_t kMaxScanoutDimension = 4095;
inline constexpr uint32_t kMaxRefreshHz = 240;
inline constexpr size_t kMaxDevices = 16;  // [[vm.device]] entries per VM
inline constexpr uint32_t kMaxWatchdogMs = 600000;

enum class Backend { kKvm, kPartition, kAuto };
enum class RestartPolicy { kNever, kOnFailure, kAlways };
enum class StreamDirection { kOutput, kInput };
enum class AudioRole { kChime, kAlert, kPhone, kNavigation, kVoice, kMedia, kSystem };
enum class DisplayOutput { kKms, kWindow, kHeadless };

const char* to_string(Backend b);
const char* to_string(RestartPolicy r);
const char* to_string(StreamDirection d);
const char* to_string(AudioRole r);
const char* to_string(DisplayOutput o);

struct Scanout {
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t refresh_hz = 60;
};

struct GpuConfig {
  std::vector<Scanout> scanouts;
  std::string backend = "canopy-gpu";  // backend program (PATH lookup or a path)
  std::vector<std::string> args;       // extra back-end arguments
};

struct SndStream {
  std::string name;
  StreamDirection direction = StreamDirection::kOutput;
  uint32_t channels = 2;
  std::vector<uint32_t> rates;
  AudioRole role = AudioRole::kMedia;
  std::vector<std::string> positions;  // channel map: one virtio position name per channel ("FL", "FR" ...)
};

enum class JackDevice { kLineOut, kSpeaker, kHeadphone, kLineIn, kMic };
const char* to_string(JackDevice d);

struct SndJack {
  std::string name;
  StreamDirection direction = StreamDirection::kOutput;
  JackDevice device = JackDevice::kLineOut;
  bool connected = true;
};

struct SndConfig {
  std::vector<SndStream> streams;
  std::vector<SndJack> jacks;
  std::string backend = "canopy-snd";
  std::vector<std::string> args;
};

// Any other vhost-user device ([[vm.device]]): its virtio type and the back-end program to start.
struct DeviceConfig {
  std::string type;        // virtio device name: "rng", "console", "input", "i2c", "gpio", ...
  uint32_t virtio_id = 0;  // virtio 1.2 §5 device id for `type`
  std::string backend;     // back-end program (PATH lookup or a path relative to the manifest)
  std::vector<std::string> args;
};

// A size as the manifest writes it: digits with an optional binary suffix K, M or G ("512M", "2G",
// "33554432"); nullopt when it is not one.
std::optional<uint64_t> parse_size(std::string_view text);

// The virtio device id of a type name usable in [[vm.device]]; 0 when unknown.
uint32_t virtio_device_id(std::string_view type);

struct VmConfig {
  std::string name;
  Backend backend = Backend::kKvm;
  uint64_t memory_bytes = 0;
  uint32_t vcpus = 1;
  Criticality criticality = Criticality::kNormal;
  RestartPolicy restart = RestartPolicy::kOnFailure;
  uint32_t max_restarts = 3;
  std::string kernel;  // kvm / auto
  std::string initrd;
  std::string cmdline;
  std::string app;  // partition / auto
  std::vector<std::string> args;
  std::vector<std::string> start_after;
  uint32_t watchdog_ms = 0;  // heartbeat timeout; 0 = no watchdog
  std::optional<GpuConfig> gpu;
  std::optional<SndConfig> snd;
  std::vector<DeviceConfig> devices;
};

struct DisplayConfig {
  std::string name;
  uint32_t width = 0;
  uint32_t height = 0;
  uint32_t refresh_hz = 60;
  DisplayOutput output = DisplayOutput::kKms;
  // Unset: the highest criticality among the VMs laid out on it (the compositor's default).
  std::optional<Criticality> criticality;
};

struct LayoutEntry {
  std::string display;
  std::string vm;
  uint32_t scanout = 0;
  uint32_t x = 0;
  uint32_t y = 0;
  uint32_t width = 0;
  uint32_t height = 0;
  int32_t z = 0;
  // The part of the scanout shown; width 0 means the whole scanout.
  struct Crop {
    uint32_t x = 0, y = 0, width = 0, height = 0;
  } crop;
  double alpha = 1.0;     // 0..1, multiplied with the frame's own alpha
  uint32_t rotation = 0;  // clockwise degrees: 0, 90, 180, 270
  // Stale-frame watchdog: after this long without a new frame the layer shows the safe fallback.
  // Unset: the compositor's default (on for safety VMs).
  std::optional<uint32_t> stale_ms;
};

struct AudioRoute {
  std::string vm;
  std::string stream;
  std::string sink;
  uint32_t priority = 50;
  bool duck_others = false;
  double duck_db = -20.0;  // how far lower-priority routes are ducked while this one plays
  uint32_t ramp_ms = 50;   // over this ramp (and restored over the same)
  bool exclusive = false;  // mute lower-priority routes while this one plays
};

struct Manifest {
  uint32_t version = 1;
  std::vector<VmConfig> vms;
  std::vector<DisplayConfig> displays;
  std::vector<LayoutEntry> layouts;
  std::vector<AudioRoute> audio_routes;
  // Indices into vms in start order: every VM after all of its start_after VMs, otherwise file order.
  std::vector<size_t> boot_order;

  const VmConfig* find_vm(std::string_view name) const;
  const DisplayConfig* find_display(std::string_view name) const;
};

struct ManifestError {
  std::string file;
  uint32_t line = 0;  // 1-based; 0 when the error has no position (e.g. the file cannot be read)
  uint32_t column = 0;
  std::string key_path;  // e.g. "vm[1].memory"; empty for file-level errors
  std::string message;

  // "file:line:column: key_path: message" (the position and key path are left out when absent).
  std::string to_string() const;
};

// Either a manifest (errors empty) or every error found (manifest empty).
struct [[nodiscard]] LoadResult {
  std::optional<Manifest> manifest;
  std::vector<ManifestError> errors;

  bool ok() const { return manifest.has_value(); }
};

// Reads and checks a manifest file (at most kMaxManifestBytes).
LoadResult load_manifest_file(const std::string& path);
// Checks manifest text; `name` is the file name used in error messages.
LoadResult load_manifest_string(std::string_view text, std::string_view name);

}  // namespace canopy::config
