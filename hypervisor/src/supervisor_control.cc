// canopy-vmm's supervisor: the control socket canopyctl talks to (supervisor_impl.h).
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "canopy/base/peer.h"
#include "supervisor_impl.h"

namespace canopy::hypervisor {

Status Supervisor::Impl::open_control() {
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
  const bool group = opt.control_group != gid_t(-1);
  const mode_t old = umask(group ? 0117 : 0177);
  int rc = bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  umask(old);
  if (rc != 0) return make_error(Errc::kIo, "bind of the control socket failed", errno);
  if (group && chown(opt.control_path.c_str(), uid_t(-1), opt.control_group) != 0)
    return make_error(Errc::kIo, "the control socket cannot be given to the operator group", errno);
  if (listen(s.get(), 8) != 0) return make_error(Errc::kIo, "listen failed", errno);
  control = std::move(s);
  watch(control.get(), tag(kControlListen));
  return {};
}

void Supervisor::Impl::reap_orphans() {
  if (!opt.subreaper) return;
  for (int n = 0; n < 64; ++n) {
    siginfo_t si{};
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0) return;
    const pid_t pid = si.si_pid;
    bool known = compositor.running() && compositor.pid() == pid;
    for (const auto& vm : vms) {
      known |= vm->proc.running() && vm->proc.pid() == pid;
      for (const auto& d : vm->devices) known |= d->backend().running() && d->backend().pid() == pid;
    }
    // A child of ours is reaped through its pidfd, by the loop; it is first in line until then.
    if (known) return;
    (void)waitpid(pid, nullptr, WNOHANG);
  }
}

void Supervisor::Impl::kill_orphans() {
  if (!opt.subreaper) return;
  const pid_t self_pid = getpid();
  std::vector<pid_t> left;  // killed, but not reapable within a round (another process traces them)
  for (int round = 0; round < 8; ++round) {
    std::vector<pid_t> orphans;
    if (DIR* d = opendir("/proc")) {
      while (dirent* e = readdir(d)) {
        const pid_t pid = pid_t(std::atoi(e->d_name));
        if (pid > 1 && pid != self_pid && parent_of(pid) == self_pid &&
            std::find(left.begin(), left.end(), pid) == left.end())
          orphans.push_back(pid);
      }
      closedir(d);
    }
    if (orphans.empty()) return;
    for (pid_t pid : orphans) {
      CANOPY_WARN("pid %d, orphaned by a process canopy-vmm started, is killed", int(pid));
      (void)kill(pid, SIGKILL);
    }
    // Each is reaped once it is gone; one that another process traces may not be reapable until that
    // one lets go: a second for all of them, then it is left (dead; it goes with its tracer).
    for (int i = 0; i < 100 && !orphans.empty(); ++i) {
      std::erase_if(orphans, [](pid_t pid) { return waitpid(pid, nullptr, WNOHANG) != 0; });
      if (!orphans.empty()) usleep(10000);
    }
    left.insert(left.end(), orphans.begin(), orphans.end());
  }
}

void Supervisor::Impl::on_control_accept() {
  for (;;) {
    UniqueFd c(accept4(control.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!c) return;
    ucred cred{};
    socklen_t len = sizeof cred;
    const char* deny = nullptr;
    if (getsockopt(c.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || !peer_is_operator(c.get(), opt.control_group))
      deny = "error: permission denied";
    else if (opt.control_refuses_descendants && peer_descends_from(c.get(), getpid()))
      deny = "error: permission denied: processes canopy-vmm started (VMs, back-ends, services) may not control it";
    const int fd = c.get();
    // Bounded, so that no client can use up our descriptors: refused peers get at most a few slots
    // (then they are closed unanswered), the others kMaxControlClients.
    if (deny ? denied.size() >= kMaxDeniedClients : clients.size() - denied.size() >= kMaxControlClients) continue;
    if (deny) {
      // Answered when its request comes (closing first could reset the connection before the client
      // reads why); it holds a slot until then like any client.
      CANOPY_WARN_RL("control: connection of pid %d refused: %s", int(cred.pid), deny + 7);
      denied[fd] = deny;
    }
    watch(fd, tag(kControlClient, 0, uint64_t(fd)));
    clients.emplace(fd, std::move(c));
  }
}

std::string Supervisor::Impl::command(const std::string& line) {
  std::istringstream in(line);
  std::string verb, name, extra, more;
  in >> verb >> name >> extra >> more;
  if (!more.empty() || (!extra.empty() && verb != "stop" && verb != "restart")) return "error: too many arguments";
  if (verb == "status" && name.empty()) return self->status_text();
  if (verb == "shutdown" && name.empty()) {
    self->shutdown_requested_ = true;
    return "ok shutting down";
  }
  if (verb == "stop" || verb == "start" || verb == "restart") {
    if (name.empty()) return "error: " + verb + " needs a VM name";
    if (!extra.empty() && (extra != "force" || verb == "start")) return "error: too many arguments";
    // Taking the safety-critical VM down is never one slip of the operator's: it must be forced.
    if (verb != "start" && extra != "force")
      if (Vm* vm = find(name); vm && vm->cfg.criticality == Criticality::kSafety)
        return "error: " + name + " is safety-critical: '" + verb + " " + name + " force' to " + verb + " it";
    Status s = verb == "stop" ? self->stop_vm(name) : verb == "start" ? self->start_vm(name) : self->restart_vm(name);
    if (!s.ok()) return std::string("error: ") + s.error().what;
    return "ok " + verb + " " + name;
  }
  return "error: unknown command (status, stop VM [force], start VM, restart VM [force], shutdown)";
}

void Supervisor::Impl::on_control_client(int fd) {
  auto it = clients.find(fd);
  if (it == clients.end()) return;
  char buf[kMaxControlRequest + 1];
  ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    unwatch(fd);
    denied.erase(fd);
    clients.erase(it);
    return;
  }
  std::string out;
  if (auto d = denied.find(fd); d != denied.end()) {
    (void)send(fd, d->second, std::strlen(d->second), MSG_NOSIGNAL | MSG_DONTWAIT);
    denied.erase(d);
    unwatch(fd);
    clients.erase(it);
    return;
  }
  if (size_t(n) > kMaxControlRequest) {
    out = "error: request over 4096 bytes";
  } else {
    std::string line(buf, size_t(n));
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    out = command(line);
  }
  (void)send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

}  // namespace canopy::hypervisor
