// The back-end program conventions (QEMU docs/interop/vhost-user.rst), checked on a real back-end
// binary: --print-capabilities, foreground serving on --socket-path, exit 0 on SIGTERM (idle and with a
// front-end connected) and when the front-end disconnects, exit 2 on bad options.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "canopy/transport/vhost_user_frontend.h"

namespace canopy::transport::vhost_user {
namespace {

const std::string kRng = std::string(CANOPY_BIN_DIR) + "/canopy-vhost-rng";

// Hang guards (BRIEF §4.7): a sanitized, sandboxed back-end starts, answers and exits in a few hundred
// milliseconds when idle; these limits only end a test that would otherwise hang.
constexpr int kGuardMs = 60000;

pid_t spawn(std::vector<std::string> args) {
  pid_t pid = fork();
  if (pid == 0) {
    alarm(120);  // never outlive the test
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// Waits for the child to exit (its pidfd becomes readable), at most timeout_ms; returns its exit status
// or -1 (then kills it).
int wait_exit(pid_t pid, int timeout_ms = kGuardMs) {
  const int pidfd = int(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) {
    pollfd p{pidfd, POLLIN, 0};
    (void)poll(&p, 1, timeout_ms);
    close(pidfd);
  }
  int st;
  if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

// Waits until `path` exists (the back-end listens: it binds before it announces nothing else), or the
// child exited, at most kGuardMs.
bool wait_socket(const std::string& path, pid_t pid) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(kGuardMs);
  struct stat st;
  while (stat(path.c_str(), &st) != 0) {
    if (std::chrono::steady_clock::now() >= end || waitpid(pid, nullptr, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

std::string socket_path(const char* tag) {
  return "/tmp/canopy-test-" + std::to_string(getpid()) + "-" + tag + ".sock";
}

TEST(BackendProgram, PrintsCapabilitiesAsJson) {
  FILE* p = popen((kRng + " --print-capabilities").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[256] = {};
  size_t n = fread(buf, 1, sizeof buf - 1, p);
  EXPECT_EQ(pclose(p), 0);
  std::string out(buf, n);
  EXPECT_NE(out.find("\"type\": \"rng\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"features\": ["), std::string::npos) << out;
}

TEST(BackendProgram, RejectsUnknownOptionWithUsageError) {
  pid_t pid = spawn({kRng, "--socket-path=/tmp/unused.sock", "--no-such-option"});
  EXPECT_EQ(wait_exit(pid), 2);
}

TEST(BackendProgram, ExitsZeroOnSigtermWhileWaitingForFrontend) {
  std::string path = socket_path("idle");
  pid_t pid = spawn({kRng, "--socket-path=" + path});
  // Wait until it listens, then stop it.
  ASSERT_TRUE(wait_socket(path, pid)) << "canopy-vhost-rng made no socket";
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 0);
  struct stat st;
  EXPECT_NE(stat(path.c_str(), &st), 0) << "socket file left behind";
}

TEST(BackendProgram, ExitsZeroOnSigtermWithFrontendConnected) {
  std::string path = socket_path("busy");
  pid_t pid = spawn({kRng, "--socket-path=" + path});
  auto fe = Frontend::connect(path.c_str(), kGuardMs);
  ASSERT_TRUE(fe.ok());
  ASSERT_TRUE(fe->get_features().ok());
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 0);
}

TEST(BackendProgram, ExitsZeroWhenFrontendDisconnects) {
  std::string path = socket_path("bye");
  pid_t pid = spawn({kRng, "--socket-path=" + path});
  {
    auto fe = Frontend::connect(path.c_str(), kGuardMs);
    ASSERT_TRUE(fe.ok());
    auto f = fe->get_features();
    ASSERT_TRUE(f.ok());
    EXPECT_TRUE(*f & (1ull << 32));  // VIRTIO_F_VERSION_1
  }
  EXPECT_EQ(wait_exit(pid), 0);
}

}  // namespace
}  // namespace canopy::transport::vhost_user

namespace canopy::transport::vhost_user {
namespace {

// Device options take their value as "--name value" or "--name=value" (backend_main joins them for the
// factory): canopy-snd given its streams both ways offers the config space they make.
TEST(BackendProgram, DeviceOptionsTakeTheirValueEitherWay) {
  const std::string snd = std::string(CANOPY_BIN_DIR) + "/canopy-snd";
  std::string path = socket_path("snd");
  pid_t pid =
      spawn({snd, "--socket-path", path, "--host", "null", "--no-policy", "--controls", "--stream",
             "name=a,dir=output,channels=2", "--stream=name=b,dir=input,channels=1", "--jack", "name=j,dir=output"});
  auto fe = Frontend::connect(path.c_str(), kGuardMs);
  ASSERT_TRUE(fe.ok());
  auto features = fe->get_features();
  ASSERT_TRUE(features.ok());
  EXPECT_TRUE(*features & 1);  // VIRTIO_SND_F_CTLS
  ASSERT_TRUE(fe->get_protocol_features().ok());
  ASSERT_TRUE(fe->set_protocol_features(proto_bit(kProtoConfig)).ok());
  auto config = fe->get_config(0, 16);
  ASSERT_TRUE(config.ok());
  ASSERT_EQ(config->size(), 16u);
  const std::vector<uint8_t> want = {1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0};  // jacks streams chmaps controls
  EXPECT_EQ(*config, want);
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 0);
  // Without --controls (QEMU's vhost-user-snd default, controls=off): no CTLS, and the 12 bytes such a
  // front-end asks for.
  pid = spawn({snd, "--socket-path", path, "--host", "null", "--no-policy", "--stream", "name=a,dir=output,channels=2",
               "--stream=name=b,dir=input,channels=1", "--jack", "name=j,dir=output"});
  fe = Frontend::connect(path.c_str(), kGuardMs);
  ASSERT_TRUE(fe.ok());
  features = fe->get_features();
  ASSERT_TRUE(features.ok());
  EXPECT_FALSE(*features & 1);
  ASSERT_TRUE(fe->get_protocol_features().ok());
  ASSERT_TRUE(fe->set_protocol_features(proto_bit(kProtoConfig)).ok());
  config = fe->get_config(0, 12);
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(*config, std::vector<uint8_t>(want.begin(), want.begin() + 12));
  kill(pid, SIGTERM);
  EXPECT_EQ(wait_exit(pid), 0);
  // A bad value is a usage error naming the option.
  pid = spawn({snd, "--socket-path", path, "--host", "null", "--stream", "name=a"});
  EXPECT_EQ(wait_exit(pid), 2);
}

}  // namespace
}  // namespace canopy::transport::vhost_user
