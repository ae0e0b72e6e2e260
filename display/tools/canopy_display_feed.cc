// canopy-display-feed: a stand-in GPU device on the scanout channel, for trying a layout or a sink
// without VMs: it connects to canopy-display as VM NAME with one scanout and shows a WxH XRGB8888 frame
// of one colour, presented FPS times a second (a new FRAME of the same sealed memfd buffer, as a guest's
// blob scanout does), taking the compositor's RELEASEs as they come.
//
//   canopy-display-feed --socket PATH --vm NAME [--size WxH] [--colour RRGGBB] [--fps N] [--run-for-s N]
//
// It waits up to 10 s for the socket to accept. Exit status: 0 after --run-for-s (or SIGTERM), 1 when
// the connection fails or closes, 2 on bad usage.
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "canopy/buffers/shared_memory.h"
#include "canopy/buffers/udmabuf.h"
#include "canopy/protocol/scanout_channel.h"
#include "canopy/transport/vhost_user_channel.h"

using namespace canopy;
namespace ch = canopy::protocol::scanout;

namespace {

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

int usage() {
  std::fprintf(stderr,
               "usage: canopy-display-feed --socket PATH --vm NAME [--size WxH] [--colour RRGGBB] [--fps N] "
               "[--run-for-s N]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket_path, vm;
  uint32_t w = 640, h = 480, colour = 0x777777, fps = 60;
  double run_s = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (!v) return usage();
    ++i;
    if (a == "--socket") socket_path = v;
    else if (a == "--vm") vm = v;
    else if (a == "--size") {
      if (std::sscanf(v, "%ux%u", &w, &h) != 2 || w == 0 || h == 0 || w > ch::kMaxDimension || h > ch::kMaxDimension)
        return usage();
    } else if (a == "--colour") colour = uint32_t(std::strtoul(v, nullptr, 16)) & 0xffffff;
    else if (a == "--fps") {
      fps = uint32_t(std::atoi(v));
      if (fps == 0 || fps > 1000) return usage();
    } else if (a == "--run-for-s") run_s = std::atof(v);
    else return usage();
  }
  if (socket_path.empty() || vm.empty()) return usage();
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  std::signal(SIGPIPE, SIG_IGN);

  const uint64_t bytes = (uint64_t(w) * h * 4 + ch::kPageSize - 1) & ~(ch::kPageSize - 1);
  auto shm = buffers::SharedMemory::create("canopy-display-feed", bytes);  // sealed against shrinking
  if (!shm.ok()) {
    std::fprintf(stderr, "canopy-display-feed: %s\n", shm.error().what);
    return 1;
  }
  {
    auto map = shm->map(buffers::Access::kReadWrite);
    if (!map.ok()) return 1;
    auto* px = reinterpret_cast<uint32_t*>(map->data());
    for (uint64_t i = 0; i < uint64_t(w) * h; ++i) px[i] = 0xff000000u | colour;
  }
  auto connected = transport::vhost_user::connect_unix(socket_path.c_str(), 10'000, SOCK_SEQPACKET);
  if (!connected.ok()) {
    std::fprintf(stderr, "canopy-display-feed: cannot connect to %s: %s\n", socket_path.c_str(),
                 connected.error().what);
    return 1;
  }
  UniqueFd sock = std::move(*connected);
  auto send = [&](const std::vector<uint8_t>& p, std::span<const int> fds = {}) {
    return ch::send_packet(sock.get(), p, fds).ok();
  };
  ch::ScanoutMsg so{};
  so.enabled = 1;
  so.width = w;
  so.height = h;
  // As canopy-gpu sends guest memory where /dev/udmabuf exists: a dma-buf of the pages (the compositor
  // may not make one itself), else the memfd.
  const buffers::FilePiece whole{shm->fd(), 0, bytes};
  auto dmabuf = buffers::make_udmabuf({&whole, 1});
  ch::PieceRef piece{0, 0, bytes};
  const int fds[1] = {dmabuf.ok() ? dmabuf->get() : shm->fd()};
  const ch::BufferKey key = ch::buffer_key(1, 1);  // resource 1, its first backing
  auto buf = ch::encode_buffer(key, {&piece, 1}, fds);
  if (!buf.ok() || !send(ch::encode_hello(vm, 1)) || !send(ch::encode(ch::Type::kScanout, so)) ||
      !send((*buf)[0].bytes, (*buf)[0].fds)) {
    std::fprintf(stderr, "canopy-display-feed: the compositor refused the connection\n");
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  const auto period = std::chrono::nanoseconds(1'000'000'000 / fps);
  uint64_t seq = 0, releases = 0;
  for (auto next = start; !g_stop; next += period) {
    if (run_s > 0 && std::chrono::steady_clock::now() - start >= std::chrono::duration<double>(run_s)) break;
    ch::FrameMsg f{};
    f.buffer = key;
    f.seq = ++seq;
    f.fourcc = 0x34325258;  // XRGB8888
    f.width = w;
    f.height = h;
    f.stride = w * 4;
    f.flags = ch::kFrameBlob;
    f.present_ns = uint64_t(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
    if (!send(ch::encode_frame(f, {}))) {
      std::fprintf(stderr, "canopy-display-feed: the connection closed\n");
      return 1;
    }
    // RELEASEs until the next frame is due.
    for (;;) {
      const auto left = next + period - std::chrono::steady_clock::now();
      const int ms = int(std::chrono::duration_cast<std::chrono::milliseconds>(left).count());
      auto m = ch::receive(sock.get(), ch::Direction::kToDevice, std::max(ms, 0));
      if (!m.ok()) {
        if (m.error().code == Errc::kTimeout) break;
        std::fprintf(stderr, "canopy-display-feed: %s\n", m.error().what);
        return 1;
      }
      if (m->type == ch::Type::kRelease) ++releases;
    }
  }
  std::printf("canopy-display-feed: %s: %llu frames sent, %llu released\n", vm.c_str(), (unsigned long long)seq,
              (unsigned long long)releases);
  return 0;
}
