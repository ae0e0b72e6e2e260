// What canopy-gpu hands to a display: the scanout output interface the compositor consumes.
//
// A Frame is a format, a size, a stride and a list of pieces of files — guest memory (memfd) for blob
// scanouts and aliased 2D resources, the device's own host storage for 2D resources — plus an acquire
// fence and the damage since the previous frame. Pieces are page-aligned where the guest's pages are, so
// a consumer builds one contiguous view with buffers::map_scattered() (Frame::map() does, once per
// resource, shared by its frames). Blob scanouts are never copied; every frame reports the bytes copied
// for it (2D transfers since the previous frame of that resource).
//
// Release: a consumer calls Frame::release() (from any thread) when it no longer reads the pixels;
// fenced RESOURCE_FLUSH / SET_SCANOUT* commands retire only then, which is how a guest learns that its
// buffer may be reused. Dropping the last reference releases too.
//
// Threading: the device calls an output from its one thread; an output may hand frames to other
// threads. Frame members are immutable after delivery except the release state.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "canopy/base/crc32.h"
#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/buffers/scatter_mapping.h"
#include "canopy/buffers/timeline.h"

namespace canopy::gpu {

struct Rect {
  uint32_t x = 0, y = 0, width = 0, height = 0;
  bool empty() const { return width == 0 || height == 0; }
  bool operator==(const Rect&) const = default;
};

// A file descriptor shared by a resource and the frames that show it.
using SharedFd = std::shared_ptr<const UniqueFd>;

struct FramePiece {
  SharedFd fd;
  uint64_t offset = 0;
  uint64_t length = 0;
};
// A resource's pieces, shared by its frames (a frame does not copy the list).
using FramePieces = std::shared_ptr<const std::vector<FramePiece>>;

// The contiguous view of a frame's pieces, shared by the frames of one resource.
struct FrameView {
  buffers::ScatterMapping mapping;
  std::vector<uint8_t> copy;  // used instead when the pieces are not page aligned (bytes counted)
  const uint8_t* data() const {
    return mapping.valid() ? reinterpret_cast<const uint8_t*>(mapping.data()) : copy.data();
  }
  size_t size() const { return mapping.valid() ? mapping.size() : copy.size(); }
};

class Frame {
 public:
  using Clock = std::chrono::steady_clock;
  uint32_t scanout = 0;
  uint64_t seq = 0;  // per scanout, from 1
  uint32_t resource_id = 0;
  uint32_t drm_fourcc = 0;  // DRM_FORMAT_* (linear)
  uint32_t width = 0, height = 0;
  uint32_t stride = 0;
  uint64_t offset = 0;  // of pixel (0,0) in the contiguous view
  FramePieces pieces;
  std::vector<Rect> damage;  // in scanout coordinates
  // Device-side copies made for this frame: the guest-memory bytes GuestMemory counted for its resource
  // since the resource's last frame (2D transfers; 0 for blob and alias frames unless a path copied) plus
  // 3D read-backs. An output adds its own copies (Frame::map's `copied`) to what it logs or forwards.
  uint64_t bytes_copied = 0;
  bool blob = false;
  bool aliased = false;           // a 2D resource shown straight from guest memory (alias mode)
  Clock::time_point presented{};  // when the guest's flush reached the device
  // Which buffer the pixels are in: the resource's backing generation, renewed whenever its backing
  // changes (attached, detached, destroyed) and never reused by the device. (resource_id, generation)
  // names the same memory for as long as the device does not call ScanoutOutput::on_backing_gone for it.
  uint64_t generation = 0;
  // Acquire: without a timeline the pixels are complete when the frame is delivered (2D transfers and
  // guest blob writes precede the flush). A 3D scanout's frame, given to an output that
  // takes_acquire_fences(), is complete once `acquire_timeline` has signalled `acquire_point`: the
  // device reads the renderer's pixels back when the GPU work before the flush has finished.
  std::shared_ptr<const buffers::Timeline> acquire_timeline;
  uint64_t acquire_point = 0;
  // Blocks until the pixels are complete (true) or the timeout passes / the producer is gone (false).
  bool wait_acquire(int timeout_ms) const;
  // Whether the pixels are complete now (no system call).
  bool acquired() const;

  // The contiguous view (maps the pieces on first use per resource). Errors from map_scattered. Pieces
  // that are not page aligned are read into the view once per resource: `copied`, when given, grows by
  // the bytes that call copied, so the consumer can count its own copies.
  Result<std::shared_ptr<const FrameView>> map(uint64_t* copied = nullptr) const;
  // Tells the device the consumer is done with this frame. Idempotent, thread-safe.
  void release();
  bool released() const { return released_.load(std::memory_order_acquire); }

  Frame() = default;
  Frame(const Frame&) = delete;
  Frame& operator=(const Frame&) = delete;
  ~Frame() { release(); }

  // Set by the device.
  std::function<void(uint64_t token)> on_release;
  uint64_t release_token = 0;
  struct ViewCache {
    std::mutex mu;
    std::shared_ptr<const FrameView> view;
  };
  std::shared_ptr<ViewCache> view_cache;  // one per resource backing: frames of it share the view

 private:
  std::atomic<bool> released_{false};
};

struct CursorImage {
  uint32_t width = 64, height = 64;
  std::vector<uint32_t> argb;  // DRM ARGB8888, width*height
};

struct CursorUpdate {
  uint32_t scanout = 0;
  uint32_t x = 0, y = 0;
  uint32_t hot_x = 0, hot_y = 0;
  bool visible = false;
  bool image_changed = false;  // `image` is meaningful only then (UPDATE_CURSOR)
  std::shared_ptr<const CursorImage> image;
};

struct ScanoutState {
  uint32_t scanout = 0;
  bool enabled = false;
  uint32_t width = 0, height = 0;  // the scanout's rectangle size while enabled
  uint32_t resource_id = 0;
};

class ScanoutOutput {
 public:
  virtual ~ScanoutOutput() = default;
  // A scanout was enabled, resized or disabled (SET_SCANOUT / SET_SCANOUT_BLOB; resource 0 disables).
  virtual void on_scanout(const ScanoutState& state) = 0;
  // A frame to show. The consumer must release it (or drop it) eventually.
  virtual void on_frame(std::shared_ptr<Frame> frame) = 0;
  virtual void on_cursor(const CursorUpdate& cursor) = 0;
  // Frames of resource `resource_id` with backing `generation` will not come again: the memory behind
  // them may be detached, replaced or freed (frames already delivered keep their own references).
  virtual void on_backing_gone(uint32_t /*resource_id*/, uint64_t /*generation*/) {}
  // Whether this output waits for a frame's acquire point itself (true: the device may deliver 3D
  // frames before their pixels are read back; false: every frame is complete on delivery).
  virtual bool takes_acquire_fences() const { return false; }
  // The device signalled acquire points (3D read-backs done): an output holding frames for a consumer
  // that reads at once (OutputTee) hands on those now complete.
  virtual void on_acquired() {}
};

// Fans one device's output out to several consumers (e.g. the compositor and the QEMU frontend's
// display). A frame is released when every consumer has released it.
//
// Acquire points: the tee takes them for all its consumers. One that waits for them itself (the
// compositor's channel) gets each frame at once; for one that reads a frame as it arrives (the QEMU
// front-end's display, the frame log) the tee holds a frame until its point has signalled, and every
// event after it for that consumer too, so each consumer sees its events in order (on_acquired hands
// them on). At most kMaxWaiting events wait per consumer: past that (a GPU that never finishes, a guest
// moving its cursor meanwhile) everything queued goes on as it is, incomplete frames included.
class OutputTee : public ScanoutOutput {
 public:
  static constexpr size_t kMaxWaiting = 256;
  void add(ScanoutOutput* out);
  void remove(ScanoutOutput* out);
  void on_scanout(const ScanoutState& s) override;
  void on_frame(std::shared_ptr<Frame> frame) override;
  void on_cursor(const CursorUpdate& c) override;
  void on_backing_gone(uint32_t resource_id, uint64_t generation) override;
  bool takes_acquire_fences() const override { return true; }
  void on_acquired() override;
  // Frames and events held for consumers that read at once.
  size_t waiting() const;

 private:
  struct Waiting {
    std::shared_ptr<Frame> frame;  // a frame waiting for its acquire point, or
    std::function<void()> event;   // an event behind such a frame
  };
  struct Consumer {
    ScanoutOutput* out;
    std::deque<Waiting> waiting;
  };
  void hand(Consumer& c, std::shared_ptr<Frame> f);
  void pass(Consumer& c, std::function<void()> event);
  // Hands on what waits for c, up to the first incomplete frame (all: everything).
  void hand_on(Consumer& c, bool all);
  std::vector<Consumer> outs_;
};

// Headless consumer for tests and benchmarks: keeps per-scanout statistics and the last frame's
// checksum, optionally logs one line per frame / cursor event to a file, releases each frame after
// reading it (or holds it until release_held() when hold_frames is set).
class HeadlessOutput : public ScanoutOutput {
 public:
  struct Options {
    std::string log_path;  // "" = no log
    bool hold_frames = false;
    bool checksum = true;  // CRC-32 of the visible pixels (width*4 bytes per row)
    // > 0: a thread releases each frame this long after it arrived (a display that keeps showing a
    // frame until its next refresh); fenced flushes then retire at that pace.
    int release_after_ms = 0;
  };
  struct ScanoutStats {
    ScanoutState state;
    uint64_t frames = 0;
    uint64_t bytes_copied = 0;  // the frames' bytes_copied + this output's own copies (the frame log's figure)
    uint32_t last_crc = 0;
    uint32_t last_width = 0, last_height = 0, last_fourcc = 0;
    std::vector<Rect> last_damage;
    uint64_t cursor_updates = 0;
    CursorUpdate last_cursor;
  };

  HeadlessOutput() : HeadlessOutput(Options{}) {}
  explicit HeadlessOutput(Options o);
  ~HeadlessOutput() override;
  void on_scanout(const ScanoutState& s) override;
  void on_frame(std::shared_ptr<Frame> frame) override;
  void on_cursor(const CursorUpdate& c) override;

  ScanoutStats stats(uint32_t scanout) const;
  uint64_t total_frames() const;
  size_t held() const;
  void release_held();
  // Called with each frame after it was checksummed (benchmarks take their timestamp here).
  std::function<void(const Frame&)> on_frame_hook;

 private:
  void log(const char* fmt, ...) __attribute__((format(printf, 2, 3)));
  void release_loop();
  Options opt_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread releaser_;
  std::vector<ScanoutStats> stats_;
  std::vector<std::shared_ptr<Frame>> held_;
  FILE* log_ = nullptr;
};

}  // namespace canopy::gpu
