// canopyctl: the client of canopy-vmm's control socket.
//   canopyctl [--socket PATH] status | stop VM | start VM | restart VM | shutdown
// PATH defaults to $CANOPY_CONTROL. Prints the reply; exits 0 on success, 1 when the VMM answered with
// an error, 2 on bad usage or when the VMM cannot be reached.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr const char* kUsage =
    "usage: canopyctl [--socket PATH] status | stop VM | start VM | restart VM | shutdown\n"
    "       PATH defaults to $CANOPY_CONTROL\n";
constexpr int kTimeoutMs = 10000;

}  // namespace

int main(int argc, char** argv) {
  std::string path = getenv("CANOPY_CONTROL") ? getenv("CANOPY_CONTROL") : "";
  std::vector<std::string> words;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--socket" && i + 1 < argc) path = argv[++i];
    else if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else words.push_back(a);
  }
  if (path.empty() || words.empty() || words.size() > 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  std::string req = words[0] + (words.size() > 1 ? " " + words[1] : "");
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) {
    std::fprintf(stderr, "canopyctl: socket path too long\n");
    return 2;
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0 || connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    std::fprintf(stderr, "canopyctl: cannot reach canopy-vmm at %s: %s\n", path.c_str(), std::strerror(errno));
    return 2;
  }
  if (send(s, req.data(), req.size(), MSG_NOSIGNAL) != ssize_t(req.size())) {
    std::fprintf(stderr, "canopyctl: send failed: %s\n", std::strerror(errno));
    return 2;
  }
  pollfd p{s, POLLIN, 0};
  if (poll(&p, 1, kTimeoutMs) != 1) {
    std::fprintf(stderr, "canopyctl: no reply within %d ms\n", kTimeoutMs);
    return 2;
  }
  std::vector<char> buf(1 << 20);
  ssize_t n = recv(s, buf.data(), buf.size(), 0);
  close(s);
  if (n <= 0) {
    std::fprintf(stderr, "canopyctl: canopy-vmm closed the connection\n");
    return 2;
  }
  std::string reply(buf.data(), size_t(n));
  std::fputs(reply.c_str(), stdout);
  if (reply.empty() || reply.back() != '\n') std::fputc('\n', stdout);
  return reply.rfind("error", 0) == 0 ? 1 : 0;
}
