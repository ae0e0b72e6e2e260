// canopy-test-hostile: a back-end of a lower-criticality VM, taken over (docs/security.md, "Attackers"):
// its GPU back-end for stepped_test's whole cockpit, or its sound back-end for audio_cockpit_test.
//
// As the GPU back-end (--display-fd): canopy-vmm starts it as that VM's GPU back-end, so it holds
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
//
// As the sound back-end (--policy-fd and --policy-states from canopy-vmm, or only --policy=PATH, the
// shared file board, where canopy-vmm gives none): once confined, it goes at the cross-VM audio policy
// board with what it holds, --victim=VM naming the VM whose state it goes for (the cluster), and
// --attack-stream=NAME its own VM's stream (default "music"):
//   state-write    the victim's state segment written: pwrite, a writable shared mapping, mprotect of
//                  a read-only one, reopened writable through /proc/self/fd and written (on the shared
//                  board: the file, where everyone's slots are, mapped writable and written)
//   table-write    the sealed policy table written: ftruncate, pwrite, a writable shared mapping,
//                  mprotect of a read-only one, reopened writable and written (on the shared board there
//                  is no table: reported as "none", not counted)
//   claim-priority its stream claimed with priority 100000, exclusive, and kept running (refreshed every
//                  20 ms from then on; on canopy-vmm's board every slot of its own segment too, written
//                  directly): done when the board then shows that priority for it
//   fill-slots     64 more streams claimed (then released): done when more than one was granted
// Reported as for the GPU, "hostile summary" last; later, once, "hostile: its stream ducked by the
// board to X dB" when a stream above its own runs (the cluster's chime, where the board ranks them).
//
// With --outlive-socket (and neither of the above): a device that does nothing, and a process that
// outlives its socket: when its front-end is gone it blocks SIGTERM and sleeps 10 minutes (what starts
// it must be able to stop it; conformance_kvm_nested_qemu, the KVM child).
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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

#include "canopy/audio/policy.h"
#include "canopy/config/policy_table.h"
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

// What the sound back-end was given: canopy-vmm's board (table, states) or the shared file's path.
struct SoundPlan {
  int table = -1;
  std::vector<int> states;
  std::string shared, vm, victim, stream = "music";
};

// Each way of writing through a descriptor of a file it holds read-only (or sealed): what wrote, or ""
// when nothing did, and why each failed in `why_not`.
std::string write_through(int fd, size_t bytes, std::string& why_not) {
  std::string worked;
  auto try_fd = [&](int f, const std::string& how) {
    const char zero[8] = {};
    if (::pwrite(f, zero, sizeof zero, 0) == ssize_t(sizeof zero)) worked += " pwrite" + how;
    else why_not += " pwrite" + how + ": " + why(errno) + ";";
    void* w = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
    if (w != MAP_FAILED) {
      worked += " writable mapping" + how;
      ::munmap(w, bytes);
    } else {
      why_not += " writable mapping" + how + ": " + why(errno) + ";";
    }
  };
  try_fd(fd, "");
  void* r = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (r != MAP_FAILED) {
    if (::mprotect(r, bytes, PROT_READ | PROT_WRITE) == 0) worked += " mprotect";
    else why_not += " mprotect: " + why(errno) + ";";
    ::munmap(r, bytes);
  }
  // Opened again writable through /proc: counted only where that then writes (a sealed file may be).
  const int again = ::open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDWR | O_CLOEXEC);
  if (again >= 0) {
    try_fd(again, " (reopened)");
    ::close(again);
  } else {
    why_not += " reopen: " + why(errno) + ";";
  }
  return worked;
}

void attack_board(SoundPlan plan, bool sandboxed) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  while (sandboxed && !confined() && std::chrono::steady_clock::now() < end) ::poll(nullptr, 0, 10);
  Report r;
  std::unique_ptr<audio::PolicyBoard> board;
  config::PolicyStateSlot* own = nullptr;  // canopy-vmm's board: its own state segment, mapped writable
  if (plan.table >= 0) {
    // The victim's state segment and its own: at their places in the table's VM order.
    int victim = -1, mine = -1;
    void* t = ::mmap(nullptr, config::kPolicyTableBytes, PROT_READ, MAP_SHARED, plan.table, 0);
    if (t != MAP_FAILED) {
      auto table = config::parse_policy_table({static_cast<const uint8_t*>(t), config::kPolicyTableBytes});
      ::munmap(t, config::kPolicyTableBytes);
      for (size_t v = 0; table.ok() && v < table->vms.size() && v < plan.states.size(); ++v) {
        if (table->vms[v] == plan.victim) victim = plan.states[v];
        if (table->vms[v] == plan.vm) mine = plan.states[v];
      }
    }
    std::string why_not;
    const std::string worked = victim < 0 ? std::string() : write_through(victim, config::kPolicyStateBytes, why_not);
    r.put("state-write", !worked.empty(),
          victim < 0       ? "no state segment of " + plan.victim
          : worked.empty() ? why_not
                           : worked);
    why_not.clear();
    std::string grew;
    if (::ftruncate(plan.table, off_t(2 * config::kPolicyTableBytes)) == 0) grew = " ftruncate";
    else why_not += " ftruncate: " + why(errno) + ";";
    const std::string table_worked = write_through(plan.table, config::kPolicyTableBytes, why_not) + grew;
    r.put("table-write", !table_worked.empty(), table_worked.empty() ? why_not : table_worked);
    auto b = audio::PolicyBoard::from_vmm(plan.table, plan.states, plan.vm);
    if (b.ok()) board = std::move(*b);
    else std::fprintf(stderr, "hostile: canopy-vmm's board: %s\n", b.error().what);
    if (mine >= 0) {
      void* m = ::mmap(nullptr, config::kPolicyStateBytes, PROT_READ | PROT_WRITE, MAP_SHARED, mine, 0);
      if (m != MAP_FAILED) own = static_cast<config::PolicyStateSlot*>(m);
    }
  } else {
    // The shared file: every VM's slots in one writable mapping (written here at its far end, a slot
    // that is not its own), and no table.
    std::string what = "open: ";
    bool wrote = false;
    const int f = ::open(plan.shared.c_str(), O_RDWR | O_CLOEXEC);
    struct stat st{};
    if (f >= 0 && ::fstat(f, &st) == 0 && st.st_size > 0) {
      void* m = ::mmap(nullptr, size_t(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
      if (m != MAP_FAILED) {
        static_cast<volatile uint8_t*>(m)[st.st_size - 1] = 0;
        wrote = true;
        ::munmap(m, size_t(st.st_size));
      }
      what = wrote ? "wrote into the board file, where every VM's slots are" : "mmap: " + why(errno);
    } else {
      what += why(errno);
    }
    if (f >= 0) ::close(f);
    r.put("state-write", wrote, what);
    // Not counted: there is nothing to write, each back-end declares its own policy.
    std::fprintf(stderr, "hostile table-write: none (the shared board has no table)\n");
    auto b = audio::PolicyBoard::open(plan.shared);
    if (b.ok()) board = std::move(*b);
    else std::fprintf(stderr, "hostile: the shared board: %s\n", b.error().what);
  }
  const std::string label = plan.vm + "/" + plan.stream;
  const audio::StreamPolicy claimed{100000, true, -96.0, 0, true};
  auto slot = board ? board->claim(label, claimed) : Result<uint32_t>(make_error(Errc::kIo, "no board"));
  // Running, and on canopy-vmm's board every slot of its own segment too, written directly (kept so
  // below): whatever the table says they are, they all count from now on.
  auto run = [&] {
    const uint64_t now = audio::monotonic_ns();
    if (board && slot.ok()) board->set_active(*slot, true, now);
    for (uint32_t i = 0; own != nullptr && i < config::kPolicySlotsPerVm; ++i) {
      own[i].refreshed_ns.store(now);
      own[i].active.store(1);
    }
  };
  if (!slot.ok()) {
    r.put("claim-priority", false, std::string("claim: ") + slot.error().what);
  } else {
    run();
    std::string shown;
    std::istringstream in(board->describe(audio::monotonic_ns()));
    for (std::string line; std::getline(in, line);)
      if (line.rfind(label + " ", 0) == 0) shown = line;
    const bool held = shown.find(" priority=100000 ") != std::string::npos;
    r.put("claim-priority", held,
          "the board shows: " + shown + (own != nullptr ? "; every slot of its segment running" : ""));
  }
  {
    std::vector<uint32_t> extra;
    for (int i = 0; board && i < 64; ++i)
      if (auto e = board->claim(plan.vm + "/extra" + std::to_string(i), claimed); e.ok()) extra.push_back(*e);
    const size_t granted = extra.size();
    for (uint32_t e : extra) board->release(e);  // the cluster's own claim must still find a slot
    r.put("fill-slots", granted > 1, std::to_string(granted) + " of 64 more streams granted");
  }
  std::fprintf(stderr, "hostile summary: attempted=%d done=%d confined=%d\n", r.attempted, r.done, confined() ? 1 : 0);
  // Its stream kept running, as loud as its claim lets it, for as long as it lives; once the board
  // ducks it (a stream above it running: the cluster's chime), said once.
  for (bool said = false;;) {
    run();
    if (board && slot.ok() && !said) {
      const double db = board->target(*slot, audio::monotonic_ns()).db;
      said = db < 0;
      if (said) std::fprintf(stderr, "hostile: its stream ducked by the board to %.1f dB\n", db);
    }
    ::poll(nullptr, 0, 20);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // The GPU back-end of its VM, or the sound back-end (what canopy-vmm gives a canopy-snd).
  bool sound = false;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--policy", 8) == 0) sound = true;
  BackendProgram program{"canopy-test-hostile", sound ? "sound" : "gpu", {}, "  (a test back-end: see its source)\n"};
  program.confine = true;  // confined as canopy-gpu and canopy-snd are: it has taken over a confined back-end
  program.writable_options = {"--policy"};  // the shared file board, as canopy-snd's
  bool sandboxed = !transport::sandbox_off_by_environment(), outlive = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--no-sandbox") sandboxed = false;
    if (a == "--outlive-socket") outlive = true;
    if (a.rfind("--plan=", 0) == 0) program.readable_paths.push_back(transport::writable_folder(a.substr(7)));
  }
  const int rc = backend_main(
      argc, argv, program, [sandboxed](const std::vector<std::string>& args) -> Result<std::unique_ptr<Device>> {
        int link = -1;
        std::string plan;
        SoundPlan sp;
        for (const auto& a : args) {  // canopy-gpu's and canopy-snd's other options are accepted and ignored
          auto value = [&](const char* key) -> const char* {
            const size_t n = std::strlen(key);
            return a.compare(0, n, key) == 0 ? a.c_str() + n : nullptr;
          };
          if (const char* v = value("--display-fd=")) link = std::atoi(v);
          if (const char* v = value("--plan=")) plan = v;
          if (const char* v = value("--policy-fd=")) sp.table = std::atoi(v);
          if (const char* v = value("--policy-states=")) {
            std::istringstream in(v);
            for (std::string n; std::getline(in, n, ',');) sp.states.push_back(std::atoi(n.c_str()));
          }
          if (const char* v = value("--policy=")) sp.shared = v;
          if (const char* v = value("--vm=")) sp.vm = v;
          if (const char* v = value("--victim=")) sp.victim = v;
          if (const char* v = value("--attack-stream=")) sp.stream = v;
        }
        if (sp.table >= 0 || !sp.shared.empty()) {
          if (sp.vm.empty() || sp.victim.empty())
            return make_error(Errc::kInvalidArgument, "--vm and --victim are needed");
          std::thread(attack_board, sp, sandboxed).detach();
        } else if (link >= 0 && !plan.empty()) {
          std::thread(attack, link, plan, sandboxed).detach();
        } else if (std::find(args.begin(), args.end(), "--outlive-socket") == args.end()) {
          return make_error(Errc::kInvalidArgument,
                            "--display-fd and --plan, a policy board or --outlive-socket are needed");
        }
        return std::unique_ptr<Device>(std::make_unique<IdleDevice>());
      });
  if (outlive) {
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    ::sigprocmask(SIG_BLOCK, &term, nullptr);
    std::fprintf(stderr, "hostile: front-end gone; staying (SIGTERM blocked)\n");
    for (int i = 0; i < 600; ++i) ::poll(nullptr, 0, 1000);
  }
  return rc;
}
