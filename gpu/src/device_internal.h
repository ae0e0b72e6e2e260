// GpuDevice's inside (internal to gpu/src): the records behind its maps (resources, scanouts, contexts,
// fenced commands) and small helpers, shared by the files that hold its parts —
//   device.cc       creation, the control and cursor entry points, dispatch, queries, config, reset;
//   fences.cc       fence timelines: fenced commands in flight, releases and renderer fences, responses;
//   resources.cc    2D / 3D / blob resources and contexts;
//   backing.cc      guest memory behind resources: backing entries, file pieces, 2D transfers, the
//                   renderer's iovecs and their renewal when the memory table changes;
//   scanouts.cc     scanouts, frames to the output, flushes and the cursor;
//   host_blobs.cc   host blobs (3D) and the host-visible region (MAP_BLOB).
#pragma once

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"
#include "canopy/gpu/device.h"
#include "canopy/transport/virtqueue.h"
#include "command.h"

namespace canopy::gpu {

using proto::Cmd;
using proto::Resp;

struct GpuDevice::Resource {
  uint32_t id = 0;
  bool blob = false;
  bool is3d = false;  // RESOURCE_CREATE_3D: lives in the renderer
  Resource3dArgs args3d;
  uint64_t gpu_bytes = 0;  // its share of GpuCaps::max_3d_bytes
  uint32_t format = 0, fourcc = 0, width = 0, height = 0;
  HostImage host;                           // 2D
  std::vector<transport::Segment> backing;  // guest-physical entries, in the guest's order
  std::vector<uint64_t> backing_end;        // running end offset of each entry
  uint64_t backing_bytes = 0;
  FramePieces pieces;       // backing as file pieces (blob, alias mode); null if none
  FramePieces host_pieces;  // the host storage (2D)
  uint64_t blob_size = 0;
  uint32_t blob_flags = 0;
  uint32_t blob_mem = 0;     // proto::BlobMem of a blob
  bool in_renderer = false;  // a guest blob the 3D renderer also has (contexts use it)
  bool mapped = false;       // in the host-visible region at map_offset
  uint64_t map_offset = 0, map_len = 0;
  bool has_uuid = false;
  std::array<uint8_t, 16> uuid{};
  uint64_t pending_copied = 0;  // transfer bytes not yet reported with a frame
  std::shared_ptr<Frame::ViewCache> view = std::make_shared<Frame::ViewCache>();
  uint64_t generation = 0;  // of the backing its frames show; 0: none given yet (the next frame takes one)
  uint32_t scanout_mask = 0;
};

struct GpuDevice::Framebuffer {
  bool blob = false;
  uint32_t fourcc = 0, stride = 0, width = 0, height = 0;
  uint64_t offset = 0;  // of pixel (0,0) in the resource's bytes
};

struct GpuDevice::Scanout {
  DisplayMode mode;
  bool connected = true;
  uint32_t resource_id = 0;
  Rect r;          // the part of the framebuffer shown
  Framebuffer fb;  // the resource, or a framebuffer inside a blob
  uint64_t seq = 0;
  CursorUpdate cursor;
  // 3D frames' acquire timeline (this device is its producer; made on the first fenced read-back and
  // kept across resets, so its values only grow) and the last point given to a frame.
  std::shared_ptr<buffers::Timeline> acquire;
  uint64_t acquire_value = 0;
};

// A 3D scanout's read-back waiting for the renderer's fence: what to read, and the acquire points it
// completes (scanout, point).
struct GpuDevice::Readback {
  uint32_t resource_id = 0;
  SharedFd host;  // the resource's host copy then: the one to read into, if it is still the resource's
  Rect rect;
  std::vector<std::pair<uint32_t, uint64_t>> points;
};

struct GpuDevice::Context {
  uint32_t capset = 0;
  std::set<uint32_t> resources;
};

struct GpuDevice::Pending {
  uint64_t token = 0;
  proto::CtrlHdr hdr{};
  Resp resp = Resp::kOkNodata;
  std::vector<uint8_t> body;
  uint32_t outstanding = 0;  // frames not released yet
  bool executed = false;
};

namespace detail {

constexpr uint64_t kGlobalTimeline = 0;
// Host blobs are mapped and budgeted in whole pages. (Sizes are capped before this: no overflow.)
constexpr uint64_t kPage = 4096;
inline uint64_t whole_pages(uint64_t bytes) { return (bytes + kPage - 1) & ~(kPage - 1); }
inline uint64_t timeline_key(uint32_t ctx, uint8_t ring) { return (uint64_t(ctx) << 8 | ring) + 1; }
inline bool is_error(Resp r) { return uint32_t(r) >= uint32_t(Resp::kErrUnspec); }

inline bool rect_inside(const proto::Rect& r, uint32_t w, uint32_t h) {
  return uint64_t(r.x.get()) + r.width.get() <= w && uint64_t(r.y.get()) + r.height.get() <= h;
}

inline Rect intersect(const Rect& a, const Rect& b) {
  const uint64_t x0 = std::max(a.x, b.x), y0 = std::max(a.y, b.y);
  const uint64_t x1 = std::min(uint64_t(a.x) + a.width, uint64_t(b.x) + b.width);
  const uint64_t y1 = std::min(uint64_t(a.y) + a.height, uint64_t(b.y) + b.height);
  if (x1 <= x0 || y1 <= y0) return {};
  return {uint32_t(x0), uint32_t(y0), uint32_t(x1 - x0), uint32_t(y1 - y0)};
}

inline Rect to_rect(const proto::Rect& r) { return {r.x.get(), r.y.get(), r.width.get(), r.height.get()}; }

}  // namespace detail

}  // namespace canopy::gpu
