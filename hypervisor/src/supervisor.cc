// canopy-vmm's supervisor: creation from the manifest, the event loop and the public API (supervisor_impl.h
// says where the rest lives).
#include <grp.h>

#include "backend_args.h"
#include "supervisor_impl.h"

namespace canopy::hypervisor {

void Supervisor::Impl::watch(int fd, uint64_t t) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = t;
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) CANOPY_WARN("epoll_ctl ADD failed: %s", strerror(errno));
}

void Supervisor::Impl::unwatch(int fd) {
  if (fd >= 0) (void)epoll_ctl(epoll.get(), EPOLL_CTL_DEL, fd, nullptr);
}

Vm* Supervisor::Impl::find(const std::string& name) {
  for (auto& v : vms) {
    if (v->cfg.name == name) return v.get();
  }
  return nullptr;
}

void Supervisor::Impl::dispatch(uint64_t t) {
  switch (tag_kind(t)) {
    case kVmSocket: {
      Vm& vm = *vms[tag_a(t)];
      if (vm.sock) on_socket(vm);
      break;
    }
    case kVmProcess: {
      Vm& vm = *vms[tag_a(t)];
      if (auto e = vm.proc.try_reap()) on_vm_exit(vm, *e);
      break;
    }
    case kBackendProcess: {
      Vm& vm = *vms[tag_a(t)];
      const size_t d = tag_b(t);
      if (d < vm.devices.size()) on_backend_exit(vm, *vm.devices[d]);
      break;
    }
    case kBackendRequest: {
      Vm& vm = *vms[tag_a(t)];
      const size_t d = tag_b(t);
      if (d < vm.devices.size()) {
        vm.devices[d]->on_backend_request();
        after_device_request(vm, *vm.devices[d]);
      }
      break;
    }
    case kControlListen: on_control_accept(); break;
    case kControlClient: on_control_client(int(tag_b(t))); break;
    case kSignal: break;
    case kDisplayLink: {
      Vm& vm = *vms[tag_a(t)];
      const size_t d = tag_b(t);
      if (d < vm.devices.size()) on_display_link(vm, *vm.devices[d]);
      break;
    }
    case kCompositorProcess: on_compositor_exit(); break;
  }
}

// --- Supervisor --------------------------------------------------------------------------------------------

Status Supervisor::Impl::make_policy_board() {
  if (!opt.policy_board) return {};
  CANOPY_ASSIGN_OR_RETURN(auto table, config::policy_table_from_manifest(manifest));
  if (table.vms.empty()) return {};
  const auto bytes = config::encode_policy_table(table);
  policy_table = UniqueFd(memfd_create("canopy-audio-policy", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!policy_table) return make_error(Errc::kIo, "memfd_create failed", errno);
  if (pwrite(policy_table.get(), bytes.data(), bytes.size(), 0) != ssize_t(bytes.size()))
    return make_error(Errc::kIo, "writing the policy table failed", errno);
  // Nobody writes it after this, canopy-vmm included.
  if (fcntl(policy_table.get(), F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return make_error(Errc::kIo, "sealing the policy table failed", errno);
  policy_vms = table.vms;
  for (const auto& vm : table.vms) {
    UniqueFd rw(memfd_create(("canopy-audio-state-" + vm).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!rw || ftruncate(rw.get(), off_t(config::kPolicyStateBytes)) != 0 ||
        fcntl(rw.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
      return make_error(Errc::kIo, "making a policy state segment failed", errno);
    // The same file, opened again read-only: what the other VMs' back-ends get (and cannot open again
    // writable through /proc).
    CANOPY_TRY(forbid_writable_reopen(rw.get()));
    CANOPY_ASSIGN_OR_RETURN(auto ro, reopen_read_only(rw.get()));
    policy_state_rw.push_back(std::move(rw));
    policy_state_ro.push_back(std::move(ro));
  }
  return {};
}

void Supervisor::Impl::add_policy_board(const std::string& name, BackendSpec& spec) const {
  if (!policy_table) return;
  constexpr int kFirst = 5;  // after the vhost-user socket (3) and a device link (4)
  spec.inherit.emplace_back(policy_table.get(), kFirst);
  std::string states;
  for (size_t v = 0; v < policy_vms.size(); ++v) {
    const int n = kFirst + 1 + int(v);
    spec.inherit.emplace_back(policy_vms[v] == name ? policy_state_rw[v].get() : policy_state_ro[v].get(), n);
    states += (v ? "," : "") + std::to_string(n);
  }
  spec.args.insert(spec.args.begin(), {"--policy-fd=" + std::to_string(kFirst), "--policy-states=" + states});
}

BackendIdentity Supervisor::Impl::backend_identity(size_t vm_index, const std::string& type) const {
  BackendIdentity who;
  if (!opt.confine || geteuid() != 0) return who;
  who.uid = kBackendUidBase + uid_t(vm_index);
  // The render nodes only ("video" would also open the display nodes, /dev/dri/card*: the screen).
  if (type == "gpu")
    if (const group* g = getgrnam("render")) who.groups.push_back(g->gr_gid);
  who.pipewire = type == "snd";
  return who;
}

Supervisor::Supervisor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) { impl_->self = this; }

Supervisor::~Supervisor() { shutdown(); }

Result<std::unique_ptr<Supervisor>> Supervisor::create(const Manifest& m, SupervisorOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->manifest = m;
  impl->opt = std::move(options);
  impl->clock = impl->opt.clock ? impl->opt.clock : &impl->steady;
  impl->epoll.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!impl->epoll) return make_error(Errc::kIo, "epoll_create1 failed", errno);
  if (impl->opt.confine) {
    CANOPY_ASSIGN_OR_RETURN(impl->filter, partition_seccomp_filter());
  }
  if (Status s = impl->make_policy_board(); !s.ok()) {
    CANOPY_ERROR("audio policy: %s", s.error().what);
    return s.error();
  }
  if (impl->opt.compositor) {
    auto prog = resolve_program("canopy-display", impl->opt.base_dir);
    if (!prog.ok()) {
      CANOPY_ERROR("the compositor canopy-display: %s", prog.error().what);
      return prog.error();
    }
    impl->compositor_program = *prog;
  }
  for (size_t i = 0; i < m.vms.size(); ++i) {
    const VmConfig& c = m.vms[i];
    auto vm = std::make_unique<Vm>(c, i);
    if (c.backend != Backend::kKvm) {
      auto prog = resolve_program(c.app, impl->opt.base_dir);
      if (!prog.ok()) {
        CANOPY_ERROR("vm %s: app %s: %s", c.name.c_str(), c.app.c_str(), prog.error().what);
        return prog.error();
      }
      vm->program = *prog;
    }
    std::string scratch;
    if (!impl->opt.scratch_dir.empty()) {
      const uid_t owner = impl->backend_identity(i, "").uid;
      auto made = make_scratch(impl->opt.scratch_dir, c.name, owner);
      if (!made.ok()) {
        CANOPY_ERROR("vm %s: %s: %s", c.name.c_str(), made.error().what,
                     made.error().sys_errno ? strerror(made.error().sys_errno) : "");
        return made.error();
      }
      scratch = *made;
    }
    std::vector<BackendSpec> specs;
    if (c.gpu) {
      specs.push_back({"gpu", 16, c.gpu->backend, gpu_args(c, impl->opt.display_socket, impl->opt.compositor),
                       impl->opt.compositor});
    }
    if (c.snd) {
      specs.push_back({"snd", 25, c.snd->backend, snd_args(m, c)});
      impl->add_policy_board(c.name, specs.back());
    }
    for (const auto& d : c.devices) specs.push_back({d.type, d.virtio_id, d.backend, d.args});
    for (auto& s : specs) {
      auto prog = resolve_program(s.program, impl->opt.base_dir);
      if (!prog.ok()) {
        CANOPY_ERROR("vm %s: %s back-end %s: %s", c.name.c_str(), s.name.c_str(), s.program.c_str(), prog.error().what);
        return prog.error();
      }
      s.program = *prog;
      s.identity = impl->backend_identity(i, s.name);
      s.identity.scratch = scratch;
      vm->devices.push_back(std::make_unique<DeviceBridge>(s, uint16_t(vm->devices.size())));
    }
    vm->backend_restarts.resize(vm->devices.size());
    vm->link_requests.resize(vm->devices.size());
    impl->vms.push_back(std::move(vm));
  }
  CANOPY_TRY(impl->open_control());
  return std::unique_ptr<Supervisor>(new Supervisor(std::move(impl)));
}

Status Supervisor::start_services() {
  if (impl_->opt.compositor) return impl_->start_compositor();
  return {};
}

void Supervisor::start_all() {
  for (size_t i : impl_->manifest.boot_order) impl_->start_or_fail(*impl_->vms[i]);
}

void Supervisor::run_once(int timeout_ms) {
  epoll_event evs[32];
  const int wait = impl_->next_timeout_ms(timeout_ms);
  int n = epoll_wait(impl_->epoll.get(), evs, 32, wait);
  for (int i = 0; i < n; ++i) impl_->dispatch(evs[i].data.u64);
  impl_->due();
  impl_->reap_orphans();
}

void Supervisor::run(int signal_fd) {
  if (signal_fd >= 0) impl_->watch(signal_fd, tag(kSignal));
  while (!shutdown_requested_) {
    run_once(1000);
    if (signal_fd >= 0) {
      signalfd_siginfo si;
      if (read(signal_fd, &si, sizeof si) == ssize_t(sizeof si)) {
        CANOPY_INFO("signal %u: shutting down", si.ssi_signo);
        shutdown_requested_ = true;
      }
    }
  }
  if (signal_fd >= 0) impl_->unwatch(signal_fd);
}

void Supervisor::shutdown() {
  if (!impl_) return;
  auto& order = impl_->manifest.boot_order;
  for (auto it = order.rbegin(); it != order.rend(); ++it) impl_->begin_stop(*impl_->vms[*it]);
  // Every VM got its stop request at once: they share one grace period, then SIGKILL.
  const auto deadline = std::chrono::steady_clock::now() + Millis(impl_->opt.stop_grace_ms);
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Vm& vm = *impl_->vms[*it];
    if (vm.proc.running()) {
      const auto left = std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now()).count();
      if (!vm.proc.wait(int(std::max<long long>(left, 0))).ok()) vm.proc.terminate(0);
    }
    impl_->unwatch(vm.proc.pidfd());
    impl_->cleanup(vm);
  }
  // The compositor last: it outlives the VMs' last frames, and writes what it was asked to at its end.
  impl_->stop_compositor(std::max(impl_->opt.stop_grace_ms, 5000));
  impl_->kill_orphans();
  for (auto& [fd, c] : impl_->clients) impl_->unwatch(fd);
  impl_->clients.clear();
  if (impl_->control) {
    impl_->control.reset();
    unlink(impl_->opt.control_path.c_str());
  }
}

Status Supervisor::stop_vm(const std::string& name) {
  Vm* vm = impl_->find(name);
  if (vm == nullptr) return make_error(Errc::kInvalidArgument, "no such VM");
  vm->restart_after_stop = false;
  impl_->begin_stop(*vm);
  return {};
}

Status Supervisor::start_vm(const std::string& name) {
  Vm* vm = impl_->find(name);
  if (vm == nullptr) return make_error(Errc::kInvalidArgument, "no such VM");
  if (vm->proc.running()) return make_error(Errc::kState, "VM is running");
  vm->life.on_operator_start();
  return impl_->start(*vm);
}

Status Supervisor::restart_vm(const std::string& name) {
  Vm* vm = impl_->find(name);
  if (vm == nullptr) return make_error(Errc::kInvalidArgument, "no such VM");
  if (!vm->proc.running()) return start_vm(name);
  impl_->begin_stop(*vm);
  vm->restart_after_stop = true;
  return {};
}

std::vector<VmStatus> Supervisor::status() const {
  std::vector<VmStatus> out;
  for (const auto& vp : impl_->vms) {
    const Vm& vm = *vp;
    VmStatus s;
    s.name = vm.cfg.name;
    s.state = vm.life.state();
    s.pid = vm.proc.running() ? vm.proc.pid() : -1;
    s.criticality = vm.cfg.criticality;
    s.restarts = vm.life.restarts();
    s.heartbeats = vm.life.heartbeats();
    s.progress = vm.progress;
    s.watchdog_expiries = vm.life.watchdog_expiries();
    s.bad_messages = vm.bad_messages;
    s.confinement = vm.confinement;
    s.last_exit = vm.life.last_exit();
    for (const auto& d : vm.devices) {
      DeviceStatus ds;
      ds.index = d->index();
      ds.type = d->spec().name;
      ds.backend_up = d->backend_up();
      ds.backend_pid = d->backend_up() ? d->backend().pid() : -1;
      ds.backend_uid = d->spec().identity.uid != 0 ? d->spec().identity.uid : geteuid();  // set only as root
      ds.backend_starts = d->backend_starts();
      ds.status = d->status();
      ds.driver_resets = d->driver_resets();
      ds.config_changes = d->config_changes();
      s.devices.push_back(ds);
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<ServiceStatus> Supervisor::services() const {
  if (!impl_->opt.compositor) return {};
  ServiceStatus s = impl_->compositor_status;
  s.pid = impl_->compositor.running() ? impl_->compositor.pid() : -1;
  return {s};
}

int Supervisor::compositor_exit_code() const { return impl_->compositor_exit_code; }

std::string Supervisor::status_text() const {
  std::string o;
  char hex[8];
  for (const auto& s : services())
    o += "service name=" + s.name + " pid=" + std::to_string(s.pid) + " starts=" + std::to_string(s.starts) +
         " admitted=" + std::to_string(s.admitted) + " refused=" + std::to_string(s.refused) + "\n";
  for (const auto& s : status()) {
    o += "vm name=" + s.name + " state=" + to_string(s.state) + " pid=" + std::to_string(s.pid) +
         " criticality=" + to_string(s.criticality) + " restarts=" + std::to_string(s.restarts) +
         " heartbeats=" + std::to_string(s.heartbeats) + " progress=" + std::to_string(s.progress) +
         " watchdog_expiries=" + std::to_string(s.watchdog_expiries) +
         " bad_messages=" + std::to_string(s.bad_messages) + " confinement=" + quoted(s.confinement) +
         " last_exit=" + quoted(s.last_exit) + "\n";
    for (const auto& d : s.devices) {
      std::snprintf(hex, sizeof hex, "0x%02x", d.status);
      o += "device vm=" + s.name + " index=" + std::to_string(d.index) + " type=" + d.type +
           " backend_pid=" + std::to_string(d.backend_pid) + " backend_uid=" + std::to_string(d.backend_uid) +
           " backend_up=" + (d.backend_up ? "1" : "0") + " backend_starts=" + std::to_string(d.backend_starts) +
           " status=" + hex + " driver_resets=" + std::to_string(d.driver_resets) +
           " config_changes=" + std::to_string(d.config_changes) + "\n";
    }
  }
  return o;
}

}  // namespace canopy::hypervisor
