// A confined process taken over, simulated: preloaded (LD_PRELOAD) into a real canopy-display,
// canopy-gpu or canopy-snd by sandbox_test.cc, and into canopy-vmm's KVM child by the nested KVM
// conformance test (guest/kvm_nested.sh). In the process's main thread, at its first wait for events
// (poll, epoll_wait, or pthread_join: the KVM child's main thread waits there for its vCPUs) once it is
// confined (Seccomp: 2 in /proc/self/status; with CANOPY_PROBE_ANY at its first wait
// at all, for the control runs without confinement), it tries once what a confined process must not
// do, writes one line of results to the descriptor CANOPY_PROBE_FD names, and lets the process go on.
//   probe: fork=ok|refused exec=... inet=... netlink=... write_outside=... signal_parent=...
//          sigio_owner=... read_parent_memory=... sysv_shm=... reopen_read_only=... restore_mode=...
//          read_unreadable=... read_outside=... setuid=... sanitizer=yes|no
// (reopen_read_only: CANOPY_PROBE_READONLY_FD, the test's file of mode 0444 as a read-only descriptor
// of guest memory is, opened again writable through /proc/self/fd; restore_mode: its mode made 0644,
// as its owner may, then the same; read_unreadable: CANOPY_PROBE_UNREADABLE, a file of mode 0000,
// read: only root's capabilities get through the first and the last; read_outside:
// CANOPY_PROBE_READABLE, a file of mode 0644 outside what the program reads, read; setuid: another uid
// taken, in a thread of its own, as only CAP_SETUID lets a process.)
// CANOPY_PROBE_OUTSIDE: a folder the process's options do not name; CANOPY_PROBE_PEEK: an address in
// the parent (hex) to read with process_vm_readv. CANOPY_PROBE_READONLY_FD=memfd: the probe makes that
// file itself when it is loaded (before the process confines itself): a memfd of mode 0444 of the
// process's uid, held only read-only, as a root canopy-vmm's guest RAM and policy board are (a shell
// cannot make one; Landlock does not look at memfds, so only the capabilities and the mode decide).
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

std::atomic<bool> g_done{false};
int g_memfd = -1;  // CANOPY_PROBE_READONLY_FD=memfd: the read-only descriptor made at load

__attribute__((constructor)) void make_memfd() {
  const char* ro = std::getenv("CANOPY_PROBE_READONLY_FD");
  if (ro == nullptr || std::strcmp(ro, "memfd") != 0) return;
  const int rw = ::memfd_create("canopy-probe-ro", MFD_CLOEXEC);
  if (rw < 0) return;
  if (::write(rw, "guest", 5) == 5 && ::fchmod(rw, 0444) == 0)
    g_memfd = ::open(("/proc/self/fd/" + std::to_string(rw)).c_str(), O_RDONLY | O_CLOEXEC);
  ::close(rw);
}

bool confined() {
  const int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[4096];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  return std::strstr(buf, "\nSeccomp:\t2") != nullptr;
}

void put(std::string& line, const char* what, bool done) {
  line += std::string(" ") + what + "=" + (done ? "ok" : "refused");
}

void probe() {
  const char* fd_text = std::getenv("CANOPY_PROBE_FD");
  const char* outside = std::getenv("CANOPY_PROBE_OUTSIDE");
  const char* peek = std::getenv("CANOPY_PROBE_PEEK");
  if (fd_text == nullptr || outside == nullptr || peek == nullptr) return;
  std::string line = "probe:";
  // A new process, and a program: in a child where fork works, else in the process itself (where it
  // worked, the process would be /bin/true now and the line never written: the test fails either way).
  const pid_t child = ::fork();
  if (child == 0) {
    ::execl("/bin/true", "true", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  bool exec_ok = false;
  if (child > 0) {
    int status = 0;
    ::waitpid(child, &status, 0);
    exec_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  } else {
    ::execl("/bin/true", "true", static_cast<char*>(nullptr));
  }
  put(line, "fork", child > 0);
  put(line, "exec", exec_ok);
  const int inet = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  put(line, "inet", inet >= 0);
  if (inet >= 0) ::close(inet);
  const int nl = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0);
  put(line, "netlink", nl >= 0);
  if (nl >= 0) ::close(nl);
  const std::string path = std::string(outside) + "/written-by-" + std::to_string(::getpid());
  const int out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  put(line, "write_outside", out >= 0);
  if (out >= 0) {
    ::close(out);
    ::unlink(path.c_str());
  }
  put(line, "signal_parent", ::kill(::getppid(), 0) == 0);
  // The other way to signal: name the parent as the owner of a descriptor (SIGIO when it is ready).
  int p[2];
  bool owner = false;
  if (::pipe2(p, O_CLOEXEC) == 0) {
    owner = ::fcntl(p[0], F_SETOWN, ::getppid()) == 0;
    ::close(p[0]);
    ::close(p[1]);
  }
  put(line, "sigio_owner", owner);
  char got[8] = {};
  iovec local{got, sizeof got};
  iovec remote{reinterpret_cast<void*>(std::strtoull(peek, nullptr, 16)), sizeof got};
  put(line, "read_parent_memory", ::process_vm_readv(::getppid(), &local, 1, &remote, 1, 0) == ssize_t(sizeof got));
  const int shm = ::shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
  put(line, "sysv_shm", shm >= 0);
  if (shm >= 0) ::shmctl(shm, IPC_RMID, nullptr);
  // The test's memfd of mode 0444 (as guest RAM handed out read-only is: made by a root canopy-vmm).
  const char* ro_text = std::getenv("CANOPY_PROBE_READONLY_FD");
  const int ro = g_memfd >= 0                                               ? g_memfd
                 : ro_text != nullptr && std::strcmp(ro_text, "memfd") != 0 ? std::atoi(ro_text)
                                                                            : -1;
  const std::string ro_path = "/proc/self/fd/" + std::to_string(ro);
  auto reopen = [&] {
    const int again = ro >= 0 ? ::open(ro_path.c_str(), O_RDWR | O_CLOEXEC) : -1;
    if (again >= 0) ::close(again);
    return again >= 0;
  };
  put(line, "reopen_read_only", reopen());
  // Its mode given back, as the file's owner may (a root canopy-display owns a root canopy-vmm's
  // files), then opened again writable.
  put(line, "restore_mode", ro >= 0 && ::fchmod(ro, 0644) == 0 && reopen());
  const char* unreadable = std::getenv("CANOPY_PROBE_UNREADABLE");
  const int secret = unreadable ? ::open(unreadable, O_RDONLY | O_CLOEXEC) : -1;
  put(line, "read_unreadable", secret >= 0);
  if (secret >= 0) ::close(secret);
  // A file anyone may read (mode 0644), outside the folders the program reads: the operator's, say.
  const char* readable = std::getenv("CANOPY_PROBE_READABLE");
  const int other = readable ? ::open(readable, O_RDONLY | O_CLOEXEC) : -1;
  put(line, "read_outside", other >= 0);
  if (other >= 0) ::close(other);
  // Another uid (another VM's back-end's, as root's CAP_SETUID would let it): in a thread of its own
  // (the raw call changes only the calling thread's), so that where it works the process keeps its uid.
  bool became = false;
  pthread_t t{};
  if (::pthread_create(
          &t, nullptr,
          [](void* out) -> void* {
            *static_cast<bool*>(out) = ::syscall(SYS_setresuid, -1, 65534, -1) == 0;
            return nullptr;
          },
          &became) == 0) {
    ::pthread_join(t, nullptr);
    put(line, "setuid", became);
  } else {
    line += " setuid=error";  // no thread to try it in: neither refused nor done
  }
  // Whether a sanitizer's runtime is in the process (its allowlist keeps processes and kill for it).
  line += std::string(" sanitizer=") + (::dlsym(RTLD_DEFAULT, "__asan_init") || ::dlsym(RTLD_DEFAULT, "__tsan_init") ||
                                                ::dlsym(RTLD_DEFAULT, "__lsan_do_leak_check")
                                            ? "yes"
                                            : "no");
  line += "\n";
  const ssize_t w = ::write(std::atoi(fd_text), line.data(), line.size());
  (void)w;
}

// Runs the probe once, from the main thread, when it is due.
void maybe_probe() {
  if (g_done.load(std::memory_order_relaxed) || ::gettid() != ::getpid()) return;
  if (std::getenv("CANOPY_PROBE_ANY") == nullptr && !confined()) return;
  if (g_done.exchange(true)) return;
  probe();
}

template <typename Fn>
Fn next(const char* name) {
  return reinterpret_cast<Fn>(::dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout) {
  static auto real = next<int (*)(int, epoll_event*, int, int)>("epoll_wait");
  maybe_probe();
  return real(epfd, events, maxevents, timeout);
}

int poll(pollfd* fds, nfds_t nfds, int timeout) {
  static auto real = next<int (*)(pollfd*, nfds_t, int)>("poll");
  maybe_probe();
  return real(fds, nfds, timeout);
}

int pthread_join(pthread_t thread, void** result) {
  static auto real = next<int (*)(pthread_t, void**)>("pthread_join");
  maybe_probe();
  return real(thread, result);
}

}  // extern "C"
