// canopy-gpu: the virtio-gpu vhost-user back-end (virtio 1.2 §5.7; docs/gpu.md).
//
//   canopy-gpu --socket-path /tmp/gpu.sock                       one 1024x768 scanout
//   canopy-gpu --socket-path /tmp/gpu.sock --scanouts 2 --mode 1920x1080@60
//   qemu-system-x86_64 ... -chardev socket,id=gpu,path=/tmp/gpu.sock
//       -device vhost-user-gpu-pci,chardev=gpu,max_outputs=2
#include <fcntl.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "canopy/base/log.h"
#include "canopy/gpu/channel_output.h"
#include "canopy/gpu/vhost_gpu.h"
#include "canopy/transport/backend_main.h"
#include "canopy/transport/backend_sandbox.h"

namespace {

using namespace canopy;
using namespace canopy::gpu;
namespace vu = canopy::transport::vhost_user;

constexpr const char* kUsage =
    "  --scanouts=N             number of scanouts, 1..16 (default 1)\n"
    "  --mode=WxH[@HZ]          mode of every scanout (default 1024x768@60; at most 4095x4095)\n"
    "  --scanout-mode=I:WxH[@HZ] mode of scanout I (after --mode)\n"
    "  --alias-2d               show 2D resources straight from guest memory (no transfer copies;\n"
    "                           the guest may tear)\n"
    "  --frame-log=FILE         headless output: one line per frame / cursor event (checksums)\n"
    "  --release-after-ms=N     headless output: release each frame N ms after it arrived\n"
    "  --display-fd=N           send frames to the compositor, zero copy, over connections canopy-vmm's\n"
    "                           broker makes on request through descriptor N (bound to this VM by it)\n"
    "  --display-socket=PATH    send frames to the compositor listening at PATH (canopy-display --listen)\n"
    "  --vm=NAME                the VM name the compositor lays out (default: gpu); with --display-fd the\n"
    "                           broker's name counts, and the compositor refuses a HELLO that differs\n"
    "  --no-frontend-display    do not mirror frames to QEMU's vhost-user-gpu display socket\n"
    "  --control=PATH           control socket for display changes, one command per line:\n"
    "                           'display I WxH[@HZ]', 'display I off', 'displays' (docs/gpu.md)\n"
    "  --renderer=2d|virgl      2d (default), or virglrenderer for 3D (VIRGL: capsets virgl, virgl2;\n"
    "                           EGL without a window system: a GPU's render node, else llvmpipe)\n"
    "  --gles                   with virgl: OpenGL ES on the host instead of desktop OpenGL\n"
    "  --venus                  with virgl: Vulkan contexts too (capset venus, the host's Vulkan driver)\n"
    "  --priority=low|medium|high  with virgl: the GPU priority of this VM's GL contexts (EGL_IMG_context_\n"
    "                           priority where the driver has it, e.g. high for the cluster VM)\n"
    "  --host-visible-mb=N      with virgl: the host-visible region for mapped host blobs (default 1024,\n"
    "                           0: none); only front-ends with vhost-user SHMEM (canopy-vmm) map it\n"
    "  --no-blob --no-uuid --no-context-init --no-edid   withhold a feature\n"
    "  --max-resources=N --max-backing-mb=N --max-host-mb=N --max-contexts=N   per-VM caps\n";

bool parse_mode(const std::string& s, DisplayMode& m) {
  unsigned w = 0, h = 0, hz = 60;
  char tail = 0;
  int n = std::sscanf(s.c_str(), "%ux%u@%u%c", &w, &h, &hz, &tail);
  if (n == 2 || n == 3) {
    m = DisplayMode{w, h, hz};
    return cvt_reduced_blanking(m).ok();
  }
  return false;
}

bool parse_u64(const std::string& s, uint64_t& out, uint64_t max) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno || end == s.c_str() || *end || v > max) return false;
  out = v;
  return true;
}

// Everything the device needs lives here for the program's lifetime.
struct Program {
  std::unique_ptr<HeadlessOutput> output;
  std::unique_ptr<ChannelOutput> channel;
  OutputTee tee;
  std::unique_ptr<VhostGpu> device;
};
Program g_program;

Result<std::unique_ptr<vu::Device>> make_device(const std::vector<std::string>& args) {
  VhostGpuOptions o;
  uint64_t scanouts = 1;
  DisplayMode mode;
  std::vector<std::pair<uint32_t, DisplayMode>> per;
  HeadlessOutput::Options ho;
  ho.checksum = false;
  std::string display_socket, vm_name = "gpu";
  int display_fd = -1;
  for (const auto& a : args) {
    auto eq = a.find('=');
    std::string key = a.substr(0, eq), val = eq == std::string::npos ? "" : a.substr(eq + 1);
    uint64_t v = 0;
    if (key == "--scanouts" && parse_u64(val, v, proto::kMaxScanouts) && v >= 1) scanouts = v;
    else if (key == "--mode" && parse_mode(val, mode)) {
    } else if (key == "--scanout-mode") {
      auto colon = val.find(':');
      DisplayMode m;
      if (colon == std::string::npos || !parse_u64(val.substr(0, colon), v, proto::kMaxScanouts - 1) ||
          !parse_mode(val.substr(colon + 1), m))
        return make_error(Errc::kInvalidArgument, "--scanout-mode: expected I:WxH[@HZ]");
      per.emplace_back(uint32_t(v), m);
    } else if (key == "--alias-2d" && eq == std::string::npos) o.gpu.alias_2d = true;
    else if (key == "--frame-log" && !val.empty()) {
      ho.log_path = val;
      ho.checksum = true;
    } else if (key == "--no-frontend-display" && eq == std::string::npos) o.mirror_to_frontend = false;
    else if (key == "--control" && !val.empty()) o.control_path = val;
    else if (key == "--display-socket" && !val.empty()) display_socket = val;
    else if (key == "--display-fd" && parse_u64(val, v, 1u << 20) && v > 2 && ::fcntl(int(v), F_GETFD) >= 0)
      display_fd = int(v);
    else if (key == "--vm" && !val.empty() && val.size() < 32 &&
             val.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") == std::string::npos)
      vm_name = val;
    else if (key == "--no-blob" && eq == std::string::npos) o.gpu.features &= ~proto::kFResourceBlob;
    else if (key == "--no-uuid" && eq == std::string::npos) o.gpu.features &= ~proto::kFResourceUuid;
    else if (key == "--no-context-init" && eq == std::string::npos) o.gpu.features &= ~proto::kFContextInit;
    else if (key == "--no-edid" && eq == std::string::npos) o.gpu.features &= ~proto::kFEdid;
    else if (key == "--max-resources" && parse_u64(val, v, 1u << 20) && v) o.gpu.caps.max_resources = uint32_t(v);
    else if (key == "--max-backing-mb" && parse_u64(val, v, 1u << 20) && v) o.gpu.caps.max_backing_bytes = v << 20;
    else if (key == "--max-host-mb" && parse_u64(val, v, 1u << 20) && v) o.gpu.caps.max_host_bytes = v << 20;
    else if (key == "--release-after-ms" && parse_u64(val, v, 10000)) ho.release_after_ms = int(v);
    else if (key == "--max-contexts" && parse_u64(val, v, 1u << 16) && v) o.gpu.caps.max_contexts = uint32_t(v);
    else if (key == "--renderer" && (val == "2d" || val == "virgl")) o.renderer = val;
    else if (key == "--gles" && eq == std::string::npos) o.virgl.gles = true;
    else if (key == "--venus" && eq == std::string::npos) o.virgl.venus = true;
    else if (key == "--priority" && (val == "low" || val == "medium" || val == "high"))
      o.virgl.priority = val == "low"      ? VirglOptions::Priority::kLow
                         : val == "medium" ? VirglOptions::Priority::kMedium
                                           : VirglOptions::Priority::kHigh;
    else if (key == "--host-visible-mb" && parse_u64(val, v, 64u << 10) && v % 2 == 0) o.host_visible_bytes = v << 20;
    else {
      CANOPY_ERROR("canopy-gpu: bad option %s", a.c_str());
      return make_error(Errc::kInvalidArgument, "bad option (see --help)");
    }
  }
  o.gpu.scanouts.assign(scanouts, mode);
  for (auto& [i, m] : per) {
    if (i >= scanouts) return make_error(Errc::kInvalidArgument, "--scanout-mode: no such scanout");
    o.gpu.scanouts[i] = m;
  }
  // Frames go to the compositor when there is one, to the headless output otherwise, to both when a
  // frame log is asked for.
  ScanoutOutput* out = nullptr;
  if (!display_socket.empty() && display_fd >= 0)
    return make_error(Errc::kInvalidArgument, "--display-fd and --display-socket exclude each other");
  const bool to_compositor = !display_socket.empty() || display_fd >= 0;
  if (to_compositor) {
    ChannelOutput::Options co;
    co.broker_fd = display_fd;
    co.socket_path = display_socket;
    co.vm_name = vm_name;
    co.num_scanouts = uint32_t(scanouts);
    g_program.channel = std::make_unique<ChannelOutput>(co);
    g_program.tee.add(g_program.channel.get());
    out = &g_program.tee;
  }
  if (!to_compositor || !ho.log_path.empty()) {
    g_program.output = std::make_unique<HeadlessOutput>(ho);
    g_program.tee.add(g_program.output.get());
    out = &g_program.tee;
  }
  const std::string renderer = o.renderer;
  CANOPY_ASSIGN_OR_RETURN(auto dev, VhostGpu::create(std::move(o), out));
  if (g_program.channel) dev->attach_channel(g_program.channel.get());
  CANOPY_INFO("canopy-gpu: %llu scanout(s), %ux%u@%u, renderer %s", (unsigned long long)scanouts, mode.width,
              mode.height, mode.refresh_hz, renderer.c_str());
  if (renderer == "virgl") CANOPY_INFO("canopy-gpu: GL context priority %s", virgl_priority_granted().c_str());
  return std::unique_ptr<vu::Device>(std::move(dev));
}

}  // namespace

int main(int argc, char** argv) {
  vu::BackendProgram program{"canopy-gpu", "gpu", {"edid"}, kUsage};
  // virglrenderer and the host's GL / Vulkan driver decode guest command streams in this process.
  program.confine = true;
  // What it writes: its frame log, its control socket, and the GPU driver's shader cache.
  program.writable_options = {"--frame-log", "--control"};
  program.writable_paths = transport::driver_cache_dirs();
  program.readable_paths = transport::driver_config_paths();
  program.valued_options = {
      "--renderer",      "--scanouts",       "--mode",        "--scanout-mode", "--frame-log",
      "--max-resources", "--max-backing-mb", "--max-host-mb", "--max-contexts", "--release-after-ms",
      "--control",       "--display-socket", "--display-fd",  "--vm",           "--host-visible-mb",
      "--priority"};
  return vu::backend_main(argc, argv, program, make_device);
}
