#include "control.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>

#include "canopy/base/log.h"
#include "canopy/transport/vhost_user_channel.h"

namespace canopy::gpu {
namespace {

std::vector<std::string_view> words(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) ++i;
    size_t j = i;
    while (j < s.size() && s[j] != ' ' && s[j] != '\t' && s[j] != '\r') ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

// A whole word as an unsigned number of at most `max`.
bool number(std::string_view s, uint32_t max, uint32_t& out) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v > max) return false;
  out = v;
  return true;
}

Error bad(const char* what) { return make_error(Errc::kInvalidArgument, what); }

}  // namespace

Result<ControlCommand> parse_control_line(std::string_view line) {
  const auto w = words(line);
  if (w.empty()) return bad("empty command (try: displays, display I WxH[@HZ], display I off)");
  ControlCommand c;
  if (w[0] == "displays") {
    if (w.size() != 1) return bad("displays takes no arguments");
    c.kind = ControlCommand::Kind::kList;
    return c;
  }
  if (w[0] != "display") return bad("unknown command (try: displays, display I WxH[@HZ], display I off)");
  if (w.size() != 3) return bad("expected: display I WxH[@HZ] | display I off");
  c.kind = ControlCommand::Kind::kDisplay;
  if (!number(w[1], 15, c.scanout)) return bad("scanout must be a number 0..15");
  if (w[2] == "off") {
    c.connected = false;
    return c;
  }
  std::string_view m = w[2];
  const size_t x = m.find('x'), at = m.find('@');
  if (x == std::string_view::npos) return bad("mode must be WxH or WxH@HZ");
  std::string_view ws = m.substr(0, x), hs = m.substr(x + 1, at == std::string_view::npos ? m.npos : at - x - 1);
  if (!number(ws, 0xffff, c.mode.width) || !number(hs, 0xffff, c.mode.height)) return bad("mode must be WxH or WxH@HZ");
  c.mode.refresh_hz = 60;
  if (at != std::string_view::npos && !number(m.substr(at + 1), 1000, c.mode.refresh_hz))
    return bad("refresh must be a number of Hz");
  if (auto t = cvt_reduced_blanking(c.mode); !t.ok()) return t.error();
  return c;
}

Result<std::unique_ptr<ControlServer>> ControlServer::listen(const std::string& path, Handler handler,
                                                             std::function<void()> changed) {
  std::unique_ptr<ControlServer> s(new ControlServer());
  CANOPY_ASSIGN_OR_RETURN(s->listen_, transport::vhost_user::listen_unix(path.c_str()));
  s->path_ = path;
  s->handler_ = std::move(handler);
  s->changed_ = std::move(changed);
  CANOPY_INFO("gpu: control socket %s", path.c_str());
  return s;
}

ControlServer::~ControlServer() {
  if (listen_) ::unlink(path_.c_str());
}

std::vector<transport::vhost_user::Device::Watch> ControlServer::watches() {
  std::vector<transport::vhost_user::Device::Watch> w;
  w.push_back({listen_.get(), [this] { on_accept(); }});
  for (auto& [fd, c] : clients_) w.push_back({fd, [this, fd = fd] { on_client(fd); }});
  return w;
}

void ControlServer::on_accept() {
  UniqueFd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!fd) return;
  if (clients_.size() >= kMaxClients) {
    static constexpr char kBusy[] = "error: too many control connections\n";
    (void)::send(fd.get(), kBusy, sizeof kBusy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    return;
  }
  const int n = fd.get();
  clients_[n] = Client{std::move(fd), {}};
  if (changed_) changed_();
}

void ControlServer::drop(int fd) {
  clients_.erase(fd);
  if (changed_) changed_();
}

void ControlServer::on_client(int fd) {
  auto it = clients_.find(fd);
  if (it == clients_.end()) return;
  Client& c = it->second;
  char buf[512];
  ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) return drop(fd);
  c.in.append(buf, size_t(n));
  std::string out;
  bool close_after = false;
  size_t nl;
  while ((nl = c.in.find('\n')) != std::string::npos) {
    std::string_view line(c.in.data(), nl);
    if (line.size() > kMaxLine) {
      out += "error: line longer than 256 bytes\n";
      close_after = true;
      break;
    }
    auto cmd = parse_control_line(line);
    Result<std::string> r = cmd.ok() ? handler_(*cmd) : Result<std::string>(cmd.error());
    if (r.ok()) out += *r + "ok\n";
    else out += std::string("error: ") + r.error().what + "\n";
    c.in.erase(0, nl + 1);
  }
  if (!close_after && c.in.size() > kMaxLine) {
    out += "error: line longer than 256 bytes\n";
    close_after = true;
  }
  // Answers are short; a client that does not read them loses its connection rather than stalling us.
  if (!out.empty() && ::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT) != ssize_t(out.size()))
    close_after = true;
  if (close_after) drop(fd);
}

}  // namespace canopy::gpu
