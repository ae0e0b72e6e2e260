// Impersonation against running processes, checked frame by frame (docs/security.md): canopy-display
// runs with a stepped clock (--stepped: time moves only when the test asks `step` on its control
// socket), canopy-display-feed stands in for the cluster's GPU back-end (a picture of one colour), and
// a second canopy-display-feed, the impostor, says it is the cluster in a colour of its own.
//   - Per-VM sockets (--listen-dir): the impostor on the IVI's socket is turned away; on each of the
//     steps after its attempt the cluster layer's picture (the CRC-32 of its rectangle, as canopy-display
//     reports it) is the one it showed before, and the layer never enters the fallback.
//   - Control, one trusting socket (--listen): the impostor evicts the cluster and its picture becomes
//     the cluster layer's.
// Every wait is for an event (a step's answer, a process's exit) with a hang guard, never for a time.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "canopy/base/crc32.h"
#include "canopy/test_support/seqpacket.h"

extern char** environ;

namespace canopy {
namespace {

const std::string kBin = CANOPY_BIN_DIR;

// A process of the test's, killed and reaped when it goes out of scope.
class Process {
 public:
  explicit Process(std::vector<std::string> argv, const std::string& log) {
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    if (posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  bool started() const { return pid_ > 0; }
  // Whether it has exited (reaped); its status in `status`.
  bool exited(int* status = nullptr) {
    if (exited_) return true;
    int st = 0;
    if (pid_ > 0 && ::waitpid(pid_, &st, WNOHANG) == pid_) {
      exited_ = true;
      status_ = st;
    }
    if (status) *status = status_;
    return exited_;
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = 0;
};

// One request on canopy-display's control socket; the answer (30 s hang guard).
std::string ask(const std::string& path, const std::string& req) {
  return test_support::ask_seqpacket(path, req, 30000);
}

// A step's line for a layer: field -> value ("crc", "new", "reused", "fallback_entries", "fallback").
std::map<std::string, std::string> layer_of(const std::string& report, const std::string& prefix) {
  std::map<std::string, std::string> f;
  std::istringstream in(report);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix + " ", 0) != 0) continue;
    std::istringstream words(line.substr(prefix.size() + 1));
    for (std::string w; words >> w;)
      if (const auto eq = w.find('='); eq != std::string::npos) f[w.substr(0, eq)] = w.substr(eq + 1);
  }
  return f;
}

// The CRC a 64x32 layer of one colour has on the canvas (XRGB8888 in memory: B, G, R, X), as the
// step report writes it.
std::string solid_crc(uint32_t rgb, uint8_t x) {
  std::vector<uint32_t> px(64 * 32, (uint32_t(x) << 24) | rgb);
  char hex[16];
  std::snprintf(hex, sizeof hex, "%08x", image_crc32(reinterpret_cast<const uint8_t*>(px.data()), 64 * 4, 32, 64 * 4));
  return hex;
}

bool wait_for(const std::function<bool()>& pred, int timeout_ms = 30000) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    ::poll(nullptr, 0, 10);
  }
  return true;
}

TEST(SteppedCockpit, AnImpostorProcessNeverChangesTheClustersPicture) {
  for (bool per_vm : {true, false}) {
    SCOPED_TRACE(per_vm ? "per-VM sockets" : "control: one trusting socket");
    const std::string dir = "/tmp/canopy-stepped-test." + std::to_string(::getpid());
    ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
    const std::string log = dir + "/log.txt", ctl = dir + "/display.ctl";
    // On the way out, also after an ASSERT: the processes' log when something failed, and the folder.
    struct Cleanup {
      std::string dir, log;
      ~Cleanup() {
        if (::testing::Test::HasFailure()) {
          std::ifstream in(log);
          std::stringstream ss;
          ss << in.rdbuf();
          std::fprintf(stderr, "--- log ---\n%s\n", ss.str().c_str());
        }
        std::system(("rm -rf " + dir).c_str());
      }
    } cleanup{dir, log};
    std::ofstream(dir + "/cockpit.toml")
        << "[[vm]]\nname = \"cluster\"\nbackend = \"partition\"\nmemory = \"32M\"\ncriticality = \"safety\"\n"
           "app = \"none\"\n[vm.gpu]\nscanouts = [{ width = 64, height = 32 }]\n"
           "[[vm]]\nname = \"ivi\"\nbackend = \"partition\"\nmemory = \"32M\"\napp = \"none\"\n"
           "[vm.gpu]\nscanouts = [{ width = 64, height = 32 }]\n"
           "[[display]]\nname = \"cluster\"\nwidth = 64\nheight = 32\nrefresh_hz = 60\n"
           "[[layout]]\ndisplay = \"cluster\"\nvm = \"cluster\"\nwidth = 64\nheight = 32\n"
           "[[layout]]\ndisplay = \"cluster\"\nvm = \"ivi\"\nx = 40\ny = 8\nwidth = 16\nheight = 16\nz = 1\n";
    {
      std::vector<std::string> display = {kBin + "/canopy-display",
                                          dir + "/cockpit.toml",
                                          "--control",
                                          ctl,
                                          "--output",
                                          "headless",
                                          "--renderer",
                                          "pixman",
                                          "--stepped",
                                          "--quiet"};
      if (per_vm) display.insert(display.end(), {"--listen-dir", dir});
      else display.insert(display.end(), {"--listen", dir + "/display.sock"});
      Process compositor(display, log);
      ASSERT_TRUE(compositor.started());
      ASSERT_TRUE(wait_for([&] { return ::access(ctl.c_str(), F_OK) == 0; })) << "no control socket";
      const std::string cluster_socket = per_vm ? dir + "/cluster.sock" : dir + "/display.sock";
      const std::string impostor_socket = per_vm ? dir + "/ivi.sock" : dir + "/display.sock";
      Process cluster({kBin + "/canopy-display-feed", "--socket", cluster_socket, "--vm", "cluster", "--size", "64x32",
                       "--colour", "c0ffee"},
                      log);
      // The cluster's picture: what the layer shows once its first frame is there.
      std::map<std::string, std::string> before;
      ASSERT_TRUE(wait_for([&] {
        before = layer_of(ask(ctl, "step"), "layer cluster cluster/0");
        return before.count("new") && before["new"] != "0";
      })) << "the cluster's frames never reached the layer";
      const std::string picture = before["crc"];
      // It is the feed's colour, whole: with the X byte the canvas keeps (0x00 or 0xff).
      int x_byte = -1;
      for (int x : {0x00, 0xff})
        if (picture == solid_crc(0xc0ffee, uint8_t(x))) x_byte = x;
      ASSERT_GE(x_byte, 0) << "the cluster layer does not show the cluster's colour: " << picture;

      Process impostor({kBin + "/canopy-display-feed", "--socket", impostor_socket, "--vm", "cluster", "--size",
                        "64x32", "--colour", "bad0bd"},
                       log);
      if (per_vm) {
        // Turned away: its connection is closed, and it ends.
        int st = 0;
        ASSERT_TRUE(wait_for([&] { return impostor.exited(&st); })) << "the impostor was not turned away";
        EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1);
        for (int i = 0; i < 8; ++i) {
          SCOPED_TRACE("step " + std::to_string(i));
          auto now = layer_of(ask(ctl, "step"), "layer cluster cluster/0");
          EXPECT_EQ(now["crc"], picture);
          EXPECT_EQ(now["fallback_entries"], before["fallback_entries"]);
          EXPECT_EQ(now["fallback"], "0");
        }
        EXPECT_FALSE(cluster.exited()) << "the cluster's connection was cut";
      } else {
        // The attack works: the layer's picture becomes the impostor's.
        EXPECT_TRUE(wait_for([&] {
          auto now = layer_of(ask(ctl, "step"), "layer cluster cluster/0");
          return now["crc"] == solid_crc(0xbad0bd, uint8_t(x_byte)) && now["fallback"] == "0";
        })) << "control: the impostor's picture never became the cluster's";
        EXPECT_TRUE(wait_for([&] { return cluster.exited(); })) << "control: the cluster was not evicted";
      }
      EXPECT_EQ(ask(ctl, "quit"), "ok\n");
      int st = 0;
      EXPECT_TRUE(wait_for([&] { return compositor.exited(&st); }));
    }
  }
}

}  // namespace
}  // namespace canopy
