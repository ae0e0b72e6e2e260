// canopy-display's control socket against the processes canopy-vmm started (docs/security.md, "Control
// sockets"): under the broker canopy-display refuses every descendant of its parent, canopy-vmm, whose
// children are the VMs and their back-ends, whatever their uid; the operator's own clients, started
// elsewhere, are served. Control run without the refusal: the same back-end quits the compositor.
// (canopy-vmm's own control socket: tests/partition, ProcessesCanopyVmmStartedCannotUseItsControlSocket.)
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "canopy/base/clock.h"
#include "canopy/display/compositor.h"
#include "canopy/test_support/identity.h"
#include "canopy/test_support/seqpacket.h"

namespace canopy::display {
namespace {

Layout one_output() {
  OutputSpec o;
  o.name = "cluster";
  o.width = 64;
  o.height = 32;
  LayerSpec c;
  c.vm = "cluster";
  c.dst = {0, 0, 64, 32};
  o.layers = {c};
  Layout l;
  l.outputs.push_back(o);
  return l;
}

// One request on a control socket; the reply, "" when closed unanswered.
using test_support::ask_seqpacket;

// A pixman compositor's options with its device socket and its control socket (control.sock) in `dir`.
CompositorOptions with_control_socket(const std::string& dir) {
  CompositorOptions o;
  o.listen_path = dir + "/display.sock";
  o.control_path = dir + "/control.sock";
  o.renderer = "pixman";
  return o;
}

// Serves the compositor's sockets (the test's thread is its only one) until `from` closes or 30 s pass;
// what came through `from`: a client's answer, written by a child.
std::string serve_until_closed(Compositor& c, int from) {
  std::string got;
  for (int i = 0; i < 3000; ++i) {
    if (!c.poll_input(10).ok()) break;
    pollfd p{from, POLLIN, 0};
    if (::poll(&p, 1, 0) != 1) continue;
    char buf[4096];
    const ssize_t n = ::read(from, buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, size_t(n));
  }
  return got;
}

TEST(DisplayControl, ProcessesCanopyVmmStartedCannotUseTheControlSocket) {
  for (bool protect : {true, false}) {
    SCOPED_TRACE(protect ? "refusing canopy-vmm's descendants" : "control: the uid alone decides");
    const std::string dir = "/tmp/canopy-display-control-test." + std::to_string(::getpid());
    ::mkdir(dir.c_str(), 0700);
    const std::string ctl = dir + "/control.sock";
    // "canopy-vmm": a child of this test that, once told, starts a "back-end" that asks the compositor
    // to quit and reports the answer through a pipe.
    int go[2], result[2];
    ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
    ASSERT_EQ(::pipe2(result, O_CLOEXEC), 0);
    const pid_t vmm = ::fork();
    ASSERT_GE(vmm, 0);
    if (vmm == 0) {
      char b;
      if (::read(go[0], &b, 1) != 1) _exit(1);
      const pid_t backend = ::fork();
      if (backend == 0) {
        // The compositor is served by the test's thread: no answer within 30 s is a hang guard.
        const std::string reply = ask_seqpacket(ctl, "quit", 30000);
        (void)!::write(result[1], reply.data(), reply.size());
        _exit(0);
      }
      int st = 0;
      (void)::waitpid(backend, &st, 0);
      _exit(0);
    }
    ::close(go[0]);
    ::close(result[1]);
    FakeClock clock;
    CompositorOptions o = with_control_socket(dir);
    if (protect) o.control_refuses_descendants_of = vmm;
    auto c = Compositor::create(one_output(), o, clock);
    ASSERT_TRUE(c.ok()) << c.error().what;
    ASSERT_EQ(::write(go[1], "g", 1), 1);
    // Serve until the back-end has its answer (the pipe closes when it and "canopy-vmm" are gone).
    const std::string reply = serve_until_closed(**c, result[0]);
    int st = 0;
    ASSERT_EQ(::waitpid(vmm, &st, 0), vmm);
    if (protect) {
      EXPECT_EQ(reply, "");  // closed unanswered
      EXPECT_FALSE((*c)->quit_requested());
      // The operator, not started by "canopy-vmm", is served.
      std::string stats;
      std::thread op([&] { stats = ask_seqpacket(ctl, "stats", 30000); });
      for (int i = 0; i < 3000 && stats.empty(); ++i) ASSERT_TRUE((*c)->poll_input(10).ok());
      op.join();
      EXPECT_EQ(stats.rfind("renderer ", 0), 0u) << stats;
    } else {
      EXPECT_EQ(reply, "ok\n");
      EXPECT_TRUE((*c)->quit_requested());
    }
    ::close(go[1]);
    ::close(result[0]);
    c->reset();
    ::rmdir(dir.c_str());
  }
}

// Only the operator may use the control socket: this process's uid, root, and the members of the
// operator group. A client of another uid in the group gets its stats; one outside it does not. Control:
// without the group, the same member is refused like anyone of another uid.
TEST(DisplayControl, TheOperatorGroupMayUseTheControlSocketOthersMayNot) {
  if (::geteuid() != 0) {
    if (std::getenv("CANOPY_NO_SKIP")) FAIL() << "needs root to run clients under other uids (CANOPY_NO_SKIP=1)";
    GTEST_SKIP() << "needs root to run clients under other uids";
  }
  constexpr gid_t kGroup = 0x7bf10;
  constexpr uid_t kMember = 0x7bf11, kOther = 0x7bf12;
  for (bool configured : {true, false}) {
    SCOPED_TRACE(configured ? "operator group" : "control: no operator group");
    const std::string dir = "/tmp/canopy-display-group-test." + std::to_string(::getpid());
    ::mkdir(dir.c_str(), 0755);
    const std::string ctl = dir + "/control.sock";
    FakeClock clock;
    CompositorOptions o = with_control_socket(dir);
    if (configured) o.control_group = kGroup;
    auto c = Compositor::create(one_output(), o, clock);
    ASSERT_TRUE(c.ok()) << c.error().what;
    // `stats` asked by a client running as `uid`, in the group or not, while the test's thread serves
    // the compositor; its answer ("" when refused).
    auto ask_as = [&](uid_t uid, bool member) {
      test_support::ChildAs child =
          test_support::start_as(uid, member ? std::vector<gid_t>{kGroup} : std::vector<gid_t>{},
                                 [&] { return ask_seqpacket(ctl, "stats", 5000); });
      if (child.pid < 0) return std::string("could not start a client");
      const std::string reply = serve_until_closed(**c, child.out);
      test_support::finish(child);
      return reply;
    };
    const std::string member = ask_as(kMember, true), other = ask_as(kOther, false);
    EXPECT_NE(other.rfind("renderer ", 0), 0u) << other;
    if (configured) {
      EXPECT_EQ(member.rfind("renderer ", 0), 0u) << "a member of the operator group: '" << member << "'";
    } else {
      EXPECT_NE(member.rfind("renderer ", 0), 0u) << member;
    }
    c->reset();
    ::unlink((dir + "/display.sock").c_str());
    ::rmdir(dir.c_str());
  }
}

}  // namespace
}  // namespace canopy::display
