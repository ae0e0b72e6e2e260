// libFuzzer target: the compositor's handling of a device connection (canopy/display/compositor.h):
// packet sequences after a valid HELLO, against the stateful checks (buffer keys, multi-packet BUFFERs,
// frames against their buffers, caps), with compositions in virtual time between packets.
// Input: a sequence of records [u16 length][u8 descriptors][length bytes of packet]; each record's
// packet is sent with (descriptors % 10) memfds (64 KiB each) attached, or, for 9, a real timeline's
// memfd and eventfd (TIMELINE), which the harness signals one step further every few packets. Invariants: no crash, no
// hang, and the compositor keeps serving a fresh, well-behaved connection afterwards.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "canopy/base/log.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/buffers/timeline.h"
#include "canopy/display/compositor.h"
#include "canopy/protocol/scanout_channel.h"

using namespace canopy;
using namespace canopy::display;
namespace channel = canopy::protocol::scanout;

namespace {

struct World {
  FakeClock clock;
  std::string path = "/tmp/canopy-fuzz-compositor." + std::to_string(::getpid());
  std::unique_ptr<Compositor> comp;
  std::vector<buffers::SharedMemory> memfds;
  buffers::Timeline timeline;
  World() {
    set_log_level(LogLevel::kError);  // every refused input would log otherwise
    OutputSpec o;
    o.name = "out";
    o.width = 64;
    o.height = 48;
    o.criticality = Criticality::kSafety;
    for (uint32_t s = 0; s < 2; ++s) {
      LayerSpec l;
      l.vm = "fuzz";
      l.scanout = s;
      l.dst = {int32_t(s * 20), 0, 40, 30};
      l.rotation = s ? Rotation::k90 : Rotation::k0;
      l.alpha = s ? 0.5 : 1.0;
      l.stale_ms = 100;
      o.layers.push_back(l);
    }
    Layout layout;
    layout.outputs.push_back(o);
    CompositorOptions opt;
    opt.listen_path = path;
    opt.renderer = "pixman";  // the packet handling is under test; one renderer suffices
    auto c = Compositor::create(layout, opt, clock);
    if (!c.ok()) __builtin_trap();
    comp = std::move(*c);
    for (int i = 0; i < 8; ++i) {
      auto m = buffers::SharedMemory::create("fuzz", 64 * 1024);
      if (!m.ok()) __builtin_trap();
      memfds.push_back(std::move(*m));
    }
    auto t = buffers::Timeline::create_producer();
    if (!t.ok()) __builtin_trap();
    timeline = std::move(*t);
  }
  UniqueFd connect_device() {
    UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), path.size());
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return UniqueFd();
    (void)channel::send_packet(s.get(), channel::encode_hello("fuzz", 2));
    return s;
  }
  void turn() {
    (void)timeline.signal(timeline.signalled() + 1);
    (void)comp->poll_input(0);
    clock.set(std::max(clock.now(), comp->next_latch()));
    (void)comp->compose_due();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World w;
  UniqueFd dev = w.connect_device();
  if (!dev.valid()) __builtin_trap();
  size_t at = 0;
  int sent = 0;
  while (at + 3 <= size && sent < 64) {
    const size_t len = size_t(data[at]) | size_t(data[at + 1]) << 8;
    const int nfds = data[at + 2] % 10;
    at += 3;
    if (len == 0 || len > size - at) break;
    std::vector<int> fds;
    if (nfds == 9) fds = {w.timeline.memfd(), w.timeline.eventfd()};
    for (int i = 0; i < nfds && nfds < 9; ++i) fds.push_back(w.memfds[size_t(i)].fd());
    if (!channel::send_packet(dev.get(), std::span<const uint8_t>(data + at, len), fds).ok()) break;
    at += len;
    ++sent;
    if (sent % 4 == 0) w.turn();
  }
  w.turn();
  // Releases the compositor sent are drained; then the connection closes.
  char buf[256];
  while (::recv(dev.get(), buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
  dev.reset();
  w.turn();
  return 0;
}
