// The compositor behind canopy-display: GPU devices (canopy-gpu, one connection per VM) send their
// scanouts' frames over the scanout channel (canopy/protocol/scanout_channel.h); the compositor maps each buffer
// once (the pieces back to back, buffers::map_scattered: zero copy), schedules every output with its
// own OutputScheduler (mixed criticality, canopy/display/scheduler.h), composes with a Renderer into
// the output's canvas, presents it on the output's sink and sends RELEASE for every frame it no
// longer reads.
//
// Bad input from a device connection (a malformed packet, an unknown buffer, a frame that does not fit
// its buffer, caps exceeded) is answered by closing that connection with a logged reason; every other
// VM and every output go on. A frame that cannot be shown is released at once. Frames of a connection
// that went away stay on screen (their mappings are the compositor's own) until newer ones replace
// them or the stale-frame watchdog shows the fallback. RELEASEs are sent without blocking: a device
// that does not take them until its socket buffer is full is disconnected (canopy-gpu takes them in
// its event loop as they come).
//
// Control (SOCK_SEQPACKET, one request and one reply per datagram, the canopyctl protocol):
//   stats                per output and layer: compositions, missed deadlines, new / reused / missed /
//                        dropped frames, fallback, latency percentiles; per VM connection: frames, bytes
//   snapshot DIR         writes DIR/<output>.png of every output's last composition
//   trace-start          starts a Perfetto-readable Chrome JSON trace (latch, compose, present, frames)
//   trace-stop FILE      writes the trace recorded since trace-start to FILE
//   quit                 run_once() reports quit_requested() afterwards
//
// Threading: one thread runs everything; the Clock drives the schedulers (tests use a FakeClock and
// call the steps themselves).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "canopy/base/clock.h"
#include "canopy/base/result.h"
#include "canopy/display/layout.h"
#include "canopy/display/renderer.h"
#include "canopy/display/scheduler.h"
#include "canopy/display/sink.h"

namespace canopy::display {

// Caps per device connection (documented in docs/display.md).
// Connections at most, together, of those bound to no VM (the trusting listen_path socket) or to a VM
// the layout does not show.
inline constexpr size_t kMaxConnections = 16;
// Connections bound (by the broker or its listen_dir socket) to one VM the layout shows, at most: its
// back-end's, one of a restarted back-end beside it, and a little room. They are that VM's own slots:
// no other connection takes them.
inline constexpr size_t kMaxConnectionsPerVm = 4;
inline constexpr size_t kMaxBuffersPerConnection = 256;
inline constexpr uint64_t kMaxMappedBytesPerConnection = 2ull << 30;
inline constexpr size_t kMaxPacketsPerTurn = 256;  // per connection, so one VM cannot starve the loop
// Memory mappings left to the process itself (libraries, threads, the renderer's) out of vm.max_map_count.
inline constexpr uint64_t kReservedMappings = 16384;

// What one VM's device connections may hold in this process, so that no VM can exhaust what the others
// need (docs/display.md, "Quotas"). Over a quota the VM's connection is closed: its layers keep their last
// good frame, then show the fallback; no other VM notices.
struct Quotas {
  // Memory mappings all devices together may hold (each piece of a mapped buffer is one, at most, and
  // its reservation one more); 0: vm.max_map_count less kReservedMappings. Three quarters are shared out
  // equally among the VMs the layout shows, the last quarter among the connections of any other VM
  // (kMaxConnections shares). Pieces of buffers still being defined count too.
  uint64_t mappings = 0;
  // Descriptors one connection may make this process hold: those of buffers still being defined, its
  // timelines' and, where an output has hardware planes, those its buffers keep.
  size_t descriptors_per_connection = 64;
  // A device connection that has not said HELLO within this (on the compositor's clock) is closed.
  std::chrono::milliseconds hello_deadline{2000};
};

struct CompositorOptions {
  // Where device connections come from (at least one of them):
  //   broker_fd    the service link of canopy-vmm's connection broker (canopy/protocol/broker.h): every
  //                connection on it is bound to the VM canopy-vmm names, and its HELLO must name that VM.
  //                Duplicated by create(); the caller may close its own.
  //   listen_dir   desktop use without canopy-vmm (canopy-gpu under QEMU): a listening socket per VM the
  //                layout shows, DIR/<vm>.sock, mode 0600; a connection to it is bound to that VM as a
  //                brokered one is. Who may connect is who may open the socket (the compositor's uid;
  //                chown a VM's socket to the uid of its back-end to let only that one in).
  //   listen_path  one listening socket for every device: the VM name is the one HELLO declares
  //                (trusting every peer that can reach the socket); a VM that came through the broker or
  //                has a socket in listen_dir cannot be claimed there.
  int broker_fd = -1;
  std::string listen_dir;
  std::string listen_path;
  std::string control_path;  // "" = no control socket
  // The control socket serves peers of the compositor's uid, except the descendants of this process
  // (canopy-display under canopy-vmm: canopy-vmm, whose children are the VMs and their back-ends); 0: none.
  pid_t control_refuses_descendants_of = 0;
  // The operator: this process's uid (and root) and, when set, the members of this group too (the
  // socket is then mode 0660 and of this group). -1: none.
  gid_t control_group = gid_t(-1);
  // Where `snapshot [NAME]` and `trace-stop NAME` from the control socket may write: NAME is resolved
  // beneath it, no symlinks, no "..". "" = those requests are refused.
  std::string control_dir;
  // pixman, vulkan (any Vulkan device, lavapipe included) or auto (Vulkan on a GPU, else pixman).
  std::string renderer = "auto";
  std::string vulkan_device;  // a substring of the Vulkan device's name; "" = the best ranked
  // Sinks: every output headless, every output a window, or every output on KMS (each output the
  // next connected connector of kms_device).
  enum class Sinks { kHeadless, kWindow, kKms } sinks = Sinks::kHeadless;
  std::string kms_device;  // "" = the first DRM device with a connected connector
  // Makes each output's sink instead of `sinks` when set (tests: a sink with hardware planes).
  std::function<std::unique_ptr<OutputSink>(const OutputSpec&)> make_sink;
  SchedulerOptions scheduler;
  uint32_t background = 0x00000000;
  Quotas quotas;
  // Stepped time, for tests of whole processes (an attack on a running cockpit, checked frame by
  // frame): the compositor's clock is this FakeClock (the one create() is given), and it moves only when
  // a control client asks `step`: to the next latch point, where what is due is composed (after the
  // device packets already sent are read). The answer names each layer's picture, the CRC-32 of its
  // rectangle on the output, and its counters (`step N`, then per layer `layer OUTPUT VM/SCANOUT
  // crc=XXXXXXXX new=N reused=N fallback_entries=N fallback=0|1`). nullptr: the clock runs by itself.
  FakeClock* stepped_clock = nullptr;
};

struct ConnectionStats {
  std::string vm;
  bool brokered = false;    // the name is the broker's, not the device's
  std::string criticality;  // brokered: the VM's criticality as canopy-vmm gave it
  uint64_t broker_serial = 0;
  bool connected = false;
  uint64_t frames = 0;
  uint64_t frames_refused = 0;
  uint64_t bytes_copied = 0;  // reported by the device (2D transfers); 0 for blob scanouts
  uint64_t blob_frames = 0;
  uint64_t fenced_frames = 0;  // frames with an acquire point on their scanout's timeline
  size_t buffers = 0;
  uint64_t mapped_bytes = 0;
  uint64_t mappings = 0;       // memory mappings the VM's buffers hold now (on screen or defined)
  uint64_t mapping_quota = 0;  // what its VM may hold (Quotas::mappings' share)
  size_t descriptors = 0;      // descriptors this connection makes the compositor hold now
};

class Compositor {
 public:
  static Result<std::unique_ptr<Compositor>> create(Layout layout, CompositorOptions options, const Clock& clock);
  ~Compositor();
  Compositor(const Compositor&) = delete;
  Compositor& operator=(const Compositor&) = delete;

  // One turn of the loop: waits for packets and requests until the next latch point (at most
  // max_wait_ms), handles them, then composes every output whose latch point has come.
  Status run_once(int max_wait_ms);
  // The steps of run_once, for tests in virtual time: take what arrived (waiting up to wait_ms), and
  // compose the outputs that are due at clock.now().
  Status poll_input(int wait_ms);
  Status compose_due();
  // The earliest latch point of any output (when compose_due() has work next).
  TimePoint next_latch() const;
  bool quit_requested() const;
  // False once a window sink was closed by the user.
  bool sinks_open() const;

  const Layout& layout() const;
  size_t num_outputs() const;
  const Canvas& canvas(size_t output) const;
  const OutputStats& output_stats(size_t output) const;
  const char* sink_name(size_t output) const;
  const char* renderer_name() const;
  Renderer::Stats renderer_stats() const;
  std::vector<ConnectionStats> connections() const;

  Status snapshot(const std::string& dir);  // DIR/<output>.png
  std::string stats_text() const;
  void trace_start();
  Status trace_stop(const std::string& path);

 private:
  struct Impl;
  explicit Compositor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace canopy::display
