// canopy-display: the multi-VM compositor (docs/display.md).
//
//   canopy-display MANIFEST --broker-fd N | --listen PATH [--control PATH] [--output auto|headless|window]
//                  [--run-for-s N] [--snapshot-dir DIR] [--summary FILE] [--trace FILE] [--budget-ms N]
//                  [--renderer auto|pixman|vulkan] [--vulkan-device NAME] [--output kms [--kms-device PATH]]
//                  [--background RRGGBB]
//
// canopy-gpu instances send their scanouts' frames over connections canopy-vmm's broker makes and
// hands over --broker-fd (canopy-vmm run ... --compositor starts canopy-display so), each bound to its
// VM; or, for desktop use without canopy-vmm, they connect to --listen and name their VM themselves; the manifest's
// [[display]] / [[layout]] say where each one goes. With
// --run-for-s it stops after that long, writes PNG snapshots of every output and a summary; SIGTERM /
// SIGINT / control `quit` stop it too (and write them as well). Exit status: 0, 1 on a runtime error,
// 2 on bad usage or a bad manifest.
#include <linux/capability.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "canopy/base/capabilities.h"
#include "canopy/base/clock.h"
#include "canopy/base/log.h"
#include "canopy/base/peer.h"
#include "canopy/config/manifest.h"
#include "canopy/display/compositor.h"
#include "canopy/transport/backend_sandbox.h"

using namespace canopy;
using namespace canopy::display;

namespace {

constexpr const char* kUsage =
    "usage: canopy-display MANIFEST --broker-fd N | --listen-dir DIR | --listen PATH [options]\n"
    "  --broker-fd N          canopy-vmm's broker link: device connections bound to their VM arrive there\n"
    "  --listen-dir DIR       a socket per VM the layout shows, DIR/<vm>.sock (mode 0600): canopy-gpu\n"
    "                         --display-socket=DIR/<vm>.sock; a connection there is that VM's\n"
    "  --control-group GROUP  its members may use the control socket too (mode 0660, of GROUP)\n"
    "  --no-sandbox           run unconfined (docs/security.md: confined, it writes only where its options\n"
    "                         say and makes only the system calls of its allowlist)\n"
    "  --seccomp-allow NAMES  add system calls (a,b,...) to the allowlist\n"
    "  --seccomp-audit        let calls outside the allowlist through; the kernel logs them\n"
    "  --listen PATH          one socket for every device, which names its VM itself (trusting every\n"
    "                         peer that can reach it); a VM bound by the broker or --listen-dir cannot\n"
    "                         be claimed there\n"
    "  --control PATH         control socket (canopyctl --socket PATH stats | snapshot [DIR] | trace-start |\n"
    "                         trace-stop FILE | quit | step), for the uid's processes that canopy-vmm did\n"
    "                         not start\n"
    "  --control-dir DIR      where snapshot and trace-stop write, names resolved beneath it only (default:\n"
    "                         --snapshot-dir; without either they are refused)\n"
    "  --output MODE          auto (a window when a display is there, else headless), headless, window,\n"
    "                         kms (each output on the next connected connector of the DRM device)\n"
    "  --kms-device PATH      the DRM device for --output kms (default: the first /dev/dri/cardN with a\n"
    "                         connected connector)\n"
    "  --background RRGGBB    what shows where no layer draws (default 000000)\n"
    "  --run-for-s N          stop after N seconds\n"
    "  --snapshot-dir DIR     at the end write DIR/<output>.png\n"
    "  --summary FILE         at the end write the summary there too (it always goes to stdout)\n"
    "  --trace FILE           record a Chrome JSON trace (Perfetto) of the whole run into FILE\n"
    "  --budget-ms N          compose this long before each deadline (default 4)\n"
    "  --stepped              tests: time moves only by the control socket's `step` (compose the next\n"
    "                         latch point; the answer gives each layer's CRC and counters)\n"
    "  --renderer R           auto (Vulkan on a GPU, else pixman), pixman, vulkan (any device, lavapipe too)\n"
    "  --vulkan-device NAME   the Vulkan device whose name contains NAME\n"
    "  --quiet                no progress line every second\n";

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

double ms(Nanos d) { return double(d.count()) / 1e6; }

std::string summary(const Compositor& c, double seconds) {
  std::string s;
  char line[512];
  const Renderer::Stats rs = c.renderer_stats();
  std::snprintf(line, sizeof line,
                "canopy-display summary: %.1f s, renderer %s (mappings imported %llu, bytes staged %llu)\n", seconds,
                c.renderer_name(), (unsigned long long)rs.imports, (unsigned long long)rs.bytes_staged);
  s += line;
  for (size_t i = 0; i < c.num_outputs(); ++i) {
    const OutputSpec& spec = c.layout().outputs[i];
    const OutputStats& st = c.output_stats(i);
    uint64_t reused = 0;
    for (const auto& l : st.layers) reused += l.reused;
    std::snprintf(line, sizeof line,
                  "output %s %ux%u@%u (%s, %s): %.1f fps, missed deadlines %llu, reused frames %llu\n",
                  spec.name.c_str(), spec.width, spec.height, spec.refresh_hz, to_string(spec.criticality),
                  c.sink_name(i), seconds > 0 ? double(st.compositions) / seconds : 0.0,
                  (unsigned long long)st.missed_deadlines, (unsigned long long)reused);
    s += line;
    for (size_t l = 0; l < spec.layers.size(); ++l) {
      const LayerStats& ls = st.layers[l];
      char first[48] = "";
      if (ls.first_frame) std::snprintf(first, sizeof first, ", first frame at %.1f ms", ms(*ls.first_frame));
      std::snprintf(line, sizeof line,
                    "  layer %s/%u: %.1f new fps, frame latency p50 %.2f ms p99 %.2f ms, reused %llu, missed %llu, "
                    "dropped %llu, fallback entries %llu%s%s\n",
                    spec.layers[l].vm.c_str(), spec.layers[l].scanout,
                    seconds > 0 ? double(ls.new_frames) / seconds : 0.0, ms(ls.latency.percentile(0.5)),
                    ms(ls.latency.percentile(0.99)), (unsigned long long)ls.reused, (unsigned long long)ls.missed,
                    (unsigned long long)ls.dropped, (unsigned long long)ls.fallback_entries, first,
                    ls.fallback ? " (showing the fallback)" : "");
      s += line;
    }
  }
  for (const auto& v : c.connections()) {
    std::snprintf(line, sizeof line, "vm %s: frames %llu (blob %llu, refused %llu), bytes copied %llu%s%s%s\n",
                  v.vm.c_str(), (unsigned long long)v.frames, (unsigned long long)v.blob_frames,
                  (unsigned long long)v.frames_refused, (unsigned long long)v.bytes_copied,
                  v.brokered ? ", brokered as " : ", self-named", v.brokered ? v.criticality.c_str() : "",
                  v.connected ? "" : " (disconnected)");
    s += line;
  }
  return s;
}

void progress(const Compositor& c, double seconds) {
  std::string s;
  char part[160];
  std::snprintf(part, sizeof part, "canopy-display: %5.1f s", seconds);
  s += part;
  for (size_t i = 0; i < c.num_outputs(); ++i) {
    const OutputStats& st = c.output_stats(i);
    uint64_t fb = 0;
    for (const auto& l : st.layers) fb += l.fallback ? 1 : 0;
    std::snprintf(part, sizeof part, " | %s: %llu frames, %llu missed%s", c.layout().outputs[i].name.c_str(),
                  (unsigned long long)st.compositions, (unsigned long long)st.missed_deadlines, fb ? ", FALLBACK" : "");
    s += part;
  }
  std::fprintf(stderr, "%s\n", s.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  std::string manifest_path, output = "auto", snapshot_dir, summary_path, trace_path;
  CompositorOptions opt;
  double run_for = 0;
  bool quiet = false, stepped_time = false, no_sandbox = transport::sandbox_off_by_environment();
  transport::SyscallPolicy syscalls;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "canopy-display: %s needs a value\n%s", name, kUsage);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--listen") opt.listen_path = value("--listen");
    else if (a == "--broker-fd") opt.broker_fd = std::atoi(value("--broker-fd"));
    else if (a == "--listen-dir") opt.listen_dir = value("--listen-dir");
    else if (a == "--control-dir") opt.control_dir = value("--control-dir");
    else if (a == "--control") opt.control_path = value("--control");
    else if (a == "--control-group") {
      const char* g = value("--control-group");
      auto gid = group_named(g);
      if (!gid.ok()) {
        std::fprintf(stderr, "canopy-display: --control-group %s: %s\n", g, gid.error().what);
        return 2;
      }
      opt.control_group = *gid;
    } else if (a == "--output") output = value("--output");
    else if (a == "--run-for-s") run_for = std::atof(value("--run-for-s"));
    else if (a == "--snapshot-dir") snapshot_dir = value("--snapshot-dir");
    else if (a == "--summary") summary_path = value("--summary");
    else if (a == "--trace") trace_path = value("--trace");
    else if (a == "--budget-ms") opt.scheduler.budget = std::chrono::milliseconds(std::atoi(value("--budget-ms")));
    else if (a == "--quiet") quiet = true;
    else if (a == "--stepped") stepped_time = true;
    else if (a == "--no-sandbox") no_sandbox = true;
    else if (a == "--seccomp-audit") syscalls.audit = true;
    else if (a == "--seccomp-allow") {
      const char* list = value("--seccomp-allow");
      if (Status s = transport::allow_syscalls(list, syscalls); !s.ok()) {
        std::fprintf(stderr, "canopy-display: --seccomp-allow %s: %s\n", list, s.error().what);
        return 2;
      }
    } else if (a == "--renderer") opt.renderer = value("--renderer");
    else if (a == "--vulkan-device") opt.vulkan_device = value("--vulkan-device");
    else if (a == "--kms-device") opt.kms_device = value("--kms-device");
    else if (a == "--background")
      opt.background = uint32_t(std::strtoul(value("--background"), nullptr, 16)) & 0xffffff;
    else if (!a.empty() && a[0] != '-' && manifest_path.empty()) manifest_path = a;
    else {
      std::fprintf(stderr, "canopy-display: unknown argument %s\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  if (manifest_path.empty() || (opt.listen_path.empty() && opt.listen_dir.empty() && opt.broker_fd < 0) ||
      run_for < 0 || (output != "auto" && output != "headless" && output != "window" && output != "kms") ||
      opt.scheduler.budget.count() <= 0) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  set_log_tag("canopy-display");
  if (opt.control_dir.empty()) opt.control_dir = snapshot_dir;
  // Under canopy-vmm (the broker), whatever it started (VMs, back-ends) may not use the control socket.
  if (opt.broker_fd >= 0) opt.control_refuses_descendants_of = ::getppid();
  auto loaded = config::load_manifest_file(manifest_path);
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
    return 2;
  }
  Layout layout = layout_from_manifest(*loaded.manifest);
  const bool has_display = std::getenv("DISPLAY") || std::getenv("WAYLAND_DISPLAY");
  const bool want_window = output == "window" || (output == "auto" && has_display);

  // Its file system view comes first, while it has one thread (a Landlock domain covers only the
  // threads made after it; Vulkan and SDL make theirs when the outputs open): it writes its sockets,
  // snapshots, traces and summary, the GPU driver's shader cache, and opens device files (KMS, render
  // nodes) but /dev/udmabuf: a read-only descriptor of guest memory stays read-only (KMS planes take
  // the dma-bufs canopy-gpu sends).
  if (!no_sandbox) {
    std::vector<std::string> beneath;
    for (const std::string& p : {opt.listen_path, opt.control_path, summary_path, trace_path})
      if (!p.empty()) beneath.push_back(transport::writable_folder(p));
    for (const std::string& d : {opt.listen_dir, opt.control_dir, snapshot_dir})
      if (!d.empty()) beneath.push_back(d);
    for (const std::string& cache : transport::driver_cache_dirs()) beneath.push_back(cache);
    transport::FileView view;
    view.writable = std::move(beneath);
    view.refused_devices = {"udmabuf"};
    // It reads the system's files, what it writes and the GPU drivers' user configuration; not the
    // operator's other files. A window's output reads what the desktop session needs (X authority,
    // keyboard maps, toolkit settings: they vary), so there reading stays as the uid's permissions say.
    view.restrict_reads = !want_window;
    view.readable = transport::driver_config_paths();
    if (Status st = transport::restrict_files(view); !st.ok()) {
      if (st.error().code != Errc::kUnsupported) {
        std::fprintf(stderr, "canopy-display: cannot confine its files: %s (--no-sandbox runs without)\n",
                     st.error().what);
        return 1;
      }
      std::fprintf(stderr, "canopy-display: no Landlock in this kernel: it may read and write wherever its uid may\n");
    }
    // As root (the operator's uid when canopy-vmm is root) it keeps the uid, not root's powers: the mode
    // of a read-only descriptor of guest memory (0444) binds it. With --control-group, CAP_CHOWN to give
    // its control socket to the group as it makes it (the allowlist, applied before any peer is
    // served, has no chown call: nothing can use it after).
    const bool chown_socket = opt.control_group != gid_t(-1);
    if (Status st = chown_socket ? drop_capabilities({CAP_CHOWN}) : drop_capabilities(); !st.ok()) {
      std::fprintf(stderr, "canopy-display: cannot drop its capabilities: %s (--no-sandbox runs without)\n",
                   st.error().what);
      return 1;
    }
  }

  SteadyClock clock;
  FakeClock stepped;  // --stepped: the compositor's clock, moved by the control socket's `step`
  stepped.set(clock.now());
  if (stepped_time) opt.stepped_clock = &stepped;
  using Sinks = CompositorOptions::Sinks;
  auto create = [&](Sinks sinks) {
    opt.sinks = sinks;
    return Compositor::create(layout, opt, stepped_time ? static_cast<const Clock&>(stepped) : clock);
  };
  auto created = create(output == "kms" ? Sinks::kKms : want_window ? Sinks::kWindow : Sinks::kHeadless);
  if (!created.ok() && want_window && output == "auto") {
    std::fprintf(stderr, "canopy-display: no window (%s): running headless\n", created.error().what);
    created = create(Sinks::kHeadless);
  }
  if (!created.ok()) {
    std::fprintf(stderr, "canopy-display: %s\n", created.error().what);
    return 1;
  }
  std::unique_ptr<Compositor> comp = std::move(*created);
  // Its outputs open, before the first byte from a device connection, the broker or a control client:
  // the allowlist, on every thread. A window on X11 shares its frames through SysV shared memory.
  if (!no_sandbox) {
    if (std::string(comp->sink_name(0)) == "window")
      syscalls.allow.insert(syscalls.allow.end(), {"shmget", "shmat", "shmdt", "shmctl"});
    syscalls.no_udmabuf = true;       // with the Landlock view above: it makes no dma-buf of guest memory
    syscalls.no_mode_changes = true;  // as root it owns a root canopy-vmm's guest RAM: its mode 0444 holds
    if (Status st = transport::confine_syscalls(syscalls); !st.ok()) {
      std::fprintf(stderr, "canopy-display: cannot confine the process: %s (--no-sandbox runs without)\n",
                   st.error().what);
      return 1;
    }
    std::fprintf(stderr,
                 "canopy-display: confined: a system call allowlist (seccomp%s); writes only where its options "
                 "say (Landlock)\n",
                 syscalls.audit ? ", audit: calls outside it go through and are logged" : "");
  }
  if (!trace_path.empty()) comp->trace_start();

  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  std::fprintf(stderr, "canopy-display: %zu output(s), %s, devices from %s%s%s\n", comp->num_outputs(),
               comp->sink_name(0), opt.broker_fd >= 0 ? "the broker " : "",
               opt.listen_dir.empty() ? "" : (opt.listen_dir + "/<vm>.sock ").c_str(), opt.listen_path.c_str());
  const TimePoint start = clock.now();
  TimePoint next_progress = start + std::chrono::seconds(1);
  int rc = 0;
  while (!g_stop && !comp->quit_requested() && comp->sinks_open()) {
    const TimePoint now = clock.now();
    const double elapsed = std::chrono::duration<double>(now - start).count();
    if (run_for > 0 && elapsed >= run_for) break;
    if (!quiet && now >= next_progress) {
      progress(*comp, elapsed);
      next_progress += std::chrono::seconds(1);
    }
    if (Status s = comp->run_once(50); !s.ok()) {
      std::fprintf(stderr, "canopy-display: %s\n", s.error().what);
      rc = 1;
      break;
    }
  }
  const double seconds = std::chrono::duration<double>(clock.now() - start).count();
  if (!snapshot_dir.empty()) {
    if (Status s = comp->snapshot(snapshot_dir); !s.ok()) {
      std::fprintf(stderr, "canopy-display: snapshot: %s\n", s.error().what);
      rc = 1;
    }
  }
  if (!trace_path.empty()) {
    if (Status s = comp->trace_stop(trace_path); !s.ok()) {
      std::fprintf(stderr, "canopy-display: trace: %s\n", s.error().what);
      rc = 1;
    }
  }
  const std::string text = summary(*comp, seconds);
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
  if (!summary_path.empty()) {
    FILE* f = std::fopen(summary_path.c_str(), "w");
    if (!f || std::fputs(text.c_str(), f) < 0) rc = 1;
    if (f) std::fclose(f);
  }
  return rc;
}
