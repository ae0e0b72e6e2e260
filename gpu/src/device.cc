#include "canopy/gpu/device.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"
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

namespace {

constexpr uint64_t kGlobalTimeline = 0;
// Host blobs are mapped and budgeted in whole pages. (Sizes are capped before this: no overflow.)
constexpr uint64_t kPage = 4096;
uint64_t whole_pages(uint64_t bytes) { return (bytes + kPage - 1) & ~(kPage - 1); }
uint64_t timeline_key(uint32_t ctx, uint8_t ring) { return (uint64_t(ctx) << 8 | ring) + 1; }
bool is_error(Resp r) { return uint32_t(r) >= uint32_t(Resp::kErrUnspec); }

bool rect_inside(const proto::Rect& r, uint32_t w, uint32_t h) {
  return uint64_t(r.x.get()) + r.width.get() <= w && uint64_t(r.y.get()) + r.height.get() <= h;
}

Rect intersect(const Rect& a, const Rect& b) {
  const uint64_t x0 = std::max(a.x, b.x), y0 = std::max(a.y, b.y);
  const uint64_t x1 = std::min(uint64_t(a.x) + a.width, uint64_t(b.x) + b.width);
  const uint64_t y1 = std::min(uint64_t(a.y) + a.height, uint64_t(b.y) + b.height);
  if (x1 <= x0 || y1 <= y0) return {};
  return {uint32_t(x0), uint32_t(y0), uint32_t(x1 - x0), uint32_t(y1 - y0)};
}

Rect to_rect(const proto::Rect& r) { return {r.x.get(), r.y.get(), r.width.get(), r.height.get()}; }

}  // namespace

GpuDevice::GpuDevice(GpuOptions options, std::unique_ptr<Renderer> renderer, ScanoutOutput* output, Respond respond)
    : options_(std::move(options)), renderer_(std::move(renderer)), output_(output), respond_(std::move(respond)) {}

GpuDevice::~GpuDevice() = default;

Result<std::unique_ptr<GpuDevice>> GpuDevice::create(GpuOptions options, std::unique_ptr<Renderer> renderer,
                                                     ScanoutOutput* output, Respond respond) {
  if (options.scanouts.empty() || options.scanouts.size() > proto::kMaxScanouts)
    return make_error(Errc::kInvalidArgument, "scanouts: 1 to 16");
  for (const auto& m : options.scanouts) CANOPY_TRY(cvt_reduced_blanking(m));
  if (!renderer || !output || !respond)
    return make_error(Errc::kInvalidArgument, "gpu: missing renderer, output or respond");
  options.features &= proto::kFEdid | proto::kFResourceUuid | proto::kFResourceBlob | proto::kFContextInit |
                      (renderer->num_capsets() ? proto::kFVirgl : 0);
  std::unique_ptr<GpuDevice> d(new GpuDevice(std::move(options), std::move(renderer), output, std::move(respond)));
  for (const auto& m : d->options_.scanouts) {
    auto s = std::make_unique<Scanout>();
    s->mode = m;
    s->cursor.scanout = uint32_t(d->scanouts_.size());
    d->scanouts_.push_back(std::move(s));
  }
  GpuDevice* self = d.get();
  d->renderer_->set_fence_callback([self](uint64_t id) {
    auto p = self->pending_.find(id);
    if (p != self->pending_.end() && p->second->outstanding) --p->second->outstanding;
  });
  d->release_event_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!d->release_event_) return make_error(Errc::kIo, "gpu: eventfd", errno);
  d->releases_ = std::make_shared<ReleaseQueue>();
  d->releases_->fd = d->release_event_.get();
  d->releases_->owner = std::this_thread::get_id();
  return d;
}

GpuStats GpuDevice::stats() const {
  GpuStats st = stats_;
  st.resources = uint32_t(resources_.size());
  st.contexts = uint32_t(contexts_.size());
  st.pending_fences = uint32_t(pending_.size());
  st.blobs_mapped = uint32_t(mapped_.size());
  return st;
}

// ---- responses and fences -------------------------------------------------------------------

void GpuDevice::send_response(uint64_t token, Resp resp, const proto::CtrlHdr& in, std::span<const uint8_t> body,
                              bool fenced) {
  // The response echoes the context and ring; a fenced one also its fence (the driver retires by it).
  proto::CtrlHdr h{};
  h.type = uint32_t(resp);
  h.ctx_id = in.ctx_id;
  h.ring_idx = in.ring_idx;
  if (fenced) {
    h.flags = in.flags.get() & (proto::kFlagFence | proto::kFlagInfoRingIdx);
    h.fence_id = in.fence_id;
  }
  std::vector<uint8_t> out(sizeof h + body.size());
  std::memcpy(out.data(), &h, sizeof h);
  if (!body.empty()) std::memcpy(out.data() + sizeof h, body.data(), body.size());
  if (is_error(resp)) ++stats_.errors;
  respond_(token, out);
}

void GpuDevice::control(uint64_t token, std::span<const uint8_t> request, uint32_t writable) {
  (void)writable;
  ++stats_.commands;
  claim_thread();
  proto::CtrlHdr in{};
  if (request.size() >= sizeof in) std::memcpy(&in, request.data(), sizeof in);
  if (request.size() > options_.caps.max_command_bytes) {
    CANOPY_WARN_RL("gpu: command of %zu bytes over the %u-byte cap", request.size(), options_.caps.max_command_bytes);
    send_response(token, Resp::kErrOutOfMemory, in, {}, false);
    return;
  }
  if (mem_ && mem_->layout() != mem_layout_) refresh_3d_backings();
  DecodeError derr{};
  auto cmd = decode(request, Queue::kControl, &derr);
  if (!cmd.ok()) {
    CANOPY_WARN_RL("gpu: bad command %#x: %s", in.type.get(), derr.why);
    send_response(token, derr.resp, in, {}, false);
    return;
  }
  const bool fenced = cmd->hdr.flags.get() & proto::kFlagFence;
  if (!fenced) {
    resp_.clear();
    const Resp r = dispatch(*cmd, 0);
    if (is_error(r)) CANOPY_WARN_RL("gpu: %s -> %s", proto::cmd_name(in.type), proto::resp_name(uint32_t(r)));
    send_response(token, r, cmd->hdr, is_error(r) ? std::span<const uint8_t>() : std::span<const uint8_t>(resp_),
                  false);
    process_releases();
    return;
  }
  // Fenced: which timeline? INFO_RING_IDX names a ring of a context (CONTEXT_INIT); an invalid one is
  // answered with an error on the global timeline, so the driver's fence still retires in order.
  uint64_t key = kGlobalTimeline;
  Resp early = Resp::kOkNodata;
  if (cmd->hdr.flags.get() & proto::kFlagInfoRingIdx) {
    if (!feature(proto::kFContextInit) || cmd->hdr.ring_idx >= proto::kMaxRings) early = Resp::kErrInvalidParameter;
    else if (!contexts_.count(cmd->hdr.ctx_id)) early = Resp::kErrInvalidContextId;
    else key = timeline_key(cmd->hdr.ctx_id, cmd->hdr.ring_idx);
  }
  const uint64_t id = next_pending_++;
  auto p = std::make_unique<Pending>();
  p->token = token;
  p->hdr = cmd->hdr;
  Pending* pp = p.get();
  pending_.emplace(id, std::move(p));
  timelines_[key].push_back(id);
  resp_.clear();
  pp->resp = early == Resp::kOkNodata ? dispatch(*cmd, id) : early;
  if (is_error(pp->resp))
    CANOPY_WARN_RL("gpu: %s -> %s", proto::cmd_name(in.type), proto::resp_name(uint32_t(pp->resp)));
  else pp->body = resp_;
  // With a 3D renderer the fence also waits for the GPU work queued so far (the command's own included).
  if (!is_error(pp->resp) && renderer_->supports_3d()) {
    // A CTX_DESTROY on its own ring leaves no ring to fence on: the renderer's global fence then.
    const bool on_ring = (cmd->hdr.flags.get() & proto::kFlagInfoRingIdx) && contexts_.count(cmd->hdr.ctx_id);
    if (renderer_->create_fence(cmd->hdr.ctx_id, cmd->hdr.ring_idx, on_ring, id).ok()) ++pp->outstanding;
  }
  pp->executed = true;
  process_releases();
  retire_ready();
}

void GpuDevice::retire_ready() {
  for (auto it = timelines_.begin(); it != timelines_.end();) {
    auto& q = it->second;
    size_t n = 0;
    while (n < q.size()) {
      auto pit = pending_.find(q[n]);
      if (pit == pending_.end()) {
        ++n;
        continue;
      }
      Pending& p = *pit->second;
      if (!p.executed || p.outstanding) break;
      ++stats_.fences_retired;
      const std::unique_ptr<Pending> done = std::move(pit->second);
      pending_.erase(pit);
      ++n;
      send_response(done->token, done->resp, done->hdr, done->body, true);
    }
    q.erase(q.begin(), q.begin() + long(n));
    it = q.empty() ? timelines_.erase(it) : std::next(it);
  }
}

void GpuDevice::force_retire() {
  for (auto& [id, p] : pending_) p->outstanding = 0;
  retire_ready();
}

void GpuDevice::claim_thread() {
  const auto me = std::this_thread::get_id();
  if (releases_->owner == me) return;  // written only here, on the device's thread
  std::lock_guard<std::mutex> lk(releases_->mu);
  releases_->owner = me;
}

void GpuDevice::take_releases(std::vector<uint64_t>& out) {
  // Releases from other threads push a token and write the eventfd under the lock; taking them drains
  // it under the same lock, so the eventfd is readable exactly while such tokens wait. The device's own
  // thread pushes without writing it. An empty queue (the common case after a command) costs no system
  // call, and neither do tokens that came without a wake-up.
  std::lock_guard<std::mutex> lk(releases_->mu);
  if (releases_->tokens.empty()) return;
  if (releases_->signalled) {
    uint64_t v;
    [[maybe_unused]] ssize_t r = read(release_event_.get(), &v, sizeof v);
    releases_->signalled = false;
    ++releases_woken_;
  } else {
    ++releases_direct_;
  }
  out.swap(releases_->tokens);
}

void GpuDevice::process_renderer() {
  renderer_->poll();
  retire_ready();
}

void GpuDevice::process_releases() {
  std::vector<uint64_t> tokens;
  take_releases(tokens);
  bool any = false;
  for (uint64_t t : tokens) {
    auto it = pending_.find(t);
    if (it == pending_.end() || it->second->outstanding == 0) continue;
    --it->second->outstanding;
    any = true;
  }
  if (any) retire_ready();
}

// ---- dispatch -------------------------------------------------------------------------------

Resp GpuDevice::dispatch(const Command& c, uint64_t pending_id) {
  copy_mark_ = mem_ ? mem_->bytes_copied() : 0;
  const Resp r = dispatch_command(c, pending_id);
  if (mem_) stats_.guest_copies_uncharged += mem_->bytes_copied() - copy_mark_;
  return r;
}

uint64_t GpuDevice::take_guest_copies() {
  if (!mem_) return 0;
  const uint64_t now = mem_->bytes_copied(), n = now - copy_mark_;
  copy_mark_ = now;
  stats_.bytes_copied += n;
  return n;
}

Resp GpuDevice::dispatch_command(const Command& c, uint64_t pending_id) {
  switch (c.type) {
    case Cmd::kGetDisplayInfo: return get_display_info();
    case Cmd::kResourceCreate2d: return resource_create_2d(c);
    case Cmd::kResourceUnref: return resource_unref(c);
    case Cmd::kSetScanout: return set_scanout(c);
    case Cmd::kResourceFlush: return resource_flush(c, pending_id);
    case Cmd::kTransferToHost2d: return transfer_to_host_2d(c);
    case Cmd::kResourceAttachBacking: return attach_backing(c);
    case Cmd::kResourceDetachBacking: return detach_backing(c);
    case Cmd::kGetCapsetInfo: return get_capset_info(c);
    case Cmd::kGetCapset: return get_capset(c);
    case Cmd::kGetEdid: return get_edid(c);
    case Cmd::kResourceAssignUuid: return assign_uuid(c);
    case Cmd::kResourceCreateBlob: return create_blob(c);
    case Cmd::kSetScanoutBlob: return set_scanout_blob(c);
    case Cmd::kCtxCreate: return ctx_create(c);
    case Cmd::kCtxDestroy: return ctx_destroy(c);
    case Cmd::kCtxAttachResource: return ctx_resource(c, true);
    case Cmd::kCtxDetachResource: return ctx_resource(c, false);
    case Cmd::kSubmit3d: return submit_3d(c);
    case Cmd::kResourceCreate3d: return resource_create_3d(c);
    case Cmd::kTransferToHost3d: return transfer_3d(c, true);
    case Cmd::kTransferFromHost3d: return transfer_3d(c, false);
    case Cmd::kResourceMapBlob: return map_blob(c);
    case Cmd::kResourceUnmapBlob: return unmap_blob(c);
    default: return Resp::kErrUnspec;
  }
}

Resp GpuDevice::get_display_info() {
  proto::DisplayOne modes[proto::kMaxScanouts] = {};
  for (size_t i = 0; i < scanouts_.size(); ++i) {
    const Scanout& s = *scanouts_[i];
    modes[i].r.width = s.mode.width;
    modes[i].r.height = s.mode.height;
    modes[i].enabled = s.connected ? 1 : 0;
  }
  resp_.resize(sizeof modes);
  std::memcpy(resp_.data(), modes, sizeof modes);
  return Resp::kOkDisplayInfo;
}

Resp GpuDevice::get_edid(const Command& c) {
  if (!feature(proto::kFEdid)) return Resp::kErrUnspec;
  const auto g = c.as<proto::GetEdid>();
  if (g.scanout.get() >= scanouts_.size()) return Resp::kErrInvalidParameter;
  auto edid = make_edid(scanouts_[g.scanout]->mode, g.scanout);
  if (!edid.ok()) return Resp::kErrUnspec;
  resp_.assign(8 + proto::kEdidBlobSize, 0);
  const le32 size = kEdidSize;
  std::memcpy(resp_.data(), &size, 4);
  std::memcpy(resp_.data() + 8, edid->data(), kEdidSize);
  return Resp::kOkEdid;
}

Resp GpuDevice::get_capset_info(const Command& c) {
  const auto g = c.as<proto::GetCapsetInfo>();
  auto info = renderer_->capset_info(g.capset_index);
  if (!info.ok()) return Resp::kErrInvalidParameter;
  proto::RespCapsetInfo r{};
  r.capset_id = info->id;
  r.capset_max_version = info->max_version;
  r.capset_max_size = info->max_size;
  resp_.resize(sizeof r - sizeof r.hdr);
  std::memcpy(resp_.data(), reinterpret_cast<const uint8_t*>(&r) + sizeof r.hdr, resp_.size());
  return Resp::kOkCapsetInfo;
}

Resp GpuDevice::get_capset(const Command& c) {
  const auto g = c.as<proto::GetCapset>();
  auto data = renderer_->capset(g.capset_id, g.capset_version);
  if (!data.ok()) return Resp::kErrInvalidParameter;
  resp_ = std::move(*data);
  return Resp::kOkCapset;
}

// ---- resources --------------------------------------------------------------------------------

Resp GpuDevice::resource_create_2d(const Command& c) {
  const auto rc = c.as<proto::ResourceCreate2d>();
  const uint32_t id = rc.resource_id;
  if (id == 0 || resources_.count(id)) return Resp::kErrInvalidResourceId;
  const uint32_t fourcc = proto::drm_fourcc(rc.format);
  if (fourcc == 0) return Resp::kErrInvalidParameter;
  const uint32_t w = rc.width, h = rc.height;
  if (w == 0 || h == 0 || w > options_.caps.max_dimension || h > options_.caps.max_dimension)
    return Resp::kErrInvalidParameter;
  if (resources_.size() >= options_.caps.max_resources) return Resp::kErrOutOfMemory;
  auto r = std::make_unique<Resource>();
  r->id = id;
  r->format = rc.format;
  r->fourcc = fourcc;
  r->width = w;
  r->height = h;
  if (const Resp hr = give_host_image(*r); hr != Resp::kOkNodata) return hr;
  resources_.emplace(id, std::move(r));
  return Resp::kOkNodata;
}

Resp GpuDevice::give_host_image(Resource& r) {
  const uint64_t bytes = uint64_t(r.width) * proto::kBytesPerPixel * r.height;
  if (stats_.host_bytes + bytes > options_.caps.max_host_bytes) return Resp::kErrOutOfMemory;
  auto host = renderer_->create_2d(r.id, r.width, r.height);
  if (!host.ok()) return Resp::kErrOutOfMemory;
  r.host = std::move(*host);
  r.host_pieces = std::make_shared<const std::vector<FramePiece>>(1, FramePiece{r.host.fd, 0, r.host.size});
  stats_.host_bytes += r.host.size;
  return Resp::kOkNodata;
}

Resp GpuDevice::create_blob(const Command& c) {
  if (!feature(proto::kFResourceBlob)) return Resp::kErrUnspec;
  const auto cb = c.as<proto::ResourceCreateBlob>();
  const uint32_t id = cb.resource_id;
  if (id == 0 || resources_.count(id)) return Resp::kErrInvalidResourceId;
  const uint32_t known = proto::kBlobFlagMappable | proto::kBlobFlagShareable | proto::kBlobFlagCrossDevice;
  if (cb.blob_flags.get() & ~known) return Resp::kErrInvalidParameter;
  if (cb.blob_mem.get() != uint32_t(proto::BlobMem::kGuest)) return create_blob_3d(c);
  if (cb.size.get() == 0 || cb.nr_entries.get() == 0) return Resp::kErrInvalidParameter;
  if (resources_.size() >= options_.caps.max_resources) return Resp::kErrOutOfMemory;
  auto r = std::make_unique<Resource>();
  r->id = id;
  r->blob = true;
  r->blob_size = cb.size;
  r->blob_flags = cb.blob_flags;
  r->blob_mem = cb.blob_mem;
  const Resp b = set_backing(*r, c.tail<proto::ResourceCreateBlob>(), cb.nr_entries);
  if (b != Resp::kOkNodata) return b;
  if (r->backing_bytes < r->blob_size) {
    free_backing(*r);
    return Resp::kErrInvalidParameter;
  }
  if (!make_pieces(*r).ok()) {
    free_backing(*r);
    return Resp::kErrUnspec;
  }
  // With a 3D renderer the blob is the renderer's too, as QEMU's virgl device has it: a context may use
  // guest memory blobs (venus's command rings where the renderer has no shared-memory blobs).
  if (renderer_->supports_3d()) {
    if (const Resp rr = give_guest_blob_to_renderer(*r, cb.hdr.ctx_id, cb.blob_id); rr != Resp::kOkNodata) {
      free_backing(*r);
      return rr;
    }
  }
  resources_.emplace(id, std::move(r));
  return Resp::kOkNodata;
}

Resp GpuDevice::give_guest_blob_to_renderer(Resource& r, uint32_t ctx_id, uint64_t blob_id) {
  std::vector<transport::GuestMemory::HostRange> iov;
  if (!backing_ranges(r, iov)) return Resp::kErrInvalidParameter;
  Blob3dArgs a;
  a.ctx_id = ctx_id;
  a.blob_mem = uint32_t(proto::BlobMem::kGuest);
  a.blob_flags = r.blob_flags;
  a.blob_id = blob_id;
  a.size = r.blob_size;
  if (Status st = renderer_->create_blob_3d(r.id, a, iov); !st.ok()) {
    CANOPY_WARN_RL("gpu: guest blob %u refused by the renderer: %s", r.id, st.error().what);
    return Resp::kErrInvalidParameter;
  }
  r.in_renderer = true;
  mem_layout_ = mem_->layout();
  return Resp::kOkNodata;
}

Resp GpuDevice::set_backing(Resource& r, std::span<const uint8_t> tail, uint32_t count) {
  std::vector<proto::MemEntry> ents;
  DecodeError err{};
  if (!decode_entries(tail, count, options_.caps.max_backing_entries, ents, &err)) return err.resp;
  if (count == 0) return Resp::kErrInvalidParameter;
  if (!mem_) return Resp::kErrUnspec;
  std::vector<transport::Segment> segs;
  segs.reserve(count);
  uint64_t total = 0;
  for (const auto& e : ents) {
    const uint64_t addr = e.addr, len = e.length;
    if (len == 0 || !checked_add(addr, len)) return Resp::kErrInvalidParameter;
    if (!mem_->contains(addr, len)) return Resp::kErrInvalidParameter;
    total += len;  // <= 16384 * 4 GiB: no overflow
    segs.push_back({addr, uint32_t(len)});
  }
  auto sorted = segs;
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.gpa < b.gpa; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i - 1].gpa + sorted[i - 1].len > sorted[i].gpa) return Resp::kErrInvalidParameter;  // overlap
  if (stats_.backing_bytes + total > options_.caps.max_backing_bytes) return Resp::kErrOutOfMemory;
  r.backing = std::move(segs);
  r.backing_end.resize(r.backing.size());
  uint64_t end = 0;
  for (size_t i = 0; i < r.backing.size(); ++i) r.backing_end[i] = end += r.backing[i].len;
  r.backing_bytes = total;
  stats_.backing_bytes += total;
  r.view = std::make_shared<Frame::ViewCache>();
  r.pieces.reset();
  return Resp::kOkNodata;
}

Status GpuDevice::make_pieces(Resource& r) {
  std::vector<std::pair<int, SharedFd>> dups;
  std::vector<FramePiece> pieces;
  for (const auto& s : r.backing) {
    CANOPY_ASSIGN_OR_RETURN(auto ranges, mem_->file_ranges(s.gpa, s.len));
    for (const auto& fr : ranges) {
      SharedFd fd;
      for (auto& [raw, sh] : dups)
        if (raw == fr.fd) fd = sh;
      if (!fd) {
        UniqueFd d(fcntl(fr.fd, F_DUPFD_CLOEXEC, 0));
        if (!d) return make_error(Errc::kIo, "gpu: dup guest memory fd", errno);
        fd = std::make_shared<const UniqueFd>(std::move(d));
        dups.emplace_back(fr.fd, fd);
      }
      if (!pieces.empty() && pieces.back().fd == fd && pieces.back().offset + pieces.back().length == fr.offset)
        pieces.back().length += fr.length;
      else pieces.push_back({fd, fr.offset, fr.length});
    }
  }
  r.pieces = std::make_shared<const std::vector<FramePiece>>(std::move(pieces));
  return {};
}

void GpuDevice::free_backing(Resource& r) {
  stats_.backing_bytes -= r.backing_bytes;
  r.backing.clear();
  r.backing_end.clear();
  r.backing_bytes = 0;
  r.pieces.reset();
  r.view = std::make_shared<Frame::ViewCache>();
}

Resp GpuDevice::attach_backing(const Command& c) {
  const auto ab = c.as<proto::ResourceAttachBacking>();
  auto it = resources_.find(ab.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (r.blob) return Resp::kErrInvalidParameter;
  if (!r.backing.empty()) return Resp::kErrUnspec;  // already attached (QEMU answers the same)
  const Resp b = set_backing(r, c.tail<proto::ResourceAttachBacking>(), ab.nr_entries);
  if (b != Resp::kOkNodata) return b;
  if (r.is3d) return attach_backing_3d(r);
  if (options_.alias_2d) (void)make_pieces(r);  // alias only where it works; copies otherwise
  return Resp::kOkNodata;
}

Resp GpuDevice::detach_backing(const Command& c) {
  const auto db = c.as<proto::ResourceDetachBacking>();
  auto it = resources_.find(db.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (r.blob) return Resp::kErrInvalidParameter;
  if (r.backing.empty()) return Resp::kErrUnspec;
  if (r.is3d) renderer_->detach_backing_3d(r.id);
  free_backing(r);
  return Resp::kOkNodata;
}

void GpuDevice::destroy_resource(uint32_t id) {
  auto it = resources_.find(id);
  if (it == resources_.end()) return;
  Resource& r = *it->second;
  for (uint32_t s = 0; s < scanouts_.size(); ++s)
    if (r.scanout_mask & (1u << s)) disable_scanout(s);
  for (auto& [cid, ctx] : contexts_) ctx->resources.erase(id);
  unmap_resource(r);
  if (r.is3d || r.in_renderer) {
    renderer_->detach_backing_3d(id);
    renderer_->destroy_3d(id);
  }
  stats_.gpu_bytes -= r.gpu_bytes;  // 0 unless the 3D budget holds it
  free_backing(r);
  stats_.host_bytes -= r.host.size;
  resources_.erase(it);
}

Resp GpuDevice::resource_unref(const Command& c) {
  const auto u = c.as<proto::ResourceUnref>();
  if (!resources_.count(u.resource_id)) return Resp::kErrInvalidResourceId;
  destroy_resource(u.resource_id);
  return Resp::kOkNodata;
}

Resp GpuDevice::assign_uuid(const Command& c) {
  if (!feature(proto::kFResourceUuid)) return Resp::kErrUnspec;
  const auto a = c.as<proto::ResourceAssignUuid>();
  auto it = resources_.find(a.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (!r.has_uuid) {
    if (getrandom(r.uuid.data(), r.uuid.size(), 0) != ssize_t(r.uuid.size())) return Resp::kErrUnspec;
    r.uuid[6] = uint8_t((r.uuid[6] & 0x0f) | 0x40);  // RFC 4122 version 4
    r.uuid[8] = uint8_t((r.uuid[8] & 0x3f) | 0x80);
    r.has_uuid = true;
  }
  resp_.assign(r.uuid.begin(), r.uuid.end());
  return Resp::kOkResourceUuid;
}

// ---- scanouts and frames ------------------------------------------------------------------------

void GpuDevice::disable_scanout(uint32_t s) {
  Scanout& sc = *scanouts_[s];
  if (sc.resource_id) {
    auto it = resources_.find(sc.resource_id);
    if (it != resources_.end()) it->second->scanout_mask &= ~(1u << s);
  }
  const bool was = sc.resource_id != 0;
  sc.resource_id = 0;
  sc.r = {};
  sc.fb = {};
  if (was) output_->on_scanout(ScanoutState{s, false, 0, 0, 0});
}

void GpuDevice::show(uint32_t s, Resource& r, const Rect& rect, const Framebuffer& fb) {
  Scanout& sc = *scanouts_[s];
  if (sc.resource_id && sc.resource_id != r.id) {
    auto old = resources_.find(sc.resource_id);
    if (old != resources_.end()) old->second->scanout_mask &= ~(1u << s);
  }
  sc.resource_id = r.id;
  sc.r = rect;
  sc.fb = fb;
  r.scanout_mask |= 1u << s;
  output_->on_scanout(ScanoutState{s, true, rect.width, rect.height, r.id});
}

Resp GpuDevice::set_scanout(const Command& c) {
  const auto ss = c.as<proto::SetScanout>();
  const uint32_t s = ss.scanout_id;
  if (s >= scanouts_.size()) return Resp::kErrInvalidScanoutId;
  if (ss.resource_id.get() == 0) {
    disable_scanout(s);
    return Resp::kOkNodata;
  }
  auto it = resources_.find(ss.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (r.blob) return Resp::kErrInvalidParameter;  // blobs are shown with SET_SCANOUT_BLOB
  if (ss.r.width.get() == 0 || ss.r.height.get() == 0 || !rect_inside(ss.r, r.width, r.height))
    return Resp::kErrInvalidParameter;
  if (r.is3d && !r.host.map.data()) {
    // A 3D resource reaches the output through a host copy, read back at each flush.
    if (r.fourcc == 0 || r.args3d.depth != 1) return Resp::kErrInvalidParameter;
    if (const Resp hr = give_host_image(r); hr != Resp::kOkNodata) return hr;
  }
  show(s, r, to_rect(ss.r), Framebuffer{false, r.fourcc, r.width * proto::kBytesPerPixel, r.width, r.height, 0});
  return Resp::kOkNodata;
}

Resp GpuDevice::set_scanout_blob(const Command& c) {
  if (!feature(proto::kFResourceBlob)) return Resp::kErrUnspec;
  const auto sb = c.as<proto::SetScanoutBlob>();
  const uint32_t s = sb.scanout_id;
  if (s >= scanouts_.size()) return Resp::kErrInvalidScanoutId;
  if (sb.resource_id.get() == 0) {
    disable_scanout(s);
    return Resp::kOkNodata;
  }
  auto it = resources_.find(sb.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  // Guest-memory blobs only: a host blob's pixels are the renderer's (not scanned out from here yet).
  if (!r.blob || r.is3d) return Resp::kErrInvalidParameter;
  const uint32_t fourcc = proto::drm_fourcc(sb.format);
  const uint32_t w = sb.width, h = sb.height, stride = sb.strides[0];
  const uint64_t offset = sb.offsets[0].get();
  if (fourcc == 0 || w == 0 || h == 0 || w > options_.caps.max_dimension || h > options_.caps.max_dimension)
    return Resp::kErrInvalidParameter;
  if (uint64_t(stride) < uint64_t(w) * proto::kBytesPerPixel) return Resp::kErrInvalidParameter;
  // The framebuffer must lie inside the blob: offset + stride * (h - 1) + w * 4 <= size.
  const uint64_t need = offset + uint64_t(stride) * (h - 1) + uint64_t(w) * proto::kBytesPerPixel;
  if (need > r.blob_size) return Resp::kErrInvalidParameter;
  if (sb.r.width.get() == 0 || sb.r.height.get() == 0 || !rect_inside(sb.r, w, h)) return Resp::kErrInvalidParameter;
  show(s, r, to_rect(sb.r), Framebuffer{true, fourcc, stride, w, h, offset});
  return Resp::kOkNodata;
}

void GpuDevice::emit_frame(uint32_t s, Resource& r, const Rect& damage_res, uint64_t pending_id) {
  Scanout& sc = *scanouts_[s];
  Rect dmg = intersect(damage_res, sc.r);
  if (dmg.empty()) return;
  dmg.x -= sc.r.x;
  dmg.y -= sc.r.y;
  auto f = std::make_shared<Frame>();
  f->scanout = s;
  f->seq = ++sc.seq;
  f->resource_id = r.id;
  f->drm_fourcc = sc.fb.fourcc;
  f->width = sc.r.width;
  f->height = sc.r.height;
  f->stride = sc.fb.stride;
  f->damage.push_back(dmg);
  f->presented = Frame::Clock::now();
  f->offset = sc.fb.offset + uint64_t(sc.r.y) * sc.fb.stride + uint64_t(sc.r.x) * proto::kBytesPerPixel;
  if (sc.fb.blob) {
    f->blob = true;
    f->pieces = r.pieces;
  } else if (aliased(r)) {
    f->aliased = true;
    f->pieces = r.pieces;
  } else {
    f->pieces = r.host_pieces;
  }
  f->view_cache = r.view;
  // Every kind of frame carries what was copied for its resource: earlier transfers and read-backs, and
  // whatever guest memory this command copied before the frame left (0 for a zero-copy path).
  r.pending_copied += take_guest_copies();
  f->bytes_copied = std::exchange(r.pending_copied, 0);
  f->release_token = pending_id;
  if (pending_id) {
    auto p = pending_.find(pending_id);
    if (p != pending_.end()) ++p->second->outstanding;
    std::weak_ptr<ReleaseQueue> wq = releases_;
    f->on_release = [wq](uint64_t token) {
      auto q = wq.lock();
      if (!q) return;
      std::lock_guard<std::mutex> lk(q->mu);
      q->tokens.push_back(token);
      // The device's own thread runs process_releases() when it is done with what released the frame;
      // only another thread needs to wake it.
      if (std::this_thread::get_id() == q->owner || q->signalled) return;
      q->signalled = true;
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = write(q->fd, &one, sizeof one);
    };
  }
  ++stats_.frames;
  output_->on_frame(std::move(f));
}

Resp GpuDevice::resource_flush(const Command& c, uint64_t pending_id) {
  const auto rf = c.as<proto::ResourceFlush>();
  auto it = resources_.find(rf.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (!r.blob && !rect_inside(rf.r, r.width, r.height)) return Resp::kErrInvalidParameter;
  const Rect dmg = to_rect(rf.r);
  // Blob flush rectangles are in the coordinates of the framebuffer each scanout shows.
  for (uint32_t s = 0; s < scanouts_.size(); ++s)
    if (r.blob && (r.scanout_mask & (1u << s)) && !rect_inside(rf.r, scanouts_[s]->fb.width, scanouts_[s]->fb.height))
      return Resp::kErrInvalidParameter;
  if (r.is3d && r.scanout_mask && r.host.map.data() && !dmg.empty()) {
    // The damaged rectangle, from the renderer into the host copy the output reads.
    uint8_t* dst = reinterpret_cast<uint8_t*>(r.host.map.data()) + uint64_t(dmg.y) * r.host.stride +
                   uint64_t(dmg.x) * proto::kBytesPerPixel;
    if (!renderer_->read_pixels(r.id, dmg, dst, r.host.stride).ok()) return Resp::kErrUnspec;
    const uint64_t copied = uint64_t(dmg.width) * proto::kBytesPerPixel * dmg.height;
    r.pending_copied += copied;
    stats_.bytes_copied += copied;
  }
  for (uint32_t s = 0; s < scanouts_.size(); ++s)
    if (r.scanout_mask & (1u << s)) emit_frame(s, r, dmg, pending_id);
  return Resp::kOkNodata;
}

bool GpuDevice::aliased(const Resource& r) const {
  return options_.alias_2d && r.pieces && r.backing_bytes >= uint64_t(r.width) * proto::kBytesPerPixel * r.height;
}

bool GpuDevice::read_backing(const Resource& r, uint64_t offset, uint8_t* dst, uint64_t len) const {
  // The entry holding `offset`, then across entries. The caller checked offset + len <= backing_bytes.
  size_t e = size_t(std::upper_bound(r.backing_end.begin(), r.backing_end.end(), offset) - r.backing_end.begin());
  while (len > 0) {
    if (e >= r.backing.size() || !mem_) return false;
    const uint64_t within = offset - (r.backing_end[e] - r.backing[e].len);
    const uint64_t n = std::min<uint64_t>(len, r.backing[e].len - within);
    if (!mem_->read(r.backing[e].gpa + within, dst, size_t(n)).ok()) return false;
    dst += n;
    offset += n;
    len -= n;
    ++e;
  }
  return true;
}

Resp GpuDevice::transfer_to_host_2d(const Command& c) {
  const auto t = c.as<proto::TransferToHost2d>();
  auto it = resources_.find(t.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  // A guest blob is its guest memory: there is no host copy to update, so a transfer has nothing to do.
  // Linux's virtio_gpu makes dumb buffers guest blobs when RESOURCE_BLOB is on (and 3D is off) and still
  // transfers them before each flush, as QEMU and crosvm accept.
  if (r.blob) return Resp::kOkNodata;
  if (r.is3d) return Resp::kErrInvalidParameter;  // TRANSFER_TO_HOST_3D for those
  if (r.backing.empty()) return Resp::kErrUnspec;
  if (!rect_inside(t.r, r.width, r.height)) return Resp::kErrInvalidParameter;
  const uint32_t w = t.r.width, h = t.r.height, x = t.r.x, y = t.r.y;
  if (w == 0 || h == 0) return Resp::kOkNodata;
  const uint64_t stride = uint64_t(r.width) * proto::kBytesPerPixel;
  const uint64_t row = uint64_t(w) * proto::kBytesPerPixel;
  // Source rows start at offset + stride * i in the backing (QEMU's and Linux's layout).
  auto last = checked_add<uint64_t>(t.offset.get(), stride * (h - 1) + row);
  if (!last || *last > r.backing_bytes) return Resp::kErrInvalidParameter;
  if (aliased(r)) return Resp::kOkNodata;
  uint8_t* host = reinterpret_cast<uint8_t*>(r.host.map.data());
  bool ok = true;
  for (uint32_t i = 0; i < h && ok; ++i) {
    uint8_t* dst = host + (uint64_t(y) + i) * r.host.stride + uint64_t(x) * proto::kBytesPerPixel;
    ok = read_backing(r, t.offset.get() + stride * i, dst, row);
  }
  // As GuestMemory counted them, not as computed; the rows copied before a failure count too.
  r.pending_copied += take_guest_copies();
  return ok ? Resp::kOkNodata : Resp::kErrUnspec;
}

// ---- contexts -----------------------------------------------------------------------------------

Resp GpuDevice::ctx_create(const Command& c) {
  const auto cc = c.as<proto::CtxCreate>();
  const uint32_t id = cc.hdr.ctx_id;
  if (id == 0 || contexts_.count(id)) return Resp::kErrInvalidContextId;
  if (cc.nlen.get() > sizeof cc.debug_name) return Resp::kErrInvalidParameter;
  const uint32_t init = cc.context_init;
  if (init & ~proto::kContextInitCapsetMask) return Resp::kErrInvalidParameter;
  if (init && !feature(proto::kFContextInit)) return Resp::kErrInvalidParameter;
  if (contexts_.size() >= options_.caps.max_contexts) return Resp::kErrOutOfMemory;
  const uint32_t capset = init & proto::kContextInitCapsetMask;
  if (!renderer_->create_context(id, capset, std::string_view(cc.debug_name, cc.nlen.get())).ok())
    return Resp::kErrInvalidParameter;
  auto ctx = std::make_unique<Context>();
  ctx->capset = capset;
  contexts_.emplace(id, std::move(ctx));
  return Resp::kOkNodata;
}

Resp GpuDevice::ctx_destroy(const Command& c) {
  const uint32_t id = c.hdr.ctx_id;
  auto it = contexts_.find(id);
  if (it == contexts_.end()) return Resp::kErrInvalidContextId;
  renderer_->destroy_context(id);
  contexts_.erase(it);
  return Resp::kOkNodata;
}

Resp GpuDevice::ctx_resource(const Command& c, bool attach) {
  const auto cr = c.as<proto::CtxResource>();
  auto it = contexts_.find(c.hdr.ctx_id);
  if (it == contexts_.end()) return Resp::kErrInvalidContextId;
  auto rit = resources_.find(cr.resource_id);
  if (rit == resources_.end()) return Resp::kErrInvalidResourceId;
  if (attach) it->second->resources.insert(cr.resource_id);
  else it->second->resources.erase(cr.resource_id);
  if (rit->second->is3d || rit->second->in_renderer) {
    if (attach) renderer_->attach_to_context(c.hdr.ctx_id, cr.resource_id);
    else renderer_->detach_from_context(c.hdr.ctx_id, cr.resource_id);
  }
  return Resp::kOkNodata;
}

Resp GpuDevice::submit_3d(const Command& c) {
  const auto s = c.as<proto::CmdSubmit>();
  if (!contexts_.count(c.hdr.ctx_id)) return Resp::kErrInvalidContextId;
  const auto tail = c.tail<proto::CmdSubmit>();
  if (s.size.get() > tail.size()) return Resp::kErrInvalidParameter;
  if (!renderer_->submit(c.hdr.ctx_id, tail.first(s.size.get())).ok()) return Resp::kErrInvalidParameter;
  return Resp::kOkNodata;
}

Resp GpuDevice::resource_create_3d(const Command& c) {
  if (!renderer_->supports_3d() || !feature(proto::kFVirgl)) return Resp::kErrUnspec;
  const auto rc = c.as<proto::ResourceCreate3d>();
  const uint32_t id = rc.resource_id;
  if (id == 0 || resources_.count(id)) return Resp::kErrInvalidResourceId;
  Resource3dArgs a;
  a.target = rc.target;
  a.format = rc.format;
  a.bind = rc.bind;
  a.width = rc.width;
  a.height = rc.height;
  a.depth = rc.depth;
  a.array_size = rc.array_size;
  a.last_level = rc.last_level;
  a.nr_samples = rc.nr_samples;
  a.flags = rc.flags;
  // Gallium's PIPE_BUFFER (target 0): width is the size in bytes, one row. Textures: each dimension
  // within max_dimension. The renderer checks the rest (target, format, bind, levels).
  constexpr uint32_t kPipeBuffer = 0;
  const uint32_t maxd = options_.caps.max_dimension;
  if (a.width == 0 || a.height == 0 || a.depth == 0 || a.array_size == 0 || a.last_level > 31 || a.nr_samples > 32)
    return Resp::kErrInvalidParameter;
  if (a.target == kPipeBuffer ? (a.height != 1 || a.depth != 1 || a.array_size != 1)
                              : (a.width > maxd || a.height > maxd || a.depth > maxd || a.array_size > maxd))
    return Resp::kErrInvalidParameter;
  uint64_t bytes = a.target == kPipeBuffer ? uint64_t(a.width) : uint64_t(a.width) * a.height * 4;
  auto more = checked_mul<uint64_t>(bytes, uint64_t(a.depth) * a.array_size * std::max<uint32_t>(a.nr_samples, 1));
  if (!more) return Resp::kErrInvalidParameter;
  bytes = *more;
  if (resources_.size() >= options_.caps.max_resources) return Resp::kErrOutOfMemory;
  if (bytes > options_.caps.max_3d_bytes || stats_.gpu_bytes + bytes > options_.caps.max_3d_bytes)
    return Resp::kErrOutOfMemory;
  if (!renderer_->create_3d(id, a).ok()) return Resp::kErrInvalidParameter;
  stats_.gpu_bytes += bytes;
  auto r = std::make_unique<Resource>();
  r->id = id;
  r->is3d = true;
  r->args3d = a;
  r->gpu_bytes = bytes;
  r->format = a.format;
  r->fourcc = proto::drm_fourcc(a.format);  // virtio-gpu's formats are Gallium's: 0 if not scanout-able
  r->width = a.width;
  r->height = a.height;
  resources_.emplace(id, std::move(r));
  return Resp::kOkNodata;
}

bool GpuDevice::backing_ranges(const Resource& r, std::vector<transport::GuestMemory::HostRange>& out) const {
  out.clear();
  for (const auto& seg : r.backing) {
    auto ranges = mem_->host_ranges(seg.gpa, seg.len);
    if (!ranges.ok()) return false;
    out.insert(out.end(), ranges->begin(), ranges->end());
  }
  return true;
}

Resp GpuDevice::attach_backing_3d(Resource& r) {
  std::vector<transport::GuestMemory::HostRange> iov;
  if (!backing_ranges(r, iov)) {
    free_backing(r);
    return Resp::kErrInvalidParameter;
  }
  if (!renderer_->attach_backing_3d(r.id, iov).ok()) {
    free_backing(r);
    return Resp::kErrUnspec;
  }
  mem_layout_ = mem_->layout();
  return Resp::kOkNodata;
}

void GpuDevice::memory_changed() {
  if (mem_ && mem_->layout() != mem_layout_) refresh_3d_backings();
}

void GpuDevice::refresh_3d_backings() {
  mem_layout_ = mem_->layout();
  for (auto& [id, r] : resources_) {
    if (r->in_renderer) {
      // A guest blob: its own pieces (for scanouts) do not move; the renderer's view of it is renewed,
      // or the renderer's copy of the resource dropped where its memory is gone.
      renderer_->detach_backing_3d(id);
      std::vector<transport::GuestMemory::HostRange> iov;
      if (!backing_ranges(*r, iov) || !renderer_->attach_backing_3d(id, iov).ok()) {
        CANOPY_WARN_RL("gpu: guest blob %u: its memory moved out of reach; the renderer no longer has it", id);
        renderer_->destroy_3d(id);
        r->in_renderer = false;
      }
      continue;
    }
    if (!r->is3d || r->backing.empty()) continue;
    renderer_->detach_backing_3d(id);
    bool inside = true;
    for (const auto& s : r->backing) inside = inside && mem_->contains(s.gpa, s.len);
    if (!inside || attach_backing_3d(*r) != Resp::kOkNodata) {
      CANOPY_WARN_RL("gpu: resource %u: its backing is no longer guest memory; detached", id);
      free_backing(*r);
    }
  }
}

// ---- host blobs and the host-visible region -----------------------------------------------------

Resp GpuDevice::create_blob_3d(const Command& c) {
  const auto cb = c.as<proto::ResourceCreateBlob>();
  const uint32_t mem = cb.blob_mem;
  if (!renderer_->supports_3d() || !feature(proto::kFVirgl)) return Resp::kErrInvalidParameter;
  if (mem != uint32_t(proto::BlobMem::kHost3d) && mem != uint32_t(proto::BlobMem::kHost3dGuest))
    return Resp::kErrInvalidParameter;
  // A host blob is a context's object (its blob_id names it there).
  if (!contexts_.count(cb.hdr.ctx_id)) return Resp::kErrInvalidContextId;
  const bool guest = mem == uint32_t(proto::BlobMem::kHost3dGuest);
  if (cb.size.get() == 0 || (guest ? cb.nr_entries.get() == 0 : cb.nr_entries.get() != 0))
    return Resp::kErrInvalidParameter;
  // Counted in pages against the 3D budget (host memory the guest makes us hold).
  if (cb.size.get() > options_.caps.max_3d_bytes) return Resp::kErrOutOfMemory;
  const uint64_t bytes = whole_pages(cb.size);
  if (stats_.gpu_bytes + bytes > options_.caps.max_3d_bytes) return Resp::kErrOutOfMemory;
  if (resources_.size() >= options_.caps.max_resources) return Resp::kErrOutOfMemory;
  auto r = std::make_unique<Resource>();
  r->id = cb.resource_id;
  r->blob = true;
  r->is3d = true;
  r->blob_size = cb.size;
  r->blob_flags = cb.blob_flags;
  r->blob_mem = mem;
  std::vector<transport::GuestMemory::HostRange> iov;
  if (guest) {
    const Resp b = set_backing(*r, c.tail<proto::ResourceCreateBlob>(), cb.nr_entries);
    if (b != Resp::kOkNodata) return b;
    if (r->backing_bytes < r->blob_size || !backing_ranges(*r, iov)) {
      free_backing(*r);
      return Resp::kErrInvalidParameter;
    }
  }
  Blob3dArgs a;
  a.ctx_id = cb.hdr.ctx_id;
  a.blob_mem = mem;
  a.blob_flags = cb.blob_flags;
  a.blob_id = cb.blob_id;
  a.size = cb.size;
  if (Status st = renderer_->create_blob_3d(r->id, a, iov); !st.ok()) {
    CANOPY_WARN_RL("gpu: host blob %u (ctx %u, blob id %llu, %llu bytes) refused: %s", r->id, a.ctx_id,
                   (unsigned long long)a.blob_id, (unsigned long long)a.size, st.error().what);
    free_backing(*r);
    return Resp::kErrInvalidParameter;
  }
  if (guest) mem_layout_ = mem_->layout();
  r->gpu_bytes = bytes;
  stats_.gpu_bytes += bytes;
  contexts_[cb.hdr.ctx_id]->resources.insert(r->id);
  resources_.emplace(r->id, std::move(r));
  return Resp::kOkNodata;
}

Resp GpuDevice::map_blob(const Command& c) {
  if (!feature(proto::kFResourceBlob)) return Resp::kErrUnspec;
  if (!host_visible_ || !host_visible_->usable()) return Resp::kErrUnspec;
  const auto m = c.as<proto::ResourceMapBlob>();
  auto it = resources_.find(m.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (!r.is3d || !r.blob || !(r.blob_flags & proto::kBlobFlagMappable) || r.mapped) return Resp::kErrInvalidParameter;
  const uint64_t offset = m.offset;
  const uint64_t len = whole_pages(r.blob_size);
  if (offset % kPage || offset > host_visible_->size() || len > host_visible_->size() - offset)
    return Resp::kErrInvalidParameter;
  // Not over another mapping (the driver allocates the region; a guest that overlaps is refused).
  auto next = mapped_.lower_bound(offset);
  if (next != mapped_.end() && next->first < offset + len) return Resp::kErrInvalidParameter;
  if (next != mapped_.begin()) {
    const auto& prev = *std::prev(next);
    if (prev.first + prev.second.second > offset) return Resp::kErrInvalidParameter;
  }
  auto ex = renderer_->export_blob(r.id);
  if (!ex.ok()) {
    CANOPY_WARN_RL("gpu: MAP_BLOB of resource %u: %s", r.id, ex.error().what);
    return Resp::kErrUnspec;
  }
  if (Status st = host_visible_->map(offset, ex->fd.get(), 0, len, true); !st.ok()) {
    CANOPY_WARN_RL("gpu: MAP_BLOB of resource %u at 0x%llx: the front-end did not map it: %s", r.id,
                   (unsigned long long)offset, st.error().what);
    return Resp::kErrUnspec;
  }
  r.mapped = true;
  r.map_offset = offset;
  r.map_len = len;
  mapped_.emplace(offset, std::make_pair(r.id, len));
  proto::RespMapInfo info{};
  info.map_info = ex->map_info;
  resp_.resize(sizeof info - sizeof info.hdr);
  std::memcpy(resp_.data(), reinterpret_cast<const uint8_t*>(&info) + sizeof info.hdr, resp_.size());
  return Resp::kOkMapInfo;
}

Resp GpuDevice::unmap_blob(const Command& c) {
  if (!feature(proto::kFResourceBlob)) return Resp::kErrUnspec;
  const auto u = c.as<proto::ResourceUnmapBlob>();
  auto it = resources_.find(u.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  if (!it->second->mapped) return Resp::kErrInvalidParameter;
  unmap_resource(*it->second);
  return Resp::kOkNodata;
}

void GpuDevice::unmap_resource(Resource& r) {
  if (!r.mapped) return;
  r.mapped = false;
  if (host_visible_) {
    if (Status st = host_visible_->unmap(r.map_offset, r.map_len); !st.ok()) {
      // The guest may still reach those pages: the range stays taken (no other blob goes there) until a
      // reset, when the front-end empties the region.
      CANOPY_WARN_RL("gpu: resource %u: the front-end did not unmap it (%s): its range stays taken until a reset", r.id,
                     st.error().what);
      mapped_[r.map_offset].first = 0;
      return;
    }
  }
  mapped_.erase(r.map_offset);
}

Resp GpuDevice::transfer_3d(const Command& c, bool to_host) {
  if (!renderer_->supports_3d() || !feature(proto::kFVirgl)) return Resp::kErrUnspec;
  const auto t = c.as<proto::TransferHost3d>();
  auto it = resources_.find(t.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (!r.is3d) return Resp::kErrInvalidParameter;
  const uint32_t ctx = c.hdr.ctx_id;
  if (ctx != 0 && !contexts_.count(ctx)) return Resp::kErrInvalidContextId;
  if (r.backing.empty()) return Resp::kErrUnspec;
  Transfer3d x;
  x.ctx_id = ctx;
  x.level = t.level;
  x.stride = t.stride;
  x.layer_stride = t.layer_stride;
  x.x = t.box.x;
  x.y = t.box.y;
  x.z = t.box.z;
  x.w = t.box.w;
  x.h = t.box.h;
  x.d = t.box.d;
  x.offset = t.offset;
  if (x.offset > r.backing_bytes) return Resp::kErrInvalidParameter;
  if (!renderer_->transfer_3d(r.id, to_host, x).ok()) return Resp::kErrInvalidParameter;
  return Resp::kOkNodata;
}

// ---- cursor -------------------------------------------------------------------------------------

proto::CtrlHdr GpuDevice::cursor(std::span<const uint8_t> request) {
  proto::CtrlHdr out{};
  auto answer = [&](Resp r) {
    out.type = uint32_t(r);
    if (is_error(r)) {
      ++stats_.errors;
      CANOPY_WARN_RL("gpu: cursor command -> %s", proto::resp_name(uint32_t(r)));
    }
    return out;
  };
  DecodeError derr{};
  auto cmd = decode(request, Queue::kCursor, &derr);
  if (!cmd.ok()) return answer(derr.resp);
  out.ctx_id = cmd->hdr.ctx_id;
  const auto u = cmd->as<proto::UpdateCursor>();
  const uint32_t s = u.pos.scanout_id;
  if (s >= scanouts_.size()) return answer(Resp::kErrInvalidScanoutId);
  CursorUpdate& cu = scanouts_[s]->cursor;
  cu.scanout = s;
  cu.x = u.pos.x;
  cu.y = u.pos.y;
  cu.image_changed = false;
  if (cmd->type == Cmd::kUpdateCursor) {
    if (u.resource_id.get() == 0) {
      cu.visible = false;
      cu.image.reset();
    } else {
      auto it = resources_.find(u.resource_id);
      if (it == resources_.end()) return answer(Resp::kErrInvalidResourceId);
      Resource& r = *it->second;
      if (r.blob || r.width != proto::kCursorSize || r.height != proto::kCursorSize)
        return answer(Resp::kErrInvalidParameter);
      auto img = std::make_shared<CursorImage>();
      img->argb.resize(size_t{proto::kCursorSize} * proto::kCursorSize);
      uint8_t* dst = reinterpret_cast<uint8_t*>(img->argb.data());
      const uint64_t image_bytes = img->argb.size() * 4;
      // Alias mode shows the guest's memory itself; otherwise the pixels were transferred to the host.
      // The guest-memory copy is counted as GuestMemory counted it (between commands: no frame gets it).
      if (r.is3d) {
        if (!renderer_
                 ->read_pixels(r.id, Rect{0, 0, proto::kCursorSize, proto::kCursorSize}, dst, proto::kCursorSize * 4)
                 .ok())
          return answer(Resp::kErrUnspec);
        stats_.cursor_bytes_copied += image_bytes;
      } else if (!aliased(r)) {
        std::memcpy(dst, r.host.map.data(), image_bytes);
        stats_.cursor_bytes_copied += image_bytes;
      } else {
        const uint64_t before = mem_ ? mem_->bytes_copied() : 0;
        const bool ok = read_backing(r, 0, dst, image_bytes);
        if (mem_) stats_.cursor_bytes_copied += mem_->bytes_copied() - before;
        if (!ok) return answer(Resp::kErrUnspec);
      }
      cu.image = std::move(img);
      cu.image_changed = true;
      cu.visible = true;
      cu.hot_x = u.hot_x;
      cu.hot_y = u.hot_y;
    }
  }
  output_->on_cursor(cu);
  return answer(Resp::kOkNodata);
}

// ---- config, display changes, reset -------------------------------------------------------------

proto::Config GpuDevice::config() const {
  proto::Config c{};
  c.events_read = events_read_;
  c.num_scanouts = uint32_t(scanouts_.size());
  c.num_capsets = renderer_->num_capsets();
  return c;
}

Status GpuDevice::write_config(uint32_t offset, std::span<const uint8_t> data) {
  if (offset != offsetof(proto::Config, events_clear) || data.size() != 4)
    return make_error(Errc::kInvalidArgument, "gpu config: only events_clear is writable");
  uint32_t v;
  std::memcpy(&v, data.data(), 4);
  events_read_ &= ~le32(v).get();
  return {};
}

Status GpuDevice::set_display(uint32_t scanout, bool connected, const DisplayMode& mode) {
  if (scanout >= scanouts_.size()) return make_error(Errc::kInvalidArgument, "gpu: no such scanout");
  CANOPY_TRY(cvt_reduced_blanking(mode));
  Scanout& s = *scanouts_[scanout];
  s.connected = connected;
  s.mode = mode;
  events_read_ |= proto::kEventDisplay;
  config_changed_ = true;
  return {};
}

GpuDevice::Display GpuDevice::display(uint32_t scanout) const {
  const Scanout& s = *scanouts_.at(scanout);
  return Display{s.connected, s.mode};
}

void GpuDevice::reset() {
  for (uint32_t s = 0; s < scanouts_.size(); ++s) disable_scanout(s);
  for (auto& [id, ctx] : contexts_) renderer_->destroy_context(id);
  contexts_.clear();
  while (!resources_.empty()) destroy_resource(resources_.begin()->first);
  mapped_.clear();  // a reset empties the front-end's region too
  pending_.clear();
  timelines_.clear();
  std::vector<uint64_t> dropped;
  take_releases(dropped);
  for (auto& s : scanouts_) {
    s->seq = 0;
    s->cursor = CursorUpdate{};
  }
  events_read_ = 0;
  config_changed_ = false;
  acked_ = 0;
}

}  // namespace canopy::gpu
