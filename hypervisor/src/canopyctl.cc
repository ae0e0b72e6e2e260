// canopyctl: the client of canopy-vmm's control socket.
//   canopyctl [--socket PATH] status | stop VM [force] | start VM | restart VM [force] | shutdown
// PATH defaults to $CANOPY_CONTROL. Prints the reply; exits 0 on success, 1 when the VMM answered with
// an error, 2 on bad usage or when the VMM cannot be reached.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "canopy/hypervisor/control_client.h"

namespace {

constexpr const char* kUsage =
    "usage: canopyctl [--socket PATH] status | stop VM [force] | start VM | restart VM [force] | shutdown\n"
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
  const std::string req = words[0] + (words.size() > 1 ? " " + words[1] : "");
  auto r = canopy::hypervisor::control_request(path, req, kTimeoutMs);
  if (!r.ok()) {
    const canopy::Error& e = r.error();
    if (e.code == canopy::Errc::kTimeout) std::fprintf(stderr, "canopyctl: no reply within %d ms\n", kTimeoutMs);
    else if (e.code == canopy::Errc::kClosed) std::fprintf(stderr, "canopyctl: canopy-vmm closed the connection\n");
    else if (e.code == canopy::Errc::kInvalidArgument) std::fprintf(stderr, "canopyctl: socket path too long\n");
    else std::fprintf(stderr, "canopyctl: %s at %s: %s\n", e.what, path.c_str(), std::strerror(e.sys_errno));
    return 2;
  }
  const std::string reply = std::move(*r);
  std::fputs(reply.c_str(), stdout);
  if (reply.empty() || reply.back() != '\n') std::fputc('\n', stdout);
  return reply.rfind("error", 0) == 0 ? 1 : 0;
}
