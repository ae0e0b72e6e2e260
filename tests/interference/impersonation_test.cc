// Impersonation on the compositor's device side (docs/security.md, "Brokered connections"): a process
// that is not the cluster's back-end names itself "cluster" and sends a frame of its own.
//   - Control, without the broker (canopy-display --listen, as before canopy-vmm brokered): the name a
//     device declares is believed; the impostor evicts the real cluster's connection and its frame is
//     what the cluster output shows.
//   - With the broker: the cluster's connection is bound to "cluster" by canopy-vmm (an ADMIT on the
//     broker's service link). An IVI back-end whose brokered connection says HELLO "cluster", and a
//     process that connects to a listening socket beside it and says the same, are both turned away;
//     on every step of a virtual clock the cluster layer shows the cluster's pixels, with no frame
//     reused and no fallback, and the IVI's own brokered connection (with its own name) still works.
// The compositor runs in this process (pixman, virtual time): the packets are what is under test.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "canopy/base/clock.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/display/compositor.h"
#include "canopy/protocol/broker.h"
#include "canopy/protocol/scanout_channel.h"

namespace canopy::display {
namespace {

namespace ch = protocol::scanout;
namespace bk = protocol::broker;

constexpr uint32_t kClusterColour = 0x00c0ffee;
constexpr uint32_t kImpostorColour = 0x00bad0bd;
constexpr uint32_t kIviColour = 0x00123456;
constexpr int kSteps = 8;

Layout cockpit() {
  OutputSpec o;
  o.name = "cluster";
  o.width = 64;
  o.height = 32;
  o.criticality = Criticality::kSafety;
  LayerSpec c;
  c.vm = "cluster";
  c.dst = {0, 0, 64, 32};
  c.criticality = Criticality::kSafety;
  LayerSpec i;
  i.vm = "ivi";
  i.dst = {40, 8, 16, 16};
  i.z = 1;
  o.layers = {c, i};
  Layout l;
  l.outputs.push_back(o);
  return l;
}

// One device's side of a channel connection, speaking the protocol by hand: a 64x32 XRGB frame of one
// colour in a memfd of its own.
class Device {
 public:
  Device(UniqueFd sock, const std::string& hello_name, uint32_t colour) : sock_(std::move(sock)) {
    auto shm = buffers::SharedMemory::create("frame", 2 * 4096);
    EXPECT_TRUE(shm.ok());
    if (!shm.ok()) return;
    auto map = shm->map();
    EXPECT_TRUE(map.ok());
    if (!map.ok()) return;
    std::fill_n(reinterpret_cast<uint32_t*>(map->data()), 2 * 1024, colour);
    file_ = std::move(*shm);
    ok_ = send(ch::encode_hello(hello_name, 1));
    const ch::PieceRef piece{0, 0, 2 * 4096};
    const int fds[1] = {file_.fd()};
    auto pk = ch::encode_buffer(ch::buffer_key(1, 1), std::span<const ch::PieceRef>(&piece, 1), fds);
    ok_ = ok_ && pk.ok();
    if (pk.ok())
      for (const auto& p : *pk) ok_ = ok_ && send(p.bytes, p.fds);
  }
  // A new frame of the same buffer.
  bool frame() {
    ch::FrameMsg f{};
    f.buffer = ch::buffer_key(1, 1);
    f.seq = ++seq_;
    f.fourcc = uint32_t(buffers::Format::kXRGB8888);
    f.width = 64;
    f.height = 32;
    f.stride = 64 * 4;
    return send(ch::encode_frame(f, {}));
  }
  // The compositor closed the connection (packets it sent before, e.g. RELEASEs, are skipped).
  bool closed() {
    char b[256];
    for (;;) {
      const ssize_t n = ::recv(sock_.get(), b, sizeof b, MSG_DONTWAIT);
      if (n == 0) return true;
      if (n < 0) return errno != EAGAIN;
    }
  }
  bool ok() const { return ok_; }

 private:
  bool send(const std::vector<uint8_t>& p, std::span<const int> fds = {}) {
    return ch::send_packet(sock_.get(), p, fds).ok();
  }
  UniqueFd sock_;
  buffers::SharedMemory file_;
  uint64_t seq_ = 0;
  bool ok_ = false;
};

class Impersonation : public ::testing::Test {
 protected:
  // The compositor with a listening socket, and with the broker's service link when `brokered`, or
  // sockets per VM when `per_vm`.
  void start(bool brokered, bool per_vm = false) {
    dir_ = "/tmp/canopy-impersonation-test." + std::to_string(::getpid());
    ::mkdir(dir_.c_str(), 0700);
    CompositorOptions o;
    o.listen_path = dir_ + "/display.sock";
    if (per_vm) o.listen_dir = dir_;
    o.renderer = "pixman";
    if (brokered) {
      int sv[2];
      ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
      broker_ = UniqueFd(sv[0]);
      UniqueFd service(sv[1]);
      o.broker_fd = service.get();  // create() takes a duplicate
      auto c = Compositor::create(cockpit(), o, clock_);
      ASSERT_TRUE(c.ok()) << c.error().what;
      comp_ = std::move(*c);
    } else {
      auto c = Compositor::create(cockpit(), o, clock_);
      ASSERT_TRUE(c.ok()) << c.error().what;
      comp_ = std::move(*c);
    }
  }
  void TearDown() override {
    comp_.reset();
    ::unlink((dir_ + "/display.sock").c_str());
    ::rmdir(dir_.c_str());  // the compositor removed its per-VM sockets: rmdir fails otherwise
    EXPECT_NE(::access(dir_.c_str(), F_OK), 0) << "left in " << dir_;
  }
  // What canopy-vmm does for a back-end of `vm`: a new connection, the compositor's end admitted.
  UniqueFd admit(const std::string& vm, bk::Criticality c) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return {};
    UniqueFd service_end(sv[0]), device_end(sv[1]);
    auto a = bk::encode_admit(vm, bk::Service::kDisplay, c, ++serial_);
    if (!a.ok() || !bk::send(broker_.get(), *a, service_end.get()).ok()) return {};
    return device_end;
  }
  UniqueFd connect_listening(const std::string& name = "display") {
    UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const std::string path = dir_ + "/" + name + ".sock";
    std::memcpy(a.sun_path, path.c_str(), path.size());
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return {};
    return s;
  }
  void pump() {
    for (int i = 0; i < 8; ++i) ASSERT_TRUE(comp_->poll_input(1).ok());
  }
  // One step of the virtual clock: the next latch point, composed.
  const OutputStats& step() {
    clock_.set(std::max(clock_.now(), comp_->next_latch()));
    EXPECT_TRUE(comp_->compose_due().ok());
    return comp_->output_stats(0);
  }
  // `d` sends a frame, the compositor reads it and composes the next step; false when the send failed.
  bool frame_and_step(Device& d) {
    if (!d.frame()) return false;
    pump();
    step();
    return true;
  }
  uint32_t pixel(uint32_t x, uint32_t y) const {
    const Canvas& c = comp_->canvas(0);
    uint32_t v;
    std::memcpy(&v, c.data + size_t(y) * c.stride + x * 4, 4);
    return v & 0x00ffffff;
  }
  bool connected(const std::string& vm) const {
    for (const auto& c : comp_->connections())
      if (c.vm == vm && c.connected) return true;
    return false;
  }

  FakeClock clock_;
  std::string dir_;
  UniqueFd broker_;
  uint64_t serial_ = 0;
  std::unique_ptr<Compositor> comp_;
};

TEST_F(Impersonation, ControlWithoutTheBrokerTheClaimedNameEvictsTheCluster) {
  start(false);
  Device cluster(connect_listening(), "cluster", kClusterColour);
  ASSERT_TRUE(cluster.ok());
  ASSERT_TRUE(frame_and_step(cluster));
  ASSERT_EQ(pixel(0, 0), kClusterColour);

  Device impostor(connect_listening(), "cluster", kImpostorColour);
  ASSERT_TRUE(impostor.ok());
  ASSERT_TRUE(frame_and_step(impostor));
  // The attack works: the real cluster is cut off and the impostor's pixels are the cluster's picture.
  EXPECT_TRUE(cluster.closed());
  EXPECT_FALSE(impostor.closed());
  EXPECT_EQ(pixel(0, 0), kImpostorColour);
}

TEST_F(Impersonation, BrokeredConnectionsCannotBeClaimedByAnotherVmOrAnUnbrokeredPeer) {
  start(true);
  Device cluster(admit("cluster", bk::Criticality::kSafety), "cluster", kClusterColour);
  Device ivi(admit("ivi", bk::Criticality::kNormal), "ivi", kIviColour);
  ASSERT_TRUE(cluster.ok() && ivi.ok());
  ASSERT_TRUE(cluster.frame() && ivi.frame());
  pump();
  step();
  ASSERT_EQ(pixel(0, 0), kClusterColour);
  ASSERT_EQ(pixel(44, 12), kIviColour);  // the IVI's inset: its own name on its own connection is fine
  const LayerStats before = comp_->output_stats(0).layers[0];

  // A taken-over IVI back-end asks canopy-vmm for a connection (bound to "ivi") and says it is the
  // cluster; a process beside it connects to the listening socket and says the same.
  Device bound_impostor(admit("ivi", bk::Criticality::kNormal), "cluster", kImpostorColour);
  Device listening_impostor(connect_listening(), "cluster", kImpostorColour);
  for (int i = 0; i < kSteps; ++i) {
    SCOPED_TRACE("step " + std::to_string(i));
    ASSERT_TRUE(cluster.frame());
    (void)bound_impostor.frame();
    (void)listening_impostor.frame();
    pump();
    const OutputStats& st = step();
    EXPECT_EQ(pixel(0, 0), kClusterColour);
    EXPECT_EQ(pixel(20, 20), kClusterColour);
    EXPECT_EQ(st.layers[0].reused, before.reused);  // a new cluster frame at every step
    EXPECT_EQ(st.layers[0].fallback_entries, before.fallback_entries);
    EXPECT_FALSE(st.layers[0].fallback);
  }
  EXPECT_TRUE(bound_impostor.closed());
  EXPECT_TRUE(listening_impostor.closed());
  EXPECT_FALSE(cluster.closed());
  EXPECT_TRUE(connected("cluster"));
  for (const auto& c : comp_->connections())
    if (c.vm == "cluster" && c.connected) {
      EXPECT_TRUE(c.brokered);
      EXPECT_EQ(c.criticality, "safety");
    }
  // The impostor on the IVI's brokered link replaced nothing of the IVI's either: it never said a name
  // the compositor took.
  EXPECT_TRUE(connected("ivi"));
}

// Desktop use without canopy-vmm (canopy-display --listen-dir): a socket per VM, each binding its
// connections to that VM. The IVI's socket cannot be used to claim the cluster, nor can the shared one.
// (What this guarantees less than the broker: anyone who may open DIR/cluster.sock is the cluster; the
// socket's owner and mode decide who that is.)
TEST_F(Impersonation, PerVmSocketsBindTheirVm) {
  start(false, true);
  struct stat st{};
  ASSERT_EQ(::stat((dir_ + "/cluster.sock").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  Device cluster(connect_listening("cluster"), "cluster", kClusterColour);
  Device ivi(connect_listening("ivi"), "ivi", kIviColour);
  ASSERT_TRUE(cluster.ok() && ivi.ok());
  ASSERT_TRUE(cluster.frame() && ivi.frame());
  pump();
  step();
  ASSERT_EQ(pixel(0, 0), kClusterColour);
  ASSERT_EQ(pixel(44, 12), kIviColour);
  const LayerStats before = comp_->output_stats(0).layers[0];
  Device via_ivi_socket(connect_listening("ivi"), "cluster", kImpostorColour);
  Device via_shared_socket(connect_listening(), "cluster", kImpostorColour);
  for (int i = 0; i < kSteps; ++i) {
    SCOPED_TRACE("step " + std::to_string(i));
    ASSERT_TRUE(cluster.frame());
    (void)via_ivi_socket.frame();
    (void)via_shared_socket.frame();
    pump();
    const OutputStats& s = step();
    EXPECT_EQ(pixel(0, 0), kClusterColour);
    EXPECT_EQ(s.layers[0].reused, before.reused);
    EXPECT_EQ(s.layers[0].fallback_entries, before.fallback_entries);
  }
  EXPECT_TRUE(via_ivi_socket.closed());
  EXPECT_TRUE(via_shared_socket.closed());
  EXPECT_FALSE(cluster.closed());
  EXPECT_TRUE(connected("ivi"));
}

// Attacks while the cluster's back-end restarts (its connection gone, the new one not there yet): an
// IVI back-end's brokered connection and a process on the listening socket both say "cluster". Neither
// is taken: on every step the cluster layer shows the cluster's last picture or the fallback, never the
// impostor's, and the restarted back-end's brokered connection is the cluster again. Control, without
// the broker: in the same gap the listening impostor becomes the cluster.
TEST_F(Impersonation, WhileTheClustersBackEndRestartsNobodyElseTakesItsName) {
  for (bool brokered : {true, false}) {
    SCOPED_TRACE(brokered ? "brokered" : "control: without the broker");
    start(brokered);
    auto cluster_link = [&] { return brokered ? admit("cluster", bk::Criticality::kSafety) : connect_listening(); };
    {
      Device cluster(cluster_link(), "cluster", kClusterColour);
      ASSERT_TRUE(cluster.ok());
      ASSERT_TRUE(frame_and_step(cluster));
      ASSERT_EQ(pixel(0, 0), kClusterColour);
    }  // the back-end dies: its connection closes
    pump();
    std::vector<Device> impostors;
    if (brokered) impostors.emplace_back(admit("ivi", bk::Criticality::kNormal), "cluster", kImpostorColour);
    impostors.emplace_back(connect_listening(), "cluster", kImpostorColour);
    bool impostor_shown = false;
    for (int i = 0; i < kSteps; ++i) {
      for (auto& d : impostors) (void)d.frame();
      pump();
      step();
      impostor_shown |= pixel(0, 0) == kImpostorColour;
    }
    if (!brokered) {
      EXPECT_TRUE(impostor_shown) << "control: the impostor's pixels became the cluster's picture";
      comp_.reset();
      TearDown();
      continue;
    }
    EXPECT_FALSE(impostor_shown);
    for (auto& d : impostors) EXPECT_TRUE(d.closed());
    EXPECT_FALSE(connected("cluster"));
    // The back-end is back: a new brokered connection is the cluster.
    Device restarted(cluster_link(), "cluster", kClusterColour);
    ASSERT_TRUE(restarted.ok());
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(frame_and_step(restarted));
    EXPECT_EQ(pixel(0, 0), kClusterColour);
    EXPECT_FALSE(restarted.closed());
    EXPECT_TRUE(connected("cluster"));
    comp_.reset();
    TearDown();
  }
}

// The broker link ending (canopy-vmm gone) closes nothing that was made through it.
TEST_F(Impersonation, ConnectionsOutliveTheBrokerLink) {
  start(true);
  Device cluster(admit("cluster", bk::Criticality::kSafety), "cluster", kClusterColour);
  ASSERT_TRUE(cluster.ok());
  broker_.reset();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(frame_and_step(cluster));
    EXPECT_EQ(pixel(0, 0), kClusterColour);
  }
  EXPECT_FALSE(cluster.closed());
}

}  // namespace
}  // namespace canopy::display
