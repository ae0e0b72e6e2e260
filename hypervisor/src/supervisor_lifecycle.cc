// canopy-vmm's supervisor: starting and stopping VMs (partitions and KVM guests), exits, restarts and
// timers (supervisor_impl.h).
#include "supervisor_impl.h"

namespace canopy::hypervisor {

Status Supervisor::Impl::start(Vm& vm) {
  if (vm.proc.running()) return make_error(Errc::kState, "VM already running");
  const VmConfig& c = vm.cfg;
  if (c.backend == Backend::kKvm || (c.backend == Backend::kAuto && kvm::KvmVm::available())) return start_kvm(vm);
  // RAM: a sealed memfd (the partition cannot shrink it under a back-end's mapping).
  UniqueFd ram(memfd_create(("canopy-ram-" + c.name).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!ram) return make_error(Errc::kIo, "memfd_create failed", errno);
  if (ftruncate(ram.get(), off_t(c.memory_bytes)) != 0) return make_error(Errc::kIo, "ftruncate of RAM failed", errno);
  if (fcntl(ram.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return make_error(Errc::kIo, "sealing RAM failed", errno);
  // Those given it read-only (the compositor through canopy-gpu) cannot open it again writable.
  CANOPY_TRY(forbid_writable_reopen(ram.get()));
  const RamInfo info{ram.get(), c.memory_bytes};
  for (auto& d : vm.devices) {
    d->reset();
    if (Status s = d->start_backend(info); !s.ok()) {
      for (auto& o : vm.devices) o->stop_backend();
      return s.error();
    }
  }
  CANOPY_ASSIGN_OR_RETURN(auto pair, msg::socket_pair());
  SpawnOptions o;
  o.path = vm.program;
  o.argv = {vm.program};
  o.argv.insert(o.argv.end(), c.args.begin(), c.args.end());
  o.env = {std::string(msg::kPartitionFdEnv) + "=3", "CANOPY_VM_NAME=" + c.name};
  for (const char* keep : {"PATH", "CANOPY_LOG", "LANG", "UBSAN_OPTIONS"}) {
    if (const char* v = getenv(keep)) o.env.push_back(std::string(keep) + "=" + v);
  }
  // Sanitizer builds: LeakSanitizer stops the world with ptrace at exit, which the partition policy
  // forbids, so a confined partition runs without leak checking (ASan itself keeps working).
  std::string asan = getenv("ASAN_OPTIONS") ? getenv("ASAN_OPTIONS") : "";
  if (opt.confine) asan += std::string(asan.empty() ? "" : ":") + "detect_leaks=0";
  if (!asan.empty()) o.env.push_back("ASAN_OPTIONS=" + asan);
  o.fds = {{pair.second.get(), 3}};
  o.confine = opt.confine;
  o.read_only_fs = opt.confine;  // a partition writes no file anywhere (it has no need to)
  o.uid = opt.confine ? kPartitionUidBase + uid_t(vm.index) : 0;
  o.seccomp = opt.confine ? &filter : nullptr;
  auto child = spawn(o);
  if (!child.ok()) {
    for (auto& d : vm.devices) d->stop_backend();
    return child.error();
  }
  pair.second.reset();
  (void)fcntl(pair.first.get(), F_SETFL, O_NONBLOCK);
  vm.proc = std::move(*child);
  vm.confinement = vm.proc.confinement();
  vm.sock = std::move(pair.first);
  vm.ram = std::move(ram);
  vm.hello = false;
  vm.kill_at.reset();
  vm.progress = 0;  // progress is per incarnation
  watch(vm.sock.get(), tag(kVmSocket, vm.index));
  watch(vm.proc.pidfd(), tag(kVmProcess, vm.index));
  for (auto& d : vm.devices) watch_backend(vm, *d);
  vm.life.on_started(now());
  CANOPY_INFO("vm %s: started pid %d (%s)", c.name.c_str(), int(vm.proc.pid()), vm.confinement.c_str());
  if (self->on_vm_started) self->on_vm_started(c.name);
  return {};
}

Status Supervisor::Impl::start_kvm(Vm& vm) {
  const VmConfig& c = vm.cfg;
  if (!kvm::KvmVm::available()) return make_error(Errc::kUnsupported, "backend \"kvm\": no usable /dev/kvm");
  char self_exe[4096];
  const ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
  if (n <= 0) return make_error(Errc::kIo, "cannot find canopy-vmm's own binary", errno);
  self_exe[n] = 0;
  SpawnOptions o;
  o.path = self_exe;
  o.argv = {self_exe,    "boot",
            "--kernel",  resolve_path(c.kernel),
            "--memory",  std::to_string(c.memory_bytes),
            "--vcpus",   std::to_string(c.vcpus),
            "--cmdline", c.cmdline.empty() ? "console=ttyS0" : c.cmdline};
  if (!c.initrd.empty()) o.argv.insert(o.argv.end(), {"--initrd", resolve_path(c.initrd)});
  if (!opt.confine) o.argv.push_back("--no-sandbox");
  // What a back-end inherits (its device link to the broker, the audio policy board) goes to the child
  // canopy-vmm, which hands it on under the number the back-end expects.
  std::vector<UniqueFd> links;
  for (auto& d : vm.devices) {
    o.argv.push_back("--device");
    o.argv.push_back(d->spec().name + "=" + d->spec().program);
    for (const auto& a : d->spec().args) o.argv.insert(o.argv.end(), {"--device-arg", a});
    // Its identity: the child canopy-vmm starts it under the VM's back-end uid as this one would.
    const BackendIdentity& who = d->spec().identity;
    if (who.uid != 0) o.argv.insert(o.argv.end(), {"--device-uid", std::to_string(who.uid)});
    for (gid_t g : who.groups) o.argv.insert(o.argv.end(), {"--device-group", std::to_string(g)});
    if (who.pipewire) o.argv.push_back("--device-pipewire");
    if (!who.scratch.empty()) o.argv.insert(o.argv.end(), {"--device-scratch", who.scratch});
    auto inherit = d->spec().inherit;
    if (d->spec().display_link) {
      CANOPY_ASSIGN_OR_RETURN(auto theirs, d->open_display_link());
      o.argv.insert(o.argv.end(), {"--device-arg", "--display-fd=" + std::to_string(kDisplayLinkFd)});
      inherit.emplace_back(theirs.get(), kDisplayLinkFd);
      links.push_back(std::move(theirs));
    }
    for (const auto& [ours, target] : inherit) {
      const int n = 3 + int(o.fds.size());
      o.argv.insert(o.argv.end(), {"--device-inherit", std::to_string(n) + ":" + std::to_string(target)});
      o.fds.emplace_back(ours, n);
    }
  }
  for (char** e = environ; *e != nullptr; ++e) o.env.emplace_back(*e);
  o.env.push_back("CANOPY_VM_NAME=" + c.name);
  CANOPY_ASSIGN_OR_RETURN(vm.proc, spawn(o));
  links.clear();
  for (auto& d : vm.devices) watch_display_link(vm, *d);
  vm.confinement = "kvm";
  vm.kill_at.reset();
  vm.progress = 0;
  watch(vm.proc.pidfd(), tag(kVmProcess, vm.index));
  vm.life.on_started(now());
  if (c.watchdog_ms)
    CANOPY_WARN("vm %s: watchdog_ms applies to partitions; a KVM guest has no heartbeat", c.name.c_str());
  CANOPY_INFO("vm %s: started on KVM, pid %d", c.name.c_str(), int(vm.proc.pid()));
  if (self->on_vm_started) self->on_vm_started(c.name);
  return {};
}

std::string Supervisor::Impl::resolve_path(const std::string& p) const {
  if (p.empty() || p[0] == '/' || opt.base_dir.empty()) return p;
  return opt.base_dir + "/" + p;
}

void Supervisor::Impl::start_or_fail(Vm& vm) {
  Status s = start(vm);
  if (s.ok()) return;
  CANOPY_ERROR("vm %s: start failed: %s%s%s", vm.cfg.name.c_str(), s.error().what, s.error().sys_errno ? ": " : "",
               s.error().sys_errno ? strerror(s.error().sys_errno) : "");
  vm.life.on_started(now());
  vm.life.on_exit(now(), true, std::string("start failed: ") + s.error().what);
}

void Supervisor::Impl::cleanup(Vm& vm) {
  unwatch(vm.sock.get());
  vm.sock.reset();
  for (auto& d : vm.devices) {
    unwatch(d->backend().pidfd());
    unwatch(d->backend_request_fd());
    unwatch(d->display_link_fd());
    d->reset();
    d->stop_backend();
  }
  vm.ram.reset();
  vm.hello = false;
  vm.kill_at.reset();
}

void Supervisor::Impl::on_vm_exit(Vm& vm, const ExitInfo& e) {
  unwatch(vm.proc.pidfd());
  cleanup(vm);
  const VmState st = vm.life.on_exit(now(), !e.clean(), e.to_string());
  CANOPY_INFO("vm %s: %s -> %s", vm.cfg.name.c_str(), vm.life.last_exit().c_str(), to_string(st));
  if (vm.restart_after_stop) {
    vm.restart_after_stop = false;
    vm.life.on_operator_start();
    start_or_fail(vm);
  }
}

void Supervisor::Impl::begin_stop(Vm& vm) {
  vm.life.on_stop_requested();
  if (!vm.proc.running()) return;
  if (vm.sock) {
    auto pkt = msg::encode(Type::kEventStop, 0, 0, 0, Code::kOk, {});
    (void)msg::send_packet(vm.sock.get(), pkt);
  }
  (void)vm.proc.signal(SIGTERM);
  vm.kill_at = now() + Millis(opt.stop_grace_ms);
}

void Supervisor::Impl::due() {
  const TimePoint t = now();
  for (auto& vp : vms) {
    Vm& vm = *vp;
    if (vm.kill_at && t >= *vm.kill_at && vm.proc.running()) {
      CANOPY_WARN("vm %s: still running %d ms after the stop request; SIGKILL", vm.cfg.name.c_str(), opt.stop_grace_ms);
      (void)vm.proc.signal(SIGKILL);
      vm.kill_at.reset();
    }
    switch (vm.life.poll(t)) {
      case VmLifecycle::Action::kKillForWatchdog:
        if (vm.confinement == "kvm") {  // no heartbeats from a KVM guest (warned at start)
          vm.life.on_heartbeat(t);
          break;
        }
        CANOPY_WARN("vm %s: watchdog: no heartbeat for %u ms; killing it", vm.cfg.name.c_str(), vm.cfg.watchdog_ms);
        (void)vm.proc.signal(SIGKILL);
        break;
      case VmLifecycle::Action::kRestart:
        CANOPY_INFO("vm %s: restarting (restart %u)", vm.cfg.name.c_str(), vm.life.restarts());
        start_or_fail(vm);
        break;
      case VmLifecycle::Action::kNone: break;
    }
  }
}

int Supervisor::Impl::next_timeout_ms(int limit) const {
  std::optional<TimePoint> next;
  for (const auto& vp : vms) {
    auto consider = [&](std::optional<TimePoint> d) {
      if (d && (!next || *d < *next)) next = d;
    };
    consider(vp->life.next_deadline());
    consider(vp->kill_at);
  }
  if (!next) return limit;
  auto ms = std::chrono::duration_cast<Millis>(*next - now()).count() + 1;
  if (ms < 0) ms = 0;
  if (limit >= 0 && ms > limit) return limit;
  return int(ms);
}

}  // namespace canopy::hypervisor
