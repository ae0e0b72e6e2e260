// canopy-partition-probe: a hostile guest partition for canopy-vmm's isolation and robustness tests.
//   --attack FILE   read a victim's host pid from FILE (written by the test) and try to reach it and
//                   anything outside this partition's RAM, and to write a file into the folder "open"
//                   beside FILE (mode 1777); one line per attempt:
//                     probe NAME: blocked (why)   or   probe NAME: ALLOWED (what happened)
//                   then "probe summary: attempted=N allowed=M".
//   --control PATH VM   (run it unconfined, so that the socket is reachable) ask canopy-vmm's control
//                   socket at PATH to "stop VM force", and from an orphan (double fork: reparented to
//                   canopy-vmm, its subreaper) for its "status"; one line each:
//                     control stop: blocked (reply)   or   control stop: ALLOWED (reply)
//                     control orphan: blocked (reply) or   control orphan: ALLOWED (reply)
//   --garbage       send malformed packets, requests out of order and a flood of requests it never reads
//                   the replies of; prints "garbage done" and goes on heartbeating (the VMM must still serve it).
// After either it heartbeats until told to stop.
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "canopy/guest/partition.h"
#include "canopy/guest/virtio_driver.h"

namespace {

using namespace canopy;
using namespace canopy::guest;
namespace msg = canopy::transport::msg;

int attempted = 0, allowed = 0;
std::string g_open_dir;  // a folder anybody may write to (mode 1777), beside the target file

void result(const char* name, bool was_blocked, const std::string& detail) {
  ++attempted;
  if (!was_blocked) ++allowed;
  std::printf("probe %s: %s (%s)\n", name, was_blocked ? "blocked" : "ALLOWED", detail.c_str());
  std::fflush(stdout);
}
// A system call result: blocked when it failed with one of the refusal errnos.
void syscall_result(const char* name, long rc, std::initializer_list<int> refusals) {
  const int e = errno;
  if (rc >= 0) return result(name, false, "succeeded");
  for (int r : refusals) {
    if (e == r) return result(name, true, std::strerror(e));
  }
  result(name, false, std::string("failed past the permission check: ") + std::strerror(e));
}

// Waits for the test to write the victim's pid (it does once the victim runs): no limit of its own, the
// test's wait for "probe summary" is the hang guard. It heartbeats meanwhile.
pid_t read_target(Partition& p, const std::string& file) {
  for (uint64_t beat = 1; !p.stop_requested(); ++beat) {
    std::ifstream in(file);
    long pid = 0;
    if (in >> pid && pid > 0) return pid_t(pid);
    if (Status s = p.heartbeat(beat); !s.ok() && s.error().code == Errc::kClosed) break;
    usleep(50 * 1000);
  }
  return -1;
}

void attack(Partition& p, pid_t target) {
  // Another process's memory and descriptors.
  char buf[16];
  iovec local{buf, sizeof buf}, remote{reinterpret_cast<void*>(0x400000), sizeof buf};
  syscall_result("process_vm_readv", process_vm_readv(target, &local, 1, &remote, 1, 0), {EPERM, ESRCH, EACCES});
  syscall_result("process_vm_writev", process_vm_writev(target, &local, 1, &remote, 1, 0), {EPERM, ESRCH, EACCES});
  syscall_result("ptrace_seize", ptrace(PTRACE_SEIZE, target, nullptr, nullptr), {EPERM, ESRCH, EACCES});
  const std::string mem = "/proc/" + std::to_string(target) + "/mem";
  syscall_result("open_proc_mem", open(mem.c_str(), O_RDONLY | O_CLOEXEC), {EPERM, ENOENT, EACCES});
  syscall_result("pidfd_open", syscall(SYS_pidfd_open, target, 0), {EPERM, ESRCH});
  syscall_result("kill", kill(target, 0), {EPERM, ESRCH});  // signal 0: the permission check alone
  // New channels and privileges.
  syscall_result("socket", socket(AF_UNIX, SOCK_STREAM, 0), {EPERM, EACCES});
  // A file where the permissions let anybody write (a back-end's binary, elsewhere): the partition's
  // file system view lets it write nowhere.
  syscall_result("write_file", open((g_open_dir + "/written-by-probe").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644),
                 {EACCES, EPERM, EROFS});
  syscall_result("unshare_user", unshare(CLONE_NEWUSER), {EPERM, EINVAL});
  syscall_result("setuid_root", setuid(0), {EPERM});
  {
    // Mount on a scratch folder of its own (never over a shared path: without confinement, as root, the
    // mount succeeds and would hide /tmp from everyone else), and take it down again at once.
    char scratch[] = "/tmp/canopy-probe-mount-XXXXXX";
    const char* target = mkdtemp(scratch) ? scratch : "/nonexistent-canopy-probe";
    const int r = mount("none", target, "tmpfs", 0, nullptr);
    syscall_result("mount", r, {EPERM});
    if (r == 0) (void)umount2(target, MNT_DETACH);
    if (target == scratch) (void)rmdir(scratch);
  }
  const pid_t child = fork();
  if (child == 0) _exit(0);  // (only without confinement) the copy must not go on probing
  if (child > 0) waitpid(child, nullptr, 0);
  syscall_result("fork", child, {EPERM, ENOSYS});
  // This partition's RAM cannot be resized under the back-ends' mappings.
  auto ranges = p.memory().file_ranges(0, 1);
  if (ranges.ok() && !ranges->empty()) {
    syscall_result("ram_shrink", ftruncate((*ranges)[0].fd, 4096), {EPERM});
    syscall_result("ram_grow", ftruncate((*ranges)[0].fd, off_t(p.ram_size() * 2)), {EPERM});
  }
  // No descriptor of anything else: only this partition's socket, RAM and eventfds.
  int foreign = 0;
  std::string seen;
  if (DIR* d = opendir("/proc/self/fd")) {
    const std::string ram =
        "/memfd:canopy-ram-" + std::string(getenv("CANOPY_VM_NAME") ? getenv("CANOPY_VM_NAME") : "") + " (deleted)";
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      const int fd = std::atoi(e->d_name);
      // stdio (stdin /dev/null, stdout/stderr the VMM's log: by design) and this listing itself.
      if (fd <= 2 || fd == dirfd(d)) continue;
      char path[300], target_name[256];
      std::snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
      ssize_t n = readlink(path, target_name, sizeof target_name - 1);
      if (n <= 0) continue;
      target_name[n] = '\0';
      const std::string t(target_name);
      // Judged by kind, not by path (in a chroot the kernel may print paths from outside it).
      const bool mine =
          t.rfind("pipe:", 0) == 0 || t.rfind("anon_inode:[eventfd]", 0) == 0 || t.rfind("socket:", 0) == 0 || t == ram;
      if (!mine) {
        ++foreign;
        seen += " " + t;
      }
    }
    closedir(d);
  }
  result("foreign_descriptors", foreign == 0, foreign == 0 ? "none" : std::to_string(foreign) + ":" + seen);
  // Device access outside RAM, through the VMM and through a back-end.
  auto dev = p.find_device(4);
  if (!dev.ok()) return;
  auto t = p.transport(*dev);
  msg::SetVqueue v{};
  v.size = 64;
  v.desc = p.ram_size() - 512;  // the descriptor table runs past the end of RAM
  v.avail = 0x1000;
  v.used = 0x2000;
  t->write_status(0);
  t->write_status(transport::kStatusAcknowledge | transport::kStatusDriver);
  t->write_driver_features(transport::kVirtioFVersion1);
  t->write_status(transport::kStatusAcknowledge | transport::kStatusDriver | transport::kStatusFeaturesOk);
  int efd[2] = {-1, -1};
  {
    int a = syscall(SYS_eventfd2, 0, O_CLOEXEC), b = syscall(SYS_eventfd2, 0, O_CLOEXEC);
    efd[0] = a;
    efd[1] = b;
  }
  auto rr = p.request(msg::Type::kSetVqueue, *dev, msg::bytes_of(v), efd);
  result("ring_outside_ram", !rr.ok() && rr.code() == Errc::kOutOfRange,
         rr.ok() ? "accepted" : std::string("refused: ") + rr.error().what);
  close(efd[0]);
  close(efd[1]);
  VirtioDriver drv(*t, p.memory());
  auto rings = p.alloc(64 * 1024);
  DriverOptions o;
  o.device_id = 4;
  o.num_queues = 1;
  o.max_queue_size = 64;
  o.ring_area = *rings;
  if (Status s = drv.init(o); !s.ok()) {
    result("buffer_outside_ram", false, std::string("could not set up the device: ") + s.error().what);
    return;
  }
  // A device-writable buffer that starts inside RAM and runs 64 KiB past its end, then a good one. The
  // device serves the queue in order, so once the good one is back the bad one has had its turn (served
  // or dropped): no time window decides. The 30 s limit is a hang guard.
  auto& q = drv.queue(0);
  auto good = p.alloc(4096);
  (void)q.add({}, {{p.ram_size() - 4096, 64 * 1024}}, uint64_t(1));
  (void)q.add({}, {{good->gpa, 64}}, uint64_t(2));
  (void)drv.kick(0);
  uint32_t len = 0;
  bool completed = false, good_back = false;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!good_back && std::chrono::steady_clock::now() < end) {
    (void)drv.wait_interrupt(1000);
    for (;;) {
      auto u = q.get_used();
      if (!u.ok() || !u->has_value()) break;
      if ((*u)->token == 1) {
        completed = true;
        len = (*u)->len;
      } else {
        good_back = true;
      }
    }
  }
  result("buffer_outside_ram", good_back && (!completed || len == 0),
         !good_back  ? "the good buffer after it was not served within 30 s"
         : completed ? "completed with " + std::to_string(len) + " bytes"
                     : "dropped; the good buffer after it was served");
}

void garbage(Partition& p) {
  const int s = p.socket_fd();
  // Malformed packets: short, lying sizes, unknown types, responses, events, descriptors where none belong.
  uint8_t junk[40] = {0xff, 0xee, 0x01, 0x02};
  send(s, junk, 3, MSG_NOSIGNAL);
  send(s, junk, sizeof junk, MSG_NOSIGNAL);
  auto pkt = msg::encode(msg::Type::kGetStatus, msg::kFlagResponse, 0, 9, msg::Code::kOk, {});
  (void)msg::send_packet(s, pkt);
  pkt = msg::encode(msg::Type::kEventStop, 0, 0, 0, msg::Code::kOk, {});
  (void)msg::send_packet(s, pkt);
  pkt = msg::encode(msg::Type::kGetStatus, 0, 0, 10, msg::Code::kOk, {});
  const int self = s;
  (void)msg::send_packet(s, pkt, std::span<const int>(&self, 1));
  // Well-formed but wrong: no such device, out-of-order status, config past the end.
  (void)p.request(msg::Type::kGetFeatures, 31, {});
  msg::StatusMsg st{};
  st.status = transport::kStatusDriverOk;
  (void)p.request(msg::Type::kSetStatus, 0, msg::bytes_of(st));
  msg::ConfigReq c{};
  c.offset = 0xfffffff0;
  c.size = 64;
  (void)p.request(msg::Type::kGetConfig, 0, msg::bytes_of(c));
  // A flood of requests whose replies are never read.
  pkt = msg::encode(msg::Type::kGetStatus, 0, 0, 11, msg::Code::kOk, {});
  int sent = 0;
  for (int i = 0; i < 20000; ++i) {
    if (send(s, pkt.data(), pkt.size(), MSG_NOSIGNAL | MSG_DONTWAIT) > 0) ++sent;
    else usleep(100);
  }
  // Drain what came back, then carry on as a good partition.
  usleep(200 * 1000);
  (void)p.poll_events();
  std::printf("garbage done: %d flood requests sent\n", sent);
  std::fflush(stdout);
}

}  // namespace

// One request on a SOCK_SEQPACKET control socket; the reply ("" when unreachable).
std::string control_request(const std::string& path, const std::string& req) {
  int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) return "";
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  std::string reply;
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    // A refusal may come (and the socket close) before the request is sent: read it either way.
    (void)send(s, req.data(), req.size(), MSG_NOSIGNAL);
    char buf[4096];
    const ssize_t n = recv(s, buf, sizeof buf, 0);
    if (n > 0) reply.assign(buf, size_t(n));
  }
  close(s);
  while (!reply.empty() && reply.back() == '\n') reply.pop_back();
  return reply;
}

void control_result(const char* name, const std::string& reply) {
  const bool refused = reply.rfind("error: permission denied", 0) == 0;
  std::printf("control %s: %s (%s)\n", name, refused ? "blocked" : "ALLOWED", reply.c_str());
  std::fflush(stdout);
}

void control_attack(const std::string& path, const std::string& vm) {
  control_result("stop", control_request(path, "stop " + vm + " force"));
  const pid_t child = fork();
  if (child < 0) return;
  if (child == 0) {
    const pid_t middle = getpid();
    if (fork() == 0) {
      // The orphan: waits (up to 30 s, a hang guard) to be reparented, then asks.
      for (int i = 0; i < 3000 && getppid() == middle; ++i) usleep(10 * 1000);
      control_result("orphan", control_request(path, "status"));
      _exit(0);
    }
    _exit(0);
  }
  (void)waitpid(child, nullptr, 0);
}

int main(int argc, char** argv) {
  std::string target_file, control_path, control_vm;
  bool do_garbage = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--attack" && i + 1 < argc) target_file = argv[++i];
    else if (a == "--garbage") do_garbage = true;
    else if (a == "--control" && i + 2 < argc) {
      control_path = argv[++i];
      control_vm = argv[++i];
    } else {
      std::fprintf(stderr, "canopy-partition-probe: bad argument %s\n", a.c_str());
      return 2;
    }
  }
  auto p = Partition::attach(30000);  // a reply limit that is a hang guard, not a deadline (BRIEF §4.7)
  if (!p.ok()) {
    std::fprintf(stderr, "canopy-partition-probe: attach failed: %s\n", p.error().what);
    return 1;
  }
  if (!target_file.empty()) {
    g_open_dir = target_file.substr(0, target_file.rfind('/') + 1) + "open";
    pid_t target = read_target(**p, target_file);
    if (target <= 0) {
      std::fprintf(stderr, "canopy-partition-probe: no target pid in %s\n", target_file.c_str());
      return 1;
    }
    attack(**p, target);
    std::printf("probe summary: attempted=%d allowed=%d\n", attempted, allowed);
    std::fflush(stdout);
  }
  if (do_garbage) garbage(**p);
  if (!control_path.empty()) control_attack(control_path, control_vm);
  uint64_t beats = 0;
  while (!(*p)->stop_requested()) {
    Status s = (*p)->heartbeat(++beats);
    if (!s.ok() && s.error().code == Errc::kClosed) return 0;
    usleep(20 * 1000);
  }
  return 0;
}
