// Each confined program taken over (docs/security.md, "Confinement"): sandbox_probe.cc, preloaded into
// the real canopy-display, canopy-gpu, canopy-snd and canopy-vhost-rng, runs in the process's own main
// thread once the program has confined itself, as code an attacker got to run there would, and tries
// to start a program, make a process, open a network or netlink socket, write outside the folders the
// options name, signal another process (the test, its parent: kill, or as the owner of a descriptor)
// or read its memory, use SysV shared memory, and (as root) open a file of mode 0444 again writable
// through /proc/self/fd, read a file of mode 0000 and take another uid, as root's capabilities let
// it, and read a file anyone may read outside the folders it reads (the operator's). Each must fail. Control: the same
// probe in the same program run with --no-sandbox succeeds at each, so the test can fail (but those three when the test
// is not root: there the program could not either way).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "canopy/base/sanitizer.h"

namespace {

const std::string kBin = CANOPY_BIN_DIR;
// What the probe reads in the test with process_vm_readv.
volatile char g_secret[8] = "secret!";

// `fd` as `target` in a child about to exec (without close-on-exec).
void move_to(int fd, int target) {
  if (fd == target) ::fcntl(fd, F_SETFD, 0);
  else ::dup2(fd, target);
}

// Runs `argv` with the probe preloaded (confined, or with --no-sandbox and the probe at its first
// wait); returns the probe's line, "" when none came within 60 s (a hang guard, not a timing).
std::string probe(std::vector<std::string> argv, bool confined, const std::string& outside) {
  if (!confined) argv.push_back("--no-sandbox");
  int out[2], link[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, link) != 0) return "";
  char peek[32];
  std::snprintf(peek, sizeof peek, "%llx", static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(&g_secret)));
  // A file of mode 0444, as guest RAM handed out read-only is.
  const int ro = ::memfd_create("probe-read-only", MFD_CLOEXEC);
  if (ro < 0 || ::fchmod(ro, 0444) != 0) return "";
  const pid_t pid = ::fork();
  if (pid == 0) {
    move_to(link[1], 3);  // a back-end's front-end connection (--fd=3); canopy-display ignores it
    move_to(out[1], 4);
    move_to(ro, 5);
    ::setenv("CANOPY_PROBE_READONLY_FD", "5", 1);
    ::setenv("LD_PRELOAD", CANOPY_PROBE_LIB, 1);
    ::setenv("CANOPY_PROBE_FD", "4", 1);
    ::setenv("CANOPY_PROBE_OUTSIDE", outside.c_str(), 1);
    ::setenv("CANOPY_PROBE_PEEK", peek, 1);
    ::setenv("CANOPY_PROBE_UNREADABLE", (outside + "/../unreadable").c_str(), 1);
    ::setenv("CANOPY_PROBE_READABLE", (outside + "/../readable").c_str(), 1);
    if (!confined) ::setenv("CANOPY_PROBE_ANY", "1", 1);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(out[1]);
  ::close(link[1]);
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (text.find('\n') == std::string::npos) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{out[0], POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, int(left.count())) != 1) break;
    char buf[512];
    const ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    text.append(buf, size_t(n));
  }
  ::close(out[0]);
  ::close(ro);
  ::close(link[0]);  // a back-end's front-end gone: it ends
  ::kill(pid, SIGTERM);
  int status = 0;
  for (int i = 0; i < 500 && ::waitpid(pid, &status, WNOHANG) == 0; ++i) ::usleep(10000);
  if (::waitpid(pid, &status, WNOHANG) == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  return text.substr(0, text.find('\n'));
}

// "probe: a=ok b=refused" -> {a: ok, b: refused}
std::map<std::string, std::string> results(const std::string& line) {
  std::map<std::string, std::string> r;
  std::istringstream in(line);
  std::string word;
  while (in >> word) {
    const size_t eq = word.find('=');
    if (eq != std::string::npos) r[word.substr(0, eq)] = word.substr(eq + 1);
  }
  return r;
}

class Sandbox : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/canopy-sandbox-probe-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    outside_ = dir_ + "/outside";
    ::mkdir(outside_.c_str(), 0777);
    std::ofstream(dir_ + "/unreadable") << "secret";
    ::chmod((dir_ + "/unreadable").c_str(), 0);
    std::ofstream(dir_ + "/readable") << "the operator's";
    ::chmod((dir_ + "/readable").c_str(), 0644);
    ::chmod(dir_.c_str(), 0755);  // mkdtemp's 0700 would keep a non-root program out by its permissions
    ::mkdir((dir_ + "/sockets").c_str(), 0700);
    ::mkdir((dir_ + "/snd").c_str(), 0700);
    std::ofstream(dir_ + "/cockpit.toml")
        << "[[vm]]\nname = \"cluster\"\nbackend = \"partition\"\nmemory = \"32M\"\napp = \"/bin/true\"\n"
           "[vm.gpu]\nscanouts = [{ width = 64, height = 32, refresh_hz = 60 }]\n"
           "[[display]]\nname = \"main\"\nwidth = 64\nheight = 32\nrefresh_hz = 60\n"
           "[[layout]]\ndisplay = \"main\"\nvm = \"cluster\"\nwidth = 64\nheight = 32\n";
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }

  // Confined: every attempt refused (a sanitizer build keeps processes and kill for its runtime: those
  // two are not asserted there). Control: every attempt succeeds.
  void check(const std::vector<std::string>& argv) {
    const std::string confined = probe(argv, true, outside_);
    const std::string control = probe(argv, false, outside_);
    const auto c = results(confined), u = results(control);
    ASSERT_EQ(c.size(), 15u) << "no probe line from the confined " << argv[0] << ": '" << confined << "'";
    ASSERT_EQ(u.size(), 15u) << "no probe line from the unconfined " << argv[0] << ": '" << control << "'";
    EXPECT_EQ(c.at("sanitizer"), canopy::kAddressSanitizer || canopy::kThreadSanitizer ? "yes" : "no") << confined;
    for (const auto& [what, answer] : c) {
      if (what == "sanitizer") continue;
      const bool loosened = canopy::kAddressSanitizer && (what == "fork" || what == "signal_parent");
      // A back-end holds its VM's RAM read-write anyway: a file's owner changing its mode is refused
      // to canopy-display only.
      const bool back_end_may = what == "restore_mode" && argv[0].find("canopy-display") == std::string::npos;
      if (!loosened && !back_end_may) {
        EXPECT_EQ(answer, "refused") << what << " in the confined " << argv[0] << ": " << confined;
      }
      const bool root_only = what == "reopen_read_only" || what == "read_unreadable" || what == "setuid";
      EXPECT_EQ(u.at(what), root_only && ::geteuid() != 0 ? "refused" : "ok")
          << "control: " << what << " in the unconfined " << argv[0] << ": " << control;
    }
  }

  std::string dir_, outside_;
};

TEST_F(Sandbox, ATakenOverCompositorFailsAtEachForbiddenThing) {
  check({kBin + "/canopy-display", dir_ + "/cockpit.toml", "--listen-dir", dir_ + "/sockets", "--output", "headless",
         "--renderer", "pixman", "--quiet"});
}

TEST_F(Sandbox, ATakenOverGpuBackEndFailsAtEachForbiddenThing) { check({kBin + "/canopy-gpu", "--fd=3", "--vm=ivi"}); }

TEST_F(Sandbox, ATakenOverSoundBackEndFailsAtEachForbiddenThing) {
  check(
      {kBin + "/canopy-snd", "--fd=3", "--host=null", "--no-policy", "--vm=ivi", "--stats=" + dir_ + "/snd/stats.txt"});
}

TEST_F(Sandbox, ATakenOverRngBackEndFailsAtEachForbiddenThing) { check({kBin + "/canopy-vhost-rng", "--fd=3"}); }

}  // namespace
