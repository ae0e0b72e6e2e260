// The virtio-gpu device model (virtio 1.2 §5.7), independent of any transport:
//
//   transport (vhost-user / tests) -> queue handling (vhost_gpu.h) -> command decode (command.h)
//     -> GpuDevice (this file: resources, scanouts, contexts, fences, caps) -> Renderer (renderer.h)
//     -> ScanoutOutput (frames to the compositor)
//
// Commands arrive as the readable bytes of a control-queue chain with a token; responses leave through
// the Respond callback with that token. A command without VIRTIO_GPU_FLAG_FENCE is answered at once. A
// fenced command is answered when it is complete AND every earlier fenced command of its timeline has
// been answered (the spec's retirement rule: a driver retires fence N and all earlier fences of the
// timeline when N's response arrives). The timeline is (ctx_id, ring_idx) with
// VIRTIO_GPU_FLAG_INFO_RING_IDX (CONTEXT_INIT), else the one global timeline. A fenced RESOURCE_FLUSH
// completes when the output has released every frame it produced, so the guest's fence wait is the
// display's consumption of its buffer.
//
// Caps (per device, i.e. per VM; a request over a cap gets VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY):
// resources, guest bytes attached as backing, host bytes of 2D storage, backing entries per request,
// command bytes, contexts. Defaults in GpuCaps; docs/gpu.md lists them.
//
// Threading: one thread calls everything except Frame::release(), which may come from any thread; it
// queues the release, and from another thread also makes release_fd() readable; process_releases()
// takes them. A release on the device's own thread (the compositor's RELEASE read by the device's loop,
// an output that releases at once) wakes nothing: the caller runs process_releases() when it is done
// (control() does; VhostGpu after every watch).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/gpu/edid.h"
#include "canopy/gpu/renderer.h"
#include "canopy/gpu/scanout_output.h"
#include "canopy/protocol/virtio_gpu.h"
#include "canopy/transport/guest_memory.h"

namespace canopy::gpu {
namespace proto = ::canopy::protocol::virtio_gpu;  // virtio-gpu's wire format (canopy/protocol/virtio_gpu.h)

struct Command;

struct GpuCaps {
  uint32_t max_resources = 4096;
  uint64_t max_backing_bytes = uint64_t{4} << 30;  // guest memory attached as backing, all resources
  uint64_t max_host_bytes = uint64_t{1} << 30;     // host storage of 2D resources, all resources
  uint32_t max_backing_entries = 16384;            // per ATTACH_BACKING / CREATE_BLOB (QEMU's limit too)
  // All resources' backing entries together: the device keeps 24 bytes of bookkeeping per entry, so a
  // guest with max_resources resources of max_backing_entries each would make it hold 1.6 GB.
  uint32_t max_backing_entries_total = 16 * 16384;
  uint32_t max_command_bytes = 1 << 20;  // readable bytes of one control command
  uint32_t max_contexts = 256;
  uint32_t max_dimension = 16384;  // resource width/height (2D, blob scanouts, 3D textures)
  // 3D resources (virgl), all together: an estimate of their GPU memory (their format's bytes per texel
  // or per compressed block, every mip level, layer and sample; a buffer's width is its size in bytes),
  // so a guest cannot make the host allocate without bound.
  uint64_t max_3d_bytes = uint64_t{1} << 30;
};

struct GpuOptions {
  std::vector<DisplayMode> scanouts{DisplayMode{}};  // 1..16; each enabled (connected) at start
  GpuCaps caps;
  // 2D resources whose backing is page aligned are shown straight from guest memory and
  // TRANSFER_TO_HOST_2D copies nothing (a guest writing while the display reads may tear).
  bool alias_2d = false;
  uint64_t features = proto::kFEdid | proto::kFResourceUuid | proto::kFResourceBlob | proto::kFContextInit;
};

// The host-visible memory region (virtio-gpu shared memory region 1): where RESOURCE_MAP_BLOB puts a
// host blob for the guest to reach without copies. The transport implements it: over vhost-user,
// SHMEM_MAP / SHMEM_UNMAP to the front-end, which maps the file into the guest's region.
class HostVisibleRegion {
 public:
  virtual ~HostVisibleRegion() = default;
  virtual uint64_t size() const = 0;
  // Whether the front-end maps (it may not have negotiated the region).
  virtual bool usable() const = 0;
  virtual Status map(uint64_t offset, int fd, uint64_t fd_offset, uint64_t len, bool writable) = 0;
  virtual Status unmap(uint64_t offset, uint64_t len) = 0;
};

struct GpuStats {
  uint64_t commands = 0;
  uint64_t errors = 0;  // error responses
  uint64_t frames = 0;
  // Guest-memory bytes copied for resources (GuestMemory's own count over each control command, so any
  // path that copies shows up) + the 3D renderer's read-backs into host copies. Each frame carries what
  // its resource was charged since its last frame (a resource on two scanouts: the first frame has it).
  uint64_t bytes_copied = 0;
  // Guest-memory bytes copied while a control command ran that no resource took (0 unless a copy path
  // forgot to charge its resource).
  uint64_t guest_copies_uncharged = 0;
  // Cursor images copied (UPDATE_CURSOR, 16 KiB each: from guest memory in alias mode, else from the host
  // copy or the renderer). A cursor is always a copy; it is kept apart from the frames' figure.
  uint64_t cursor_bytes_copied = 0;
  uint64_t fences_retired = 0;
  // 3D scanout read-backs done after a renderer fence (frames with acquire points), and those done at
  // once because kMaxReadbacks were waiting.
  uint64_t fenced_readbacks = 0;
  uint64_t readbacks_over_cap = 0;
  uint32_t resources = 0;
  uint64_t backing_bytes = 0;
  uint64_t backing_entries = 0;  // all resources' (GpuCaps::max_backing_entries_total)
  uint64_t host_bytes = 0;
  uint64_t gpu_bytes = 0;     // the 3D resources' estimate (GpuCaps::max_3d_bytes)
  uint32_t blobs_mapped = 0;  // host blobs in the host-visible region now
  uint32_t contexts = 0;
  uint32_t pending_fences = 0;
};

class GpuDevice {
 public:
  using Respond = std::function<void(uint64_t token, std::span<const uint8_t> response)>;

  // Errors: kInvalidArgument for 0 or more than 16 scanouts or a mode without EDID timings.
  static Result<std::unique_ptr<GpuDevice>> create(GpuOptions options, std::unique_ptr<Renderer> renderer,
                                                   ScanoutOutput* output, Respond respond);
  ~GpuDevice();
  GpuDevice(const GpuDevice&) = delete;
  GpuDevice& operator=(const GpuDevice&) = delete;

  uint64_t offered_features() const { return options_.features; }
  void set_acked_features(uint64_t f) { acked_ = f & options_.features; }
  uint64_t acked_features() const { return acked_; }
  // The guest memory commands refer to (borrowed; may change between commands).
  void set_memory(transport::GuestMemory* mem) { mem_ = mem; }
  // The guest memory's region table changed (vhost-user SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG): what
  // the renderer holds of guest memory (3D backings, guest blobs; virglrenderer reads them from its own
  // threads too) is re-handed from the new mappings now, while the regions that went are still mapped.
  void memory_changed();
  // The host-visible region RESOURCE_MAP_BLOB maps into (borrowed; nullptr: none, MAP_BLOB fails).
  void set_host_visible(HostVisibleRegion* region) { host_visible_ = region; }

  // One control-queue command: `request` is a copy of the chain's readable bytes (capped by the
  // caller at caps.max_command_bytes + 1), `writable` the response room. respond(token, ...) is
  // called now or later (fences), exactly once, unless reset() drops it first.
  void control(uint64_t token, std::span<const uint8_t> request, uint32_t writable);
  // One cursor-queue command; returns the response (OK_NODATA or an error).
  proto::CtrlHdr cursor(std::span<const uint8_t> request);

  // Frame releases from the output (any thread) become fence completions here.
  int release_fd() const { return release_event_.get(); }
  void process_releases();
  // Releases taken so far without an eventfd wake-up (on the device's thread) and with one.
  uint64_t releases_direct() const { return releases_direct_; }
  uint64_t releases_woken() const { return releases_woken_; }
  // The renderer's completed fences (3D): watch renderer_fd() (-1 without a 3D renderer), then call
  // process_renderer().
  int renderer_fd() const { return renderer_->poll_fd(); }
  void process_renderer();

  // Config space (§5.7.4). Writes may only clear events.
  proto::Config config() const;
  Status write_config(uint32_t offset, std::span<const uint8_t> data);
  // A display change (hotplug or new mode): sets VIRTIO_GPU_EVENT_DISPLAY. Returns true when the
  // driver must be told (config change notification).
  Status set_display(uint32_t scanout, bool connected, const DisplayMode& mode);
  bool take_config_changed() { return std::exchange(config_changed_, false); }
  // A scanout's display as the driver sees it (precondition: scanout < num_scanouts()).
  struct Display {
    bool connected = true;
    DisplayMode mode;
  };
  Display display(uint32_t scanout) const;

  // Answers every executed fenced command now, in timeline order, without waiting for frame releases
  // (a queue stop: nothing may stay in flight).
  void force_retire();
  // Device reset: resources, contexts, scanouts and pending fences are dropped (without responses).
  void reset();

  GpuStats stats() const;
  uint32_t num_scanouts() const { return uint32_t(scanouts_.size()); }
  const GpuCaps& caps() const { return options_.caps; }

  struct Resource;
  struct Scanout;
  struct Framebuffer;
  struct Context;
  struct Pending;
  struct Readback;

 private:
  GpuDevice(GpuOptions options, std::unique_ptr<Renderer> renderer, ScanoutOutput* output, Respond respond);

  // A command's answer: its response type and, for the OK_* queries, the body after the header. Handlers
  // return it as a value (a bare Resp converts: OK_NODATA or an error, no body).
  struct Reply {
    Reply(proto::Resp t) : type(t) {}  // NOLINT(google-explicit-constructor): handlers return a Resp
    Reply(proto::Resp t, std::vector<uint8_t> b) : type(t), body(std::move(b)) {}
    proto::Resp type;
    std::vector<uint8_t> body;
  };
  // Runs one decoded command: marks GuestMemory's copy count first (the request is already copied out and
  // the response is written after, by the caller), so every guest-memory copy in between is resource data.
  // This holds because only the device thread copies through GuestMemory; the cursor queue's copies
  // (cursor()) come between commands and are counted apart (GpuStats::cursor_bytes_copied).
  Reply dispatch(const Command& c, uint64_t pending_id);
  Reply dispatch_command(const Command& c, uint64_t pending_id);
  // Guest-memory bytes copied since the last mark (the command's start or the last take); moves the mark
  // and adds them to stats_.bytes_copied.
  uint64_t take_guest_copies();
  Reply get_display_info();
  proto::Resp resource_create_2d(const Command& c);
  proto::Resp resource_unref(const Command& c);
  proto::Resp set_scanout(const Command& c);
  proto::Resp set_scanout_blob(const Command& c);
  proto::Resp resource_flush(const Command& c, uint64_t pending_id);
  proto::Resp transfer_to_host_2d(const Command& c);
  proto::Resp attach_backing(const Command& c);
  proto::Resp detach_backing(const Command& c);
  Reply get_capset_info(const Command& c);
  Reply get_capset(const Command& c);
  Reply get_edid(const Command& c);
  Reply assign_uuid(const Command& c);
  proto::Resp create_blob(const Command& c);
  proto::Resp ctx_create(const Command& c);
  proto::Resp ctx_destroy(const Command& c);
  proto::Resp ctx_resource(const Command& c, bool attach);
  proto::Resp submit_3d(const Command& c);
  proto::Resp resource_create_3d(const Command& c);
  proto::Resp transfer_3d(const Command& c, bool to_host);
  proto::Resp create_blob_3d(const Command& c);
  // A guest blob made the 3D renderer's too (its backing handed over in place).
  proto::Resp give_guest_blob_to_renderer(Resource& r, uint32_t ctx_id, uint64_t blob_id);
  Reply map_blob(const Command& c);
  proto::Resp unmap_blob(const Command& c);
  void unmap_resource(Resource& r);
  // Gives a 3D resource's backing to the renderer as host mappings of the current guest memory.
  proto::Resp attach_backing_3d(Resource& r);
  // r's backing as host mappings of the current guest memory; false when some of it is not guest memory.
  bool backing_ranges(const Resource& r, std::vector<transport::GuestMemory::HostRange>& out) const;
  // Guest memory changed layout: 3D backings are given again (or dropped where they no longer fit).
  void refresh_3d_backings();

  // Validates memory entries (non-empty, no wrap, inside guest memory, no overlap, under the caps)
  // and gives them to r as its backing. Returns OK_NODATA or the error to answer.
  proto::Resp set_backing(Resource& r, std::span<const uint8_t> tail, uint32_t count);
  // Host storage of r's width x height (a 2D resource's, or a 3D scanout's read-back copy), under the
  // host-bytes cap. Returns OK_NODATA or OUT_OF_MEMORY.
  proto::Resp give_host_image(Resource& r);
  Status make_pieces(Resource& r);
  void free_backing(Resource& r);
  // r's backing is going (a new one attached, detached, the resource destroyed): the output forgets the
  // buffer r's frames were in, and r's next frame names a new generation.
  void backing_changed(Resource& r);
  // A 3D scanout's flush for an output that takes acquire fences: the read-back of `damage` waits for a
  // renderer fence after the GPU work submitted so far, and each frame of it carries an acquire point
  // of its scanout's timeline, signalled once the pixels are read back. nullptr: read back now instead.
  Readback* fence_readback(Resource& r, const Rect& damage);
  // The read-backs whose renderer fences completed: the pixels are read, the acquire points signalled.
  void finish_readbacks();
  // Reads rectangle `r` of 3D resource `res` from the renderer into its host copy (same place in it).
  Status read_back_into_host(Resource& res, const Rect& r);
  void destroy_resource(uint32_t id);
  void disable_scanout(uint32_t s);
  void show(uint32_t s, Resource& r, const Rect& rect, const Framebuffer& fb);
  void emit_frame(uint32_t s, Resource& r, const Rect& damage_in_resource, uint64_t pending_id,
                  Readback* readback = nullptr);
  void send_response(uint64_t token, proto::Resp resp, const proto::CtrlHdr& in, std::span<const uint8_t> body,
                     bool fenced);
  void retire_ready();
  void take_releases(std::vector<uint64_t>& out);
  void claim_thread();  // the calling thread is the device's (releases on it need no wake-up)
  // A 2D resource shown straight from its guest backing (alias mode, page-aligned, big enough).
  bool aliased(const Resource& r) const;
  // Copies len bytes at `offset` of r's backing (across entries); false when guest memory fails.
  bool read_backing(const Resource& r, uint64_t offset, uint8_t* dst, uint64_t len) const;
  uint64_t copy_mark_ = 0;  // GuestMemory::bytes_copied() at the last mark
  bool feature(uint64_t f) const { return (acked_ & f) == f; }

  GpuOptions options_;
  std::unique_ptr<Renderer> renderer_;
  ScanoutOutput* output_;
  Respond respond_;
  transport::GuestMemory* mem_ = nullptr;
  HostVisibleRegion* host_visible_ = nullptr;
  // Host-visible offset -> (resource mapped there, length); resource 0: a range the front-end failed to
  // take back, kept out of use until a reset.
  std::map<uint64_t, std::pair<uint32_t, uint64_t>> mapped_;
  uint64_t mem_layout_ = 0;  // the guest memory layout 3D backings were given under
  uint64_t acked_ = 0;
  uint32_t events_read_ = 0;
  bool config_changed_ = false;
  std::map<uint32_t, std::unique_ptr<Resource>> resources_;
  std::vector<std::unique_ptr<Scanout>> scanouts_;
  std::map<uint32_t, std::unique_ptr<Context>> contexts_;
  // Fenced commands not answered yet, by id; per timeline in submission order.
  std::unordered_map<uint64_t, std::unique_ptr<Pending>> pending_;
  std::map<uint64_t, std::vector<uint64_t>> timelines_;  // key -> pending ids (front = oldest)
  uint64_t next_pending_ = 1;  // ids of pending commands and read-backs alike (renderer fence ids)
  uint64_t generations_ = 0;   // the last backing generation given (Frame::generation)
  // 3D read-backs waiting for their renderer fence, by fence id; fences completed, not read back yet.
  std::map<uint64_t, std::unique_ptr<Readback>> readbacks_;
  static constexpr size_t kMaxReadbacks = 16;
  std::vector<uint64_t> readbacks_done_;
  GpuStats stats_;  // counters; the table sizes are filled in by stats()

  struct ReleaseQueue {
    std::mutex mu;
    std::vector<uint64_t> tokens;
    int fd = -1;
    bool signalled = false;  // fd was written for what `tokens` holds
    std::thread::id owner;   // the device's thread: its releases skip the eventfd
  };
  std::shared_ptr<ReleaseQueue> releases_;
  UniqueFd release_event_;
  uint64_t releases_direct_ = 0, releases_woken_ = 0;
};

}  // namespace canopy::gpu
