// The back-end confinement in a child process: what it must refuse, and what a back-end (and a GPU
// driver inside it) still needs.
#include "canopy/transport/backend_sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

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
              if (Status st = confine_syscalls(); !st.ok()) {
                fprintf(stderr, "confine_syscalls: %s (%d)\n", st.error().what, st.error().sys_errno);
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
              if (Status st = confine_syscalls(); !st.ok()) {
                fprintf(stderr, "confine_syscalls: %s (%d)\n", st.error().what, st.error().sys_errno);
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

// Runs fn in a forked child whose stderr goes to a pipe; returns its exit status and what it wrote.
template <typename Fn>
std::pair<int, std::string> in_child_logged(Fn fn) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return {-1, ""};
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], STDERR_FILENO);
    _exit(fn());
  }
  close(p[1]);
  std::string text;
  char buf[512];
  for (ssize_t n; (n = read(p[0], buf, sizeof buf)) > 0;) text.append(buf, size_t(n));
  close(p[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status), text};
}

// A call outside the allowlist (SysV shared memory: a namespace every process of the uid shares) answers
// ENOSYS and the process says which call it was; the program's additions let it through. Control: an
// unconfined process gets its segment.
TEST(BackendSandbox, RefusesCallsOutsideTheAllowlistAndSaysWhich) {
  auto shm = [](bool confine, std::vector<std::string> allow) {
    return in_child_logged([confine, allow] {
      if (confine) {
        if (Status st = confine_syscalls({allow, false}); !st.ok()) return 1;
      }
      const int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
      if (id < 0) return errno == ENOSYS && seccomp_refusals() == 1 ? 10 : 2;
      shmctl(id, IPC_RMID, nullptr);
      return 0;
    });
  };
  auto [refused, log] = shm(true, {});
  EXPECT_EQ(refused, 10) << log;
  EXPECT_NE(log.find("seccomp: refused system call " + std::to_string(SYS_shmget) + " (shmget)"), std::string::npos)
      << log;
  EXPECT_EQ(shm(true, {"shmget", "shmctl"}).first, 0) << "the program's additions";
  EXPECT_EQ(shm(false, {}).first, 0) << "control: unconfined, the segment is made";
}

// Additions cannot bring back what no confined process may do, and names are checked.
TEST(BackendSandbox, AdditionsAreSystemCallsAndNeverTheRefusedOnes) {
  auto ok = parse_syscall_names("shmget,,shmat");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, (std::vector<std::string>{"shmget", "shmat"}));
  EXPECT_FALSE(parse_syscall_names("shmget,no_such_call").ok());
  EXPECT_FALSE(parse_syscall_names("execve").ok());
  EXPECT_FALSE(parse_syscall_names("ptrace").ok());
  EXPECT_FALSE(parse_syscall_names("clone").ok()) << "its conditions are the sandbox's";
  EXPECT_EQ(in_child([] {
              if (!confine_syscalls({{"execve", "fork"}, false}).ok()) return 1;
              char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
              if (execv("/bin/true", argv) != -1 || errno != EPERM) return 2;
              return 0;
            }),
            0);
}

// Pushing input into a terminal (TIOCSTI: a confined process writing its owner's shell's next command)
// is refused; the terminal's other ioctls are not. Control: unconfined, the byte arrives.
TEST(BackendSandbox, CannotTypeIntoATerminal) {
  auto sti = [](bool confine) {
    return in_child([confine] {
      // A terminal of its own, as its controlling one.
      const int master = posix_openpt(O_RDWR | O_NOCTTY);
      if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0 || setsid() < 0) return 1;
      const int tty = open(ptsname(master), O_RDWR);
      if (tty < 0 || ioctl(tty, TIOCSCTTY, 0) != 0) return 2;
      if (confine && !confine_syscalls().ok()) return 3;
      termios t{};
      if (ioctl(tty, TCGETS, &t) != 0) return 4;
      cfmakeraw(&t);  // a byte is readable without a newline
      if (ioctl(tty, TCSETS, &t) != 0) return 7;
      const char c = 'x';
      if (ioctl(tty, TIOCSTI, &c) != 0) return errno == EPERM ? 10 : 5;
      char got = 0;
      return read(tty, &got, 1) == 1 && got == 'x' ? 0 : 6;
    });
  };
  EXPECT_EQ(sti(true), 10);
  EXPECT_EQ(sti(false), 0) << "control: unconfined, TIOCSTI types into the terminal";
}

// A process of root's uid owns the disks whatever its capabilities: its view opens no block device for
// writing (opening one writes nothing). Control: without the view, root opens it. A loop device if
// there is one (never read-only media, as a CD drive may be).
TEST(BackendSandbox, OpensNoBlockDeviceForWriting) {
  std::string disk;
  if (DIR* dev = opendir("/dev")) {
    while (const dirent* e = readdir(dev)) {
      struct stat st{};
      const std::string name = e->d_name;
      if (fstatat(dirfd(dev), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISBLK(st.st_mode) &&
          (disk.empty() || (name.rfind("loop", 0) == 0 && disk.rfind("/dev/loop", 0) != 0)))
        disk = "/dev/" + name;
    }
    closedir(dev);
  }
  if (geteuid() != 0 || disk.empty()) {
    if (getenv("CANOPY_NO_SKIP")) FAIL() << "needs root and a block device in /dev (CANOPY_NO_SKIP=1)";
    GTEST_SKIP() << "needs root and a block device in /dev";
  }
  auto opens = [&](bool restrict) {
    return in_child([&] {
      if (restrict) {
        Status st = restrict_writes({});
        if (!st.ok()) return st.error().code == Errc::kUnsupported ? 50 : 1;
      }
      if (open("/dev/null", O_RDWR | O_CLOEXEC) < 0) return 3;  // other device files still open
      const int fd = open(disk.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd >= 0) close(fd);
      return fd >= 0 ? 10 : 0;
    });
  };
  const int confined = opens(true);
  if (confined == 50) GTEST_SKIP() << "no Landlock in this kernel";
  EXPECT_EQ(confined, 0) << disk;
  EXPECT_EQ(opens(false), 10) << "control: root opens " << disk << " for writing without the view";
}

// Reads restricted too (restrict_files with restrict_reads): the system's files (here /etc/passwd,
// /usr, /dev/null), its writable folder and what it was named stay readable; a file of mode 0644
// elsewhere (the operator's), /etc's secrets and, as root, a disk and the kernel's log device do not.
// Control: without the view each is read.
TEST(BackendSandbox, ReadsOnlyTheSystemsFilesAndItsOwn) {
  char tmpl[] = "/tmp/canopy-sandbox-test-XXXXXX";
  const std::string root = mkdtemp(tmpl);
  struct Gone {
    std::string dir;
    ~Gone() { std::system(("rm -rf " + dir).c_str()); }
  } gone{root};
  const std::string mine = root + "/mine", named = root + "/named", other = root + "/other";
  for (const std::string& d : {mine, named, other}) {
    ASSERT_EQ(mkdir(d.c_str(), 0755), 0);
    std::ofstream(d + "/file") << "text";
  }
  std::string disk;  // a loop device (one that opens without a medium), read by root without the view
  if (geteuid() == 0)
    if (DIR* dev = opendir("/dev")) {
      while (const dirent* e = readdir(dev)) {
        struct stat st{};
        if (std::string(e->d_name).rfind("loop", 0) == 0 &&
            fstatat(dirfd(dev), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISBLK(st.st_mode) && disk.empty())
          disk = std::string("/dev/") + e->d_name;
      }
      closedir(dev);
    }
  const bool shadow = geteuid() == 0 && access("/etc/shadow", F_OK) == 0;
  const bool kmsg = geteuid() == 0 && access("/dev/kmsg", F_OK) == 0;
  // Bits: 1 the system's (/etc/passwd, /usr/lib, /dev/null), 2 its writable folder's file, 4 the named
  // folder's, 8 the other file, 16 /etc/shadow, 32 the disk, 64 /dev/kmsg (the kernel's log, a device
  // no confined program opens).
  auto reads = [&](bool restrict) {
    return in_child([&] {
      if (restrict) {
        FileView view;
        view.writable = {mine};
        view.restrict_reads = true;
        view.readable = {named};
        if (Status st = restrict_files(view); !st.ok()) return st.error().code == Errc::kUnsupported ? 128 : 129;
      }
      auto can = [](const std::string& path, int flags) {
        const int fd = open(path.c_str(), flags | O_CLOEXEC);
        if (fd >= 0) close(fd);
        return fd >= 0;
      };
      int got = 0;
      if (can("/etc/passwd", O_RDONLY) && can("/usr/lib", O_RDONLY | O_DIRECTORY) && can("/dev/null", O_RDWR)) got |= 1;
      if (can(mine + "/file", O_RDWR)) got |= 2;
      if (can(named + "/file", O_RDONLY)) got |= 4;
      if (can(other + "/file", O_RDONLY)) got |= 8;
      if (can("/etc/shadow", O_RDONLY)) got |= 16;
      if (!disk.empty() && can(disk, O_RDONLY)) got |= 32;
      if (can("/dev/kmsg", O_RDONLY)) got |= 64;
      return got;
    });
  };
  const int confined = reads(true);
  if (confined == 128) GTEST_SKIP() << "no Landlock in this kernel";
  EXPECT_EQ(confined, 1 | 2 | 4);
  EXPECT_EQ(reads(false), 1 | 2 | 4 | 8 | (shadow ? 16 : 0) | (disk.empty() ? 0 : 32) | (kmsg ? 64 : 0)) << "control";
}

// The loader paths the environment names are read rules only where such paths belong: resolved,
// below where software is installed or below a home folder outside its dot folders. A "/" or a home
// folder, a device, /sys, /etc, /tmp or a key folder in a list opens nothing.
TEST(BackendSandbox, LoaderPathsFromTheEnvironmentOpenNothingClosed) {
  const char* home = getenv("HOME");
  const std::string home_dir = home ? home : "/root";
  char tmpl[] = "/tmp/canopy-sandbox-test-XXXXXX";
  const std::string tmp = mkdtemp(tmpl);
  const std::string built = home_dir + "/canopy-sandbox-test-mesa";
  ASSERT_EQ(mkdir(built.c_str(), 0755) == 0 || errno == EEXIST, true);
  const char* old = getenv("LD_LIBRARY_PATH");
  const std::string saved = old ? old : "";
  setenv("LD_LIBRARY_PATH",
         ("/:/dev/input:/dev:/sys/firmware:/proc:/etc:/etc/ssl:/tmp:" + tmp + ":/home:" + home_dir + ":" + home_dir +
          "/.ssh:relative:/usr/lib:" + built)
             .c_str(),
         1);
  const std::vector<std::string> got = driver_config_paths();
  if (old) setenv("LD_LIBRARY_PATH", saved.c_str(), 1);
  else unsetenv("LD_LIBRARY_PATH");
  rmdir(built.c_str());
  rmdir(tmp.c_str());
  char real[PATH_MAX];
  const std::string built_real =
      realpath(home_dir.c_str(), real) ? std::string(real) + "/canopy-sandbox-test-mesa" : "";
  // Only /usr/lib and the driver built in the home folder; nothing else of the list.
  EXPECT_NE(std::find(got.begin(), got.end(), "/usr/lib"), got.end());
  EXPECT_NE(std::find(got.begin(), got.end(), built_real), got.end());
  for (const std::string& p : got)
    for (const std::string& closed : {std::string("/"), std::string("/dev"), std::string("/sys"), std::string("/proc"),
                                      std::string("/etc"), std::string("/tmp"), std::string("/home")})
      EXPECT_FALSE(p == closed || p.rfind(closed == "/" ? "/#" : closed + "/", 0) == 0) << p;
  for (const std::string& p : got) EXPECT_EQ(p.find("/.ssh"), std::string::npos) << p;
  EXPECT_EQ(std::find(got.begin(), got.end(), home_dir), got.end());
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
        Status st = restrict_writes({allowed});
        if (!st.ok()) {
          fprintf(stderr, "restrict_writes: %s (%d)\n", st.error().what, st.error().sys_errno);
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
