// canopy-vmm's supervisor: the compositor as a service it runs, and the connection broker between the
// VMs' GPU back-ends and it (canopy/protocol/broker.h, docs/security.md).
//
// The compositor gets the service end of a socketpair as descriptor 3 (--broker-fd 3); each GPU
// back-end gets a device link of its own (DeviceBridge::open_display_link). When a back-end asks for a
// connection, the supervisor makes a socketpair, sends one end to the compositor in an ADMIT that names
// the VM the device link belongs to, and the other end to the back-end. Nobody else holds an end of
// anything: no path in the filesystem leads to the compositor's device side.
#include "canopy/protocol/broker.h"
#include "supervisor_impl.h"

namespace canopy::hypervisor {

namespace bk = protocol::broker;

namespace {

// A device link may ask this often (a reconnecting back-end asks every half second at most).
constexpr size_t kLinkRequestsPerWindow = 10;
constexpr auto kLinkRequestWindow = std::chrono::seconds(10);
// The compositor is restarted after a crash this often within the window, then left down.
constexpr size_t kCompositorStarts = 3;
constexpr auto kCompositorWindow = std::chrono::seconds(30);

static_assert(uint32_t(Criticality::kSafety) == uint32_t(bk::Criticality::kSafety) &&
              uint32_t(Criticality::kHigh) == uint32_t(bk::Criticality::kHigh) &&
              uint32_t(Criticality::kNormal) == uint32_t(bk::Criticality::kNormal) &&
              uint32_t(Criticality::kLow) == uint32_t(bk::Criticality::kLow));

}  // namespace

Status Supervisor::Impl::start_compositor() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return make_error(Errc::kIo, "socketpair for the compositor's broker link failed", errno);
  UniqueFd ours(sv[0]), theirs(sv[1]);
  SpawnOptions o;
  o.path = compositor_program;
  o.argv = {compositor_program, opt.manifest_path, "--broker-fd", "3"};
  o.argv.insert(o.argv.end(), opt.compositor_args.begin(), opt.compositor_args.end());
  for (char** e = environ; *e != nullptr; ++e) o.env.emplace_back(*e);
  o.fds = {{theirs.get(), 3}};
  CANOPY_ASSIGN_OR_RETURN(compositor, spawn(o));
  // Ours never blocks the loop: a compositor that does not take its ADMITs gets its requests refused.
  (void)set_nonblocking(ours.get());
  broker = std::move(ours);
  ++compositor_status.starts;
  compositor_starts.push_back(now());
  watch(compositor.pidfd(), tag(kCompositorProcess));
  CANOPY_INFO("compositor: canopy-display started, pid %d", int(compositor.pid()));
  return {};
}

void Supervisor::Impl::stop_compositor(int grace_ms) {
  if (!compositor.running()) return;
  unwatch(compositor.pidfd());
  broker.reset();
  (void)compositor.signal(SIGTERM);
  if (!compositor.wait(grace_ms).ok()) compositor.terminate(0);
}

void Supervisor::Impl::on_compositor_exit() {
  auto e = compositor.try_reap();
  if (!e) return;
  unwatch(compositor.pidfd());
  broker.reset();
  // Its connections are gone with it: the back-ends see them close and ask for new ones.
  if (!e->signaled && e->status_known) {
    // It ended itself (its run time, `quit`, its windows closed, or an error it reported): the cockpit
    // ends with it, with its status.
    CANOPY_INFO("compositor: canopy-display ended (%s); shutting down", e->to_string().c_str());
    compositor_exit_code = e->code;
    self->shutdown_requested_ = true;
    return;
  }
  const TimePoint t = now();
  std::erase_if(compositor_starts, [&](TimePoint x) { return t - x > kCompositorWindow; });
  if (compositor_starts.size() >= kCompositorStarts) {
    CANOPY_ERROR("compositor: canopy-display failed (%s), %zu times within %lld s: left down", e->to_string().c_str(),
                 compositor_starts.size(), (long long)kCompositorWindow.count());
    return;
  }
  CANOPY_WARN("compositor: canopy-display failed (%s); restarting it", e->to_string().c_str());
  if (Status s = start_compositor(); !s.ok()) CANOPY_ERROR("compositor: restart failed: %s", s.error().what);
}

void Supervisor::Impl::watch_display_link(Vm& vm, DeviceBridge& d) {
  if (d.display_link_fd() >= 0) watch(d.display_link_fd(), tag(kDisplayLink, vm.index, d.index()));
}

void Supervisor::Impl::on_display_link(Vm& vm, DeviceBridge& d) {
  for (int n = 0; n < kMessageBudget && d.display_link_fd() >= 0; ++n) {
    const int link = d.display_link_fd();
    auto req = bk::receive(link, bk::Link::kDeviceToBroker, 0);
    if (!req.ok()) {
      if (req.error().code == Errc::kTimeout) return;
      if (req.error().code == Errc::kProtocol) {
        ++vm.bad_messages;
        CANOPY_WARN_RL("vm %s: device %s: bad broker request: %s", vm.cfg.name.c_str(), d.spec().name.c_str(),
                       req.error().what);
        continue;
      }
      // The back-end closed its end (it exited: its pidfd says so) or the link broke: nothing more from it.
      unwatch(link);
      return;
    }
    auto refuse = [&](bk::Refusal why, const char* text) {
      ++compositor_status.refused;
      CANOPY_WARN_RL("vm %s: device %s: compositor connection refused: %s", vm.cfg.name.c_str(), d.spec().name.c_str(),
                     text);
      (void)bk::send(link, bk::encode_refused(req->service, why));
    };
    auto& times = vm.link_requests[d.index()];
    const TimePoint t = now();
    std::erase_if(times, [&](TimePoint x) { return t - x > kLinkRequestWindow; });
    if (times.size() >= kLinkRequestsPerWindow) {
      refuse(bk::Refusal::kTooMany, "too many requests");
      continue;
    }
    times.push_back(t);
    if (!broker.valid()) {
      refuse(bk::Refusal::kNoService, "the compositor is not running");
      continue;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
      refuse(bk::Refusal::kBroken, "socketpair failed");
      continue;
    }
    UniqueFd service_end(sv[0]), device_end(sv[1]);
    const uint64_t serial = compositor_status.admitted + 1;
    auto admit =
        bk::encode_admit(vm.cfg.name, bk::Service::kDisplay, bk::Criticality(uint32_t(vm.cfg.criticality)), serial);
    if (!admit.ok() || !bk::send(broker.get(), *admit, service_end.get()).ok()) {
      refuse(bk::Refusal::kBroken, "the compositor does not take connections");
      continue;
    }
    service_end.reset();
    ++compositor_status.admitted;
    if (!bk::send(link, bk::encode_connected(req->service), device_end.get()).ok())
      CANOPY_WARN_RL("vm %s: device %s: the answer to its connection request was lost", vm.cfg.name.c_str(),
                     d.spec().name.c_str());
    CANOPY_INFO("vm %s: device %s: compositor connection #%llu made", vm.cfg.name.c_str(), d.spec().name.c_str(),
                (unsigned long long)serial);
  }
}

}  // namespace canopy::hypervisor
