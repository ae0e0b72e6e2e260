#include "canopy/gpu/vhost_gpu.h"

#include <cstring>

#include "canopy/base/log.h"
#include "canopy/gpu/channel_output.h"
#include "canopy/transport/virtio_ring.h"
#include "control.h"
#include "frontend_display.h"

namespace canopy::gpu {

namespace vu = transport::vhost_user;

// The host-visible region as the front-end maps it (SHMEM_MAP / SHMEM_UNMAP, acknowledged).
class VhostGpu::Region final : public HostVisibleRegion {
 public:
  explicit Region(VhostGpu& g) : g_(g) {}
  uint64_t size() const override { return g_.options_.host_visible_bytes; }
  bool usable() const override {
    return (g_.acked_protocol_ & vu::proto_bit(vu::kProtoShmem)) && g_.backend_channel_ && g_.backend_channel_->valid();
  }
  Status map(uint64_t offset, int fd, uint64_t fd_offset, uint64_t len, bool writable) override {
    return request(vu::BackendRequest::kShmemMap, offset, len, fd_offset, writable ? vu::kShmemMapWritable : 0, fd);
  }
  Status unmap(uint64_t offset, uint64_t len) override {
    return request(vu::BackendRequest::kShmemUnmap, offset, len, 0, 0, -1);
  }

 private:
  Status request(vu::BackendRequest what, uint64_t offset, uint64_t len, uint64_t fd_offset, uint64_t flags, int fd) {
    if (!usable()) return make_error(Errc::kState, "no host-visible region with this front-end");
    vu::ShmemMap m{};
    m.shmid = proto::kShmIdHostVisible;
    m.fd_offset = fd_offset;
    m.shm_offset = offset;
    m.len = len;
    m.flags = flags;
    auto msg = vu::Message::make(static_cast<vu::Request>(uint32_t(what)), m);
    // A front-end that does not answer in time loses the channel rather than stall the device.
    Status s = g_.backend_channel_->request_ack(
        std::move(msg), fd >= 0 ? std::span<const int>(&fd, 1) : std::span<const int>(), kReplyTimeoutMs);
    if (!s.ok() && (s.code() == Errc::kTimeout || s.code() == Errc::kProtocol || s.code() == Errc::kClosed)) {
      CANOPY_WARN("gpu: back-end channel out of step (%s): closing it", s.error().what);
      g_.backend_channel_->close();
    }
    return s;
  }
  static constexpr int kReplyTimeoutMs = 5000;
  VhostGpu& g_;
};

Result<std::unique_ptr<VhostGpu>> VhostGpu::create(VhostGpuOptions options, ScanoutOutput* output) {
  if (!output) return make_error(Errc::kInvalidArgument, "vhost-gpu: no output");
  std::unique_ptr<VhostGpu> v(new VhostGpu());
  v->options_ = std::move(options);
  v->tee_.add(output);
  VhostGpu* self = v.get();
  std::unique_ptr<Renderer> renderer;
  if (v->options_.renderer == "virgl") {
    CANOPY_ASSIGN_OR_RETURN(renderer, make_virgl_renderer(v->options_.virgl));
    v->options_.gpu.features |= proto::kFVirgl;
  } else if (v->options_.renderer == "2d") {
    renderer = make_2d_renderer();
  } else {
    return make_error(Errc::kInvalidArgument, "vhost-gpu: renderer is 2d or virgl");
  }
  CANOPY_ASSIGN_OR_RETURN(v->gpu_,
                          GpuDevice::create(v->options_.gpu, std::move(renderer), &v->tee_,
                                            [self](uint64_t t, std::span<const uint8_t> b) { self->respond(t, b); }));
  if (v->options_.renderer != "virgl") v->options_.host_visible_bytes = 0;
  if (v->options_.host_visible_bytes % (uint64_t{2} << 20))
    return make_error(Errc::kInvalidArgument, "vhost-gpu: the host-visible region is a multiple of 2 MiB");
  if (v->options_.host_visible_bytes) {
    v->region_ = std::make_unique<Region>(*v);
    v->gpu_->set_host_visible(v->region_.get());
  }
  if (!v->options_.control_path.empty()) {
    CANOPY_ASSIGN_OR_RETURN(
        v->control_, ControlServer::listen(
                         v->options_.control_path, [self](const ControlCommand& c) { return self->control_command(c); },
                         [self] { self->rewatch(); }));
  }
  return v;
}

VhostGpu::~VhostGpu() = default;

uint64_t VhostGpu::features() const {
  return transport::kVirtioFVersion1 | transport::kVirtioFIndirectDesc | transport::kVirtioFEventIdx |
         gpu_->offered_features();
}

uint64_t VhostGpu::protocol_features() const {
  return vu::proto_bit(vu::kProtoConfig) | vu::proto_bit(vu::kProtoBackendReq) |
         (region_ ? vu::proto_bit(vu::kProtoShmem) : 0);
}

std::vector<uint64_t> VhostGpu::shmem_sizes() const {
  if (!region_) return {};
  std::vector<uint64_t> sizes(proto::kShmIdHostVisible + 1);
  sizes[proto::kShmIdHostVisible] = options_.host_visible_bytes;
  return sizes;
}

Result<std::vector<uint8_t>> VhostGpu::read_config(uint32_t offset, uint32_t size) {
  const proto::Config c = gpu_->config();
  if (uint64_t(offset) + size > sizeof c) return make_error(Errc::kOutOfRange, "gpu config: read past the end");
  std::vector<uint8_t> out(size);
  if (size) std::memcpy(out.data(), reinterpret_cast<const uint8_t*>(&c) + offset, size);
  return out;
}

Status VhostGpu::write_config(uint32_t offset, std::span<const uint8_t> data) {
  return gpu_->write_config(offset, data);
}

void VhostGpu::set_acked_features(uint64_t features) {
  acked_ = features;
  gpu_->set_acked_features(features);
}

void VhostGpu::respond(uint64_t token, std::span<const uint8_t> bytes) {
  if (token == current_token_ && current_writer_) {
    const size_t n = std::min(bytes.size(), current_writer_->remaining());
    if (n < bytes.size()) CANOPY_WARN_RL("gpu: response of %zu bytes truncated to %zu", bytes.size(), n);
    (void)current_writer_->write(bytes.data(), n);
    current_answered_ = true;
    return;
  }
  auto it = deferred_.find(token);
  if (it == deferred_.end()) return;
  Deferred& d = it->second;
  transport::DescriptorWriter wr(d.q->memory(), d.chain);
  const size_t n = std::min(bytes.size(), wr.remaining());
  (void)wr.write(bytes.data(), n);
  (void)d.q->complete(d.chain.head(), wr.bytes_written());
  deferred_.erase(it);
}

// Before the regions that went are unmapped: virglrenderer's iovecs move to the new mappings now, not
// at the next control command (venus reads guest blobs from its own threads meanwhile).
void VhostGpu::on_memory_changed(transport::GuestMemory& memory) {
  gpu_->set_memory(&memory);
  gpu_->memory_changed();
}

void VhostGpu::on_kick(vu::QueueHandle& q) {
  gpu_->set_memory(&q.memory());
  if (q.index() == 0) {
    (void)q.process([&](const transport::DescriptorChain& chain, transport::DescriptorReader& rd,
                        transport::DescriptorWriter& wr) -> Result<uint32_t> {
      const size_t n = std::min<size_t>(rd.remaining(), size_t(gpu_->caps().max_command_bytes) + 1);
      buf_.resize(n);
      CANOPY_TRY(rd.read(buf_.data(), n));
      const uint64_t token = next_token_++;
      current_token_ = token;
      current_writer_ = &wr;
      current_answered_ = false;
      gpu_->control(token, buf_, uint32_t(wr.remaining()));
      current_token_ = 0;
      current_writer_ = nullptr;
      if (current_answered_) return wr.bytes_written();
      deferred_.emplace(token, Deferred{&q, chain});
      return vu::QueueHandle::kDeferred;
    });
  } else if (q.index() == 1) {
    (void)q.process([&](const transport::DescriptorChain&, transport::DescriptorReader& rd,
                        transport::DescriptorWriter& wr) -> Result<uint32_t> {
      const size_t n = std::min<size_t>(rd.remaining(), 4096);
      buf_.resize(n);
      CANOPY_TRY(rd.read(buf_.data(), n));
      const proto::CtrlHdr resp = gpu_->cursor(buf_);
      if (wr.remaining() >= sizeof resp) CANOPY_TRY(wr.write_obj(resp));
      return wr.bytes_written();
    });
  }
  after_work();
}

void VhostGpu::after_work() {
  if (gpu_->take_config_changed() && backend_channel_ && backend_channel_->valid()) {
    auto m = vu::Message::make(static_cast<vu::Request>(uint32_t(vu::BackendRequest::kConfigChangeMsg)));
    if (!backend_channel_->send(m).ok()) CANOPY_WARN_RL("gpu: config change notification failed");
  }
}

void VhostGpu::on_queue_stopped(vu::QueueHandle& q) {
  if (q.index() != 0) return;
  if (q.resetting()) {
    deferred_.clear();
    return;
  }
  // A stop (not a reset): answer what is in flight now, so no fence is lost to the driver. The
  // frames stay with the output; their releases no longer hold anything.
  std::vector<uint64_t> tokens;
  for (auto& [t, d] : deferred_)
    if (d.q == &q) tokens.push_back(t);
  if (!tokens.empty())
    CANOPY_INFO("gpu: queue stopped with %zu fenced command(s) in flight: answering them", tokens.size());
  gpu_->force_retire();
  for (uint64_t t : tokens) deferred_.erase(t);
}

void VhostGpu::on_reset() {
  deferred_.clear();
  gpu_->reset();
}

Status VhostGpu::on_gpu_socket(UniqueFd fd) {
  auto fe = std::make_unique<FrontendDisplay>(std::move(fd), options_.mirror_to_frontend);
  if (Status s = fe->handshake(); !s.ok()) {
    CANOPY_WARN("vhost-user-gpu: display socket handshake failed: %s", s.error().what);
    return s;
  }
  CANOPY_INFO("vhost-user-gpu: front-end display connected%s",
              options_.mirror_to_frontend ? " (frames mirrored to it)" : "");
  if (frontend_) tee_.remove(frontend_.get());
  frontend_ = std::move(fe);
  tee_.add(frontend_.get());
  rewatch();
  return {};
}

Status VhostGpu::set_display(uint32_t scanout, bool connected, const DisplayMode& mode) {
  CANOPY_TRY(gpu_->set_display(scanout, connected, mode));
  after_work();
  return {};
}

void VhostGpu::attach_channel(ChannelOutput* channel) {
  channel_ = channel;
  channel->on_change = [this] { rewatch(); };
  channel->on_display = [this](uint32_t scanout, bool connected, uint32_t w, uint32_t h, uint32_t hz) {
    if (scanout >= gpu_->num_scanouts()) return;
    DisplayMode mode = connected ? DisplayMode{w, h, hz} : gpu_->display(scanout).mode;
    if (Status s = set_display(scanout, connected, mode); !s.ok())
      CANOPY_WARN("gpu: the compositor's display change for scanout %u refused: %s", scanout, s.error().what);
  };
  rewatch();
}

Result<std::string> VhostGpu::control_command(const ControlCommand& c) {
  GpuDevice& g = *gpu_;
  if (c.kind == ControlCommand::Kind::kList) {
    std::string out;
    for (uint32_t i = 0; i < g.num_scanouts(); ++i) {
      const auto d = g.display(i);
      out += std::to_string(i) + " " + std::to_string(d.mode.width) + "x" + std::to_string(d.mode.height) + "@" +
             std::to_string(d.mode.refresh_hz) + (d.connected ? " on\n" : " off\n");
    }
    return out;
  }
  if (c.scanout >= g.num_scanouts()) return make_error(Errc::kInvalidArgument, "no such scanout (see: displays)");
  const DisplayMode mode = c.connected ? c.mode : g.display(c.scanout).mode;
  CANOPY_TRY(set_display(c.scanout, c.connected, mode));
  if (c.connected) CANOPY_INFO("gpu: scanout %u now %ux%u@%u", c.scanout, mode.width, mode.height, mode.refresh_hz);
  else CANOPY_INFO("gpu: scanout %u disconnected", c.scanout);
  return std::string();
}

std::vector<vu::Device::Watch> VhostGpu::watches() {
  std::vector<Watch> w;
  w.push_back({gpu_->release_fd(), [this] {
                 gpu_->process_releases();
                 after_work();
               }});
  if (gpu_->renderer_fd() >= 0)
    w.push_back({gpu_->renderer_fd(), [this] {
                   gpu_->process_renderer();
                   after_work();
                 }});
  // The compositor's and the front-end display's releases arrive on this thread: they retire their
  // fences here, with no wake-up through release_fd().
  if (frontend_ && frontend_->alive())
    w.push_back({frontend_->fd(), [this] {
                   frontend_->on_readable();
                   gpu_->process_releases();
                   after_work();
                   if (!frontend_->alive()) rewatch();
                 }});
  if (channel_ && channel_->fd() >= 0)
    w.push_back({channel_->fd(), [this] {
                   channel_->on_readable();
                   gpu_->process_releases();
                   after_work();
                 }});
  if (control_) {
    auto c = control_->watches();
    w.insert(w.end(), std::make_move_iterator(c.begin()), std::make_move_iterator(c.end()));
  }
  return w;
}

}  // namespace canopy::gpu
