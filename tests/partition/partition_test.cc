// canopy-vmm with real guest partitions and real back-ends, as separate processes: crash isolation,
// back-end restart with device reset, watchdog, confinement (a hostile partition), a misbehaving
// partition, the control socket. Every process started here is owned by PID and gone at the end.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "canopy/audio/wav.h"
#include "canopy/base/sanitizer.h"
#include "canopy/hypervisor/control_client.h"
#include "canopy/hypervisor/process.h"
#include "canopy/test_support/command.h"
#include "canopy/test_support/identity.h"
#include "canopy/test_support/vmm.h"

namespace canopy::hypervisor {
namespace {

const std::string kBin = CANOPY_BIN_DIR;
using Fields = test_support::Fields;

using test_support::line_exchange;
using test_support::process_gone;
using test_support::read_file;
using test_support::Vmm;
using test_support::wait_gone;

using canopy::test_support::run_command;

std::string rng_vm(const std::string& name, const std::string& extra, const std::string& app_args,
                   const std::string& app = "canopy-partition-rng") {
  return "[[vm]]\nname = \"" + name + "\"\nbackend = \"partition\"\nmemory = \"32M\"\n" + extra + "app = \"" + kBin +
         "/" + app + "\"\nargs = [" + app_args + "]\n[[vm.device]]\ntype = \"rng\"\nbackend = \"" + kBin +
         "/canopy-vhost-rng\"\nargs = [\"--pattern\"]\n\n";
}

TEST(Partitions, EachSurvivesTheOthersCrashAndABackEndRestartResetsOnlyItsDevice) {
  Vmm vmm(rng_vm("cluster", "criticality = \"safety\"\n", "\"--expect-pattern\"") +
          rng_vm("ivi", "start_after = [\"cluster\"]\n", "\"--expect-pattern\""));
  ASSERT_TRUE(Vmm::wait_until(
      [&] { return vmm.field("vm cluster", "progress") >= 20 && vmm.field("vm ivi", "progress") >= 20; }));
  EXPECT_EQ(vmm.text("vm cluster", "confinement").rfind("ns:pid", 0), 0u) << vmm.text("vm cluster", "confinement");

  // Kill the IVI partition: the cluster keeps running while the VMM restarts the IVI (on-failure).
  const pid_t ivi = pid_t(vmm.field("vm ivi", "pid"));
  const long cluster_before = vmm.field("vm cluster", "progress");
  ASSERT_EQ(kill(ivi, SIGKILL), 0);
  ASSERT_TRUE(Vmm::wait_until([&] {
    return vmm.field("vm ivi", "restarts") == 1 && vmm.field("vm ivi", "pid") > 0 &&
           vmm.field("vm ivi", "pid") != ivi && vmm.field("vm ivi", "progress") >= 10;
  }));
  EXPECT_EQ(vmm.text("vm ivi", "last_exit"), "killed by signal 9 (Killed)");
  EXPECT_TRUE(Vmm::wait_until([&] { return vmm.field("vm cluster", "progress") >= cluster_before + 10; }));
  EXPECT_EQ(vmm.field("vm cluster", "restarts"), 0);

  // Kill the cluster's back-end: the VMM starts a new one and the cluster's driver resets the device.
  const pid_t backend = pid_t(vmm.field("device cluster 0", "backend_pid"));
  ASSERT_EQ(kill(backend, SIGKILL), 0);
  ASSERT_TRUE(Vmm::wait_until([&] {
    return vmm.field("device cluster 0", "backend_starts") == 2 &&
           vmm.field("device cluster 0", "driver_resets") >= 1 && vmm.text("device cluster 0", "status") == "0x0f";
  }));
  const long after_reset = vmm.field("vm cluster", "progress");
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.field("vm cluster", "progress") >= after_reset + 20; }))
      << "the cluster makes progress on the new back-end";
  EXPECT_NE(vmm.field("device cluster 0", "backend_pid"), backend);
  EXPECT_EQ(vmm.field("vm cluster", "restarts"), 0) << "a back-end restart does not restart the VM";
  EXPECT_EQ(vmm.field("device ivi 0", "backend_starts"), 2) << "one start per IVI incarnation, no more";

  // Clean shutdown through canopyctl: exit 0, and (checked by ~Vmm) no process left.
  std::string out;
  EXPECT_EQ(vmm.canopyctl("shutdown", out), 0);
  EXPECT_EQ(out, "ok shutting down\n");
  auto e = vmm.process().wait(60000);
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->clean()) << e->to_string();
}

TEST(Partitions, WatchdogKillsAndRestartsAPartitionThatStopsHeartbeating) {
  Vmm vmm(
      rng_vm("hangs", "watchdog_ms = 300\nrestart = \"on-failure\"\nmax_restarts = 10\n", "\"--hang-after\", \"5\""));
  ASSERT_TRUE(Vmm::wait_until(
      [&] { return vmm.field("vm hangs", "watchdog_expiries") >= 2 && vmm.field("vm hangs", "restarts") >= 2; }));
  EXPECT_EQ(vmm.text("vm hangs", "last_exit"), "watchdog: no heartbeat for 300 ms (killed by signal 9 (Killed))");
}

TEST(Partitions, AHostilePartitionReachesNothingOutsideItsRam) {
  Vmm vmm(rng_vm("victim", "", "\"--expect-pattern\"") +
          rng_vm("attacker", "", "\"--attack\", \"@DIR@/TARGET\"", "canopy-partition-probe"));
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.field("vm victim", "progress") >= 10; }));
  const pid_t victim = pid_t(vmm.field("vm victim", "pid"));
  // Control experiment: unconfined (this test, root), the victim's memory is readable, so a "blocked"
  // below is the confinement's doing.
  std::string maps = read_file("/proc/" + std::to_string(victim) + "/maps");
  unsigned long start = std::stoul(maps.substr(0, maps.find('-')), nullptr, 16);
  char buf[16];
  iovec local{buf, sizeof buf}, remote{reinterpret_cast<void*>(start), sizeof buf};
  ASSERT_EQ(process_vm_readv(victim, &local, 1, &remote, 1, 0), ssize_t(sizeof buf));

  // A folder the partition's uid may write to by its permissions: only its file system view stops it.
  ASSERT_EQ(mkdir((vmm.dir() + "/open").c_str(), 0777), 0);
  ASSERT_EQ(chmod((vmm.dir() + "/open").c_str(), 01777), 0);
  std::ofstream(vmm.dir() + "/TARGET") << victim << "\n";
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.log().find("probe summary:") != std::string::npos; }));
  const std::string log = vmm.log();
  for (const char* probe :
       {"process_vm_readv", "process_vm_writev", "ptrace_seize", "open_proc_mem", "pidfd_open", "kill", "socket",
        "write_file", "unshare_user", "setuid_root", "mount", "fork", "ram_shrink", "ram_grow", "foreign_descriptors",
        "ring_outside_ram", "buffer_outside_ram"}) {
    EXPECT_NE(log.find(std::string("probe ") + probe + ": blocked"), std::string::npos) << probe;
  }
  EXPECT_NE(log.find("probe summary: attempted=17 allowed=0"), std::string::npos);
  EXPECT_NE(access((vmm.dir() + "/open/written-by-probe").c_str(), F_OK), 0);
  EXPECT_NE(vmm.text("vm attacker", "confinement").find("landlock:ro"), std::string::npos)
      << vmm.text("vm attacker", "confinement");
  const long before = vmm.field("vm victim", "progress");
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.field("vm victim", "progress") >= before + 10; }));
  EXPECT_EQ(vmm.field("vm victim", "restarts"), 0);
  EXPECT_EQ(vmm.field("vm victim", "pid"), victim);
}

TEST(Partitions, TheSameProbeGetsThroughWithoutConfinement) {
  // The probe's own check: with --no-confine (root, no namespaces, no seccomp) its attacks succeed, so
  // the test above cannot pass by a probe that never really tries.
  Vmm vmm(rng_vm("victim", "", "") + rng_vm("attacker", "", "\"--attack\", \"@DIR@/TARGET\"", "canopy-partition-probe"),
          {"--no-confine"});
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.field("vm victim", "progress") >= 5; }));
  ASSERT_EQ(mkdir((vmm.dir() + "/open").c_str(), 0777), 0);
  ASSERT_EQ(chmod((vmm.dir() + "/open").c_str(), 01777), 0);
  std::ofstream(vmm.dir() + "/TARGET") << vmm.field("vm victim", "pid") << "\n";
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.log().find("probe summary:") != std::string::npos; }));
  const std::string log = vmm.log();
  for (const char* probe : {"process_vm_readv", "open_proc_mem", "pidfd_open", "socket", "write_file"})
    EXPECT_NE(log.find(std::string("probe ") + probe + ": ALLOWED"), std::string::npos) << probe;
  // The device-side limits do not depend on the sandbox: they hold either way.
  EXPECT_NE(log.find("probe ring_outside_ram: blocked"), std::string::npos);
  EXPECT_NE(log.find("probe ram_shrink: blocked"), std::string::npos);
}

// The uid a process runs as (/proc/PID/status), -1 when it cannot be read.
long uid_of(pid_t pid) {
  std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);)
    if (line.rfind("Uid:", 0) == 0) return std::stol(line.substr(4));
  return -1;
}

// A taken-over back-end of the IVI (a process with its identity, without its own seccomp filter and
// Landlock view, which sandbox_test attacks) against the cluster's back-end: signal it, trace it, read
// its memory, open the cluster's RAM through its descriptors. As root, canopy-vmm starts each VM's
// back-ends under a uid of their own: every attempt is refused. Control (--no-confine: every back-end
// keeps the operator's uid, as before): every attempt succeeds.
TEST(Partitions, EachVmsBackEndsRunUnderAUidOfTheirOwn) {
  if (geteuid() != 0) {
    if (getenv("CANOPY_NO_SKIP")) FAIL() << "needs root to give back-ends uids (CANOPY_NO_SKIP=1)";
    GTEST_SKIP() << "needs root to give back-ends uids";
  }
  for (bool separate : {true, false}) {
    SCOPED_TRACE(separate ? "a uid per VM's back-ends" : "control: --no-confine, one uid");
    std::vector<std::string> extra = {"--scratch-dir", "@DIR@/scratch"};
    if (!separate) extra.emplace_back("--no-confine");
    Vmm vmm(rng_vm("cluster", "criticality = \"safety\"\n", "\"--expect-pattern\"") +
                rng_vm("ivi", "", "\"--expect-pattern\""),
            extra);
    ASSERT_TRUE(Vmm::wait_until(
        [&] { return vmm.field("vm cluster", "progress") >= 5 && vmm.field("vm ivi", "progress") >= 5; }));
    const pid_t cluster = pid_t(vmm.field("device cluster 0", "backend_pid"));
    const pid_t ivi = pid_t(vmm.field("device ivi 0", "backend_pid"));
    ASSERT_GT(cluster, 0);
    ASSERT_GT(ivi, 0);
    const long cluster_uid = uid_of(cluster), ivi_uid = uid_of(ivi);
    EXPECT_EQ(vmm.field("device cluster 0", "backend_uid"), cluster_uid);
    EXPECT_EQ(vmm.field("device ivi 0", "backend_uid"), ivi_uid);
    if (separate) {
      EXPECT_NE(cluster_uid, ivi_uid);
      EXPECT_NE(cluster_uid, 0);
      EXPECT_NE(ivi_uid, 0);
      EXPECT_NE(cluster_uid, uid_of(pid_t(vmm.field("vm cluster", "pid"))));  // not its partition's
    } else {
      EXPECT_EQ(cluster_uid, ivi_uid);
    }
    const std::string attempts = test_support::answer_of(test_support::start_as(uid_t(ivi_uid), {}, [&] {
      std::string r;
      auto note = [&](const char* what, bool done) { r += std::string(what) + (done ? "=ALLOWED " : "=refused "); };
      note("signal", kill(cluster, 0) == 0);
      note("trace", ptrace(PTRACE_SEIZE, cluster, nullptr, nullptr) == 0);
      const std::string proc = "/proc/" + std::to_string(cluster);
      const int mem = open((proc + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
      note("open_proc_mem", mem >= 0);
      // The cluster's RAM, a memfd among its descriptors.
      bool ram = false;
      if (DIR* d = opendir((proc + "/fd").c_str())) {
        while (dirent* e = readdir(d)) {
          char link[256] = {};
          const std::string path = proc + "/fd/" + e->d_name;
          if (readlink(path.c_str(), link, sizeof link - 1) > 0 && std::strncmp(link, "/memfd:canopy-ram", 17) == 0) {
            const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
            ram |= fd >= 0;
            if (fd >= 0) close(fd);
          }
        }
        closedir(d);
      }
      note("open_guest_ram", ram);
      // Scratch folders (--scratch-dir): its own VM's, and the cluster's.
      for (const char* vm : {"ivi", "cluster"}) {
        const int f = open((vmm.dir() + "/scratch/" + vm + "/probe").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        note(std::string(vm) == "ivi" ? "write_own_scratch" : "write_cluster_scratch", f >= 0);
        if (f >= 0) close(f);
      }
      return r;
    }));
    EXPECT_NE(attempts.find("write_own_scratch=ALLOWED"), std::string::npos) << attempts;
    struct stat scratch{};
    ASSERT_EQ(stat((vmm.dir() + "/scratch/ivi").c_str(), &scratch), 0);
    EXPECT_EQ(scratch.st_mode & 07777, 0700u);
    EXPECT_EQ(long(scratch.st_uid), ivi_uid) << "the IVI's scratch folder is its back-ends'";
    for (const char* what : {"signal", "trace", "open_proc_mem", "open_guest_ram", "write_cluster_scratch"})
      EXPECT_NE(attempts.find(std::string(what) + (separate ? "=refused" : "=ALLOWED")), std::string::npos)
          << what << ": " << attempts;
    // The cluster is unharmed.
    const long progress = vmm.field("vm cluster", "progress");
    EXPECT_TRUE(Vmm::wait_until([&] { return vmm.field("vm cluster", "progress") > progress; }));
    EXPECT_EQ(vmm.field("device cluster 0", "backend_starts"), 1);
    // Nothing outlives a canopy-vmm killed outright.
    const std::vector<pid_t> started = {cluster, ivi, pid_t(vmm.field("vm cluster", "pid")),
                                        pid_t(vmm.field("vm ivi", "pid"))};
    ASSERT_EQ(kill(vmm.process().pid(), SIGKILL), 0);
    for (pid_t p : started) EXPECT_TRUE(wait_gone(p, 30000)) << "pid " << p << " outlived a killed canopy-vmm";
  }
}

// Only the operator may control canopy-vmm: its uid, root, and the members of --control-group. A process
// of another uid in that group gets answers; one of another uid outside it does not. Control: without
// --control-group the same member is refused like anyone of another uid.
TEST(Partitions, TheOperatorGroupMayControlCanopyVmmOthersMayNot) {
  if (geteuid() != 0) {
    if (getenv("CANOPY_NO_SKIP")) FAIL() << "needs root to run clients under other uids (CANOPY_NO_SKIP=1)";
    GTEST_SKIP() << "needs root to run clients under other uids";
  }
  constexpr gid_t kGroup = 0x7bf00;
  constexpr uid_t kMember = 0x7bf01, kOther = 0x7bf02;
  // `status` asked by a client that runs as `uid`, in kGroup or not; its answer ("" when refused).
  auto ask_as = [](const std::string& socket, uid_t uid, bool member) {
    return test_support::answer_of(
        test_support::start_as(uid, member ? std::vector<gid_t>{kGroup} : std::vector<gid_t>{}, [&] {
          auto r = control_request(socket, "status", 10000);
          return r.ok() ? *r : std::string();
        }));
  };
  for (bool configured : {true, false}) {
    SCOPED_TRACE(configured ? "--control-group" : "control: no operator group");
    std::vector<std::string> extra;
    if (configured) extra = {"--control-group", std::to_string(kGroup)};
    Vmm vmm(rng_vm("cluster", "", ""), extra);
    ASSERT_TRUE(Vmm::wait_until([&] { return vmm.field("vm cluster", "progress") >= 1; }));
    const std::string socket = vmm.dir() + "/control";
    const std::string member = ask_as(socket, kMember, true), other = ask_as(socket, kOther, false);
    EXPECT_EQ(other.find("vm name=cluster"), std::string::npos) << other;
    if (configured) {
      EXPECT_NE(member.find("vm name=cluster"), std::string::npos)
          << "a member of the operator group: '" << member << "'";
    } else {
      EXPECT_EQ(member.find("vm name=cluster"), std::string::npos) << member;
    }
  }
}

// A child started under another uid dies with its parent, though it ignores everything else (a back-end
// that never notices its socket close): a change of uid clears the parent-death signal, so spawn() sets
// it after the change.
TEST(Partitions, AChildUnderAnotherUidDiesWithCanopyVmm) {
  if (geteuid() != 0) {
    if (getenv("CANOPY_NO_SKIP")) FAIL() << "needs root to start a child under another uid (CANOPY_NO_SKIP=1)";
    GTEST_SKIP() << "needs root to start a child under another uid";
  }
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  const pid_t parent = fork();  // stands for canopy-vmm
  ASSERT_GE(parent, 0);
  if (parent == 0) {
    SpawnOptions o;
    o.path = "/bin/sleep";
    o.argv = {"sleep", "600"};
    o.uid = 0x7bf30;
    auto c = spawn(o);
    const pid_t pid = c.ok() ? c->pid() : -1;
    (void)!write(p[1], &pid, sizeof pid);
    for (;;) pause();
  }
  // On every way out: "canopy-vmm" killed and reaped; the child, only if it lived on, through its pidfd
  // (by then its pid could be another process's).
  struct Cleanup {
    pid_t parent;
    UniqueFd child;
    ~Cleanup() {
      if (parent > 0) {
        kill(parent, SIGKILL);
        waitpid(parent, nullptr, 0);
      }
      if (child.valid()) (void)syscall(SYS_pidfd_send_signal, child.get(), SIGKILL, nullptr, 0);
    }
  } cleanup{parent, {}};
  close(p[1]);
  pid_t child = -1;
  ASSERT_EQ(read(p[0], &child, sizeof child), ssize_t(sizeof child));
  close(p[0]);
  ASSERT_GT(child, 0);
  cleanup.child = UniqueFd(int(syscall(SYS_pidfd_open, child, 0)));
  ASSERT_TRUE(cleanup.child.valid());
  EXPECT_EQ(uid_of(child), 0x7bf30);
  ASSERT_EQ(kill(parent, SIGKILL), 0);
  ASSERT_EQ(waitpid(parent, nullptr, 0), parent);
  cleanup.parent = 0;
  pollfd gone{cleanup.child.get(), POLLIN, 0};
  EXPECT_EQ(poll(&gone, 1, 30000), 1) << "the child under another uid outlived its parent";
}

// A VM (or back-end) taken over, with the operator's uid: it cannot use canopy-vmm's control socket,
// neither itself nor through an orphan it leaves (reparented to canopy-vmm, the subreaper); the
// safety-critical VM keeps running. Control run (--control-open-to-children: the uid alone decides,
// as before): the same requests stop the cluster.
TEST(Partitions, ProcessesCanopyVmmStartedCannotUseItsControlSocket) {
  for (bool protect : {true, false}) {
    SCOPED_TRACE(protect ? "protected" : "control: the uid alone decides");
    std::vector<std::string> flags{"--no-confine"};  // so that the socket is reachable at all
    if (!protect) flags.push_back("--control-open-to-children");
    Vmm vmm(rng_vm("cluster", "criticality = \"safety\"\n", "\"--expect-pattern\"") +
                rng_vm("ivi", "start_after = [\"cluster\"]\n", "\"--control\", \"@DIR@/control\", \"cluster\"",
                       "canopy-partition-probe"),
            flags);
    ASSERT_TRUE(Vmm::wait_until([&] {
      const std::string log = vmm.log();
      return log.find("control stop:") != std::string::npos && log.find("control orphan:") != std::string::npos;
    })) << vmm.log();
    const std::string log = vmm.log();
    if (protect) {
      EXPECT_NE(log.find("control stop: blocked"), std::string::npos);
      EXPECT_NE(log.find("control orphan: blocked"), std::string::npos);
      const long before = vmm.field("vm cluster", "progress");
      ASSERT_TRUE(Vmm::wait_until([&] { return vmm.field("vm cluster", "progress") >= before + 10; }));
      EXPECT_EQ(vmm.text("vm cluster", "state"), "running");
      // The operator (this test: not a descendant) is still served, and must force the cluster's stop.
      EXPECT_EQ(vmm.ctl("stop cluster"), "error: cluster is safety-critical: 'stop cluster force' to stop it");
      EXPECT_EQ(vmm.ctl("stop cluster force"), "ok stop cluster");
    } else {
      EXPECT_NE(log.find("control stop: ALLOWED (ok stop cluster)"), std::string::npos);
      EXPECT_NE(log.find("control orphan: ALLOWED (vm name=cluster"), std::string::npos);
      EXPECT_TRUE(Vmm::wait_until([&] { return vmm.text("vm cluster", "state") == "stopped"; }));
    }
  }
}

// A taken-over GPU back-end of the IVI against canopy-vmm's broker (canopy-vmm --compositor): it asks
// for compositor connections 30 times as fast as the answers come; canopy-vmm makes at most 10 per 10 s
// of them (the rest refused), and each one it gets is bound to "ivi": its HELLO as "cluster" makes
// canopy-display close it, so no connection of the cluster's name comes from it.
TEST(Partitions, AGpuBackEndCanNeitherFloodTheBrokerNorClaimAnotherVm) {
  const std::string display =
      "[[display]]\nname = \"main\"\nwidth = 64\nheight = 32\nrefresh_hz = 60\n"
      "[[layout]]\ndisplay = \"main\"\nvm = \"cluster\"\nwidth = 64\nheight = 32\n"
      "[[layout]]\ndisplay = \"main\"\nvm = \"ivi\"\nwidth = 16\nheight = 16\nz = 1\n";
  const std::string gpu = "[vm.gpu]\nscanouts = [{ width = 64, height = 32, refresh_hz = 60 }]\n";
  Vmm vmm(
      rng_vm("cluster", "criticality = \"safety\"\n", "") + gpu + rng_vm("ivi", "", "") + "[vm.gpu]\nbackend = \"" +
          kBin +
          "/canopy-test-display-flood\"\nscanouts = [{ width = 64, height = "
          "32, refresh_hz = 60 }]\n" +
          display,
      {"--compositor", "--output", "headless", "--renderer", "pixman", "--quiet", "--control", "@DIR@/display.ctl"});
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.log().find("flood: asked=") != std::string::npos; })) << vmm.log();
  const std::string log = vmm.log();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      log, m, std::regex(R"(flood: asked=30 connected=(\d+) refused=(\d+) closed=(\d+) elapsed_ms=(\d+))")))
      << log;
  const long connected = std::stol(m[1]), refused = std::stol(m[2]), closed = std::stol(m[3]), ms = std::stol(m[4]);
  EXPECT_EQ(connected + refused, 30);
  // 10 per window of 10 s: the windows the flood spanned bound what it got.
  EXPECT_LE(connected, 10 * (1 + ms / 10000)) << log;
  EXPECT_GE(connected, 1) << "the broker serves a back-end that asks in measure";
  EXPECT_EQ(closed, connected) << "every connection that claimed the cluster was closed";
  // canopy-vmm's count agrees, and the compositor has no connection of anybody's name from it.
  EXPECT_TRUE(Vmm::wait_until([&] { return vmm.ctl("status").find("service name=display") != std::string::npos; }));
  const std::string status = vmm.ctl("status");
  EXPECT_NE(status.find("admitted=" + std::to_string(connected) + " refused=" + std::to_string(refused)),
            std::string::npos)
      << status;
  auto stats = control_request(vmm.dir() + "/display.ctl", "stats", 30000);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->find("\nvm "), std::string::npos) << *stats;
}

TEST(Partitions, AMisbehavingPartitionNeitherStopsTheVmmNorTheOthers) {
  Vmm vmm(rng_vm("good", "", "\"--expect-pattern\"") + rng_vm("bad", "", "\"--garbage\"", "canopy-partition-probe"));
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.log().find("garbage done") != std::string::npos; }));
  // canopy-vmm reads the bad packets in order, when it gets to them: wait for the count.
  EXPECT_TRUE(Vmm::wait_until([&] { return vmm.field("vm bad", "bad_messages") >= 5; }))
      << vmm.field("vm bad", "bad_messages") << " bad messages counted";
  const long good = vmm.field("vm good", "progress"), bad = vmm.field("vm bad", "heartbeats");
  ASSERT_TRUE(Vmm::wait_until([&] {
    return vmm.field("vm good", "progress") >= good + 20 && vmm.field("vm bad", "heartbeats") >= bad + 10;
  })) << "both are still served";
  EXPECT_EQ(vmm.field("vm bad", "restarts"), 0);
  EXPECT_EQ(vmm.field("vm good", "restarts"), 0);
}

// A VM that exits while another process traces it (a debugger; or, unconfined, another partition's
// ptrace) cannot be reaped until its tracer has taken its exit. canopy-vmm does not wait for the tracer:
// exited is exited (its VM goes on to "stopped", or to its restart), and the zombie is reaped once the
// tracer lets go. Before, the VM stayed "stopping" for as long as the tracer liked, and canopy-vmm's
// loop spun on the exited child's pidfd meanwhile.
TEST(Partitions, AVmThatExitsWhileTracedIsDoneWithoutWaitingForItsTracer) {
  if (geteuid() != 0) {
    if (getenv("CANOPY_NO_SKIP")) FAIL() << "needs root to trace a partition (CANOPY_NO_SKIP=1)";
    GTEST_SKIP() << "needs root to trace a partition";
  }
  Vmm vmm(rng_vm("traced", "", ""));
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.field("vm traced", "progress") >= 5; }));
  const pid_t pid = pid_t(vmm.field("vm traced", "pid"));
  ASSERT_EQ(ptrace(PTRACE_SEIZE, pid, nullptr, nullptr), 0) << strerror(errno);
  // Whatever happens below, the test lets go of it at the end (takes its stops and its exit), so that
  // nothing it traces outlives it.
  struct LetGo {
    pid_t pid;
    ~LetGo() {
      for (int i = 0; i < 3000; ++i) {
        int st = 0;
        const pid_t r = waitpid(pid, &st, __WALL | WNOHANG);
        if (r < 0 || (r == pid && (WIFEXITED(st) || WIFSIGNALED(st)))) return;
        if (r == pid && WIFSTOPPED(st)) (void)ptrace(PTRACE_CONT, pid, nullptr, nullptr);
        usleep(10000);
      }
    }
  } let_go{pid};
  std::string out;
  EXPECT_EQ(vmm.canopyctl("stop traced", out), 0) << out;
  // It has exited (its tracer has not taken that yet: a zombie), and canopy-vmm is done with it.
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.text("vm traced", "state") == "stopped"; })) << vmm.ctl("status");
  EXPECT_NE(vmm.text("vm traced", "last_exit").find("not reaped yet: another process traces it"), std::string::npos)
      << vmm.ctl("status");
  EXPECT_FALSE(process_gone(pid)) << "the tracer has not let go yet";
  // The tracer takes its stops and its exit; then canopy-vmm reaps the zombie (30 s hang guard).
  bool ended = false;
  ASSERT_TRUE(Vmm::wait_until(
      [&] {
        int st = 0;
        pid_t r;
        while (!ended && (r = waitpid(pid, &st, __WALL | WNOHANG)) == pid) {
          ended = WIFEXITED(st) || WIFSIGNALED(st);
          if (!ended && WIFSTOPPED(st)) (void)ptrace(PTRACE_CONT, pid, nullptr, nullptr);
        }
        return ended;
      },
      30000));
  EXPECT_TRUE(Vmm::wait_until([&] { return process_gone(pid); }, 30000)) << "canopy-vmm did not reap it";
}

TEST(Partitions, ControlSocketStopsStartsAndRestartsVmsAndRefusesBadRequests) {
  Vmm vmm(rng_vm("a", "restart = \"always\"\n", "") + rng_vm("b", "", ""));
  ASSERT_TRUE(
      Vmm::wait_until([&] { return vmm.field("vm a", "progress") >= 5 && vmm.field("vm b", "progress") >= 5; }));
  std::string out;
  EXPECT_EQ(vmm.canopyctl("frobnicate", out), 1);
  EXPECT_EQ(out, "error: unknown command (status, stop VM [force], start VM, restart VM [force], shutdown)\n");
  EXPECT_EQ(vmm.canopyctl("stop nosuchvm", out), 1);
  EXPECT_EQ(out, "error: no such VM\n");
  EXPECT_EQ(vmm.ctl(std::string(5000, 'x')), "error: request over 4096 bytes");

  // stop: gone and not restarted, even with restart = "always".
  const pid_t a = pid_t(vmm.field("vm a", "pid"));
  EXPECT_EQ(vmm.canopyctl("stop a", out), 0);
  // "stopped" is the lifecycle's decision after the exit (a restart would be "restart-pending", then
  // "running"): no time window is needed to see that none follows.
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.text("vm a", "state") == "stopped"; }));
  EXPECT_TRUE(wait_gone(a, 30000));
  EXPECT_TRUE(Vmm::wait_until([&] { return vmm.field("device a 0", "backend_up") == 0; }))
      << "its back-end went with it";
  EXPECT_EQ(vmm.text("vm a", "state"), "stopped");
  EXPECT_EQ(vmm.field("vm a", "restarts"), 0);

  EXPECT_EQ(vmm.canopyctl("start a", out), 0);
  ASSERT_TRUE(
      Vmm::wait_until([&] { return vmm.text("vm a", "state") == "running" && vmm.field("vm a", "progress") >= 5; }));
  EXPECT_EQ(vmm.canopyctl("start a", out), 1);
  EXPECT_EQ(out, "error: VM is running\n");

  const pid_t b = pid_t(vmm.field("vm b", "pid"));
  EXPECT_EQ(vmm.canopyctl("restart b", out), 0);
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.field("vm b", "pid") > 0 && vmm.field("vm b", "pid") != b; }));
  EXPECT_TRUE(process_gone(b));

  // Stop/start/restart cycles leave no descriptor behind in canopy-vmm.
  auto fds = [&] {
    int n = 0;
    std::string dir = "/proc/" + std::to_string(vmm.process().pid()) + "/fd";
    if (DIR* d = opendir(dir.c_str())) {
      while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
      closedir(d);
    }
    return n;
  };
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.field("vm b", "progress") >= 5; }));
  // No control connection of ours is open in canopy-vmm now: ctl() and canopyctl return only after
  // canopy-vmm closed its end.
  const int steady = fds();
  for (int i = 0; i < 3; ++i) {
    const pid_t before = pid_t(vmm.field("vm b", "pid"));
    ASSERT_EQ(vmm.canopyctl("restart b", out), 0);
    ASSERT_TRUE(Vmm::wait_until([&] {
      return vmm.field("vm b", "pid") > 0 && vmm.field("vm b", "pid") != before && vmm.field("vm b", "progress") >= 5;
    }));
  }
  // The old incarnations' descriptors are released asynchronously (their back-ends exit): wait for it.
  EXPECT_TRUE(Vmm::wait_until([&] { return fds() == steady; })) << fds() << " descriptors, " << steady << " before";
}

TEST(Partitions, RunRefusesAManifestItCannotRunAndNamesTheVm) {
  char tmpl[] = "/tmp/canopy-partition-test-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::ofstream(dir + "/vm.toml")
      << "[[vm]]\nname = \"x\"\nbackend = \"partition\"\nmemory = \"32M\"\napp = \"no-such-app\"\n";
  std::string out;
  EXPECT_EQ(run_command(kBin + "/canopy-vmm run " + dir + "/vm.toml", out), 1);
  EXPECT_NE(out.find("vm x: app no-such-app: program not found beside canopy-vmm or in PATH"), std::string::npos)
      << out;
  std::system(("rm -rf " + dir).c_str());
}

}  // namespace
}  // namespace canopy::hypervisor

namespace canopy::hypervisor {
namespace {

// CRC-32 (IEEE) of `count` copies of a 32-bit pixel, as canopy-gpu's frame log prints it.
std::string pixel_crc(uint32_t pixel, size_t count) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < count; ++i)
    for (int b = 0; b < 4; ++b) {
      crc ^= (pixel >> (8 * b)) & 0xff;
      for (int k = 0; k < 8; ++k) crc = crc & 1 ? 0xedb88320u ^ (crc >> 1) : crc >> 1;
    }
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", crc ^ 0xffffffffu);
  return buf;
}

TEST(PartitionGpu, EveryCommandAndErrorCodeThroughTheGuestClient) {
  Vmm vmm("[[vm]]\nname = \"gfx\"\nbackend = \"partition\"\nmemory = \"32M\"\nrestart = \"never\"\napp = \"" + kBin +
          "/canopy-partition-gpu-check\"\n[vm.gpu]\nbackend = \"" + kBin +
          "/canopy-gpu\"\nscanouts = [{ width = 640, height = 480 }, { width = 320, height = 240 }]\n"
          "args = [\"--frame-log=@DIR@/frames.log\", \"--release-after-ms=1000\", \"--max-resources=16\",\n"
          "        \"--control=@DIR@/gpu-control.sock\"]\n");
  // Display changes from the host side: canopy-gpu's control socket -> CONFIG_CHANGE_MSG on the
  // back-end request channel -> canopy-vmm -> EVENT_CONFIG -> the guest re-reads its displays.
  const std::string gpu_control = vmm.dir() + "/gpu-control.sock";
  ASSERT_TRUE(Vmm::wait_until([&] {
    return vmm.log().find("gpu-check: waiting for a display change") != std::string::npos;
  })) << vmm.log();
  EXPECT_EQ(line_exchange(gpu_control, "display 1 400x300\n"), "ok\n");
  ASSERT_TRUE(Vmm::wait_until([&] {
    return vmm.log().find("gpu-check: waiting for a disconnect") != std::string::npos;
  })) << vmm.log();
  EXPECT_EQ(line_exchange(gpu_control, "display 1 off\ndisplays\n"), "ok\n0 640x480@60 on\n1 400x300@60 off\nok\n");
  ASSERT_TRUE(Vmm::wait_until([&] { return vmm.log().find("gpu-check: done") != std::string::npos; })) << vmm.log();
  EXPECT_EQ(vmm.status()["device gfx 0"]["config_changes"], "2") << vmm.ctl("status");
  const std::string log = vmm.log();
  EXPECT_EQ(log.find("gpu-check: FAIL"), std::string::npos) << log;
  EXPECT_NE(log.find("gpu-check: done"), std::string::npos);
  EXPECT_GE(std::count(log.begin(), log.end(), '\n'), 30);
  const std::string frames = read_file(vmm.dir() + "/frames.log");
  // The 2D frame: the guest's pixels, copied once by TRANSFER_TO_HOST_2D.
  EXPECT_NE(frames.find("frame 0 seq 1 64x64 XR24 stride 256 2d copied 16384 damage 0,0 64x64 crc " +
                        pixel_crc(0xff204080, 64 * 64)),
            std::string::npos)
      << frames;
  // The blob frame from four scattered pages: the guest's pixels with zero bytes copied.
  EXPECT_NE(frames.find("frame 1 seq 1 64x64 XR24 stride 256 blob copied 0 damage 0,0 64x64 crc " +
                        pixel_crc(0xff00ff00, 64 * 64)),
            std::string::npos)
      << frames;
  EXPECT_NE(frames.find("cursor 0 show 10,20 hot 1,1 image crc " + pixel_crc(0xffffffff, 64 * 64)), std::string::npos)
      << frames;
  EXPECT_NE(frames.find("cursor 0 show 30,40 hot 1,1 crc"), std::string::npos) << frames;
}

// What a back-end holds, from /proc: descriptors, and its own resident memory (KiB): its anonymous
// memory and the pages of its mappings of memfds named `own_file` (not the guest RAM it maps).
struct Held {
  size_t fds = 0;
  uint64_t rss_kib = 0;
};
Held held_by(pid_t pid, const std::string& own_file) {
  Held h;
  const std::string proc = "/proc/" + std::to_string(pid);
  if (DIR* d = opendir((proc + "/fd").c_str())) {
    while (const dirent* e = readdir(d)) h.fds += e->d_name[0] != '.';
    closedir(d);
  }
  std::istringstream status(read_file(proc + "/status"));
  for (std::string line; std::getline(status, line);)
    if (line.rfind("RssAnon:", 0) == 0) h.rss_kib += std::stoull(line.substr(8));
  std::istringstream smaps(read_file(proc + "/smaps"));
  bool own = false;
  for (std::string line; std::getline(smaps, line);) {
    if (line.find('-') < line.find(' ') && line.find(' ') != std::string::npos && !line.empty() &&
        std::isxdigit(static_cast<unsigned char>(line[0])))
      own = line.find("/memfd:" + own_file + " ") != std::string::npos;
    else if (own && line.rfind("Rss:", 0) == 0) h.rss_kib += std::stoull(line.substr(4));
  }
  return h;
}

// A hostile partition pushes its canopy-gpu to its caps (docs/gpu.md, "Limits"): resources of 3900
// backing entries each until the cap on all resources' entries refuses one, then 4 MiB 2D resources,
// each uploaded whole, until the host-memory cap refuses one. Measured from /proc before the flood and
// while canopy-gpu holds what it made it hold: its own resident memory (anonymous, and its 2D copies;
// not the guest RAM it maps) grows by at most the host-memory cap and the entries' bookkeeping (24
// bytes each), and its descriptors by one per resource. The control run, with a cap four times higher,
// shows the memory measurement can fail: it grows with what the guest asks, up to the cap given.
TEST(PartitionGpu, AFloodingGuestKeepsCanopyGpuUnderItsCaps) {
  for (uint64_t host_mb : {32, 128}) {
    SCOPED_TRACE(host_mb == 32 ? "--max-host-mb=32" : "control: --max-host-mb=128");
    Vmm vmm("[[vm]]\nname = \"flood\"\nbackend = \"partition\"\nmemory = \"64M\"\nrestart = \"never\"\napp = \"" +
            kBin + "/canopy-partition-gpu-flood\"\n[vm.gpu]\nbackend = \"" + kBin +
            "/canopy-gpu\"\nscanouts = [{ width = 640, height = 480 }]\n"
            "args = [\"--max-host-mb=" +
            std::to_string(host_mb) + "\", \"--control=@DIR@/gpu-control.sock\"]\n");
    ASSERT_TRUE(Vmm::wait_until([&] { return vmm.log().find("gpu-flood: ready") != std::string::npos; })) << vmm.log();
    const long pid = vmm.field("device flood 0", "backend_pid");
    ASSERT_GT(pid, 0) << vmm.ctl("status");
    const Held base = held_by(pid_t(pid), "canopy-gpu-2d");
    ASSERT_GT(base.fds, 0u) << "canopy-gpu's descriptors cannot be read";
    EXPECT_EQ(line_exchange(vmm.dir() + "/gpu-control.sock", "display 0 800x600\n"), "ok\n");
    ASSERT_TRUE(Vmm::wait_until([&] { return vmm.log().find("gpu-flood: holding") != std::string::npos; }))
        << vmm.log();
    const Held now = held_by(pid_t(pid), "canopy-gpu-2d");
    const std::string log = vmm.log();
    // Backing entries until OUT_OF_MEMORY (the guest client's request holds 3900: 67 resources of them
    // fit in 262144); then every 4 MiB 2D resource the cap lets through (less one: the 68 1x1
    // resources take a little of it).
    EXPECT_NE(log.find("gpu-flood: entries 67 refused ERR_OUT_OF_MEMORY"), std::string::npos) << log;
    const uint64_t made_2d = host_mb / 4 - 1;
    EXPECT_NE(log.find("gpu-flood: 2d " + std::to_string(made_2d) + " refused ERR_OUT_OF_MEMORY"), std::string::npos)
        << log;
    const uint64_t grown_kib = now.rss_kib > base.rss_kib ? now.rss_kib - base.rss_kib : 0;
    const uint64_t cap_kib = 32 * 1024 + 262144 * 24 / 1024;
    std::printf("canopy-gpu --max-host-mb=%llu: resident %llu -> %llu KiB, descriptors %zu -> %zu\n",
                (unsigned long long)host_mb, (unsigned long long)base.rss_kib, (unsigned long long)now.rss_kib,
                base.fds, now.fds);
    if (host_mb == 32) {
      // The cap and the bookkeeping, and 16 MiB for what the requests themselves allocate (in sanitizer
      // builds 64 MiB more: redzones around the bookkeeping, the quarantine of what was freed).
      EXPECT_LE(grown_kib, cap_kib + (16 + (kAddressSanitizer || kThreadSanitizer ? 64 : 0)) * 1024);
      // A 2D resource's copy is a file of its own (a memfd), one descriptor each, so at most
      // --max-resources: here the 67 with entries, the 68th (made, then refused its backing) and the
      // made_2d others; nothing else.
      EXPECT_LE(now.fds, base.fds + 68 + made_2d);
    } else {
      EXPECT_GT(grown_kib, cap_kib + (16 + (kAddressSanitizer || kThreadSanitizer ? 64 : 0)) * 1024)
          << "control: the flood never made canopy-gpu grow";
    }
  }
}

TEST(PartitionSnd, EveryRequestAndErrorThroughTheGuestClient) {
  // canopy-snd with its null host: playback recorded to a WAV file, capture hearing a 440 Hz tone. Its
  // policy board is canopy-vmm's (the manifest's table), shared with nothing outside this canopy-vmm.
  Vmm vmm("[[vm]]\nname = \"audio\"\nbackend = \"partition\"\nmemory = \"32M\"\nrestart = \"never\"\napp = \"" + kBin +
          "/canopy-partition-snd-check\"\n[vm.snd]\nbackend = \"" + kBin +
          "/canopy-snd\"\nstreams = [\n  { name = \"music\", direction = \"output\", channels = 2, rates = [48000] },\n"
          "  { name = \"mic\", direction = \"input\", channels = 1, rates = [48000], role = \"voice\" },\n]\n"
          "jacks = [{ name = \"speaker\", direction = \"output\", device = \"speaker\" }]\n"
          "args = [\"--host=null\", \"--wav-dir=@DIR@\", \"--capture-tone=440\"]\n");
  // What canopy-snd holds through the whole check, read from /proc while it runs: it keeps no copy of
  // the guest's audio (a request it holds is its place in guest memory; at most a queue's worth are
  // held), so its own memory grows by little, and its descriptors by the WAV files it records to.
  // At rest: once the guest's first check passed (the device is up, the check has begun).
  long pid = -1;
  ASSERT_TRUE(Vmm::wait_until([&] {
    return vmm.log().find("snd-check: ok") != std::string::npos &&
           (pid = vmm.field("device audio 0", "backend_pid")) > 0;
  })) << vmm.log();
  const Held base = held_by(pid_t(pid), "none");
  ASSERT_GT(base.fds, 0u) << "canopy-snd's descriptors cannot be read";
  Held peak = base;
  ASSERT_TRUE(Vmm::wait_until([&] {
    const Held h = held_by(pid_t(pid), "none");
    peak.fds = std::max(peak.fds, h.fds);
    peak.rss_kib = std::max(peak.rss_kib, h.rss_kib);
    return vmm.log().find("snd-check: done") != std::string::npos;
  })) << vmm.log();
  std::printf("canopy-snd through the check: own resident memory %llu -> peak %llu KiB, descriptors %zu -> peak %zu\n",
              (unsigned long long)base.rss_kib, (unsigned long long)peak.rss_kib, base.fds, peak.fds);
  EXPECT_LE(peak.rss_kib, base.rss_kib + (8 + (kAddressSanitizer || kThreadSanitizer ? 64 : 0)) * 1024);
  EXPECT_LE(peak.fds, base.fds + 4) << "the WAV files of its two streams, and no more";
  const std::string log = vmm.log();
  EXPECT_EQ(log.find("snd-check: FAIL"), std::string::npos) << log;
  EXPECT_NE(log.find("snd-check: done"), std::string::npos);
  EXPECT_GE(std::count(log.begin(), log.end(), '\n'), 40);
  // What the null host took from the music stream: exactly what the guest delivered (the null host
  // records content, not time; lateness shows as underruns in its stats): its 1 s tone, sample for
  // sample, nothing lost, repeated or padded. (The XRUN part of the check delivers nothing.)
  auto wav = audio::read_wav(vmm.dir() + "/audio-music.wav");
  ASSERT_TRUE(wav.ok()) << wav.error().what;
  ASSERT_EQ(wav->channels, 2u);
  ASSERT_EQ(wav->rate, 48000u);
  EXPECT_EQ(wav->frames(), 48000u);
  size_t differ = 0, first_diff = 0;
  for (size_t f = 0; f < std::min<size_t>(wav->frames(), 48000); ++f) {
    const float want = float(std::lround(0.5 * 32767 * std::sin(2 * M_PI * 1000 * double(f) / 48000))) / 32768.0f;
    for (uint32_t c = 0; c < 2; ++c)
      if (wav->samples[f * 2 + c] != want && differ++ == 0) first_diff = f;
  }
  EXPECT_EQ(differ, 0u) << "first difference at frame " << first_diff;
  const audio::ToneReport t = audio::analyze_tone(*wav, 0);
  ASSERT_TRUE(t.found);
  EXPECT_NEAR(t.hz, 1000, 2);
  EXPECT_NEAR(t.level_db, -6, 0.1);
  EXPECT_EQ(t.gaps, 0u);
}

}  // namespace
}  // namespace canopy::hypervisor
