// Test helper: canopy-vmm run on a manifest in a private folder, talked to through its control socket,
// and everything it started gone with it (tests/partition, tests/interference). Header-only; a test
// that includes it links canopy_hypervisor (spawn, control_request) and defines CANOPY_BIN_DIR.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "canopy/base/unique_fd.h"
#include "canopy/hypervisor/control_client.h"
#include "canopy/hypervisor/process.h"
#include "canopy/test_support/command.h"

namespace canopy::test_support {

using hypervisor::Child;
using hypervisor::control_request;
using hypervisor::spawn;
using hypervisor::SpawnOptions;
using Fields = std::map<std::string, std::string>;

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline bool process_gone(pid_t pid) { return kill(pid, 0) != 0 && errno == ESRCH; }

// Sends `text` (one command per line) over a unix stream socket with a line protocol such as
// canopy-gpu's control socket, where every command's answer ends with a line "ok" or "error: ...", and
// returns what comes back once every command is answered (or the peer closed, or the 30 s hang guard).
inline std::string line_exchange(const std::string& path, const std::string& text) {
  const size_t commands = size_t(std::count(text.begin(), text.end(), '\n'));
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  std::string out;
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      send(s, text.data(), text.size(), MSG_NOSIGNAL) == ssize_t(text.size())) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    auto answered = [&] {
      size_t n = 0;
      std::istringstream in(out);
      for (std::string line; std::getline(in, line);)  // complete lines only: the last may still be coming
        n += !in.eof() && (line == "ok" || line.rfind("error", 0) == 0);
      return n;
    };
    char buf[4096];
    while (answered() < commands && std::chrono::steady_clock::now() < end) {
      pollfd p{s, POLLIN, 0};
      if (poll(&p, 1, 1000) != 1) continue;
      const ssize_t n = recv(s, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, size_t(n));
    }
  }
  close(s);
  return out;
}

// Waits until `pid` is gone (its pidfd becomes readable), at most timeout_ms; whether it is gone.
inline bool wait_gone(pid_t pid, int timeout_ms) {
  const int fd = int(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return process_gone(pid);  // ESRCH: gone already
  pollfd p{fd, POLLIN, 0};
  const bool exited = poll(&p, 1, timeout_ms) == 1;
  close(fd);
  return exited || process_gone(pid);
}

// Runs canopy-vmm on a manifest in a private folder, and talks to it through its control socket.
class Vmm {
 public:
  explicit Vmm(const std::string& manifest, std::vector<std::string> extra = {}) {
    char tmpl[] = "/tmp/canopy-partition-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    // Partitions (other uids) read the probe's target file here; back-ends (their VMs' uids when the
    // test runs as root) write their frame logs, sockets and recordings here.
    chmod(dir_.c_str(), 01777);
    std::string text = manifest;  // "@DIR@" stands for this folder, here and in `extra`
    for (size_t at; (at = text.find("@DIR@")) != std::string::npos;) text.replace(at, 5, dir_);
    for (auto& e : extra)
      for (size_t at; (at = e.find("@DIR@")) != std::string::npos;) e.replace(at, 5, dir_);
    std::ofstream(dir_ + "/vm.toml") << text;
    log_ = dir_ + "/vmm.log";
    control_ = dir_ + "/control";
    log_fd_ = UniqueFd(open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    SpawnOptions o;
    o.path = std::string(CANOPY_BIN_DIR) + "/canopy-vmm";
    o.argv = {o.path, "run", dir_ + "/vm.toml", "--control", control_, "--stop-grace-ms", "500"};
    o.argv.insert(o.argv.end(), extra.begin(), extra.end());
    o.env = {"PATH=/usr/bin:/bin", "CANOPY_LOG=info"};
    o.stdout_fd = log_fd_.get();
    o.stderr_fd = log_fd_.get();
    auto c = spawn(o);
    EXPECT_TRUE(c.ok());
    if (c.ok()) vmm_ = std::move(*c);
  }
  ~Vmm() {
    // Everything canopy-vmm started must be gone with it.
    std::vector<pid_t> pids = all_pids();
    if (vmm_.running()) {
      (void)vmm_.signal(SIGTERM);
      if (!vmm_.wait(60000).ok()) vmm_.terminate(0);
    }
    // Each is killed with canopy-vmm (PDEATHSIG); its exit can take a while on a loaded machine (an
    // ASan process unmapping its shadow), so wait for the event, with a 30 s hang guard.
    for (pid_t p : pids) EXPECT_TRUE(wait_gone(p, 30000)) << "pid " << p << " outlived canopy-vmm";
    if (HasFailure() || getenv("CANOPY_TEST_SHOW_LOG"))
      std::fprintf(stderr, "--- canopy-vmm log ---\n%s\n", read_file(log_).c_str());
    std::system(("rm -rf " + dir_).c_str());
  }
  static bool HasFailure() { return ::testing::Test::HasFailure(); }

  const std::string& dir() const { return dir_; }
  std::string log() const { return read_file(log_); }
  Child& process() { return vmm_; }

  // One control request; the reply text ("" when unreachable). The connection is closed on both ends
  // when this returns (control_request waits for canopy-vmm's EOF).
  std::string ctl(const std::string& req) {
    auto r = control_request(control_, req, 30000);
    return r.ok() ? std::move(*r) : std::string();
  }
  // `canopyctl` itself: its output and exit code.
  int canopyctl(const std::string& args, std::string& out) {
    return run_command(std::string(CANOPY_BIN_DIR) + "/canopyctl --socket " + control_ + " " + args, out);
  }

  // Status lines: "vm NAME" and "device NAME INDEX" -> key=value fields.
  std::map<std::string, Fields> status() {
    std::map<std::string, Fields> out;
    std::istringstream in(ctl("status"));
    std::string line;
    while (std::getline(in, line)) {
      Fields f;
      std::string kind = line.substr(0, line.find(' '));
      size_t i = line.find(' ');
      while (i != std::string::npos && i < line.size()) {
        size_t eq = line.find('=', i + 1);
        if (eq == std::string::npos) break;
        std::string key = line.substr(i + 1, eq - i - 1);
        std::string val;
        size_t next;
        if (line[eq + 1] == '"') {
          size_t close = line.find('"', eq + 2);
          while (close != std::string::npos && line[close - 1] == '\\') close = line.find('"', close + 1);
          val = line.substr(eq + 2, close - eq - 2);
          next = line.find(' ', close);
        } else {
          next = line.find(' ', eq);
          val = line.substr(eq + 1, next == std::string::npos ? std::string::npos : next - eq - 1);
        }
        f[key] = val;
        i = next;
      }
      out[kind == "vm" ? "vm " + f["name"] : "device " + f["vm"] + " " + f["index"]] = f;
    }
    return out;
  }
  long field(const std::string& key, const std::string& name) {
    auto s = status();
    auto it = s.find(key);
    if (it == s.end() || !it->second.count(name)) return -1;
    return std::stol(it->second[name]);
  }
  std::string text(const std::string& key, const std::string& name) { return status()[key][name]; }

  // Waits until pred holds (looking every 20 ms); false when the hang guard (timeout_ms on a steady
  // clock, 60 s by default: well over 10x what any of these waits takes on an idle machine) ran out.
  static bool wait_until(const std::function<bool()>& pred, int timeout_ms = 60000) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < end) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return pred();
  }

  std::vector<pid_t> all_pids() {
    std::vector<pid_t> pids;
    for (auto& [k, f] : status()) {
      for (const char* key : {"pid", "backend_pid"}) {
        if (f.count(key) && std::stol(f[key]) > 0) pids.push_back(pid_t(std::stol(f[key])));
      }
    }
    return pids;
  }

 private:
  std::string dir_, log_, control_;
  UniqueFd log_fd_;
  Child vmm_;
};

}  // namespace canopy::test_support
