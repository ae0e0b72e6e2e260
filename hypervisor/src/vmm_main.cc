// canopy-vmm: the VM manager.
//   canopy-vmm --check FILE                      validate a manifest and exit
//   canopy-vmm run FILE [--control PATH] [--no-confine] [--stop-grace-ms N] [--display PATH]
//                                                run its VMs until SIGTERM/SIGINT or `canopyctl shutdown`
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "canopy/base/log.h"
#include "canopy/hypervisor/manifest.h"
#include "canopy/hypervisor/supervisor.h"

namespace {

constexpr const char* kUsage =
    "usage: canopy-vmm --check FILE   check a VM manifest (docs/manifest.md) and exit\n"
    "       canopy-vmm run FILE [--control PATH] [--no-confine] [--stop-grace-ms N]\n"
    "                             [--display PATH]\n"
    "                             run the VMs of a manifest (guest partitions; docs/partition-transport.md)\n"
    "                             until SIGTERM/SIGINT or `canopyctl --socket PATH shutdown`\n"
    "       canopy-vmm --help     this text\n";

canopy::hypervisor::LoadResult load(const std::string& path) {
  canopy::hypervisor::LoadResult r = canopy::hypervisor::load_manifest_file(path);
  if (!r.ok()) {
    for (const auto& e : r.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
  }
  return r;
}

int check(const std::string& path) {
  auto r = load(path);
  if (!r.ok()) return 1;
  std::printf("%s: ok (%zu VMs, %zu displays)\n", path.c_str(), r.manifest->vms.size(), r.manifest->displays.size());
  return 0;
}

int run(int argc, char** argv) {
  using namespace canopy::hypervisor;
  std::string file;
  SupervisorOptions opt;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--control" && i + 1 < argc) {
      opt.control_path = argv[++i];
    } else if (a == "--display" && i + 1 < argc) {
      opt.display_socket = argv[++i];  // canopy-display --listen PATH: GPU back-ends send frames there
    } else if (a == "--no-confine") {
      opt.confine = false;
    } else if (a == "--stop-grace-ms" && i + 1 < argc) {
      opt.stop_grace_ms = std::atoi(argv[++i]);
    } else if (file.empty() && !a.empty() && a[0] != '-') {
      file = a;
    } else {
      std::fprintf(stderr, "canopy-vmm: bad argument %s\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  if (file.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  auto r = load(file);
  if (!r.ok()) return 1;
  const size_t slash = file.rfind('/');
  opt.base_dir = slash == std::string::npos ? "." : file.substr(0, slash);
  canopy::set_log_tag("canopy-vmm");

  // SIGTERM/SIGINT arrive through a signalfd; blocked before any child exists.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  signal(SIGPIPE, SIG_IGN);

  auto sup = Supervisor::create(*r.manifest, opt);
  if (!sup.ok()) {
    std::fprintf(stderr, "canopy-vmm: %s: cannot run: %s\n", file.c_str(), sup.error().what);
    return 1;
  }
  (*sup)->start_all();
  (*sup)->run(sfd);
  (*sup)->shutdown();
  CANOPY_INFO("all VMs stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (argc == 3 && std::strcmp(argv[1], "--check") == 0) return check(argv[2]);
  if (argc >= 2 && std::strcmp(argv[1], "run") == 0) return run(argc, argv);
  std::fprintf(stderr, "canopy-vmm: bad arguments\n%s", kUsage);
  return 2;
}
