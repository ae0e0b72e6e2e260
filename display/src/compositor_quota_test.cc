// The compositor's per-VM quotas (Quotas in compositor.h) against the attacks they stop, each beside a
// control run without the quota that shows the attack works: a VM that maps scattered pages until the
// process runs out of memory mappings, one that makes the compositor hold descriptors, and connections
// that never say HELLO. In each, the cluster beside the attacker keeps connecting, mapping and showing its
// frames. Virtual time; pixman (the packet handling is under test, not the renderer).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "canopy/base/sanitizer.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/display/compositor.h"
#include "canopy/protocol/scanout_channel.h"

namespace canopy::display {
namespace {

namespace ch = canopy::protocol::scanout;

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

// Memory mappings this process holds now, and the most it may.
size_t mappings_now() {
  std::ifstream maps("/proc/self/maps");
  size_t n = 0;
  for (std::string line; std::getline(maps, line);) ++n;
  return n;
}
size_t max_map_count() {
  std::ifstream f("/proc/sys/vm/max_map_count");
  size_t v = 65530;
  f >> v;
  return v;
}

// A device connection speaking the channel by hand.
class Device {
 public:
  Device(const std::string& path, const std::string& vm, bool hello = true) {
    sock_ = UniqueFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), path.size());
    connected_ = ::connect(sock_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (hello) send(ch::encode_hello(vm, 1));
  }
  bool send(const std::vector<uint8_t>& p, std::span<const int> fds = {}) {
    return ch::send_packet(sock_.get(), p, fds).ok();
  }
  // Buffer `resource` of `pages` pages of `file` from `first_page` on, every other page (so no two pieces
  // are adjacent in the file and none of their mappings can merge).
  bool scattered(uint32_t resource, int file, uint32_t pages, uint64_t first_page = 0) {
    std::vector<ch::PieceRef> pieces;
    for (uint32_t i = 0; i < pages; ++i) pieces.push_back({0, (first_page + 2 * uint64_t(i)) * 4096, 4096});
    const int fds[1] = {file};
    auto pk = ch::encode_buffer(ch::buffer_key(resource, 1), pieces, fds);
    if (!pk.ok()) return false;
    for (const auto& p : *pk)
      if (!send(p.bytes, p.fds)) return false;
    return true;
  }
  bool frame(uint32_t resource, uint32_t w, uint32_t h) {
    ch::FrameMsg f{};
    f.buffer = ch::buffer_key(resource, 1);
    f.seq = ++seq_;
    f.fourcc = uint32_t(buffers::Format::kXRGB8888);
    f.width = w;
    f.height = h;
    f.stride = w * 4;
    return send(ch::encode_frame(f, {}));
  }
  bool closed() {
    char b[256];
    for (;;) {
      const ssize_t n = ::recv(sock_.get(), b, sizeof b, MSG_DONTWAIT);
      if (n == 0) return true;
      if (n < 0) return errno != EAGAIN;
    }
  }
  bool connected() const { return connected_; }

 private:
  UniqueFd sock_;
  bool connected_ = false;
  uint64_t seq_ = 0;
};

class Quota : public ::testing::Test {
 protected:
  // per_vm: a socket per VM the layout shows in the test's folder (listen_dir), its connections bound
  // to that VM; else one trusting socket, sock().
  void start(Quotas q, bool per_vm = false) {
    dir_ = "/tmp/canopy-quota-test." + std::to_string(::getpid());
    ::mkdir(dir_.c_str(), 0700);
    CompositorOptions o;
    if (per_vm) o.listen_dir = dir_;
    else o.listen_path = dir_ + "/display.sock";
    o.renderer = "pixman";
    o.quotas = q;
    auto c = Compositor::create(cockpit(), o, clock);
    ASSERT_TRUE(c.ok()) << c.error().what;
    comp = std::move(*c);
    // The cluster's pixels: a 64x32 frame in a memfd; the attacker's file: sparse and large.
    auto shm = buffers::SharedMemory::create("cluster", 2 * kClusterPieces * 4096);
    ASSERT_TRUE(shm.ok());
    auto map = shm->map();
    ASSERT_TRUE(map.ok());
    // The frame shown is the view's first 8 KiB: pieces 0 and 1, the file's pages 0 and 2.
    for (size_t i = 0; i < 3 * 1024; ++i) reinterpret_cast<uint32_t*>(map->data())[i] = 0x00c0ffee;
    cluster_file = std::move(*shm);
    auto big = buffers::SharedMemory::create("attacker", uint64_t(1) << 31);
    ASSERT_TRUE(big.ok());
    attacker_file = std::move(*big);
  }
  void TearDown() override {
    comp.reset();
    for (const char* s : {"/display.sock", "/cluster.sock", "/ivi.sock"}) ::unlink((dir_ + s).c_str());
    ::rmdir(dir_.c_str());
  }
  std::string sock() const { return dir_ + "/display.sock"; }
  void pump() {
    for (int i = 0; i < 8; ++i) ASSERT_TRUE(comp->poll_input(1).ok());
  }
  const OutputStats& refresh() {
    clock.set(std::max(clock.now(), comp->next_latch()));
    EXPECT_TRUE(comp->compose_due().ok());
    return comp->output_stats(0);
  }
  uint32_t pixel(uint32_t x, uint32_t y) const {
    const Canvas& c = comp->canvas(0);
    uint32_t v;
    std::memcpy(&v, c.data + size_t(y) * c.stride + x * 4, 4);
    return v & 0x00ffffff;
  }
  const ConnectionStats* conn(const std::string& vm) {
    stats_ = comp->connections();
    for (const auto& c : stats_)
      if (c.vm == vm && c.connected) return &c;
    return nullptr;
  }
  // The cluster defines a buffer of kClusterPieces scattered pages (as a guest's blob may be: a 1920x1080
  // frame is 2025 pages) and shows a 64x32 frame of it; true when it is on screen at the next refresh.
  // (Fewer in sanitizer builds, whose mapping budget is smaller: see the mapping test.)
  static constexpr size_t kClusterPieces = kThreadSanitizer || kAddressSanitizer ? 512 : 8192;
  bool cluster_shows(Device& cluster, uint32_t resource) {
    if (!cluster.scattered(resource, cluster_file.fd(), uint32_t(kClusterPieces)) || !cluster.frame(resource, 64, 32))
      return false;
    pump();
    refresh();
    return conn("cluster") != nullptr && pixel(0, 0) == 0xc0ffee;
  }

  FakeClock clock;
  std::string dir_;
  std::unique_ptr<Compositor> comp;
  buffers::SharedMemory cluster_file, attacker_file;
  std::vector<ConnectionStats> stats_;
};

// The IVI maps scattered single pages until the process has almost no memory mapping left. Without a
// quota (control) it gets them, and the cluster's next buffer cannot be mapped: its connection is
// dropped. With the default quota the IVI is stopped at its share and the cluster maps and shows.
//
// In sanitizer builds only the protected run, with a budget of 4000 mappings: their runtimes map memory
// of their own at moments of their choosing (TSan for each mapping the process makes, ASan for its
// allocator and quarantine), so a process without a mapping left (the control) kills the runtime, and
// the default budget, made for the process alone, leaves it too little. The control runs in the release
// build (CI's unit tier runs both).
TEST_F(Quota, ScatteredPagesCannotExhaustTheMappingsTheClusterNeeds) {
  constexpr bool kSanitized = kThreadSanitizer || kAddressSanitizer;
  for (bool protect : {false, true}) {
    if (kSanitized && !protect) continue;
    SCOPED_TRACE(protect ? "with the mapping quota" : "control: no quota");
    Quotas q;
    if (!protect) q.mappings = uint64_t(1) << 40;
    if (kSanitized) q.mappings = 4000;
    start(q);
    Device cluster(sock(), "cluster"), ivi(sock(), "ivi");
    ASSERT_TRUE(cluster_shows(cluster, 1));
    // What is left of the process's mappings, less 4096 (what the cluster's next buffer needs is twice
    // that; a sanitizer's runtime maps and splits mappings of its own): the IVI takes it in buffers of
    // 16000.
    const size_t left = max_map_count() - mappings_now() - kClusterPieces / 2;
    uint32_t resource = 1;
    uint64_t page = 0;
    for (size_t taken = 0; taken < left;) {
      const uint32_t n = uint32_t(std::min<size_t>(16000, left - taken - 1));
      if (n == 0) break;
      ASSERT_TRUE(ivi.scattered(resource++, attacker_file.fd(), n, page));
      page += 2 * uint64_t(n);
      taken += n + 1;
      pump();
      if (ivi.closed()) break;
    }
    const bool ivi_stopped = ivi.closed();
    EXPECT_EQ(ivi_stopped, protect) << "the IVI is refused at its quota, and only with one";
    // The cluster's back-end restarts (or the guest allocates its next buffer): a new buffer to map.
    Device cluster2(sock(), "cluster");
    const bool shows = cluster_shows(cluster2, 2);
    EXPECT_EQ(shows, protect) << "the cluster maps its new buffer only when the IVI was stopped";
    if (protect) {
      const auto* c = conn("cluster");
      ASSERT_NE(c, nullptr);
      EXPECT_GE(c->mapping_quota, kSanitized ? 1500u : 10000u);
      EXPECT_LE(c->mappings, c->mapping_quota);
      const auto& st = refresh();
      EXPECT_FALSE(st.layers[0].fallback);
    }
    comp.reset();
  }
}

// A BUFFER that is never completed makes the compositor hold its descriptors until it is. Without a cap
// (control) the IVI makes it hold as many as it sends (at EMFILE a restarting cluster back-end could not
// reconnect); with the default quota the IVI is closed at 64 and the cluster connects and shows.
TEST_F(Quota, BuffersNeverCompletedCannotMakeTheCompositorHoldDescriptors) {
  for (bool protect : {false, true}) {
    SCOPED_TRACE(protect ? "with the descriptor quota" : "control: no quota");
    Quotas q;
    if (!protect) q.descriptors_per_connection = size_t(1) << 30;
    start(q);
    Device ivi(sock(), "ivi");
    // One buffer of 65536 pieces, 8 new files per packet, never finished.
    for (uint32_t packet = 0; packet < 12 && !ivi.closed(); ++packet) {
      std::vector<buffers::SharedMemory> files;
      std::vector<int> fds;
      std::vector<uint8_t> body(sizeof(ch::BufferHdr) + 8 * sizeof(ch::Piece));
      ch::BufferHdr h{};
      h.key = ch::buffer_key(9, 1);
      h.first_piece = packet * 8;
      h.total_pieces = 65536;
      h.num_pieces = 8;
      std::memcpy(body.data(), &h, sizeof h);
      for (uint32_t i = 0; i < 8; ++i) {
        auto f = buffers::SharedMemory::create("attacker", 4096);
        ASSERT_TRUE(f.ok());
        fds.push_back(f->fd());
        files.push_back(std::move(*f));
        ch::Piece p{};
        p.fd_index = i;
        p.pages = 1;
        std::memcpy(body.data() + sizeof h + i * sizeof p, &p, sizeof p);
      }
      ASSERT_TRUE(ivi.send(ch::encode(ch::Type::kBuffer, body), fds));
      pump();
    }
    if (protect) {
      EXPECT_TRUE(ivi.closed()) << "closed at its quota";
      EXPECT_EQ(conn("ivi"), nullptr);
    } else {
      EXPECT_FALSE(ivi.closed());
      const auto* c = conn("ivi");
      ASSERT_NE(c, nullptr);
      EXPECT_EQ(c->descriptors, 96u) << "control: every descriptor it sent is held";
    }
    Device cluster(sock(), "cluster");
    EXPECT_TRUE(cluster_shows(cluster, 1));
    comp.reset();
  }
}

// Connections that never say HELLO take the compositor's connection slots. Within the deadline (the
// control) the cluster's back-end cannot connect; once the deadline has passed on the compositor's clock
// they are closed and it can.
TEST_F(Quota, ConnectionsThatNeverSayHelloAreClosedAtTheDeadline) {
  start(Quotas{});
  std::vector<std::unique_ptr<Device>> silent;
  for (size_t i = 0; i < kMaxConnections; ++i) silent.push_back(std::make_unique<Device>(sock(), "", false));
  pump();
  {
    Device cluster(sock(), "cluster");
    pump();
    EXPECT_EQ(conn("cluster"), nullptr) << "control: every slot taken by a silent connection";
  }
  clock.advance(Quotas{}.hello_deadline + std::chrono::milliseconds(1));
  pump();
  for (auto& s : silent) EXPECT_TRUE(s->closed());
  Device cluster(sock(), "cluster");
  EXPECT_TRUE(cluster_shows(cluster, 1));
}

// Connections bound to a VM (its own socket, or the broker's) have slots of that VM's own
// (kMaxConnectionsPerVm): the IVI's connections that never say HELLO are turned away beyond its 4, and
// the cluster's restarted back-end connects and shows at once. Control: on the one trusting socket
// every connection shares the 16 slots, and the silent ones keep the cluster out (until the deadline).
TEST_F(Quota, SilentConnectionsOfOneVmCannotTakeTheClustersSlots) {
  for (bool per_vm : {false, true}) {
    SCOPED_TRACE(per_vm ? "per-VM sockets" : "control: one trusting socket");
    start(Quotas{}, per_vm);
    std::vector<std::unique_ptr<Device>> silent;
    for (size_t i = 0; i < kMaxConnections; ++i)
      silent.push_back(std::make_unique<Device>(per_vm ? dir_ + "/ivi.sock" : sock(), "", false));
    pump();
    size_t turned_away = 0;
    for (auto& s : silent) turned_away += s->connected() && s->closed() ? 1 : 0;
    EXPECT_EQ(turned_away, per_vm ? kMaxConnections - kMaxConnectionsPerVm : 0u);
    Device cluster(per_vm ? dir_ + "/cluster.sock" : sock(), "cluster");
    EXPECT_EQ(cluster_shows(cluster, 1), per_vm);
    comp.reset();
  }
}

// The process's descriptor table is full (other VMs' buffers, a small limit): a new connection cannot be
// taken. It is turned away (its peer sees the connection closed) instead of staying in the backlog, where
// it kept the listening socket readable and the loop spinning on it; once descriptors are free again the
// cluster connects. (Without the spare descriptor the connection stays pending: `closed()` is false.)
TEST_F(Quota, AFullDescriptorTableTurnsConnectionsAwayInsteadOfSpinning) {
  start(Quotas{});
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  Device ivi(sock(), "ivi");
  pump();
  ASSERT_NE(conn("ivi"), nullptr);
  Device late(sock(), "late");  // connected; the compositor has not taken it yet
  // Every descriptor number up to the highest in use taken (the holes filled), and the limit just above.
  int top = 0;
  for (int fd = 0; fd < int(std::min<rlim_t>(old.rlim_cur, 1 << 16)); ++fd)
    if (::fcntl(fd, F_GETFD) >= 0) top = fd;
  std::vector<UniqueFd> fillers;
  for (int fd = 0; fd < top; ++fd)
    if (::fcntl(fd, F_GETFD) < 0) fillers.emplace_back(::fcntl(top, F_DUPFD_CLOEXEC, fd));
  rlimit low = old;
  low.rlim_cur = rlim_t(top + 1);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  pump();
  const bool turned_away = late.closed();
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);
  fillers.clear();
  EXPECT_TRUE(late.connected());
  EXPECT_TRUE(turned_away);
  EXPECT_EQ(conn("late"), nullptr);
  Device cluster(sock(), "cluster");
  EXPECT_TRUE(cluster_shows(cluster, 1));
  EXPECT_NE(conn("ivi"), nullptr) << "the others' connections are not touched";
}

}  // namespace
}  // namespace canopy::display
