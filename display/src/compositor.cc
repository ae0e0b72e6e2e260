// canopy-display's compositor: creation, the event loop and the public API (compositor_impl.h says
// where the rest lives).
#include "compositor_impl.h"

namespace canopy::display {

Status Compositor::Impl::watch(int fd) {
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.fd = fd;
  if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &e) != 0) return make_error(Errc::kIo, "epoll_ctl", errno);
  return {};
}

Status Compositor::Impl::poll_input(int wait_ms) {
  epoll_event evs[32];
  const int n = ::epoll_wait(ep.get(), evs, 32, std::max(wait_ms, 0));
  if (n < 0) {
    if (errno == EINTR) return {};
    return make_error(Errc::kIo, "epoll_wait", errno);
  }
  for (int i = 0; i < n; ++i) {
    const int fd = evs[i].data.fd;
    if (listen.valid() && fd == listen.get()) accept_all(fd, "");
    else if (auto v = vm_listen.find(fd); v != vm_listen.end()) accept_all(fd, v->second.second);
    else if (broker.valid() && fd == broker.get()) on_broker();
    else if (control.valid() && fd == control.get()) on_control();
    else if (on_control_pending(fd)) continue;
    else if (auto it = conn_by_fd.find(fd); it != conn_by_fd.end()) on_conn_readable(it->second);
    else if (auto t = timeline_by_fd.find(fd); t != timeline_by_fd.end())
      on_timeline_event(fd, t->second.first, t->second.second);
  }
  expire_silent();
  return {};
}

TimePoint Compositor::Impl::next_latch() const {
  TimePoint next = TimePoint::max();
  for (const auto& o : outputs) next = std::min(next, o.sched->next_latch());
  return next;
}

int Compositor::Impl::until_next_latch_ms() const {
  const auto d = next_latch() - clock.now();
  if (d <= std::chrono::nanoseconds(0)) return 0;
  return int(std::chrono::duration_cast<std::chrono::milliseconds>(d + std::chrono::microseconds(999)).count());
}

// ---- Compositor -----------------------------------------------------------------------------------

Result<std::unique_ptr<Compositor>> Compositor::create(Layout layout, CompositorOptions options, const Clock& clock) {
  if (layout.outputs.empty())
    return make_error(Errc::kInvalidArgument, "canopy-display: the manifest has no [[display]]");
  auto impl = std::make_unique<Impl>(std::move(layout), std::move(options), clock);
  Impl& m = *impl;
  m.epoch = clock.now();
  if (m.opt.renderer == "pixman") {
    m.renderer = make_pixman_renderer();
  } else if (m.opt.renderer == "vulkan" || m.opt.renderer == "auto") {
    // auto: Vulkan on a GPU; on a CPU-only machine pixman is faster than lavapipe.
    VulkanOptions vo;
    vo.device = m.opt.vulkan_device;
    vo.allow_cpu = m.opt.renderer == "vulkan";
    auto v = make_vulkan_renderer(vo);
    if (v.ok()) {
      m.renderer = std::move(*v);
    } else if (m.opt.renderer == "auto") {
      CANOPY_INFO("canopy-display: %s; composing with pixman", v.error().what);
      m.renderer = make_pixman_renderer();
    } else {
      return v.error();
    }
  } else {
    return make_error(Errc::kInvalidArgument, "canopy-display: unknown renderer (pixman, vulkan, auto)");
  }
  m.ep = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  if (!m.ep.valid()) return make_error(Errc::kIo, "epoll_create1", errno);
  m.outputs.resize(m.layout.outputs.size());
  std::shared_ptr<KmsCard> kms;
  for (size_t i = 0; i < m.outputs.size(); ++i) {
    const OutputSpec& spec = m.layout.outputs[i];
    auto& o = m.outputs[i];
    o.sched = std::make_unique<OutputScheduler>(spec, clock, m.opt.scheduler);
    const size_t canvas_bytes = (size_t(spec.width) * spec.height * 4 + ch::kPageSize - 1) & ~size_t(ch::kPageSize - 1);
    CANOPY_ASSIGN_OR_RETURN(auto canvas_memory, buffers::SharedMemory::create("canopy-canvas", canvas_bytes));
    CANOPY_ASSIGN_OR_RETURN(o.px, canvas_memory.map());  // the mapping outlives the memfd
    auto* px = reinterpret_cast<uint8_t*>(o.px.data());
    o.canvas = Canvas{px, spec.width, spec.height, spec.width * 4, Mapping{px, o.px.size()}};
    std::fill_n(reinterpret_cast<uint32_t*>(px), size_t(spec.width) * spec.height, m.opt.background);
    if (m.opt.make_sink) {
      o.sink = m.opt.make_sink(spec);
      if (!o.sink) return make_error(Errc::kInvalidArgument, "canopy-display: no sink for an output");
    } else if (m.opt.sinks == CompositorOptions::Sinks::kWindow) {
      CANOPY_ASSIGN_OR_RETURN(o.sink, make_window_sink("Canopy: " + spec.name, spec.width, spec.height));
    } else if (m.opt.sinks == CompositorOptions::Sinks::kKms) {
      if (!kms) {
        CANOPY_ASSIGN_OR_RETURN(kms, open_kms_card(m.opt.kms_device));
      }
      CANOPY_ASSIGN_OR_RETURN(o.sink, make_kms_sink(kms, spec.name, spec.width, spec.height));
    } else {
      o.sink = make_headless_sink();
    }
    for (const auto& l : spec.layers) {
      o.fallback.emplace_back(std::max<uint32_t>(l.dst.width, 1), std::max<uint32_t>(l.dst.height, 1));
      LayerSpec f = l;
      f.src = Rect{};
      f.rotation = Rotation::k0;
      f.alpha = 1.0;
      o.fallback_spec.push_back(f);
    }
  }
  for (const auto& o : m.outputs) m.plane_sinks |= o.sink->offers_planes();
  m.share_quotas();
  m.spare = UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (m.opt.listen_path.empty() && m.opt.listen_dir.empty() && m.opt.broker_fd < 0)
    return make_error(Errc::kInvalidArgument, "canopy-display: neither a broker link nor a socket to listen on");
  if (!m.opt.listen_dir.empty()) {
    for (const auto& [vm, usage] : m.vm_usage) {  // every VM the layout shows (share_quotas)
      CANOPY_ASSIGN_OR_RETURN(auto s, listen_seqpacket(m.opt.listen_dir + "/" + vm + ".sock", true));
      CANOPY_TRY(m.watch(s.get()));
      m.brokered.insert(vm);  // nobody else may claim it on listen_path
      const int fd = s.get();
      m.vm_listen[fd] = {std::move(s), vm};
    }
  }
  if (m.opt.broker_fd >= 0) {
    m.broker = UniqueFd(::fcntl(m.opt.broker_fd, F_DUPFD_CLOEXEC, 3));
    if (!m.broker.valid()) return make_error(Errc::kIo, "canopy-display: the broker descriptor", errno);
    CANOPY_TRY(m.watch(m.broker.get()));
  }
  if (!m.opt.listen_path.empty()) {
    CANOPY_ASSIGN_OR_RETURN(m.listen, listen_seqpacket(m.opt.listen_path, false));
    CANOPY_TRY(m.watch(m.listen.get()));
  }
  if (!m.opt.control_dir.empty()) {
    m.control_dir = UniqueFd(::open(m.opt.control_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!m.control_dir.valid()) return make_error(Errc::kIo, "canopy-display: cannot open the control folder", errno);
  }
  if (!m.opt.control_path.empty()) {
    CANOPY_ASSIGN_OR_RETURN(m.control, listen_seqpacket(m.opt.control_path, true));
    // The operator group's members may use it too: mode 0660, of that group.
    if (m.opt.control_group != gid_t(-1) && (::chown(m.opt.control_path.c_str(), uid_t(-1), m.opt.control_group) != 0 ||
                                             ::chmod(m.opt.control_path.c_str(), 0660) != 0))
      return make_error(Errc::kIo, "canopy-display: the control socket cannot be given to the operator group", errno);
    CANOPY_TRY(m.watch(m.control.get()));
  }
  return std::unique_ptr<Compositor>(new Compositor(std::move(impl)));
}

Compositor::Compositor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Compositor::~Compositor() {
  if (!impl_) return;
  if (!impl_->opt.listen_path.empty()) ::unlink(impl_->opt.listen_path.c_str());
  for (const auto& [fd, s] : impl_->vm_listen) ::unlink((impl_->opt.listen_dir + "/" + s.second + ".sock").c_str());
  if (!impl_->opt.control_path.empty()) ::unlink(impl_->opt.control_path.c_str());
}

Status Compositor::run_once(int max_wait_ms) {
  CANOPY_TRY(impl_->poll_input(std::min(max_wait_ms, impl_->until_next_latch_ms())));
  if (impl_->step_client.valid()) return impl_->step();
  return impl_->compose_due();
}

Status Compositor::poll_input(int wait_ms) { return impl_->poll_input(wait_ms); }
Status Compositor::compose_due() { return impl_->compose_due(); }
TimePoint Compositor::next_latch() const { return impl_->next_latch(); }
bool Compositor::quit_requested() const { return impl_->quit; }
bool Compositor::sinks_open() const { return impl_->sinks_open; }
const Layout& Compositor::layout() const { return impl_->layout; }
size_t Compositor::num_outputs() const { return impl_->outputs.size(); }
const Canvas& Compositor::canvas(size_t i) const { return impl_->outputs.at(i).canvas; }
const OutputStats& Compositor::output_stats(size_t i) const { return impl_->outputs.at(i).sched->stats(); }
const char* Compositor::sink_name(size_t i) const { return impl_->outputs.at(i).sink->name(); }
const char* Compositor::renderer_name() const { return impl_->renderer->name(); }
Renderer::Stats Compositor::renderer_stats() const { return impl_->renderer->stats(); }
Status Compositor::snapshot(const std::string& dir) {
  UniqueFd d(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!d.valid()) return make_error(Errc::kIo, "snapshot: cannot open the folder", errno);
  return impl_->snapshot(d.get(), false);
}
std::string Compositor::stats_text() const { return impl_->stats_text(); }
void Compositor::trace_start() { impl_->start_trace(); }
Status Compositor::trace_stop(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "we");
  if (!f) {
    impl_->tracing = false;
    impl_->trace.clear();
    return make_error(Errc::kIo, "trace: cannot write the file", errno);
  }
  return impl_->write_trace(f);
}

std::vector<ConnectionStats> Compositor::connections() const {
  std::vector<ConnectionStats> out;
  for (const auto& [id, c] : impl_->conns) {
    if (!c.hello) continue;
    out.push_back(c.stats);
    out.back().mappings = c.usage ? c.usage->mappings : 0;
    out.back().mapping_quota = c.usage ? c.usage->quota : 0;
    out.back().descriptors = c.sock.valid() ? Impl::descriptors_of(c) : 0;
  }
  return out;
}

}  // namespace canopy::display
