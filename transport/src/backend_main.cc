#include "canopy/transport/backend_main.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "canopy/base/capabilities.h"
#include "canopy/base/log.h"
#include "canopy/buffers/fault_guard.h"
#include "canopy/transport/backend_sandbox.h"

namespace canopy::transport::vhost_user {
namespace {

int g_stop_fd = -1;
std::atomic<Backend*> g_backend{nullptr};

void on_signal(int) {
  uint64_t one = 1;
  ssize_t w = ::write(g_stop_fd, &one, sizeof one);
  (void)w;
  if (Backend* b = g_backend.load()) b->request_stop();
}

void usage(const BackendProgram& p, FILE* out) {
  std::fprintf(out,
               "usage: %s (--socket-path=PATH | --fd=N) [options]\n"
               "       %s --print-capabilities\n"
               "  --socket-path=PATH    listen on a unix socket and serve one vhost-user front-end\n"
               "  --fd=N                serve an already connected vhost-user socket\n"
               "  --print-capabilities  print the back-end's capabilities as JSON\n"
               "  --verbose             debug logging\n%s%s",
               p.name, p.name,
               p.confine ? "  --no-sandbox          do not confine the process once serving (docs/security.md)\n"
                           "  --seccomp-allow=NAMES add system calls (a,b,...) to the allowlist\n"
                           "  --seccomp-audit       let calls outside the allowlist through; the kernel logs them\n"
                         : "",
               p.extra_usage);
}

// Accepts one connection, or returns an invalid fd when a stop was requested.
Result<UniqueFd> accept_one(int listen_fd) {
  pollfd fds[2] = {{listen_fd, POLLIN, 0}, {g_stop_fd, POLLIN, 0}};
  for (;;) {
    int r = ::poll(fds, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return make_error(Errc::kIo, "poll failed", errno);
    }
    if (fds[1].revents) return UniqueFd();
    if (fds[0].revents) {
      int c = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) return UniqueFd(c);
      if (errno != EINTR && errno != ECONNABORTED) return make_error(Errc::kIo, "accept failed", errno);
    }
  }
}

}  // namespace

int backend_main(int argc, char** argv, const BackendProgram& program, const DeviceFactory& factory) {
  set_log_tag(program.name);
  std::string socket_path;
  int conn_fd = -1;
  bool print_caps = false;
  SyscallPolicy syscalls{program.syscalls, false};
  bool no_sandbox = sandbox_off_by_environment();
  std::vector<std::string> extra;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&](std::string_view name) -> std::string {
      if (a.size() > name.size() && a.substr(0, name.size()) == name && a[name.size()] == '=')
        return std::string(a.substr(name.size() + 1));
      if (a == name && i + 1 < argc) return argv[++i];
      return {};
    };
    if (a == "--print-capabilities") {
      print_caps = true;
    } else if (a == "--help" || a == "-h") {
      usage(program, stdout);
      return 0;
    } else if (a == "--no-sandbox") {
      no_sandbox = true;
    } else if (a == "--seccomp-audit") {
      syscalls.audit = true;
    } else if (a.rfind("--seccomp-allow", 0) == 0 && (a.size() == 15 || a[15] == '=')) {
      const std::string list = value("--seccomp-allow");
      if (Status s = allow_syscalls(list, syscalls); !s.ok()) {
        std::fprintf(stderr, "%s: --seccomp-allow %s: %s\n", program.name, list.c_str(), s.error().what);
        return 2;
      }
    } else if (a == "--verbose" || a == "-v") {
      set_log_level(LogLevel::kDebug);
    } else if (a.rfind("--socket-path", 0) == 0) {
      socket_path = value("--socket-path");
      if (socket_path.empty()) {
        std::fprintf(stderr, "%s: --socket-path needs a path\n", program.name);
        return 2;
      }
    } else if (a.rfind("--fd", 0) == 0 && (a.size() == 4 || a[4] == '=')) {
      std::string v = value("--fd");
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || n < 0 || n > 1 << 20) {
        std::fprintf(stderr, "%s: --fd needs a file descriptor number\n", program.name);
        return 2;
      }
      conn_fd = int(n);
    } else {
      // A device option given as "--name value" reaches the factory as "--name=value".
      bool valued = false;
      for (const std::string& v : program.valued_options) valued |= a == v;
      if (valued && i + 1 < argc) extra.push_back(std::string(a) + "=" + argv[++i]);
      else extra.emplace_back(a);
    }
  }
  if (print_caps) {
    std::printf("{\n  \"type\": \"%s\",\n  \"features\": [", program.type);
    for (size_t i = 0; i < program.features.size(); ++i)
      std::printf("%s\n    \"%s\"", i ? "," : "", program.features[i].c_str());
    std::printf("%s]\n}\n", program.features.empty() ? "" : "\n  ");
    return 0;
  }
  if (socket_path.empty() == (conn_fd < 0)) {
    usage(program, stderr);
    return 2;
  }
  // The file system view comes first: a Landlock domain covers the threads made after it, and the
  // device makes its threads (a GPU driver's, PipeWire's) in the factory.
  if (program.confine && !no_sandbox) {
    std::vector<std::string> beneath = program.writable_paths;
    // Its VM's scratch folder, where canopy-vmm starts it with one (--scratch-dir).
    if (const char* s = std::getenv("CANOPY_SCRATCH_DIR"); s && *s) beneath.emplace_back(s);
    if (!socket_path.empty()) beneath.push_back(writable_folder(socket_path));
    for (const auto& a : extra) {
      const size_t eq = a.find('=');
      if (eq == std::string::npos) continue;
      for (const auto& w : program.writable_options)
        if (a.compare(0, eq, w) == 0 && eq + 1 < a.size()) beneath.push_back(writable_folder(a.substr(eq + 1)));
    }
    FileView view;
    view.writable = std::move(beneath);
    view.restrict_reads = true;
    view.readable = program.readable_paths;
    if (Status st = restrict_files(view); !st.ok()) {
      if (st.error().code != Errc::kUnsupported) {
        CANOPY_ERROR("cannot confine the process's files: %s (--no-sandbox runs without)", st.error().what);
        return 1;
      }
      CANOPY_WARN("no Landlock in this kernel: the process may read and write wherever its uid may");
    }
    // Root's powers too (a back-end run as root by hand or a test; canopy-vmm as root starts it under
    // a uid of its VM's, which has none), while it has one thread.
    if (Status st = drop_capabilities(); !st.ok()) {
      CANOPY_ERROR("cannot drop its capabilities: %s (--no-sandbox runs without)", st.error().what);
      return 1;
    }
  }
  auto device = factory(extra);
  if (!device.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.name, device.error().what);
    usage(program, stderr);
    return 2;
  }

  g_stop_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  UniqueFd conn;
  if (conn_fd >= 0) {
    conn = UniqueFd(conn_fd);
  } else {
    auto listener = listen_unix(socket_path.c_str());
    if (!listener.ok()) {
      CANOPY_ERROR("cannot listen on %s: %s (%s)", socket_path.c_str(), listener.error().what,
                   std::strerror(listener.error().sys_errno));
      return 1;
    }
    CANOPY_INFO("listening on %s", socket_path.c_str());
    auto c = accept_one(listener->get());
    ::unlink(socket_path.c_str());
    if (!c.ok()) {
      CANOPY_ERROR("accept: %s", c.error().what);
      return 1;
    }
    if (!c->valid()) return 0;  // stopped before a front-end connected
    conn = std::move(*c);
  }

  // Guest memory whose file a front-end truncates must not kill the process (SIGBUS): set up before
  // the process is confined.
  buffers::fault_guard::install();
  if (program.confine && !no_sandbox) {
    if (Status st = confine_syscalls(syscalls); !st.ok()) {
      CANOPY_ERROR("cannot confine the process: %s (--no-sandbox runs without)", st.error().what);
      return 1;
    }
    CANOPY_INFO(
        "confined: a system call allowlist%s (seccomp%s): no exec, no new processes, unix sockets only, no "
        "other processes; reads the system's files and writes only where its options say (Landlock)",
        syscalls.allow.empty() ? "" : " with additions",
        syscalls.audit ? ", audit: calls outside it go through and are logged" : "");
  }
  Backend backend(**device);
  g_backend.store(&backend);
  uint64_t pending;
  if (::read(g_stop_fd, &pending, sizeof pending) == sizeof pending) backend.request_stop();
  Status s = backend.run(std::move(conn));
  g_backend.store(nullptr);
  CANOPY_INFO("front-end gone after %llu messages (%llu rejected), %llu kicks",
              (unsigned long long)backend.stats().messages, (unsigned long long)backend.stats().bad_messages,
              (unsigned long long)backend.stats().kicks);
  if (!s.ok()) {
    CANOPY_ERROR("connection failed: %s", s.error().what);
    return 1;
  }
  return 0;
}

}  // namespace canopy::transport::vhost_user
