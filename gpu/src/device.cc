// GpuDevice: creation, the control and cursor queues' entry points, dispatch, queries, config and reset
// (device_internal.h says where the rest lives).
#include "device_internal.h"

namespace canopy::gpu {

using namespace detail;  // NOLINT(google-build-using-namespace): the device's own helpers
using proto::Cmd;
using proto::Resp;

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
    // A fenced command's GPU work, or a 3D scanout's read-back (done after poll() returns: the renderer is
    // not called back into from its own callback).
    if (auto p = self->pending_.find(id); p != self->pending_.end()) {
      if (p->second->outstanding) --p->second->outstanding;
    } else if (self->readbacks_.count(id)) {
      self->readbacks_done_.push_back(id);
    }
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
  memory_changed();  // a table change a transport did not announce (tests, partitions) is seen here
  DecodeError derr{};
  auto cmd = decode(request, Queue::kControl, &derr);
  if (!cmd.ok()) {
    CANOPY_WARN_RL("gpu: bad command %#x: %s", in.type.get(), derr.why);
    send_response(token, derr.resp, in, {}, false);
    return;
  }
  const bool fenced = cmd->hdr.flags.get() & proto::kFlagFence;
  if (!fenced) {
    const Reply r = dispatch(*cmd, 0);
    if (is_error(r.type)) CANOPY_WARN_RL("gpu: %s -> %s", proto::cmd_name(in.type), proto::resp_name(uint32_t(r.type)));
    send_response(token, r.type, cmd->hdr,
                  is_error(r.type) ? std::span<const uint8_t>() : std::span<const uint8_t>(r.body), false);
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
  Reply r = early == Resp::kOkNodata ? dispatch(*cmd, id) : Reply(early);
  pp->resp = r.type;
  if (is_error(pp->resp))
    CANOPY_WARN_RL("gpu: %s -> %s", proto::cmd_name(in.type), proto::resp_name(uint32_t(pp->resp)));
  else pp->body = std::move(r.body);
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

GpuDevice::Reply GpuDevice::dispatch(const Command& c, uint64_t pending_id) {
  copy_mark_ = mem_ ? mem_->bytes_copied() : 0;
  Reply r = dispatch_command(c, pending_id);
  if (mem_) stats_.guest_copies_uncharged += mem_->bytes_copied() - copy_mark_;
  return r;
}

GpuDevice::Reply GpuDevice::dispatch_command(const Command& c, uint64_t pending_id) {
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

GpuDevice::Reply GpuDevice::get_display_info() {
  proto::DisplayOne modes[proto::kMaxScanouts] = {};
  for (size_t i = 0; i < scanouts_.size(); ++i) {
    const Scanout& s = *scanouts_[i];
    modes[i].r.width = s.mode.width;
    modes[i].r.height = s.mode.height;
    modes[i].enabled = s.connected ? 1 : 0;
  }
  const auto* b = reinterpret_cast<const uint8_t*>(modes);
  return {Resp::kOkDisplayInfo, std::vector<uint8_t>(b, b + sizeof modes)};
}

GpuDevice::Reply GpuDevice::get_edid(const Command& c) {
  if (!feature(proto::kFEdid)) return Resp::kErrUnspec;
  const auto g = c.as<proto::GetEdid>();
  if (g.scanout.get() >= scanouts_.size()) return Resp::kErrInvalidParameter;
  auto edid = make_edid(scanouts_[g.scanout]->mode, g.scanout);
  if (!edid.ok()) return Resp::kErrUnspec;
  std::vector<uint8_t> body(8 + proto::kEdidBlobSize, 0);
  const le32 size = kEdidSize;
  std::memcpy(body.data(), &size, 4);
  std::memcpy(body.data() + 8, edid->data(), kEdidSize);
  return {Resp::kOkEdid, std::move(body)};
}

GpuDevice::Reply GpuDevice::get_capset_info(const Command& c) {
  const auto g = c.as<proto::GetCapsetInfo>();
  auto info = renderer_->capset_info(g.capset_index);
  if (!info.ok()) return Resp::kErrInvalidParameter;
  proto::RespCapsetInfo r{};
  r.capset_id = info->id;
  r.capset_max_version = info->max_version;
  r.capset_max_size = info->max_size;
  const auto* b = reinterpret_cast<const uint8_t*>(&r) + sizeof r.hdr;
  return {Resp::kOkCapsetInfo, std::vector<uint8_t>(b, b + (sizeof r - sizeof r.hdr))};
}

GpuDevice::Reply GpuDevice::get_capset(const Command& c) {
  const auto g = c.as<proto::GetCapset>();
  auto data = renderer_->capset(g.capset_id, g.capset_version);
  if (!data.ok()) return Resp::kErrInvalidParameter;
  return {Resp::kOkCapset, std::move(*data)};
}

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
  // Read-backs still waiting: their frames' points are signalled now (the resources are gone).
  for (const auto& [id, rb] : readbacks_) readbacks_done_.push_back(id);
  finish_readbacks();
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
