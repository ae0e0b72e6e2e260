// canopy-vmm's supervisor: partitions, back-ends, lifecycle, control socket (supervisor.h).
#include "canopy/hypervisor/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <sstream>

#include "canopy/audio/config.h"
#include "canopy/base/log.h"
#include "canopy/hypervisor/process.h"
#include "canopy/hypervisor/sandbox.h"
#include "canopy/transport/virtio_msg.h"
#include "device_bridge.h"
#include "kvm/kvm_vm.h"

namespace canopy::hypervisor {

namespace msg = transport::msg;
using msg::Code;
using msg::Type;

namespace {

// canopy-snd's flags for a VM's [vm.snd] (docs/sound.md): --vm, --controls, one --stream per stream with its channel
// map and the policy of its [[audio.route]] (priority, ducking, exclusivity, the host sink), one --jack
// per jack; the manifest's own args come last.
std::vector<std::string> snd_args(const Manifest& m, const VmConfig& c) {
  // --controls: canopy-vmm's front-end sizes the config space for the controls field (16 bytes).
  std::vector<std::string> args{"--vm=" + c.name, "--controls"};
  for (const SndStream& s : c.snd->streams) {
    // The manifest's stream as canopy-snd's own configuration, written by canopy-snd's own printer.
    audio::StreamConfig sc;
    sc.name = s.name;
    sc.direction =
        s.direction == StreamDirection::kOutput ? audio::proto::Direction::kOutput : audio::proto::Direction::kInput;
    sc.channels_max = uint8_t(s.channels);
    for (uint32_t hz : s.rates) sc.rates |= 1ull << audio::proto::rate_bit(hz);  // checked by the loader
    sc.role = to_string(s.role);
    for (const std::string& p : s.positions)
      sc.positions.push_back(uint8_t(audio::proto::position_from_name(p.c_str())));
    for (const AudioRoute& r : m.audio_routes) {
      if (r.vm != c.name || r.stream != s.name) continue;
      sc.policy = {r.priority, r.duck_others, r.duck_db, r.ramp_ms, r.exclusive};
      if (r.sink != "default") sc.target = r.sink;
      break;
    }
    args.push_back("--stream=" + audio::stream_spec(sc));
  }
  for (const SndJack& j : c.snd->jacks)
    args.push_back("--jack=name=" + j.name + ",dir=" + to_string(j.direction) + ",device=" + to_string(j.device) +
                   ",connected=" + (j.connected ? "1" : "0"));
  args.insert(args.end(), c.snd->args.begin(), c.snd->args.end());
  return args;
}

enum Kind : uint64_t {
  kVmSocket = 1,
  kVmProcess,
  kBackendProcess,
  kBackendRequest,
  kControlListen,
  kControlClient,
  kSignal
};
uint64_t tag(Kind k, uint64_t a = 0, uint64_t b = 0) { return (uint64_t(k) << 56) | (a << 24) | b; }
Kind tag_kind(uint64_t t) { return Kind(t >> 56); }
uint64_t tag_a(uint64_t t) { return (t >> 24) & 0xffffffff; }
uint64_t tag_b(uint64_t t) { return t & 0xffffff; }

constexpr size_t kMaxControlRequest = 4096;

std::string quoted(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += (c == '\n') ? ' ' : c;
  }
  return o + "\"";
}

}  // namespace

struct Vm {
  VmConfig cfg;
  size_t index = 0;
  VmLifecycle life;
  UniqueFd ram;
  UniqueFd sock;
  Child proc;
  std::vector<std::unique_ptr<DeviceBridge>> devices;
  std::vector<std::vector<TimePoint>> backend_restarts;  // per device: recent restart times
  std::string program;
  bool hello = false;
  bool restart_after_stop = false;
  std::optional<TimePoint> kill_at;  // stopping: SIGKILL when still running then
  uint64_t progress = 0;
  uint64_t bad_messages = 0;
  std::string confinement;

  Vm(VmConfig c, size_t i)
      : cfg(std::move(c)), index(i), life(cfg.restart, cfg.max_restarts, Millis(cfg.watchdog_ms)) {}
};

struct Supervisor::Impl {
  Supervisor* self = nullptr;
  Manifest manifest;
  SupervisorOptions opt;
  SteadyClock steady;
  const Clock* clock = nullptr;
  std::vector<std::unique_ptr<Vm>> vms;
  std::vector<sock_filter> filter;
  UniqueFd epoll;
  UniqueFd control;
  std::map<int, UniqueFd> clients;

  TimePoint now() const { return clock->now(); }

  void watch(int fd, uint64_t t) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = t;
    if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) CANOPY_WARN("epoll_ctl ADD failed: %s", strerror(errno));
  }
  void unwatch(int fd) {
    if (fd >= 0) (void)epoll_ctl(epoll.get(), EPOLL_CTL_DEL, fd, nullptr);
  }

  Vm* find(const std::string& name) {
    for (auto& v : vms) {
      if (v->cfg.name == name) return v.get();
    }
    return nullptr;
  }

  // --- starting and stopping a VM -------------------------------------------------------------------------

  Status start(Vm& vm) {
    if (vm.proc.running()) return make_error(Errc::kState, "VM already running");
    const VmConfig& c = vm.cfg;
    if (c.backend == Backend::kKvm || (c.backend == Backend::kAuto && kvm::KvmVm::available())) return start_kvm(vm);
    // RAM: a sealed memfd (the partition cannot shrink it under a back-end's mapping).
    UniqueFd ram(memfd_create(("canopy-ram-" + c.name).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!ram) return make_error(Errc::kIo, "memfd_create failed", errno);
    if (ftruncate(ram.get(), off_t(c.memory_bytes)) != 0)
      return make_error(Errc::kIo, "ftruncate of RAM failed", errno);
    if (fcntl(ram.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
      return make_error(Errc::kIo, "sealing RAM failed", errno);
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
    o.uid = kPartitionUidBase + uid_t(vm.index);
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

  // A KVM VM is a child canopy-vmm (`canopy-vmm boot`, docs/kvm.md) that runs the guest and starts its
  // device back-ends itself: its exit status says how the guest ended (0 power-off, 3 reboot).
  Status start_kvm(Vm& vm) {
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
    for (auto& d : vm.devices) {
      o.argv.push_back("--device");
      o.argv.push_back(d->spec().name + "=" + d->spec().program);
      for (const auto& a : d->spec().args) o.argv.insert(o.argv.end(), {"--device-arg", a});
    }
    for (char** e = environ; *e != nullptr; ++e) o.env.emplace_back(*e);
    o.env.push_back("CANOPY_VM_NAME=" + c.name);
    CANOPY_ASSIGN_OR_RETURN(vm.proc, spawn(o));
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

  // A path from the manifest: relative ones are relative to the manifest's folder.
  std::string resolve_path(const std::string& p) const {
    if (p.empty() || p[0] == '/' || opt.base_dir.empty()) return p;
    return opt.base_dir + "/" + p;
  }

  // Starts a VM and feeds a failure to start into its restart policy.
  void start_or_fail(Vm& vm) {
    Status s = start(vm);
    if (s.ok()) return;
    CANOPY_ERROR("vm %s: start failed: %s%s%s", vm.cfg.name.c_str(), s.error().what, s.error().sys_errno ? ": " : "",
                 s.error().sys_errno ? strerror(s.error().sys_errno) : "");
    vm.life.on_started(now());
    vm.life.on_exit(now(), true, std::string("start failed: ") + s.error().what);
  }

  // Everything of a VM incarnation after its process is gone.
  void cleanup(Vm& vm) {
    unwatch(vm.sock.get());
    vm.sock.reset();
    for (auto& d : vm.devices) {
      unwatch(d->backend().pidfd());
      unwatch(d->backend_request_fd());
      d->reset();
      d->stop_backend();
    }
    vm.ram.reset();
    vm.hello = false;
    vm.kill_at.reset();
  }

  void on_vm_exit(Vm& vm, const ExitInfo& e) {
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

  void begin_stop(Vm& vm) {
    vm.life.on_stop_requested();
    if (!vm.proc.running()) return;
    if (vm.sock) {
      auto pkt = msg::encode(Type::kEventStop, 0, 0, 0, Code::kOk, {});
      (void)msg::send_packet(vm.sock.get(), pkt);
    }
    (void)vm.proc.signal(SIGTERM);
    vm.kill_at = now() + Millis(opt.stop_grace_ms);
  }

  // --- back-ends -----------------------------------------------------------------------------------------

  void send_event(Vm& vm, DeviceBridge& d) {
    if (!vm.sock) return;
    msg::EventConfig e{};
    e.status = d.status();
    e.generation = d.config_generation();
    auto pkt = msg::encode(Type::kEventConfig, 0, d.index(), 0, Code::kOk, msg::bytes_of(e));
    if (Status s = msg::send_packet(vm.sock.get(), pkt); !s.ok())
      CANOPY_WARN_RL("vm %s: event not delivered: %s", vm.cfg.name.c_str(), s.error().what);
  }

  void restart_backend(Vm& vm, DeviceBridge& d) {
    auto& times = vm.backend_restarts[d.index()];
    const TimePoint t = now();
    std::erase_if(times, [&](TimePoint x) { return t - x > std::chrono::seconds(10); });
    if (times.size() >= 5) {
      CANOPY_ERROR("vm %s: device %s back-end failed 5 times in 10 s; left down (restart the VM)", vm.cfg.name.c_str(),
                   d.spec().name.c_str());
      return;
    }
    times.push_back(t);
    if (Status s = d.start_backend(RamInfo{vm.ram.get(), vm.cfg.memory_bytes}); !s.ok()) {
      CANOPY_ERROR("vm %s: device %s back-end restart failed: %s", vm.cfg.name.c_str(), d.spec().name.c_str(),
                   s.error().what);
      return;
    }
    watch_backend(vm, d);
  }

  // The back-end's process (its exit) and its request channel (config changes), if it has one.
  void watch_backend(Vm& vm, DeviceBridge& d) {
    watch(d.backend().pidfd(), tag(kBackendProcess, vm.index, d.index()));
    if (d.backend_request_fd() >= 0) watch(d.backend_request_fd(), tag(kBackendRequest, vm.index, d.index()));
  }

  void on_backend_exit(Vm& vm, DeviceBridge& d) {
    auto e = d.backend().try_reap();
    if (!e) return;  // stale event
    unwatch(d.backend_request_fd());
    if (d.backend_lost(e->to_string())) send_event(vm, d);
    if (vm.proc.running()) restart_backend(vm, d);
  }

  void after_device_request(Vm& vm, DeviceBridge& d) {
    if (d.take_pending_event()) send_event(vm, d);
    if (d.take_backend_failed() && vm.proc.running()) restart_backend(vm, d);
  }

  // --- partition messages --------------------------------------------------------------------------------

  void reply(Vm& vm, const msg::Message& req, Code code, std::span<const uint8_t> payload,
             std::span<const int> fds = {}) {
    auto pkt = msg::encode(req.type(), msg::kFlagResponse, req.header.device, req.header.id, code,
                           code == Code::kOk ? payload : std::span<const uint8_t>{});
    if (Status s = msg::send_packet(vm.sock.get(), pkt, code == Code::kOk ? fds : std::span<const int>{}); !s.ok())
      CANOPY_WARN_RL("vm %s: reply dropped: %s", vm.cfg.name.c_str(), s.error().what);
  }

  void on_message(Vm& vm, msg::Message& m) {
    switch (m.type()) {
      case Type::kHeartbeat: {
        const auto h = m.as<msg::Heartbeat>();
        vm.progress = h.progress;
        vm.life.on_heartbeat(now());
        if (self->on_heartbeat) self->on_heartbeat(vm.cfg.name, vm.progress);
        return;
      }
      case Type::kHello: {
        if (m.as<msg::HelloReq>().version.get() != msg::kVersion) {
          reply(vm, m, Code::kUnsupported, {});
          return;
        }
        if (vm.hello) {
          for (auto& d : vm.devices) d->reset();  // a second HELLO starts the devices afresh
        }
        vm.hello = true;
        msg::HelloResp r{};
        r.version = msg::kVersion;
        r.num_devices = uint16_t(vm.devices.size());
        r.ram_size = vm.cfg.memory_bytes;
        const int fd = vm.ram.get();
        reply(vm, m, Code::kOk, msg::bytes_of(r), std::span<const int>(&fd, 1));
        return;
      }
      default: break;
    }
    if (!vm.hello) {
      reply(vm, m, Code::kState, {});
      return;
    }
    const uint16_t dev = m.header.device;
    if (dev >= vm.devices.size()) {
      reply(vm, m, Code::kNoDevice, {});
      return;
    }
    DeviceBridge& d = *vm.devices[dev];
    DeviceBridge::Reply r = d.handle(m);
    reply(vm, m, r.code, r.payload);
    after_device_request(vm, d);
  }

  void on_socket(Vm& vm) {
    for (int i = 0; i < kMessageBudget && vm.sock; ++i) {
      auto m = msg::receive(vm.sock.get(), msg::Direction::kToVmm, 0);
      if (!m.ok()) {
        if (m.code() == Errc::kTimeout) return;
        if (m.code() == Errc::kClosed || m.code() == Errc::kIo) {
          // The partition closed its end: nothing more to read; its exit comes through the pidfd.
          unwatch(vm.sock.get());
          vm.sock.reset();
          return;
        }
        ++vm.bad_messages;
        CANOPY_WARN_RL("vm %s: bad message dropped: %s", vm.cfg.name.c_str(), m.error().what);
        continue;
      }
      on_message(vm, *m);
    }
  }

  // --- control socket ------------------------------------------------------------------------------------

  Status open_control() {
    if (opt.control_path.empty()) return {};
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (opt.control_path.size() >= sizeof a.sun_path)
      return make_error(Errc::kInvalidArgument, "control socket path too long");
    std::memcpy(a.sun_path, opt.control_path.c_str(), opt.control_path.size() + 1);
    UniqueFd s(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!s) return make_error(Errc::kIo, "socket failed", errno);
    // A stale socket from a dead VMM is replaced; a live one is not.
    if (connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0)
      return make_error(Errc::kState, "another canopy-vmm serves this control socket");
    unlink(opt.control_path.c_str());
    const mode_t old = umask(0177);
    int rc = bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    umask(old);
    if (rc != 0) return make_error(Errc::kIo, "bind of the control socket failed", errno);
    if (listen(s.get(), 8) != 0) return make_error(Errc::kIo, "listen failed", errno);
    control = std::move(s);
    watch(control.get(), tag(kControlListen));
    return {};
  }

  void on_control_accept() {
    for (;;) {
      UniqueFd c(accept4(control.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!c) return;
      ucred cred{};
      socklen_t len = sizeof cred;
      if (getsockopt(c.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != geteuid() && cred.uid != 0)) {
        const char deny[] = "error: permission denied";
        (void)send(c.get(), deny, sizeof deny - 1, MSG_NOSIGNAL);
        continue;
      }
      const int fd = c.get();
      watch(fd, tag(kControlClient, 0, uint64_t(fd)));
      clients.emplace(fd, std::move(c));
    }
  }

  std::string command(const std::string& line) {
    std::istringstream in(line);
    std::string verb, name, extra;
    in >> verb >> name >> extra;
    if (!extra.empty()) return "error: too many arguments";
    if (verb == "status" && name.empty()) return self->status_text();
    if (verb == "shutdown" && name.empty()) {
      self->shutdown_requested_ = true;
      return "ok shutting down";
    }
    if (verb == "stop" || verb == "start" || verb == "restart") {
      if (name.empty()) return "error: " + verb + " needs a VM name";
      Status s = verb == "stop" ? self->stop_vm(name) : verb == "start" ? self->start_vm(name) : self->restart_vm(name);
      if (!s.ok()) return std::string("error: ") + s.error().what;
      return "ok " + verb + " " + name;
    }
    return "error: unknown command (status, stop VM, start VM, restart VM, shutdown)";
  }

  void on_control_client(int fd) {
    auto it = clients.find(fd);
    if (it == clients.end()) return;
    char buf[kMaxControlRequest + 1];
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
      unwatch(fd);
      clients.erase(it);
      return;
    }
    std::string out;
    if (size_t(n) > kMaxControlRequest) {
      out = "error: request over 4096 bytes";
    } else {
      std::string line(buf, size_t(n));
      while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
      out = command(line);
    }
    (void)send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  }

  // --- the loop ------------------------------------------------------------------------------------------

  void due() {
    const TimePoint t = now();
    for (auto& vp : vms) {
      Vm& vm = *vp;
      if (vm.kill_at && t >= *vm.kill_at && vm.proc.running()) {
        CANOPY_WARN("vm %s: still running %d ms after the stop request; SIGKILL", vm.cfg.name.c_str(),
                    opt.stop_grace_ms);
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

  int next_timeout_ms(int limit) const {
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

  void dispatch(uint64_t t) {
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
    }
  }
};

// --- Supervisor --------------------------------------------------------------------------------------------

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
    std::vector<BackendSpec> specs;
    if (c.gpu) {
      // The manifest's scanouts become canopy-gpu's flags; the manifest's own args come last.
      std::vector<std::string> args{"--scanouts=" + std::to_string(c.gpu->scanouts.size())};
      for (size_t k = 0; k < c.gpu->scanouts.size(); ++k) {
        const auto& s = c.gpu->scanouts[k];
        args.push_back("--scanout-mode=" + std::to_string(k) + ":" + std::to_string(s.width) + "x" +
                       std::to_string(s.height) + "@" + std::to_string(s.refresh_hz));
      }
      if (!impl->opt.display_socket.empty()) {
        args.push_back("--display-socket=" + impl->opt.display_socket);
        args.push_back("--vm=" + c.name);
      }
      args.insert(args.end(), c.gpu->args.begin(), c.gpu->args.end());
      specs.push_back({"gpu", 16, c.gpu->backend, args});
    }
    if (c.snd) specs.push_back({"snd", 25, c.snd->backend, snd_args(m, c)});
    for (const auto& d : c.devices) specs.push_back({d.type, d.virtio_id, d.backend, d.args});
    for (auto& s : specs) {
      auto prog = resolve_program(s.program, impl->opt.base_dir);
      if (!prog.ok()) {
        CANOPY_ERROR("vm %s: %s back-end %s: %s", c.name.c_str(), s.name.c_str(), s.program.c_str(), prog.error().what);
        return prog.error();
      }
      s.program = *prog;
      vm->devices.push_back(std::make_unique<DeviceBridge>(s, uint16_t(vm->devices.size())));
    }
    vm->backend_restarts.resize(vm->devices.size());
    impl->vms.push_back(std::move(vm));
  }
  CANOPY_TRY(impl->open_control());
  return std::unique_ptr<Supervisor>(new Supervisor(std::move(impl)));
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

std::string Supervisor::status_text() const {
  std::string o;
  char hex[8];
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
           " backend_pid=" + std::to_string(d.backend_pid) + " backend_up=" + (d.backend_up ? "1" : "0") +
           " backend_starts=" + std::to_string(d.backend_starts) + " status=" + hex +
           " driver_resets=" + std::to_string(d.driver_resets) + " config_changes=" + std::to_string(d.config_changes) +
           "\n";
    }
  }
  return o;
}

}  // namespace canopy::hypervisor
