// Impersonation against running processes, checked frame by frame (docs/security.md): canopy-display
// runs with a stepped clock (--stepped: time moves only when the test asks `step` on its control
// socket), canopy-display-feed stands in for the cluster's GPU back-end (a picture of one colour), and
// a second canopy-display-feed, the impostor, says it is the cluster in a colour of its own.
//   - Per-VM sockets (--listen-dir): the impostor on the IVI's socket is turned away; on each of the
//     steps after its attempt the cluster layer's picture (the CRC-32 of its rectangle, as canopy-display
//     reports it) is the one it showed before, and the layer never enters the fallback.
//   - Control, one trusting socket (--listen): the impostor evicts the cluster and its picture becomes
//     the cluster layer's.
// And exhaustion: the IVI's own connection at each of canopy-display's quotas (descriptors, mappings,
// connection slots), the cluster driven by the test a frame per step, canopy-display's holdings measured
// from /proc on every step against the caps docs/display.md states.
// Every wait is for an event (a step's answer, a process's exit) with a hang guard, never for a time.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "canopy/base/crc32.h"
#include "canopy/base/sanitizer.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/protocol/scanout_channel.h"
#include "canopy/test_support/seqpacket.h"
#include "canopy/test_support/vmm.h"

extern char** environ;

namespace canopy {
namespace {

const std::string kBin = CANOPY_BIN_DIR;

// A process of the test's, killed and reaped when it goes out of scope.
class Process {
 public:
  explicit Process(std::vector<std::string> argv, const std::string& log) {
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    if (posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  // Whether it has exited (reaped); its status in `status`.
  bool exited(int* status = nullptr) {
    if (exited_) return true;
    int st = 0;
    if (pid_ > 0 && ::waitpid(pid_, &st, WNOHANG) == pid_) {
      exited_ = true;
      status_ = st;
    }
    if (status) *status = status_;
    return exited_;
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = 0;
};

// One request on canopy-display's control socket; the answer (30 s hang guard), once canopy-display
// has closed the connection (so that a count of its descriptors taken next does not include it).
std::string ask(const std::string& path, const std::string& req) {
  std::string answer = test_support::ask_seqpacket(path, req, 30000, true);
  EXPECT_NE(answer.rfind("not closed", 0), 0u) << "canopy-display kept the connection of `" << req << "` open";
  return answer;
}

// A step's line for a layer: field -> value ("crc", "new", "reused", "fallback_entries", "fallback").
std::map<std::string, std::string> layer_of(const std::string& report, const std::string& prefix) {
  std::map<std::string, std::string> f;
  std::istringstream in(report);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix + " ", 0) != 0) continue;
    std::istringstream words(line.substr(prefix.size() + 1));
    for (std::string w; words >> w;)
      if (const auto eq = w.find('='); eq != std::string::npos) f[w.substr(0, eq)] = w.substr(eq + 1);
  }
  return f;
}

// The CRC a 64x32 layer of one colour has on the canvas (XRGB8888 in memory: B, G, R, X), as the
// step report writes it.
std::string solid_crc(uint32_t rgb, uint8_t x) {
  std::vector<uint32_t> px(64 * 32, (uint32_t(x) << 24) | rgb);
  char hex[16];
  std::snprintf(hex, sizeof hex, "%08x", image_crc32(reinterpret_cast<const uint8_t*>(px.data()), 64 * 4, 32, 64 * 4));
  return hex;
}

bool wait_for(const std::function<bool()>& pred, int timeout_ms = 30000) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    ::poll(nullptr, 0, 10);
  }
  return true;
}

// The two VMs of the cockpits below (the compositor reads only their names, criticality and scanouts).
const std::string kCockpitVms =
    "[[vm]]\nname = \"cluster\"\nbackend = \"partition\"\nmemory = \"32M\"\ncriticality = \"safety\"\n"
    "app = \"none\"\n[vm.gpu]\nscanouts = [{ width = 64, height = 32 }]\n"
    "[[vm]]\nname = \"ivi\"\nbackend = \"partition\"\nmemory = \"32M\"\napp = \"none\"\n"
    "[vm.gpu]\nscanouts = [{ width = 64, height = 32 }]\n";

// A test's folder with its manifest (cockpit.toml), the processes' log and canopy-display's control
// socket; on the way out, also after an ASSERT, the log when something failed, and the folder removed.
struct TestDir {
  std::string dir = made();
  std::string log = dir + "/log.txt", ctl = dir + "/display.ctl";
  explicit TestDir(const std::string& manifest) { std::ofstream(dir + "/cockpit.toml") << manifest; }
  static std::string made() {
    char tmpl[] = "/tmp/canopy-stepped-test.XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    EXPECT_NE(d, nullptr);
    return d ? d : "/nonexistent";
  }
  ~TestDir() {
    if (::testing::Test::HasFailure()) {
      std::ifstream in(log);
      std::stringstream ss;
      ss << in.rdbuf();
      std::fprintf(stderr, "--- log ---\n%s\n", ss.str().c_str());
    }
    std::system(("rm -rf " + dir).c_str());
  }
  TestDir(const TestDir&) = delete;
  TestDir& operator=(const TestDir&) = delete;
};

TEST(SteppedCockpit, AnImpostorProcessNeverChangesTheClustersPicture) {
  for (bool per_vm : {true, false}) {
    SCOPED_TRACE(per_vm ? "per-VM sockets" : "control: one trusting socket");
    const TestDir d(kCockpitVms +
                    "[[display]]\nname = \"cluster\"\nwidth = 64\nheight = 32\nrefresh_hz = 60\n"
                    "[[layout]]\ndisplay = \"cluster\"\nvm = \"cluster\"\nwidth = 64\nheight = 32\n"
                    "[[layout]]\ndisplay = \"cluster\"\nvm = \"ivi\"\nx = 40\ny = 8\nwidth = 16\nheight = 16\nz = 1\n");
    const std::string &dir = d.dir, &log = d.log, &ctl = d.ctl;
    {
      std::vector<std::string> display = {kBin + "/canopy-display",
                                          dir + "/cockpit.toml",
                                          "--control",
                                          ctl,
                                          "--output",
                                          "headless",
                                          "--renderer",
                                          "pixman",
                                          "--stepped",
                                          "--quiet"};
      if (per_vm) display.insert(display.end(), {"--listen-dir", dir});
      else display.insert(display.end(), {"--listen", dir + "/display.sock"});
      Process compositor(display, log);
      ASSERT_TRUE(compositor.started());
      ASSERT_TRUE(wait_for([&] { return ::access(ctl.c_str(), F_OK) == 0; })) << "no control socket";
      const std::string cluster_socket = per_vm ? dir + "/cluster.sock" : dir + "/display.sock";
      const std::string impostor_socket = per_vm ? dir + "/ivi.sock" : dir + "/display.sock";
      Process cluster({kBin + "/canopy-display-feed", "--socket", cluster_socket, "--vm", "cluster", "--size", "64x32",
                       "--colour", "c0ffee"},
                      log);
      // The cluster's picture: what the layer shows once its first frame is there.
      std::map<std::string, std::string> before;
      ASSERT_TRUE(wait_for([&] {
        before = layer_of(ask(ctl, "step"), "layer cluster cluster/0");
        return before.count("new") && before["new"] != "0";
      })) << "the cluster's frames never reached the layer";
      const std::string picture = before["crc"];
      // It is the feed's colour, whole: with the X byte the canvas keeps (0x00 or 0xff).
      int x_byte = -1;
      for (int x : {0x00, 0xff})
        if (picture == solid_crc(0xc0ffee, uint8_t(x))) x_byte = x;
      ASSERT_GE(x_byte, 0) << "the cluster layer does not show the cluster's colour: " << picture;

      Process impostor({kBin + "/canopy-display-feed", "--socket", impostor_socket, "--vm", "cluster", "--size",
                        "64x32", "--colour", "bad0bd"},
                       log);
      if (per_vm) {
        // Turned away: its connection is closed, and it ends.
        int st = 0;
        ASSERT_TRUE(wait_for([&] { return impostor.exited(&st); })) << "the impostor was not turned away";
        EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1);
        for (int i = 0; i < 8; ++i) {
          SCOPED_TRACE("step " + std::to_string(i));
          auto now = layer_of(ask(ctl, "step"), "layer cluster cluster/0");
          EXPECT_EQ(now["crc"], picture);
          EXPECT_EQ(now["fallback_entries"], before["fallback_entries"]);
          EXPECT_EQ(now["fallback"], "0");
        }
        EXPECT_FALSE(cluster.exited()) << "the cluster's connection was cut";
      } else {
        // The attack works: the layer's picture becomes the impostor's.
        EXPECT_TRUE(wait_for([&] {
          auto now = layer_of(ask(ctl, "step"), "layer cluster cluster/0");
          return now["crc"] == solid_crc(0xbad0bd, uint8_t(x_byte)) && now["fallback"] == "0";
        })) << "control: the impostor's picture never became the cluster's";
        EXPECT_TRUE(wait_for([&] { return cluster.exited(); })) << "control: the cluster was not evicted";
      }
      EXPECT_EQ(ask(ctl, "quit"), "ok\n");
      int st = 0;
      EXPECT_TRUE(wait_for([&] { return compositor.exited(&st); }));
    }
  }
}

namespace ch = canopy::protocol::scanout;

// A device connection the test speaks by hand on the scanout channel: the cluster (one buffer of one
// colour, a FRAME of it sent before each step, so each step has exactly one new cluster frame) or an
// attacker.
class ChannelDevice {
 public:
  ChannelDevice(const std::string& path, const std::string& vm, bool hello = true) {
    sock_ = UniqueFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), std::min(path.size(), sizeof a.sun_path - 1));
    connected_ = ::connect(sock_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (hello) connected_ = connected_ && send(ch::encode_hello(vm, 1));
  }
  bool connected() const { return connected_; }
  bool send(const std::vector<uint8_t>& p, std::span<const int> fds = {}) {
    return ch::send_packet(sock_.get(), p, fds).ok();
  }
  // Scanout 0 of w x h, and buffer 1: a memfd of that many pixels of `rgb`.
  bool show(uint32_t w, uint32_t h, uint32_t rgb) {
    w_ = w;
    h_ = h;
    auto shm = buffers::SharedMemory::create("cluster", (uint64_t(w) * h * 4 + 4095) & ~uint64_t(4095));
    if (!shm.ok()) return false;
    {
      auto map = shm->map(buffers::Access::kReadWrite);
      if (!map.ok()) return false;
      for (size_t i = 0; i < size_t(w) * h; ++i) reinterpret_cast<uint32_t*>(map->data())[i] = 0xff000000u | rgb;
    }
    file_ = std::move(*shm);
    ch::ScanoutMsg so{};
    so.enabled = 1;
    so.width = w;
    so.height = h;
    const ch::PieceRef piece{0, 0, file_.size()};
    const int fds[1] = {file_.fd()};
    auto buf = ch::encode_buffer(ch::buffer_key(1, 1), {&piece, 1}, fds);
    return buf.ok() && send(ch::encode(ch::Type::kScanout, so)) && send((*buf)[0].bytes, (*buf)[0].fds);
  }
  // The next frame of buffer 1; RELEASEs taken as they came.
  bool frame() {
    ch::FrameMsg f{};
    f.buffer = ch::buffer_key(1, 1);
    f.seq = ++seq_;
    f.fourcc = 0x34325258;  // XRGB8888
    f.width = w_;
    f.height = h_;
    f.stride = w_ * 4;
    f.flags = ch::kFrameBlob;
    return !closed() && send(ch::encode_frame(f, {}));
  }
  // Buffer `resource`: `pieces` single pages of `file`, every other page from page `first` on (no two
  // adjacent in the file, so none of their mappings can merge).
  bool scattered(uint32_t resource, int file, uint32_t pieces, uint64_t first) {
    std::vector<ch::PieceRef> refs;
    for (uint32_t i = 0; i < pieces; ++i) refs.push_back({0, (first + 2 * uint64_t(i)) * 4096, 4096});
    const int fds[1] = {file};
    auto pk = ch::encode_buffer(ch::buffer_key(resource, 1), refs, fds);
    if (!pk.ok()) return false;
    for (const auto& p : *pk)
      if (!send(p.bytes, p.fds)) return false;
    return true;
  }
  // Whether the compositor closed the connection (what it sent meanwhile is read and dropped).
  bool closed() {
    char b[4096];
    for (;;) {
      const ssize_t n = ::recv(sock_.get(), b, sizeof b, MSG_DONTWAIT);
      if (n == 0) return true;
      if (n < 0) return errno != EAGAIN && errno != EWOULDBLOCK;
    }
  }

 private:
  UniqueFd sock_;
  bool connected_ = false;
  buffers::SharedMemory file_;
  uint32_t w_ = 0, h_ = 0;
  uint64_t seq_ = 0;
};

// What a process holds, from /proc: descriptors, memory mappings, the bytes mapped of memfds named
// `file` and its resident memory.
struct Held {
  size_t fds = 0, mappings = 0;
  uint64_t file_bytes = 0, rss_kib = 0;
};
Held held_by(pid_t pid, const std::string& file) {
  Held h;
  const std::string proc = "/proc/" + std::to_string(pid);
  if (DIR* d = ::opendir((proc + "/fd").c_str())) {
    while (const dirent* e = ::readdir(d)) h.fds += e->d_name[0] != '.';
    ::closedir(d);
  }
  std::ifstream maps(proc + "/maps");
  for (std::string line; std::getline(maps, line);) {
    ++h.mappings;
    unsigned long long lo = 0, hi = 0;
    if (line.find("/memfd:" + file + " ") != std::string::npos && std::sscanf(line.c_str(), "%llx-%llx", &lo, &hi) == 2)
      h.file_bytes += hi - lo;
  }
  std::ifstream status(proc + "/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmRSS:", 0) == 0) h.rss_kib = std::stoull(line.substr(6));
  return h;
}

uint64_t max_map_count() {
  uint64_t v = 65530;
  std::ifstream("/proc/sys/vm/max_map_count") >> v;
  return v;
}

// Exhaustion by the IVI against the running compositor (docs/security.md, "Quotas"), frame by frame:
// the IVI's own connection (bound to it by its per-VM socket) makes canopy-display hold descriptors of
// a buffer it never completes, maps scattered pages until its mapping quota, and fills its connection
// slots with connections that never say HELLO while the cluster's back-end restarts. Each attacker is
// closed at its quota; on every step meanwhile the cluster layer shows the cluster's picture, takes
// exactly one new frame (none reused) and never enters the fallback; and canopy-display's descriptors
// and memory mappings, measured from /proc on every step, stay within the quotas docs/display.md
// states (and everything is given back once the attackers are closed). The control runs without each quota, in which
// the attack works, are in-process (display/src/compositor_quota_test.cc): here the processes are the real ones.
TEST(SteppedCockpit, TheIviExhaustingTheCompositorNeverChangesTheClustersPicture) {
  // The IVI's layer beside the cluster's: the cluster layer's picture is the cluster's alone.
  const TestDir d(kCockpitVms +
                  "[[display]]\nname = \"cluster\"\nwidth = 128\nheight = 32\nrefresh_hz = 60\n"
                  "[[layout]]\ndisplay = \"cluster\"\nvm = \"cluster\"\nwidth = 64\nheight = 32\n"
                  "[[layout]]\ndisplay = \"cluster\"\nvm = \"ivi\"\nx = 64\nwidth = 64\nheight = 32\n");
  const std::string &dir = d.dir, &log = d.log, &ctl = d.ctl;
  Process compositor({kBin + "/canopy-display", dir + "/cockpit.toml", "--control", ctl, "--output", "headless",
                      "--renderer", "pixman", "--stepped", "--quiet", "--listen-dir", dir},
                     log);
  ASSERT_TRUE(compositor.started());
  ASSERT_TRUE(wait_for([&] { return ::access(ctl.c_str(), F_OK) == 0; })) << "no control socket";
  // Its per-VM sockets may come after its control socket.
  std::unique_ptr<ChannelDevice> cluster;
  ASSERT_TRUE(wait_for([&] {
    cluster = std::make_unique<ChannelDevice>(dir + "/cluster.sock", "cluster");
    return cluster->connected();
  })) << "no cluster socket";
  ASSERT_TRUE(wait_for([&] { return ::access((dir + "/ivi.sock").c_str(), F_OK) == 0; })) << "no IVI socket";
  ASSERT_TRUE(cluster->show(64, 32, 0xc0ffee));

  // One step: a new cluster frame, then the step; its report of the cluster layer.
  auto step = [&] {
    EXPECT_TRUE(cluster->frame()) << "the cluster's connection was closed";
    return layer_of(ask(ctl, "step"), "layer cluster cluster/0");
  };
  std::map<std::string, std::string> last;
  ASSERT_TRUE(wait_for([&] {
    last = step();
    return last.count("new") && last["new"] != "0";
  })) << "the cluster's frames never reached the layer";
  const std::string picture = last["crc"];
  ASSERT_TRUE(picture == solid_crc(0xc0ffee, 0x00) || picture == solid_crc(0xc0ffee, 0xff)) << picture;
  const pid_t pid = compositor.pid();
  // What it holds at rest: taken after a step, as every measurement below is (ask() returns once
  // canopy-display has closed the step's connection: it is not counted).
  Held base, peak;        // peak: of the attack under way
  uint64_t rss_peak = 0;  // of them all
  int steps = 0;
  // A step during an attack: the cluster unharmed, and the peaks of what canopy-display holds.
  auto checked_step = [&](const char* attack) {
    SCOPED_TRACE(std::string(attack) + ", step " + std::to_string(++steps));
    auto now = step();
    EXPECT_EQ(now["crc"], picture);
    auto number = [](const std::string& v) { return v.empty() ? ~0ull : std::stoull(v); };
    EXPECT_EQ(number(now["new"]), number(last["new"]) + 1) << "the cluster's frame was not taken";
    EXPECT_EQ(now["reused"], last["reused"]);
    EXPECT_EQ(now["fallback_entries"], last["fallback_entries"]);
    EXPECT_EQ(now["fallback"], "0");
    last = now;
    const Held h = held_by(pid, "attacker");
    peak.fds = std::max(peak.fds, h.fds);
    peak.mappings = std::max(peak.mappings, h.mappings);
    peak.file_bytes = std::max(peak.file_bytes, h.file_bytes);
    rss_peak = std::max(rss_peak, h.rss_kib);
    return h;
  };
  for (int i = 0; i < 4; ++i) checked_step("before");
  base = held_by(pid, "attacker");
  ASSERT_GT(base.fds, 0u) << "canopy-display's descriptors cannot be read";

  {
    // Descriptors: one buffer of 65536 pieces, never completed, 8 new files in each BUFFER packet.
    ChannelDevice ivi(dir + "/ivi.sock", "ivi");
    ASSERT_TRUE(ivi.connected());
    peak = base;
    bool closed = false;
    uint32_t packet = 0;
    for (; packet < 16; ++packet) {
      std::vector<buffers::SharedMemory> files;
      std::vector<int> fds;
      std::vector<uint8_t> body(sizeof(ch::BufferHdr) + 8 * sizeof(ch::Piece));
      ch::BufferHdr hdr{};
      hdr.key = ch::buffer_key(9, 1);
      hdr.first_piece = packet * 8;
      hdr.total_pieces = 65536;
      hdr.num_pieces = 8;
      std::memcpy(body.data(), &hdr, sizeof hdr);
      for (uint32_t i = 0; i < 8; ++i) {
        auto f = buffers::SharedMemory::create("attacker", 4096);
        ASSERT_TRUE(f.ok());
        fds.push_back(f->fd());
        files.push_back(std::move(*f));
        ch::Piece pc{};
        pc.fd_index = i;
        pc.pages = 1;
        std::memcpy(body.data() + sizeof hdr + i * sizeof pc, &pc, sizeof pc);
      }
      closed = !ivi.send(ch::encode(ch::Type::kBuffer, body), fds);
      checked_step("descriptors");
      if (closed || ivi.closed()) break;
    }
    // Closed at the packet that takes it over its quota of 64: the ninth.
    EXPECT_EQ(packet, 8u) << "the IVI was not closed at its descriptor quota";
    // Held: its quota (64) and its connection; at most also the 8 of the packet that went over it.
    EXPECT_GE(peak.fds, base.fds + 64);
    EXPECT_LE(peak.fds, base.fds + 64 + 1 + 8);
    std::printf("descriptors: %zu at rest, %zu at the peak\n", base.fds, peak.fds);
  }
  {
    // Mappings: buffers of 16000 scattered pages (the same pages of one sparse file each time: every
    // buffer is mapped on its own) until the IVI is closed. Its quota: three quarters of
    // (vm.max_map_count less 16384), shared by the two VMs the layout shows; each buffer costs 16001
    // (its pieces and its reservation), so the buffer that takes it over is number quota / 16001 + 1.
    auto file = buffers::SharedMemory::create("attacker", uint64_t(32000) * 4096);
    ASSERT_TRUE(file.ok());
    const uint64_t quota = (max_map_count() - 16384 - (max_map_count() - 16384) / 4) / 2;
    const uint32_t over = uint32_t(quota / 16001 + 1);
    ChannelDevice ivi(dir + "/ivi.sock", "ivi");
    ASSERT_TRUE(ivi.connected());
    peak = base;
    uint32_t resource = 1;
    for (; resource <= over + 1; ++resource) {
      const bool sent = ivi.scattered(resource, file->fd(), 16000, 0);
      checked_step("mappings");
      if (!sent || ivi.closed()) break;
    }
    EXPECT_EQ(resource, over) << "the IVI was not closed at its mapping quota " << quota;
    EXPECT_GE(peak.mappings, base.mappings + uint64_t(over - 1) * 16000) << "its buffers were not all mapped";
    EXPECT_GE(peak.file_bytes, uint64_t(over - 1) * 16000 * 4096);
    EXPECT_LE(peak.mappings, base.mappings + quota);
    std::printf("mappings: %zu at rest, %zu at the peak (quota %llu)\n", base.mappings, peak.mappings,
                (unsigned long long)quota);
  }
  {
    // Connection slots: 16 connections to the IVI's socket that never say HELLO. They get the IVI's
    // own 4 slots (the other 12 are turned away at once) until the 2 s deadline on the compositor's
    // clock; meanwhile the cluster's back-end restarts: its new connection, on its own socket, replaces
    // the old one, and the cluster layer goes on showing a new frame on every step.
    std::vector<std::unique_ptr<ChannelDevice>> silent;
    for (size_t i = 0; i < 16; ++i) {
      silent.push_back(std::make_unique<ChannelDevice>(dir + "/ivi.sock", "", false));
      ASSERT_TRUE(silent.back()->connected());
    }
    auto open = [&] {
      size_t n = 0;
      for (auto& s : silent) n += s->closed() ? 0 : 1;
      return n;
    };
    peak = base;
    checked_step("silent connections");
    EXPECT_EQ(open(), 4u) << "the IVI's connections beyond its 4 slots were not turned away";
    cluster = std::make_unique<ChannelDevice>(dir + "/cluster.sock", "cluster");
    ASSERT_TRUE(cluster->connected() && cluster->show(64, 32, 0xc0ffee)) << "the cluster's back-end cannot reconnect";
    int taken = 1;
    for (; taken < 240 && open() > 0; ++taken) checked_step("silent connections, the cluster's back-end restarted");
    EXPECT_EQ(open(), 0u) << "connections without HELLO outlived the deadline";
    // Held until the deadline: 2 s of 60 Hz refreshes on the compositor's clock.
    EXPECT_GE(taken, 119) << "closed before their deadline";
    EXPECT_GE(peak.fds, base.fds + 4) << "the IVI's 4 slots were not taken";
    EXPECT_LE(peak.fds, base.fds + 4 + 1);  // and the cluster's new connection beside its old one
    std::printf("silent connections: %zu descriptors at rest, %zu at the peak\n", base.fds, peak.fds);
  }
  // Everything the attackers made it hold is given back (the closing is read on the next turns; a
  // sanitizer's runtime maps memory of its own meanwhile).
  constexpr size_t kRuntimeMappings = kAddressSanitizer || kThreadSanitizer ? 64 : 16;
  Held after;
  for (int i = 0; i < 100; ++i) {
    after = checked_step("after");
    if (after.fds <= base.fds && after.file_bytes == 0 && after.mappings <= base.mappings + kRuntimeMappings) break;
  }
  EXPECT_LE(after.fds, base.fds);
  EXPECT_EQ(after.file_bytes, 0u);
  EXPECT_LE(after.mappings, base.mappings + kRuntimeMappings);
  // Resident memory, an observation: the bookkeeping of the IVI at its quotas (the attacker's pages are
  // never touched), and in ASan builds what its quarantine keeps of freed memory (256 MiB at most).
  EXPECT_LE(rss_peak, base.rss_kib + (64 + (kAddressSanitizer ? 256 : 0)) * 1024);
  std::printf("after: %zu descriptors, %zu mappings; resident %llu KiB at rest, %llu at the peak\n", after.fds,
              after.mappings, (unsigned long long)base.rss_kib, (unsigned long long)rss_peak);
  EXPECT_EQ(ask(ctl, "quit"), "ok\n");
  int st = 0;
  EXPECT_TRUE(wait_for([&] { return compositor.exited(&st); }));
}

// The whole cockpit under canopy-vmm, attacked from every side of the IVI at once, one cockpit shared by
// the attacks, with canopy-display on a stepped clock: the cluster a partition showing one colour
// (canopy-partition-solid, with its real canopy-gpu); the IVI a hostile guest flooding its canopy-gpu's
// backing bookkeeping and host memory (canopy-partition-gpu-flood); a third VM, "media", a hostile
// partition (canopy-partition-probe: the cluster's memory, signals, writes, its own ring outside its
// RAM) whose GPU back-end is taken over (canopy-test-hostile: a broker connection claiming the
// cluster, a flood of them, both control sockets, signals to and the RAM and scratch folder of the
// cluster's canopy-gpu). On every step, from before the attacks until each attacker has reported all
// of its attempts: the cluster had a new frame (the test waits for canopy-display to have received
// one), the layer shows it (`new` grows by exactly 1), its picture is the cluster's colour, nothing is
// reused and the fallback never entered. Each attempt is refused. Control, the same cockpit with
// `--no-confine --control-open-to-children` (one uid, nothing confined): the taken-over back-end stops
// the cluster, signals its canopy-gpu, reads its RAM and writes its scratch folder, and the cluster
// layer shows no new frame of the cluster after it; the broker's binding and rate and canopy-display's
// refusal of canopy-vmm's descendants stay in the control (their own controls are in
// impersonation_test, partition_test and control_test).
TEST(SteppedCockpit, TheWholeIviSideAttackingNeverChangesTheClustersPicture) {
  if (::geteuid() != 0) {
    if (std::getenv("CANOPY_NO_SKIP")) FAIL() << "needs root to give each VM's back-ends a uid (CANOPY_NO_SKIP=1)";
    GTEST_SKIP() << "needs root to give each VM's back-ends a uid";
  }
  const std::string gpu = "[vm.gpu]\nbackend = \"" + kBin + "/canopy-gpu\"\nscanouts = [{ width = 64, height = 32 }]\n";
  auto vm = [&](const std::string& name, const std::string& memory, const std::string& extra, const std::string& app,
                const std::string& args) {
    return "[[vm]]\nname = \"" + name + "\"\nbackend = \"partition\"\nmemory = \"" + memory + "\"\n" + extra +
           "app = \"" + kBin + "/" + app + "\"\nargs = [" + args + "]\n";
  };
  const std::string manifest = vm("cluster", "32M", "criticality = \"safety\"\n", "canopy-partition-solid", "") + gpu +
                               vm("ivi", "64M", "", "canopy-partition-gpu-flood", "") + gpu +
                               "args = [\"--max-host-mb=32\", \"--control=@DIR@/ivi-gpu.sock\"]\n" +
                               vm("media", "32M", "", "canopy-partition-probe", "\"--attack\", \"@DIR@/TARGET\"") +
                               "[[vm.device]]\ntype = \"rng\"\nbackend = \"" + kBin +
                               "/canopy-vhost-rng\"\nargs = [\"--pattern\"]\n" + "[vm.gpu]\nbackend = \"" + kBin +
                               "/canopy-test-hostile\"\nscanouts = [{ width = 64, height = 32 }]\nargs = "
                               "[\"--plan=@DIR@/scratch/media/plan\"]\n"
                               "[[display]]\nname = \"main\"\nwidth = 192\nheight = 32\nrefresh_hz = 60\n"
                               "[[layout]]\ndisplay = \"main\"\nvm = \"cluster\"\nwidth = 64\nheight = 32\n"
                               "[[layout]]\ndisplay = \"main\"\nvm = \"ivi\"\nx = 64\nwidth = 64\nheight = 32\n"
                               "[[layout]]\ndisplay = \"main\"\nvm = \"media\"\nx = 128\nwidth = 64\nheight = 32\n";
  for (bool protect : {true, false}) {
    SCOPED_TRACE(protect ? "confined, a uid per VM" : "control: --no-confine --control-open-to-children");
    std::vector<std::string> extra = {"--scratch-dir", "@DIR@/scratch"};
    if (!protect) extra.insert(extra.end(), {"--no-confine", "--control-open-to-children"});
    extra.insert(extra.end(), {"--compositor", "--output", "headless", "--renderer", "pixman", "--quiet", "--stepped",
                               "--control", "@DIR@/display.ctl"});
    test_support::Vmm vmm(manifest, extra);
    const std::string ctl = vmm.dir() + "/display.ctl";
    // Frames canopy-display has received from the cluster's connection (its stats; -1: none), of a
    // connected one, or of the first it lists (as a step's report does).
    auto cluster_frames = [&](bool connected = true) -> long long {
      if (::access(ctl.c_str(), F_OK) != 0) return -1;
      std::istringstream in(ask(ctl, "stats"));
      for (std::string line; std::getline(in, line);) {
        if (line.rfind("vm cluster connected=", 0) != 0 || (connected && line.rfind("vm cluster connected=1 ", 0) != 0))
          continue;
        const size_t at = line.find(" frames=");
        return at == std::string::npos ? -1 : std::atoll(line.c_str() + at + 8);
      }
      return -1;
    };
    auto number = [](const std::string& v) { return v.empty() ? ~0ull : std::stoull(v); };
    // A step; with `wait`, once the cluster has sent a frame after what the last step took in (its
    // report says how many the cluster's connection had sent then), so that this step has a new one to
    // show. The cluster layer's line of its report.
    long long taken = -1;  // the cluster's frames the last step had taken in
    auto step = [&](bool wait) {
      if (wait) {
        EXPECT_TRUE(test_support::Vmm::wait_until([&] { return cluster_frames() > taken; }, 30000))
            << "no new frame of the cluster after " << taken;
      }
      const std::string report = ask(ctl, "step");
      const size_t at = report.find("\nvm cluster frames=");
      taken = at == std::string::npos ? -1 : std::atoll(report.c_str() + at + 19);
      return layer_of(report, "layer main cluster/0");
    };
    std::map<std::string, std::string> before;
    ASSERT_TRUE(test_support::Vmm::wait_until([&] {
      before = step(true);
      return before.count("new") && before["new"] != "0";
    })) << "the cluster's frames never reached its layer";
    const std::string picture = before["crc"];
    // canopy-partition-solid's colour, whole (with the X byte the canvas keeps, 0x00 or 0xff).
    ASSERT_TRUE(picture == solid_crc(0x2a7fd4, 0x00) || picture == solid_crc(0x2a7fd4, 0xff)) << picture;
    int steps = 0;
    // The checked step: a new frame of the cluster shown, of its colour, nothing reused, no fallback.
    auto checked_step = [&] {
      SCOPED_TRACE("step " + std::to_string(steps++));
      auto now = step(true);
      EXPECT_EQ(now["crc"], picture);
      EXPECT_EQ(number(now["new"]), number(before["new"]) + 1) << "the cluster's new frame is not shown";
      EXPECT_EQ(now["reused"], before["reused"]);
      EXPECT_EQ(now["fallback_entries"], before["fallback_entries"]);
      EXPECT_EQ(now["fallback"], "0");
      before = now;
    };
    ASSERT_TRUE(test_support::Vmm::wait_until([&] {
      return vmm.log().find("gpu-flood: ready") != std::string::npos &&
             ::access((vmm.dir() + "/ivi-gpu.sock").c_str(), F_OK) == 0;
    })) << vmm.log();
    // Before the attacks.
    if (protect)
      for (int i = 0; i < 5; ++i) checked_step();

    // The attacks, all at once: the probe partition's victim, the taken-over back-end's plan, the
    // IVI guest's go (a display change).
    const long cluster_pid = vmm.field("vm cluster", "pid"), cluster_gpu = vmm.field("device cluster 0", "backend_pid");
    ASSERT_GT(cluster_pid, 0);
    ASSERT_GT(cluster_gpu, 0);
    ASSERT_EQ(::mkdir((vmm.dir() + "/open").c_str(), 0777), 0);
    ASSERT_EQ(::chmod((vmm.dir() + "/open").c_str(), 01777), 0);
    std::ofstream(vmm.dir() + "/TARGET") << cluster_pid << "\n";
    // The plan in the media VM's scratch folder, its back-end's own (it may read nothing else of the
    // test's).
    std::ofstream(vmm.dir() + "/scratch/media/plan.new")
        << "vmm-control " << vmm.dir() << "/control\ndisplay-control " << ctl << "\ncluster-gpu " << cluster_gpu
        << "\ncluster-scratch " << vmm.dir() << "/scratch/cluster\n";
    ASSERT_EQ(::rename((vmm.dir() + "/scratch/media/plan.new").c_str(), (vmm.dir() + "/scratch/media/plan").c_str()),
              0);
    EXPECT_EQ(test_support::line_exchange(vmm.dir() + "/ivi-gpu.sock", "display 0 800x600\n"), "ok\n");
    auto attacks_done = [&] {
      const std::string log = vmm.log();
      return log.find("hostile summary:") != std::string::npos && log.find("probe summary:") != std::string::npos &&
             log.find("gpu-flood: holding") != std::string::npos;
    };
    // In both runs: what this cockpit's control does not take away (their controls are elsewhere:
    // impersonation_test, partition_test's broker flood, control_test).
    auto refused_in_both = [&](const std::string& log) {
      for (const char* attack : {"claim-cluster", "broker-flood", "display-quit"})
        EXPECT_NE(log.find(std::string("hostile ") + attack + ": refused"), std::string::npos) << attack;
    };
    if (protect) {
      // Until every attacker has reported and 30 steps after (a hang guard of 300 s on the steady clock).
      const auto guard = std::chrono::steady_clock::now() + std::chrono::seconds(300);
      int after = 0;
      for (; after < 30 && std::chrono::steady_clock::now() < guard && !::testing::Test::HasFailure();) {
        if (after > 0 || attacks_done()) ++after;
        checked_step();
      }
      ASSERT_TRUE(attacks_done()) << vmm.log();
      EXPECT_EQ(after, 30) << "the hang guard ran out";
      std::printf("%d steps, the cluster's picture unchanged on each\n", steps);
      const std::string log = vmm.log();
      refused_in_both(log);
      for (const char* attack : {"signal-cluster", "cluster-ram", "cluster-scratch", "vmm-stop-cluster"})
        EXPECT_NE(log.find(std::string("hostile ") + attack + ": refused"), std::string::npos) << attack;
      EXPECT_NE(log.find("hostile summary: attempted=7 done=0 confined=1"), std::string::npos);
      EXPECT_NE(log.find("probe summary: attempted=17 allowed=0"), std::string::npos);
      EXPECT_NE(log.find("gpu-flood: entries 67 refused ERR_OUT_OF_MEMORY"), std::string::npos);
      EXPECT_NE(log.find("gpu-flood: 2d 7 refused ERR_OUT_OF_MEMORY"), std::string::npos);
      EXPECT_NE(::access((vmm.dir() + "/scratch/cluster/written-by-ivi").c_str(), F_OK), 0);
      // The cluster's processes are the ones from the start, never restarted.
      EXPECT_EQ(vmm.field("vm cluster", "pid"), cluster_pid);
      EXPECT_EQ(vmm.field("device cluster 0", "backend_pid"), cluster_gpu);
      EXPECT_EQ(vmm.field("vm cluster", "restarts"), 0);
    } else {
      ASSERT_TRUE(test_support::Vmm::wait_until(attacks_done)) << vmm.log();
      const std::string log = vmm.log();
      refused_in_both(log);
      for (const char* attack : {"signal-cluster", "cluster-ram", "cluster-scratch", "vmm-stop-cluster"})
        EXPECT_NE(log.find(std::string("hostile ") + attack + ": DONE"), std::string::npos) << attack;
      EXPECT_EQ(::access((vmm.dir() + "/scratch/cluster/written-by-ivi").c_str(), F_OK), 0);
      // The cluster is stopped: once canopy-vmm says so and its back-end's connection is gone with it
      // (the clock stepping meanwhile: frames are given back on the compositor's time), no step shows
      // a new frame of it.
      ASSERT_TRUE(test_support::Vmm::wait_until([&] {
        (void)step(false);
        return vmm.text("vm cluster", "state") == "stopped" && cluster_frames(true) == -1;
      })) << vmm.ctl("status");
      // Until the last step has taken in every frame canopy-display received of the cluster (none once
      // its back-end is gone with it).
      unsigned long long shown = 0;
      ASSERT_TRUE(test_support::Vmm::wait_until([&] {
        shown = number(step(false)["new"]);
        return cluster_frames(false) == taken;
      }));
      for (int i = 0; i < 10; ++i)
        EXPECT_EQ(number(step(false)["new"]), shown) << "control: a new frame of the cluster";
    }
  }
}

}  // namespace
}  // namespace canopy
