// canopy-vmm's supervisor: the control socket canopyctl talks to (supervisor_impl.h).
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
  const mode_t old = umask(0177);
  int rc = bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  umask(old);
  if (rc != 0) return make_error(Errc::kIo, "bind of the control socket failed", errno);
  if (listen(s.get(), 8) != 0) return make_error(Errc::kIo, "listen failed", errno);
  control = std::move(s);
  watch(control.get(), tag(kControlListen));
  return {};
}

void Supervisor::Impl::on_control_accept() {
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

std::string Supervisor::Impl::command(const std::string& line) {
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

void Supervisor::Impl::on_control_client(int fd) {
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

}  // namespace canopy::hypervisor
