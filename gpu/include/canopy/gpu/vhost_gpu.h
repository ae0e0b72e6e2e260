// Queue handling: GpuDevice behind the vhost-user back-end library (canopy/transport/vhost_user_backend.h).
//
//   queue 0 (control): each chain's readable bytes (at most caps.max_command_bytes + 1) go to
//     GpuDevice::control(); the response is written into the chain's writable part (truncated if the
//     driver gave too little room). Fenced commands stay in flight (QueueHandle::kDeferred) until their
//     fence retires; a queue stop that is not a reset completes them, a reset drops them.
//   queue 1 (cursor): UPDATE_CURSOR / MOVE_CURSOR, answered at once when the chain has room.
//   config space: struct virtio_gpu_config (protocol feature CONFIG); display changes are signalled
//     with VHOST_USER_BACKEND_CONFIG_CHANGE_MSG when the front-end gave a back-end channel.
//   control socket (VhostGpuOptions::control_path, gpu/src/control.h): display changes from the host
//     side ("display 1 1280x720", "display 1 off") go through set_display().
//   compositor (attach_channel, canopy/gpu/channel_output.h): RELEASE / DISPLAY from canopy-display.
//   host-visible region (protocol feature SHMEM, virgl renderer): shared memory region 1 of
//     VhostGpuOptions::host_visible_bytes; RESOURCE_MAP_BLOB / UNMAP_BLOB become SHMEM_MAP / SHMEM_UNMAP
//     on the back-end channel, each waited for (the front-end maps the blob's file into the guest before
//     the driver hears OK_MAP_INFO). Front-ends without SHMEM (QEMU 10.0) see no region; MAP_BLOB fails.
//   GPU_SET_SOCKET: QEMU's vhost-user-gpu display protocol (docs/interop/vhost-user-gpu.rst). Frames
//     are mirrored to it (SCANOUT / UPDATE / CURSOR_*) unless disabled, so QEMU's own window shows the
//     guest; the device's frames still go to the configured ScanoutOutput.
//
// Threading: the back-end thread runs everything (see vhost_user_backend.h).
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "canopy/gpu/device.h"
#include "canopy/gpu/renderer_virgl.h"
#include "canopy/transport/vhost_user_backend.h"

namespace canopy::gpu {

class FrontendDisplay;
class ChannelOutput;
class ControlServer;
struct ControlCommand;

struct VhostGpuOptions {
  GpuOptions gpu;
  // "2d" (no capsets) or "virgl" (virglrenderer: VIRTIO_GPU_F_VIRGL, capsets virgl and virgl2).
  std::string renderer = "2d";
  VirglOptions virgl;
  bool mirror_to_frontend = true;  // QEMU's display socket gets the frames too
  // The host-visible region's size (virgl renderer; a multiple of 2 MiB; 0: none).
  uint64_t host_visible_bytes = uint64_t{1} << 30;
  std::string control_path;  // listen here for display changes (empty: no control socket)
};

class VhostGpu : public transport::vhost_user::Device {
 public:
  // `output` receives the frames (borrowed; must outlive this object).
  static Result<std::unique_ptr<VhostGpu>> create(VhostGpuOptions options, ScanoutOutput* output);
  ~VhostGpu() override;

  uint64_t features() const override;
  uint64_t protocol_features() const override;
  uint16_t num_queues() const override { return 2; }
  Result<std::vector<uint8_t>> read_config(uint32_t offset, uint32_t size) override;
  Status write_config(uint32_t offset, std::span<const uint8_t> data) override;
  void set_acked_features(uint64_t features) override;
  void on_kick(transport::vhost_user::QueueHandle& q) override;
  void on_queue_stopped(transport::vhost_user::QueueHandle& q) override;
  void on_memory_changed(transport::GuestMemory& memory) override;
  void on_reset() override;
  void on_backend_channel(transport::vhost_user::Channel* channel) override { backend_channel_ = channel; }
  void set_acked_protocol_features(uint64_t features) override { acked_protocol_ = features; }
  std::vector<uint64_t> shmem_sizes() const override;
  Status on_gpu_socket(UniqueFd fd) override;
  std::vector<Watch> watches() override;

  // A display change (e.g. the compositor resized an output): updates the mode and notifies the driver.
  Status set_display(uint32_t scanout, bool connected, const DisplayMode& mode);
  // Serves a compositor connection (the output given to create() or one it feeds): its socket is
  // watched for RELEASE / DISPLAY, and DISPLAY becomes set_display(). Borrowed; must outlive this.
  void attach_channel(ChannelOutput* channel);
  GpuDevice& gpu() { return *gpu_; }
  // Deferred (fenced) chains not answered yet.
  size_t in_flight() const { return deferred_.size(); }

 private:
  VhostGpu() = default;
  class Region;
  void respond(uint64_t token, std::span<const uint8_t> bytes);
  void after_work();
  Result<std::string> control_command(const ControlCommand& c);

  struct Deferred {
    transport::vhost_user::QueueHandle* q = nullptr;
    transport::DescriptorChain chain;
  };
  VhostGpuOptions options_;
  OutputTee tee_;
  std::unique_ptr<FrontendDisplay> frontend_;
  std::unique_ptr<ControlServer> control_;
  ChannelOutput* channel_ = nullptr;
  std::unique_ptr<GpuDevice> gpu_;
  transport::vhost_user::Channel* backend_channel_ = nullptr;
  uint64_t acked_ = 0;
  uint64_t acked_protocol_ = 0;
  std::unique_ptr<Region> region_;
  uint64_t next_token_ = 1;
  // The chain being handled: a response for it is written straight into it.
  uint64_t current_token_ = 0;
  transport::DescriptorWriter* current_writer_ = nullptr;
  bool current_answered_ = false;
  std::unordered_map<uint64_t, Deferred> deferred_;
  std::vector<uint8_t> buf_;
};

}  // namespace canopy::gpu
