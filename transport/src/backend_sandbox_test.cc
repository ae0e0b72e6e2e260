// The back-end confinement in a child process: what it must refuse, and what a back-end (and a GPU
// driver inside it) still needs.
#include "canopy/transport/backend_sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>

namespace canopy::transport {
namespace {

const bool kSanitizer = backend_sandbox_loosened();

// Runs fn in a forked child; returns its exit status (the number of the first check that failed, 0 if
// none). _exit, not exit: the child must not run the parent's atexit handlers.
template <typename Fn>
int in_child(Fn fn) {
  const pid_t pid = fork();
  if (pid == 0) _exit(fn());
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

TEST(BackendSandbox, RefusesNewProcessesProgramsNetworkAndOtherProcesses) {
  const pid_t parent = getpid();
  EXPECT_EQ(in_child([parent] {
              if (Status st = confine_backend(); !st.ok()) {
                fprintf(stderr, "confine_backend: %s (%d)\n", st.error().what, st.error().sys_errno);
                return 1;
              }
              char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
              if (execv("/bin/true", argv) != -1 || errno != EPERM) return 2;
              if (socket(AF_INET, SOCK_STREAM, 0) != -1 || errno != EAFNOSUPPORT) return 3;
              if (socket(AF_NETLINK, SOCK_RAW, 0) != -1) return 4;
              if (!kSanitizer && (kill(parent, 0) != -1 || errno != EPERM)) return 5;
              if (syscall(SYS_tgkill, parent, parent, 0) != -1 || errno != EPERM) return 9;
              if (syscall(SYS_tkill, parent, 0) != -1 || errno != EPERM) return 10;
              rlimit lim{};
              if (prlimit(parent, RLIMIT_NOFILE, nullptr, &lim) != 0) return 11;  // reading: allowed
              if (prlimit(parent, RLIMIT_NOFILE, &lim, nullptr) != -1 || errno != EPERM) return 12;
              if (setrlimit(RLIMIT_NOFILE, &lim) != 0) return 13;  // its own: allowed
              if (unshare(CLONE_NEWUSER) != -1 || errno != EPERM) return 6;
              if (!kSanitizer) {
                if (fork() != -1 || errno != EPERM) return 7;
                if (ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != -1 || errno != EPERM) return 8;
              }
              return 0;
            }),
            0);
}

TEST(BackendSandbox, KeepsWhatABackEndNeeds) {
  EXPECT_EQ(in_child([] {
              if (Status st = confine_backend(); !st.ok()) {
                fprintf(stderr, "confine_backend: %s (%d)\n", st.error().what, st.error().sys_errno);
                return 1;
              }
              int sv[2];
              if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 2;
              if (socket(AF_UNIX, SOCK_SEQPACKET, 0) < 0) return 3;
              const int fd = memfd_create("sandboxed", MFD_CLOEXEC);
              if (fd < 0 || ftruncate(fd, 4096) != 0) return 4;
              void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
              if (p == MAP_FAILED) return 5;
              // A JIT's way: writable, then executable.
              void* code = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
              if (code == MAP_FAILED || mprotect(code, 4096, PROT_READ | PROT_EXEC) != 0) return 6;
              std::atomic<int> ran{0};
              std::thread t([&] { ran = 1; });  // glibc: clone3 (ENOSYS) -> clone with CLONE_THREAD
              t.join();
              if (ran != 1) return 7;
              if (syscall(SYS_tgkill, getpid(), gettid(), 0) != 0) return 8;
              return 0;
            }),
            0);
}

// The file system view (Landlock): a confined back-end writes only beneath what it was given (here
// `allowed`), whatever the permissions say; device files and /dev/shm stay usable. Control: the same
// writes from a child that is not restricted succeed.
TEST(BackendSandbox, WritesOnlyWhereItsOptionsSay) {
  char tmpl[] = "/tmp/canopy-sandbox-test-XXXXXX";
  const std::string root = mkdtemp(tmpl);
  const std::string allowed = root + "/allowed", other = root + "/other";
  ASSERT_EQ(mkdir(allowed.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(other.c_str(), 0755), 0);
  auto writes = [&](bool restrict) {
    return in_child([&] {
      if (restrict) {
        Status st = restrict_backend_writes({allowed});
        if (!st.ok()) {
          fprintf(stderr, "restrict_backend_writes: %s (%d)\n", st.error().what, st.error().sys_errno);
          return st.error().code == Errc::kUnsupported ? 50 : 1;
        }
      }
      const int in = open((allowed + "/log").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (in < 0 || write(in, "x", 1) != 1) return 2;
      close(in);
      if (open("/dev/null", O_RDWR | O_CLOEXEC) < 0) return 3;
      const int out = open((other + "/x").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      const int via_dotdot = open((allowed + "/../other/y").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      const bool made_dir = mkdir((other + "/d").c_str(), 0755) == 0;
      const bool removed = unlink((allowed + "/../other/keep").c_str()) == 0;
      const bool linked = symlink("/etc/passwd", (other + "/l").c_str()) == 0;
      // 10: every write outside went through (the control's answer); 0: none did.
      const int through = (out >= 0) + (via_dotdot >= 0) + made_dir + removed + linked;
      return through == 0 ? 0 : through == 5 ? 10 : 20 + through;
    });
  };
  auto reset = [&] {
    std::system(("rm -rf " + other + " && mkdir " + other + " && touch " + other + "/keep").c_str());
  };
  reset();
  const int confined = writes(true);
  if (confined == 50) GTEST_SKIP() << "no Landlock in this kernel";
  EXPECT_EQ(confined, 0);
  EXPECT_NE(access((other + "/keep").c_str(), F_OK), -1);
  reset();
  EXPECT_EQ(writes(false), 10) << "control: without the view the same writes go through";
  std::system(("rm -rf " + root).c_str());
}

}  // namespace
}  // namespace canopy::transport
