// canopy-vmm: the VM manager.
//   canopy-vmm --check FILE                      validate a manifest and exit
//   canopy-vmm run FILE [--control PATH] [--no-confine] [--scratch-dir DIR] [--stop-grace-ms N]
//                       [--display PATH | --compositor [CANOPY-DISPLAY-ARGS...]]
//                                                run its VMs until SIGTERM/SIGINT or `canopyctl shutdown`
//                                                (or the compositor it runs ends)
//   canopy-vmm boot --kernel BZIMAGE [--initrd FILE] [--cmdline TEXT] [--memory SIZE] [--vcpus N]
//                   [--device TYPE=PROGRAM[,ARG...]]...
//                                                boot one Linux guest on KVM, its serial console on stdout
#include <fcntl.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "canopy/base/capabilities.h"
#include "canopy/base/landlock.h"
#include "canopy/base/log.h"
#include "canopy/base/peer.h"
#include "canopy/config/manifest.h"
#include "canopy/hypervisor/supervisor.h"
#include "canopy/transport/backend_sandbox.h"
#include "kvm/kvm_vm.h"
#include "kvm/vhost_mmio.h"

namespace {

constexpr const char* kUsage =
    "usage: canopy-vmm --check FILE   check a VM manifest (docs/manifest.md) and exit\n"
    "       canopy-vmm run FILE [--control PATH [--control-group GROUP] [--control-open-to-children]]\n"
    "                           [--no-confine] [--no-policy-board] [--scratch-dir DIR] [--stop-grace-ms N]\n"
    "                             [--display PATH | --compositor [CANOPY-DISPLAY-ARGS...]]\n"
    "                             run the VMs of a manifest (guest partitions; docs/partition-transport.md)\n"
    "                             until SIGTERM/SIGINT or `canopyctl --socket PATH shutdown`.\n"
    "                             --compositor: run canopy-display FILE --broker-fd 3 ARGS too (every\n"
    "                             argument after it is its), before the VMs; their GPU back-ends get\n"
    "                             compositor connections from canopy-vmm, bound to their VM. When it\n"
    "                             ends cleanly, everything ends; after a crash it is restarted.\n"
    "                             As root, each VM's partition and back-ends run under uids of that\n"
    "                             VM's (docs/security.md).\n"
    "                             --no-confine: nothing it starts is confined (CANOPY_NO_SANDBOX=1 for\n"
    "                             back-ends and the compositor) and all keep canopy-vmm's uid: a\n"
    "                             benchmark's reference, debugging\n"
    "                             --no-policy-board: no audio policy board from the manifest; each\n"
    "                             canopy-snd joins the shared file board its options name, as without\n"
    "                             canopy-vmm (tests' control runs)\n"
    "                             --scratch-dir DIR: each VM's back-ends get DIR/VM, a folder of theirs\n"
    "                             (mode 0700, as root owned by the VM's back-end uid) as\n"
    "                             $CANOPY_SCRATCH_DIR, where they may write (canopy-snd's stats go there)\n"
    "                             --display PATH: GPU back-ends connect to canopy-display --listen PATH\n"
    "                             themselves and name their VM (no broker: docs/security.md)\n"
    "                             The control socket refuses what canopy-vmm started (and what they fork);\n"
    "                             --control-open-to-children: only the uid decides (tests' control runs)\n"
    "                             --control-group GROUP: its members may control it too (the socket is\n"
    "                             mode 0660 and of GROUP); otherwise only canopy-vmm's uid and root\n"
    "       canopy-vmm boot --kernel BZIMAGE [--initrd FILE] [--cmdline TEXT] [--memory SIZE] [--vcpus N]\n"
    "                       [--device TYPE=PROGRAM[,ARG...] [--device-arg ARG]...\n"
    "                        [--device-inherit FD:TARGET]... [--device-uid UID [--device-group GID]...]\n"
    "                        [--device-pipewire] [--device-scratch DIR]]... [--no-sandbox]\n"
    "                             boot one Linux guest on KVM (docs/kvm.md), each --device a virtio-mmio\n"
    "                             device (rng, snd, gpu, console, ...) bridged to the vhost-user back-end\n"
    "                             PROGRAM (started as PROGRAM --fd=3 ARGS); its serial console goes to\n"
    "                             stdout; --device-inherit: an inherited descriptor the back-end gets as\n"
    "                             TARGET; --device-uid (as root): the back-end runs as UID:UID with the\n"
    "                             GIDs as its groups, and with --device-pipewire gets a PipeWire\n"
    "                             connection made here; --device-scratch: its $CANOPY_SCRATCH_DIR. Exit status: 0 the "
    "guest powered off, 3 it\n"
    "                             rebooted, 4 stopped by SIGTERM/SIGINT, 1 an error. Once its devices are\n"
    "                             up it runs the guest under a system call allowlist (docs/security.md) unless\n"
    "                             --no-sandbox\n"
    "       canopy-vmm --help     this text\n";

canopy::config::LoadResult load(const std::string& path) {
  canopy::config::LoadResult r = canopy::config::load_manifest_file(path);
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
    } else if (a == "--compositor") {
      opt.compositor = true;  // everything after it is canopy-display's
      opt.compositor_args.assign(argv + i + 1, argv + argc);
      break;
    } else if (a == "--control-group" && i + 1 < argc) {
      // A group name or number: its members are operators too.
      const char* g = argv[++i];
      auto gid = canopy::group_named(g);
      if (!gid.ok()) {
        std::fprintf(stderr, "canopy-vmm: --control-group %s: %s\n", g, gid.error().what);
        return 2;
      }
      opt.control_group = *gid;
    } else if (a == "--control-open-to-children") {
      opt.control_refuses_descendants = false;  // tests' control runs: the uid alone decides
    } else if (a == "--no-policy-board") {
      opt.policy_board = false;
    } else if (a == "--no-confine") {
      // Nothing it starts is confined: partitions, KVM children, and (through the environment they
      // inherit) back-ends and the compositor. For benchmarks' unconfined reference and debugging.
      opt.confine = false;
      ::setenv("CANOPY_NO_SANDBOX", "1", 1);
    } else if (a == "--scratch-dir" && i + 1 < argc) {
      opt.scratch_dir = argv[++i];
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
  if (opt.compositor && !opt.display_socket.empty()) {
    std::fprintf(stderr, "canopy-vmm: --display and --compositor exclude each other\n");
    return 2;
  }
  auto r = load(file);
  if (!r.ok()) return 1;
  opt.manifest_path = file;
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
  // What a child orphans stays ours: reparented here, refused on the control socket, reaped, and killed
  // at the end.
  opt.subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;

  auto sup = Supervisor::create(*r.manifest, opt);
  if (!sup.ok()) {
    std::fprintf(stderr, "canopy-vmm: %s: cannot run: %s\n", file.c_str(), sup.error().what);
    return 1;
  }
  if (auto s = (*sup)->start_services(); !s.ok()) {
    std::fprintf(stderr, "canopy-vmm: %s: cannot start the compositor: %s\n", file.c_str(), s.error().what);
    return 1;
  }
  (*sup)->start_all();
  (*sup)->run(sfd);
  (*sup)->shutdown();
  CANOPY_INFO("all VMs stopped");
  return (*sup)->compositor_exit_code();
}

}  // namespace

namespace {

canopy::hypervisor::kvm::KvmVm* g_kvm = nullptr;

int boot(int argc, char** argv) {
  namespace k = canopy::hypervisor::kvm;
  k::KvmConfig c;
  c.cmdline = "console=ttyS0";
  std::vector<k::KvmDeviceSpec> devices;
  bool no_sandbox = false;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has = i + 1 < argc;
    if (a == "--no-sandbox") no_sandbox = true;
    else if (a == "--kernel" && has) c.kernel = argv[++i];
    else if (a == "--initrd" && has) c.initrd = argv[++i];
    else if (a == "--cmdline" && has) c.cmdline = argv[++i];
    else if (const auto size = a == "--memory" && has ? canopy::config::parse_size(argv[i + 1]) : std::nullopt) {
      c.ram_bytes = *size;
      ++i;
    } else if (a == "--vcpus" && has) c.vcpus = uint32_t(std::strtoul(argv[++i], nullptr, 10));
    else if (a == "--device" && has) {
      const std::string spec = argv[++i];
      const size_t eq = spec.find('=');
      k::KvmDeviceSpec d;
      d.name = spec.substr(0, eq);
      d.virtio_id = d.name == "gpu" ? 16 : d.name == "snd" ? 25 : canopy::config::virtio_device_id(d.name);
      if (eq == std::string::npos || d.virtio_id == 0 || eq + 1 >= spec.size()) {
        std::fprintf(stderr, "canopy-vmm boot: --device %s: expected TYPE=PROGRAM[,ARG...] with a virtio type\n",
                     spec.c_str());
        return 2;
      }
      std::string rest = spec.substr(eq + 1);
      size_t start = 0;
      for (;;) {
        const size_t comma = rest.find(',', start);
        const std::string part = rest.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (d.program.empty()) d.program = part;
        else d.args.push_back(part);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      devices.push_back(std::move(d));
    } else if (a == "--device-arg" && has && !devices.empty()) {
      devices.back().args.push_back(argv[++i]);  // one argument, commas and all
    } else if (a == "--device-inherit" && has && !devices.empty()) {
      // FD:TARGET: an inherited descriptor the back-end gets as TARGET (its broker device link, the audio
      // policy board); 3 is its vhost-user socket.
      int fd = -1, target = -1;
      if (std::sscanf(argv[++i], "%d:%d", &fd, &target) != 2 || fd <= 2 || target <= 3 || target >= 16 ||
          fcntl(fd, F_GETFD) < 0) {
        std::fprintf(stderr, "canopy-vmm boot: --device-inherit %s: expected an open FD:TARGET (4..15)\n", argv[i]);
        return 2;
      }
      devices.back().inherit.emplace_back(fd, target);
    } else if (a == "--device-uid" && has && !devices.empty()) {
      devices.back().identity.uid = uid_t(std::strtoul(argv[++i], nullptr, 10));
    } else if (a == "--device-group" && has && !devices.empty()) {
      devices.back().identity.groups.push_back(gid_t(std::strtoul(argv[++i], nullptr, 10)));
    } else if (a == "--device-pipewire" && !devices.empty()) {
      devices.back().identity.pipewire = true;
    } else if (a == "--device-scratch" && has && !devices.empty()) {
      devices.back().identity.scratch = argv[++i];
    } else {
      std::fprintf(stderr, "canopy-vmm boot: bad argument %s\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  if (c.kernel.empty()) {
    std::fprintf(stderr, "canopy-vmm boot: --kernel is required\n");
    return 2;
  }
  // A Landlock domain of its own first, while it has one thread: from inside it, no process outside
  // (canopy-vmm, the compositor, other VMs) can be traced, read through /proc/<pid>/mem or, from ABI 6,
  // signalled; its back-ends, started inside it, can.
  int landlock_abi = 0;
  if (!no_sandbox && (landlock_abi = canopy::landlock_scope_self()) < 0) {
    std::fprintf(stderr, "canopy-vmm boot: cannot enter a Landlock domain (--no-sandbox runs without)\n");
    return 1;
  }
  // As root, of root's powers only what its set-up takes, while it has one thread: opening its kernel
  // and initrd and reaching the operator's PipeWire socket wherever they are (CAP_DAC_OVERRIDE), starting its back-ends
  // under their uids (CAP_SETUID, CAP_SETGID) and stopping them (CAP_KILL). No CAP_SYS_ADMIN, CAP_SYS_PTRACE,
  // CAP_SYS_MODULE, CAP_NET_*, CAP_SYS_RAWIO ...
  if (!no_sandbox) {
    if (canopy::Status st = canopy::drop_capabilities({CAP_DAC_OVERRIDE, CAP_SETUID, CAP_SETGID, CAP_KILL}); !st.ok()) {
      std::fprintf(stderr, "canopy-vmm boot: cannot drop its capabilities: %s (--no-sandbox runs without)\n",
                   st.error().what);
      return 1;
    }
  }
  auto vm = k::KvmVm::create(c);
  if (!vm.ok()) {
    std::fprintf(stderr, "canopy-vmm boot: %s%s\n", vm.error().what,
                 k::KvmVm::available() ? "" : " (no usable /dev/kvm: load kvm-intel or kvm-amd)");
    return 1;
  }
  if (devices.size() > 16) {
    std::fprintf(stderr, "canopy-vmm boot: at most 16 devices\n");
    return 2;
  }
  // Its back-ends started, under their identities: the last step that needs more than stopping them.
  auto device_failed = [](const k::KvmDeviceSpec& spec, const char* what) {
    std::fprintf(stderr, "canopy-vmm boot: device %s (%s): %s\n", spec.name.c_str(), spec.program.c_str(), what);
    return 1;
  };
  std::vector<std::unique_ptr<k::VhostMmioDevice>> live;
  for (const auto& spec : devices) {
    auto d = k::VhostMmioDevice::launch(spec);
    if (!d.ok()) return device_failed(spec, d.error().what);
    live.push_back(std::move(*d));
  }
  // What they inherited (their device links, the audio policy board) is theirs alone: not kept here,
  // where a read-only descriptor of another VM's board could be opened again writable.
  for (auto& spec : devices) {
    for (const auto& [fd, target] : spec.inherit) (void)::close(fd);
    spec.inherit.clear();  // their numbers are free for what it opens next
  }
  // Before the first byte from a back-end or the guest, while it has one thread (its threads inherit
  // this): of root's powers only CAP_KILL (its back-ends run under other uids), and a view of the files
  // in which it writes nothing, opens no device file and reads only the system's (restrict_files):
  // what it needs is open. The view scopes no signals, so it can still stop its back-ends, which the
  // domain it entered first keeps to.
  if (!no_sandbox) {
    if (canopy::Status st = canopy::drop_capabilities({CAP_KILL}); !st.ok()) {
      std::fprintf(stderr, "canopy-vmm boot: cannot drop its capabilities: %s (--no-sandbox runs without)\n",
                   st.error().what);
      return 1;
    }
    canopy::transport::FileView view;
    view.restrict_reads = true;
    view.devices = false;
    view.scope = false;
    if (canopy::Status st = canopy::transport::restrict_files(view); !st.ok()) {
      if (st.error().code != canopy::Errc::kUnsupported) {
        std::fprintf(stderr, "canopy-vmm boot: cannot confine its files: %s (--no-sandbox runs without)\n",
                     st.error().what);
        return 1;
      }
      CANOPY_WARN("kvm: no Landlock in this kernel: it may read and write wherever its uid may");
    }
  }
  // Devices: 4 KiB MMIO windows from 0xd0000000, GSIs from 5 (4 is COM1), edge-triggered.
  for (size_t i = 0; i < live.size(); ++i) {
    if (canopy::Status st = live[i]->attach(**vm, 0xd0000000ull + i * 0x1000, uint32_t(5 + i)); !st.ok())
      return device_failed(devices[i], st.error().what);
  }
  // Set up: from here on it runs the guest (vCPU threads, its devices' messages and interrupts) under
  // the allowlist, on every thread; of other processes it may wait for and signal only the back-ends it
  // started, through their pidfds.
  if (!no_sandbox) {
    canopy::transport::SyscallPolicy policy;
    policy.children = true;
    policy.no_mode_changes = true;  // a file's mode it owns (root's memfds) stays what it is
    if (canopy::Status st = canopy::transport::confine_syscalls(policy); !st.ok()) {
      std::fprintf(stderr, "canopy-vmm boot: cannot confine the process: %s (--no-sandbox runs without)\n",
                   st.error().what);
      return 1;
    }
    CANOPY_INFO("kvm: confined: a system call allowlist (seccomp), no files but the system's to read; %s",
                landlock_abi >= 6  ? "signals only to its own back-ends, ptrace of no other process (Landlock)"
                : landlock_abi > 0 ? "ptrace of no other process (Landlock; this kernel's cannot scope signals)"
                                   : "no Landlock in this kernel");
  }
  g_kvm = vm->get();
  struct sigaction sa{};
  sa.sa_handler = [](int) {
    if (g_kvm) g_kvm->request_stop();
  };
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  auto r = (*vm)->run();
  g_kvm = nullptr;
  if (!r.ok()) {
    std::fprintf(stderr, "canopy-vmm boot: %s\n", r.error().what);
    return 1;
  }
  CANOPY_INFO("kvm: guest %s after %llu exits", k::to_string(*r), (unsigned long long)(*vm)->exits());
  switch (*r) {
    case k::VmExit::kPowerOff: return 0;
    case k::VmExit::kReboot: return 3;
    case k::VmExit::kStopped: return 4;
    default: return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // canopy-vmm holds every VM's memory: a back-end of the same user (confined, but able to open files)
  // must not read or write it through /proc/<pid>/mem. Sanitizer builds stay dumpable (LeakSanitizer
  // traces the process from a helper task).
  if (!canopy::transport::backend_sandbox_loosened()) prctl(PR_SET_DUMPABLE, 0);
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (argc == 3 && std::strcmp(argv[1], "--check") == 0) return check(argv[2]);
  if (argc >= 2 && std::strcmp(argv[1], "run") == 0) return run(argc, argv);
  if (argc >= 2 && std::strcmp(argv[1], "boot") == 0) return boot(argc, argv);
  std::fprintf(stderr, "canopy-vmm: bad arguments\n%s", kUsage);
  return 2;
}
