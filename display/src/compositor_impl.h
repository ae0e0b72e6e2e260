// canopy-display's compositor, inside (internal to display/src): its state (Compositor::Impl) and where
// each part of it lives —
//   compositor_channel.cc   the channel server: device connections, BUFFER / FRAME / CURSOR / TIMELINE
//                           packets, acquire points and releases;
//   compositor_compose.cc   composition planning: what each output draws (planes, cursors, fallback
//                           pictures) and the renderer and sink calls;
//   compositor_control.cc   the control socket (canopyctl), stats and traces;
//   compositor.cc           creation, the event loop and the public API (canopy/display/compositor.h).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"
#include "canopy/base/unique_fd.h"
#include "canopy/buffers/image.h"
#include "canopy/buffers/scatter_mapping.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/buffers/timeline.h"
#include "canopy/display/compositor.h"
#include "canopy/display/fallback.h"
#include "canopy/display/png.h"
#include "canopy/protocol/broker.h"
#include "canopy/protocol/scanout_channel.h"

namespace canopy::display {

namespace ch = canopy::protocol::scanout;
using buffers::Format;

namespace {

constexpr size_t kMaxTraceEvents = 1 << 20;
constexpr size_t kMaxControlRequest = 4096;
// Control connections accepted whose request has not arrived yet (served when it does, from the loop;
// the oldest is dropped beyond this, so a client that never sends costs nothing but its slot).
constexpr size_t kMaxPendingControl = 8;

inline Result<UniqueFd> listen_seqpacket(const std::string& path, bool private_mode) {
  UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s.valid()) return make_error(Errc::kIo, "socket", errno);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) return make_error(Errc::kInvalidArgument, "socket path length");
  std::memcpy(a.sun_path, path.c_str(), path.size());
  ::unlink(path.c_str());
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return make_error(Errc::kIo, "canopy-display: cannot bind the socket path", errno);
  if (private_mode) ::chmod(path.c_str(), 0600);
  if (::listen(s.get(), 16) != 0) return make_error(Errc::kIo, "listen", errno);
  return s;
}

inline bool drawable_format(uint32_t fourcc) {
  switch (Format(fourcc)) {
    case Format::kXRGB8888:
    case Format::kARGB8888:
    case Format::kABGR8888:
    case Format::kXBGR8888:
    case Format::kRGB565: return true;
    default: return false;
  }
}

inline int64_t us_since(TimePoint epoch, TimePoint t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t - epoch).count();
}

}  // namespace

// ---- state ----------------------------------------------------------------------------------------

// A device's buffer, mapped once. The renderer and the sinks may have derived state from the mapping
// (the Vulkan renderer's import of it, a KMS framebuffer), dropped before the memory goes. With sinks
// that offer hardware planes the descriptors stay open: a plane needs the memory as a dma-buf.
// The memory mappings a VM's buffers hold (Quotas::mappings), shared by its connections and by its buffers,
// which outlive their connection while their frames are on screen.
struct VmUsage {
  uint64_t mappings = 0;
  uint64_t quota = 0;
};

struct MappedBuffer {
  buffers::ScatterMapping map;
  std::shared_ptr<VmUsage> usage;  // charged `mappings` while this buffer is mapped
  uint64_t mappings = 0;
  std::vector<UniqueFd> fds;               // (only for plane sinks)
  std::vector<buffers::FilePiece> pieces;  // the mapping's pieces of those files, in order
  std::function<void(const void*)> forget;
  MappedBuffer() = default;
  MappedBuffer(const MappedBuffer&) = delete;
  MappedBuffer& operator=(const MappedBuffer&) = delete;
  ~MappedBuffer() {
    if (forget && map.data()) forget(map.data());
    if (usage) usage->mappings -= mappings;
  }
  // The whole pages the mapping covers (the last piece's final page is mapped whole).
  Mapping mapping() const { return Mapping{map.data(), (map.size() + ch::kPageSize - 1) & ~size_t(ch::kPageSize - 1)}; }
};

struct Compositor::Impl {
  using BufferKey = std::pair<uint32_t, uint64_t>;
  struct PartialBuffer {
    uint32_t total = 0;
    std::vector<buffers::FilePiece> pieces;
    std::vector<UniqueFd> fds;  // kept open until the buffer is mapped
  };
  // A scanout's acquire/release timeline (TIMELINE): frames with an acquire point wait for it; points
  // of frames no longer read are retired on it.
  struct ScanoutTimeline {
    buffers::Timeline tl;
    std::multimap<uint64_t, uint64_t> waiting;  // acquire point -> frame id, not signalled yet
    std::map<uint64_t, int> held;               // acquire points of frames not released yet
    uint64_t highest_released = 0;
    bool lost = false;
  };
  // The guest's cursor on a scanout (CURSOR): drawn over every layer showing that scanout.
  static constexpr uint32_t kCursorSize = 64;
  struct Cursor {
    bool visible = false;
    int32_t x = 0, y = 0;  // the hotspot's position in the scanout
    uint32_t hot_x = 0, hot_y = 0;
    std::shared_ptr<MappedBuffer> image;  // 64x64 ARGB8888, from the CURSOR packet that changed it
  };
  struct Conn {
    UniqueFd sock;
    std::map<uint32_t, Cursor> cursors;             // by scanout
    std::map<uint32_t, ScanoutTimeline> timelines;  // by scanout
    bool hello = false;
    uint32_t num_scanouts = 0;
    // By the device's name for them: (resource id, backing generation).
    std::map<BufferKey, std::shared_ptr<MappedBuffer>> buffers;
    std::map<BufferKey, PartialBuffer> partial;
    uint64_t partial_pieces = 0;     // pieces of `partial`, charged to the VM's mapping quota
    std::shared_ptr<VmUsage> usage;  // the VM's (from HELLO)
    TimePoint accepted{};            // HELLO is due within Quotas::hello_deadline of this
    std::string bound_vm;            // brokered: the only name its HELLO may give
    ConnectionStats stats;
  };
  struct FrameRec {
    uint64_t conn = 0;
    uint32_t scanout = 0;
    uint64_t seq = 0;
    uint64_t acquire = 0;  // the acquire point on the scanout's timeline; 0: complete on arrival
    std::vector<std::pair<size_t, size_t>> targets;  // (output, layer) showing it
    std::shared_ptr<MappedBuffer> buf;
    Image image;
    int refs = 0;
  };
  struct Output {
    std::unique_ptr<OutputScheduler> sched;
    buffers::Mapping px;  // the canvas: whole pages of a memfd, so a renderer can use it in place
    Canvas canvas;
    std::unique_ptr<OutputSink> sink;
    std::vector<FallbackImage> fallback;  // per layer, the size of its rectangle
    std::vector<LayerSpec> fallback_spec;
    uint64_t on_planes = 0;     // compositions the sink showed on hardware planes
    bool canvas_stale = false;  // the last one was on planes: the canvas is older
    std::optional<OutputScheduler::Plan> last_plan;
  };
  struct TraceEvent {
    const char* name;
    int64_t ts_us;
    int64_t dur_us;
    uint32_t tid;
    uint64_t arg;
  };

  Layout layout;
  CompositorOptions opt;
  const Clock& clock;
  TimePoint epoch;
  std::unique_ptr<Renderer> renderer;
  std::vector<Output> outputs;
  UniqueFd ep;
  UniqueFd listen;
  UniqueFd broker;  // the broker's service link (canopy-vmm), when there is one
  std::map<int, std::pair<UniqueFd, std::string>> vm_listen;  // listen_dir: by descriptor, (socket, its VM)
  std::set<std::string> brokered;  // VMs whose connections came through the broker: not claimable on `listen`
  UniqueFd spare;  // /dev/null, kept open so that a full descriptor table can still turn a connection away
  UniqueFd control;
  UniqueFd control_dir;                          // O_PATH of opt.control_dir
  std::map<uint64_t, UniqueFd> control_pending;  // by accept order: connections waiting for their request
  UniqueFd step_client;                          // stepped: the control client waiting for its step
  uint64_t steps = 0;
  uint64_t next_control = 0;
  std::map<uint64_t, Conn> conns;  // by connection id
  // Mapping quotas: per VM the layout shows (made at start), per connection of any other VM.
  std::map<std::string, std::shared_ptr<VmUsage>> vm_usage;
  uint64_t unnamed_quota = 0;
  std::map<int, uint64_t> conn_by_fd;
  std::map<int, std::pair<uint64_t, uint32_t>> timeline_by_fd;  // eventfd / pidfd -> (connection, scanout)
  uint64_t next_conn = 1;
  std::unordered_map<uint64_t, FrameRec> frames;  // by global frame id
  uint64_t next_frame = 1;
  bool quit = false;
  bool sinks_open = true;
  bool tracing = false;
  bool plane_sinks = false;  // some output's sink offers hardware planes
  uint64_t renderer_switches = 0;
  std::vector<TraceEvent> trace;

  Impl(Layout l, CompositorOptions o, const Clock& c) : layout(std::move(l)), opt(std::move(o)), clock(c) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    // Sinks first (they hold frames on planes), then buffers (each tells the renderer and sinks its
    // mapping goes), then the renderer, then the canvases it may have imported.
    for (auto& o : outputs) o.sink.reset();
    frames.clear();
    conns.clear();
    if (renderer)
      for (auto& o : outputs) renderer->forget_memory(o.px.data());  // (before the mapping goes)
    renderer.reset();
  }

  void start_trace();

  void trace_event(const char* name, TimePoint start, TimePoint end, uint32_t tid, uint64_t arg = 0);

  Status watch(int fd);

  // ---- frames and releases ----

  void send_release(uint64_t conn_id, uint32_t scanout, uint64_t seq);

  void unref(uint64_t id);

  ScanoutTimeline* timeline_of(uint64_t conn_id, uint32_t scanout);

  // Frame `id` (acquire point `point`) is no longer read: retire the timeline up to the highest point
  // below every frame still held (never past what was signalled: a dropped frame may not have been).
  void release_point(uint64_t conn_id, uint32_t scanout, uint64_t point, uint64_t id);

  // Retires the timeline as far as the frames still read allow, `released` (a point) now among the
  // released ones.
  static void retire(ScanoutTimeline& st, uint64_t released = 0);

  // The timeline's eventfd or its producer's pidfd became readable.
  void on_timeline_event(int fd, uint64_t conn_id, uint32_t scanout);

  // Stops watching a connection's timeline descriptors (whichever are still watched).
  void unwatch_timelines(uint64_t conn_id);

  Status on_timeline(uint64_t conn_id, Conn& c, ch::Message& m);

  void take_releases(Output& o);

  // ---- device connections ----

  void drop(uint64_t conn_id, const char* why);

  // Takes the connections waiting on a listening socket; those of a per-VM socket are bound to its VM.
  void accept_all(int sock, const std::string& bound_vm);
  // A new device connection (accepted, or admitted by the broker bound to `bound_vm`); null when refused.
  Conn* adopt(UniqueFd sock, std::string bound_vm);
  // ADMITs from the broker's service link.
  void on_broker();

  // Shares out Quotas::mappings (create()).
  void share_quotas();
  // Closes connections that have not said HELLO in time.
  void expire_silent();
  // Descriptors connection `c` makes this process hold now.
  static size_t descriptors_of(const Conn& c);

  Status on_hello(uint64_t id, Conn& c, const ch::Message& m);

  Status on_buffer(Conn& c, ch::Message& m);

  Status on_buffer_gone(Conn& c, const ch::Message& m);

  Status on_cursor(Conn& c, const ch::Message& m);

  Status on_frame(uint64_t conn_id, Conn& c, const ch::Message& m);

  void on_conn_readable(uint64_t id);

  // ---- control ----

  // The control socket never blocks the loop: a request that is not there yet when its connection is
  // accepted is served when it arrives (the fd is watched), however late its client runs.
  void on_control();

  // One request on a control connection, if it has come (or the peer is gone): answered; false while
  // there is nothing to read yet.
  bool serve_control(int fd);

  bool on_control_pending(int fd);

  std::string control_request(const std::string& req);

  // DIR/<output>.png for every output, DIR open as `dir`; `confined`: nothing outside it (no symlinks,
  // no "..": the control socket's requests).
  Status snapshot(int dir, bool confined);

  Status write_trace(std::FILE* f);  // closes f

  std::string stats_text() const;
  // Stepped time (CompositorOptions::stepped_clock): the step step_client asked for, answered.
  Status step();
  std::string step_report() const;

  // ---- composition ----

  void forget_memory(const void* base);

  // What a plan draws, back to front; per draw, the buffer behind it and its frame (0: a cursor), or
  // no buffer (the compositor's own fallback picture). `specs` holds the cursors' layer specs.
  struct Source {
    std::shared_ptr<MappedBuffer> buf;
    uint64_t frame = 0;
  };
  void build_draws(size_t oi, const OutputScheduler::Plan& plan, std::vector<LayerDraw>& draws,
                   std::vector<Source>& sources, std::vector<LayerSpec>& specs);

  // The cursor over frame `f` as layer `l` draws it, when its VM shows one on that scanout.
  void add_cursor(const FrameRec& f, const LayerSpec& l, std::vector<LayerDraw>& draws, std::vector<Source>& sources,
                  std::vector<LayerSpec>& specs);

  // The draws as hardware-plane layers, when every one is a buffer of its VM and the picture needs no
  // background of the compositor's (black, or an opaque bottom layer covering the output).
  std::vector<PlaneLayer> plane_layers(size_t oi, const std::vector<LayerDraw>& draws,
                                       const std::vector<Source>& sources);

  Status compose(size_t oi, const OutputScheduler::Plan& plan);

  Status compose_due();

  Status poll_input(int wait_ms);

  TimePoint next_latch() const;

  int until_next_latch_ms() const;
};

}  // namespace canopy::display
