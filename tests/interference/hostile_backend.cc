// canopy-test-hostile-gpu: a GPU back-end of a lower-criticality VM, taken over (docs/security.md,
// "Attackers"), for stepped_test's whole cockpit. canopy-vmm starts it as that VM's GPU back-end, so it holds
// what such a back-end holds: its VM's device link to the broker (--display-fd), the uid and the
// confinement canopy-vmm and backend_main give a back-end (seccomp allowlist, Landlock view, no
// capabilities). It serves a device that does nothing and, on a thread, once it is confined (but with
// --no-sandbox or CANOPY_NO_SANDBOX) and the file --plan names exists (the test writes it when the
// cockpit runs steadily, in the back-end's scratch folder; a plan elsewhere has its folder made
// readable to it), tries what the attacker would:
//   claim-cluster      a connection from the broker, HELLO as "cluster"
//   broker-flood       30 more connections, as fast as the answers come
//   display-quit       "quit" on canopy-display's control socket
//   vmm-stop-cluster   "stop cluster force" on canopy-vmm's control socket
//   signal-cluster     SIGSTOP to the cluster's canopy-gpu (SIGCONT at once where it worked)
//   cluster-ram        the cluster's guest RAM read through its canopy-gpu's /proc/PID/fd (and
//                      whether /proc/PID/mem opens, reported)
//   cluster-scratch    a file in the cluster's scratch folder
// The plan file has one "key value" per line: vmm-control PATH, display-control PATH, cluster-gpu PID,
// cluster-scratch PATH. One line per attack:
//   hostile NAME: refused (why)   or   hostile NAME: DONE (what happened)
// then "hostile summary: attempted=N done=M confined=0|1" (confined: its seccomp filter is on).
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "canopy/hypervisor/control_client.h"
#include "canopy/protocol/broker.h"
#include "canopy/protocol/scanout_channel.h"
#include "canopy/test_support/seqpacket.h"
#include "canopy/transport/backend_main.h"
#include "canopy/transport/backend_sandbox.h"

namespace {

using namespace canopy;
using namespace canopy::transport;
using namespace canopy::transport::vhost_user;
namespace bk = protocol::broker;
namespace ch = protocol::scanout;

constexpr int kGuardMs = 30000;  // hang guard of each answer; they come in milliseconds

class IdleDevice : public Device {
 public:
  uint64_t features() const override { return kVirtioFVersion1; }
  uint16_t num_queues() const override { return 2; }
  void on_kick(QueueHandle&) override {}
};

struct Report {
  int attempted = 0, done = 0;
  void put(const char* name, bool did, const std::string& what) {
    ++attempted;
    done += did;
    std::fprintf(stderr, "hostile %s: %s (%s)\n", name, did ? "DONE" : "refused", what.c_str());
  }
};

std::string why(int err) { return std::strerror(err); }

// A connection from the broker: the socket, or -1 with the reason in `why_not`.
int ask_broker(int link, std::string& why_not) {
  if (!bk::send(link, bk::encode_connect(bk::Service::kDisplay)).ok()) {
    why_not = "the device link is gone";
    return -1;
  }
  auto answer = bk::receive(link, bk::Link::kBrokerToDevice, kGuardMs);
  if (!answer.ok()) {
    why_not = std::string("no answer: ") + answer.error().what;
    return -1;
  }
  if (answer->type == bk::Type::kRefused) {
    why_not = "the broker refused";
    return -1;
  }
  return answer->fd.release();
}

// Whether the peer closed `fd` within the hang guard.
bool closed_by_peer(int fd) {
  pollfd p{fd, POLLIN, 0};
  char b[64];
  return ::poll(&p, 1, kGuardMs) == 1 && ::recv(fd, b, sizeof b, 0) == 0;
}

bool confined() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("Seccomp:", 0) == 0) return line.find('2') != std::string::npos;
  return false;
}

void attack(int link, std::string plan_path, bool sandboxed) {
  // The test writes the plan (by renaming it into place) once the cockpit runs steadily; by then the
  // back-end has confined itself, which this waits for too (an attacker inside the confinement).
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  std::map<std::string, std::string> plan;
  while ((plan.size() < 4 || (sandboxed && !confined())) && std::chrono::steady_clock::now() < end) {
    plan.clear();
    ::poll(nullptr, 0, 10);
    std::ifstream in(plan_path);
    for (std::string k, v; in >> k >> v;) plan[k] = v;
  }
  if (plan.size() < 4) {
    std::fprintf(stderr, "hostile: no plan at %s\n", plan_path.c_str());
    return;
  }
  Report r;
  {
    std::string why_not;
    const int fd = ask_broker(link, why_not);
    if (fd < 0) {
      r.put("claim-cluster", false, why_not);
    } else {
      (void)ch::send_packet(fd, ch::encode_hello("cluster", 1));
      const bool closed = closed_by_peer(fd);
      r.put("claim-cluster", !closed, closed ? "canopy-display closed the connection at its HELLO" : "kept open");
      ::close(fd);
    }
  }
  {
    int admitted = 0, refused = 0;
    for (int i = 0; i < 30; ++i) {
      std::string why_not;
      const int fd = ask_broker(link, why_not);
      if (fd >= 0) {
        ++admitted;
        ::close(fd);
      } else if (why_not == "the broker refused") {
        ++refused;
      } else {
        break;  // the link is gone or silent: no use waiting 30 s more each time
      }
    }
    r.put("broker-flood", refused == 0,
          "admitted " + std::to_string(admitted) + " of 30, refused " + std::to_string(refused));
  }
  {
    const std::string reply = test_support::ask_seqpacket(plan["display-control"], "quit", kGuardMs);
    r.put("display-quit", reply == "ok\n",
          reply.empty() ? std::string("closed unanswered") : reply.substr(0, reply.find('\n')));
  }
  {
    const pid_t gpu = pid_t(std::atol(plan["cluster-gpu"].c_str()));
    if (gpu <= 0) {
      r.put("signal-cluster", false, "no pid in the plan");
    } else if (::kill(gpu, SIGSTOP) == 0) {
      (void)::kill(gpu, SIGCONT);
      r.put("signal-cluster", true, "stopped the cluster's canopy-gpu");
    } else {
      r.put("signal-cluster", false, "kill: " + why(errno));
    }
    const std::string proc = "/proc/" + plan["cluster-gpu"];
    std::string got = "no guest RAM among its descriptors";
    bool read_ram = false;
    if (DIR* d = ::opendir((proc + "/fd").c_str())) {
      while (const dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        char target[256] = {};
        const std::string fd_path = proc + "/fd/" + e->d_name;
        if (::readlink(fd_path.c_str(), target, sizeof target - 1) <= 0 ||
            std::strstr(target, "memfd:canopy-ram-cluster") == nullptr)
          continue;
        const int ram = ::open(fd_path.c_str(), O_RDONLY | O_CLOEXEC);
        char b[16];
        if (ram < 0) {
          got = "open " + fd_path + ": " + why(errno);
        } else {
          read_ram = ::pread(ram, b, sizeof b, 0) == ssize_t(sizeof b);
          got = read_ram ? "read the cluster's RAM through " + fd_path : "pread: " + why(errno);
          ::close(ram);
        }
        break;
      }
      ::closedir(d);
    } else {
      got = "opendir " + proc + "/fd: " + why(errno);
    }
    const int mem = ::open((proc + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
    if (mem >= 0) {
      ::close(mem);
      got += "; opened " + proc + "/mem";
    } else {
      got += "; open " + proc + "/mem: " + why(errno);
    }
    r.put("cluster-ram", read_ram, got);
  }
  {
    const std::string path = plan["cluster-scratch"] + "/written-by-ivi";
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) ::close(fd);
    r.put("cluster-scratch", fd >= 0, fd >= 0 ? "created " + path : "open: " + why(errno));
  }
  {
    // Last: where it works (the test's control run), the cluster is gone from here on.
    auto reply = hypervisor::control_request(plan["vmm-control"], "stop cluster force", kGuardMs);
    const std::string text =
        reply.ok() ? *reply : std::string(reply.error().what) + ": " + why(reply.error().sys_errno);
    r.put("vmm-stop-cluster", reply.ok() && text.rfind("ok", 0) == 0,
          text.empty() ? std::string("closed unanswered") : text.substr(0, text.find('\n')));
  }
  std::fprintf(stderr, "hostile summary: attempted=%d done=%d confined=%d\n", r.attempted, r.done, confined() ? 1 : 0);
}

}  // namespace

int main(int argc, char** argv) {
  BackendProgram program{"canopy-test-hostile-gpu", "gpu", {}, "  (a test back-end: see its source)\n"};
  program.confine = true;  // confined as canopy-gpu is: the attacker has taken over a confined back-end
  bool sandboxed = !transport::sandbox_off_by_environment();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--no-sandbox") sandboxed = false;
    if (a.rfind("--plan=", 0) == 0) program.readable_paths.push_back(transport::writable_folder(a.substr(7)));
  }
  return backend_main(argc, argv, program,
                      [sandboxed](const std::vector<std::string>& args) -> Result<std::unique_ptr<Device>> {
                        int link = -1;
                        std::string plan;
                        for (const auto& a : args) {  // canopy-gpu's other options are accepted and ignored
                          if (a.rfind("--display-fd=", 0) == 0) link = std::atoi(a.c_str() + 13);
                          if (a.rfind("--plan=", 0) == 0) plan = a.substr(7);
                        }
                        if (link < 0 || plan.empty())
                          return make_error(Errc::kInvalidArgument, "--display-fd and --plan are needed");
                        std::thread(attack, link, plan, sandboxed).detach();
                        return std::unique_ptr<Device>(std::make_unique<IdleDevice>());
                      });
}
