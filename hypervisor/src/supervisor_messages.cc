// canopy-vmm's supervisor: a partition's messages (the partition transport, docs/partition-transport.md)
// and its device back-ends (supervisor_impl.h).
#include "supervisor_impl.h"

namespace canopy::hypervisor {

void Supervisor::Impl::send_event(Vm& vm, DeviceBridge& d) {
  if (!vm.sock) return;
  msg::EventConfig e{};
  e.status = d.status();
  e.generation = d.config_generation();
  auto pkt = msg::encode(Type::kEventConfig, 0, d.index(), 0, Code::kOk, msg::bytes_of(e));
  if (Status s = msg::send_packet(vm.sock.get(), pkt); !s.ok())
    CANOPY_WARN_RL("vm %s: event not delivered: %s", vm.cfg.name.c_str(), s.error().what);
}

void Supervisor::Impl::restart_backend(Vm& vm, DeviceBridge& d) {
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

void Supervisor::Impl::watch_backend(Vm& vm, DeviceBridge& d) {
  watch(d.backend().pidfd(), tag(kBackendProcess, vm.index, d.index()));
  if (d.backend_request_fd() >= 0) watch(d.backend_request_fd(), tag(kBackendRequest, vm.index, d.index()));
  watch_display_link(vm, d);
}

void Supervisor::Impl::on_backend_exit(Vm& vm, DeviceBridge& d) {
  auto e = d.backend().try_reap();
  if (!e) return;  // stale event
  unwatch(d.backend_request_fd());
  unwatch(d.display_link_fd());
  if (d.backend_lost(e->to_string())) send_event(vm, d);
  if (vm.proc.running()) restart_backend(vm, d);
}

void Supervisor::Impl::after_device_request(Vm& vm, DeviceBridge& d) {
  if (d.take_pending_event()) send_event(vm, d);
  if (d.take_backend_failed() && vm.proc.running()) restart_backend(vm, d);
}

void Supervisor::Impl::reply(Vm& vm, const msg::Message& req, Code code, std::span<const uint8_t> payload,
                             std::span<const int> fds) {
  auto pkt = msg::encode(req.type(), msg::kFlagResponse, req.header.device, req.header.id, code,
                         code == Code::kOk ? payload : std::span<const uint8_t>{});
  if (Status s = msg::send_packet(vm.sock.get(), pkt, code == Code::kOk ? fds : std::span<const int>{}); !s.ok())
    CANOPY_WARN_RL("vm %s: reply dropped: %s", vm.cfg.name.c_str(), s.error().what);
}

void Supervisor::Impl::on_message(Vm& vm, msg::Message& m) {
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

void Supervisor::Impl::on_socket(Vm& vm) {
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

}  // namespace canopy::hypervisor
