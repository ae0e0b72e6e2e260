// libFuzzer target: virtio-snd request decode + device model. The input is a script of operations on a
// device with two streams, a jack and controls: control requests, tx/rx/event buffers with segment
// layouts from the input (anywhere in a 1 MiB guest RAM, or outside it), host pulls and pushes, resets
// and host-side events. The device must answer or hand back every buffer, never touch memory outside
// the buffers it was given, and never crash or hang.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "canopy/audio/device.h"
#include "canopy/audio/policy.h"

using namespace canopy;
using namespace canopy::audio;

namespace {

constexpr uint64_t kRam = 1 << 20;

struct Input {
  const uint8_t* p;
  size_t n;
  uint8_t u8() {
    if (!n) return 0;
    --n;
    return *p++;
  }
  uint16_t u16() { return uint16_t(u8() | u8() << 8); }
  uint32_t u32() { return uint32_t(u16()) | uint32_t(u16()) << 16; }
};

struct Host final : HostBackend {
  struct S final : HostStream {
    Status prepare(const PcmParams&) override { return {}; }
    void start() override {}
    void stop() override {}
  };
  const char* name() const override { return "fuzz"; }
  Result<std::unique_ptr<HostStream>> open(uint32_t, StreamIo&) override {
    return std::unique_ptr<HostStream>(std::make_unique<S>());
  }
};

struct World {
  transport::GuestMemory mem;
  Host host;
  std::unique_ptr<PolicyBoard> board;
  std::unique_ptr<SndDevice> dev;
  World() {
    int fd = memfd_create("fuzz-snd", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, kRam) != 0) abort();
    if (!mem.add_region({0, kRam, 0, 0}, UniqueFd(fd)).ok()) abort();
    auto b = PolicyBoard::anonymous();
    if (b.ok()) board = std::move(*b);
  }
};

// Segments from the input: count, then (offset, length) pairs; mostly inside RAM.
std::vector<transport::Segment> segments(Input& in) {
  std::vector<transport::Segment> v;
  const uint8_t count = in.u8() % 6;
  for (uint8_t i = 0; i < count; ++i) {
    const uint8_t kind = in.u8();
    uint64_t gpa = uint64_t(in.u16()) << 4;
    uint32_t len = in.u16() % 8192;
    if (kind == 0xff) gpa = kRam - 8;                // straddles the end of RAM
    else if (kind == 0xfe) gpa = ~uint64_t(0) - 16;  // wraps
    if (kind == 0xfd) len = 0xffffffffu;
    v.push_back({gpa, len});
  }
  return v;
}

SndOptions make_options() {
  SndOptions o;
  o.streams.resize(2);
  o.streams[0].name = std::string("out");
  o.streams[1].name = std::string("in");
  o.streams[1].direction = proto::Direction::kInput;
  o.streams[1].channels_max = 1;
  o.jacks.resize(1);
  o.jacks[0].name = std::string("speaker");
  o.max_pending_events = 4;
  o.controls = true;
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = new World();
  Input in{data, size};
  static const SndOptions o = make_options();
  size_t completions = 0;
  auto dev = SndDevice::create(o, &w->host, w->board.get(), [&](uint16_t, uint16_t, uint32_t) { ++completions; });
  if (!dev.ok()) abort();
  SndDevice& d = **dev;
  d.set_memory(&w->mem);
  d.set_acked_features(in.u8() & 1 ? proto::kFCtls : 0);
  std::vector<uint8_t> buf(16384);
  uint16_t head = 0;
  for (int step = 0; step < 64 && in.n; ++step) {
    const uint8_t op = in.u8() % 9;
    switch (op) {
      case 0: {  // a control request whose bytes come from the input, placed at a fixed spot
        const uint16_t len = in.u16() % 1024;
        std::vector<uint8_t> req(len);
        for (auto& b : req) b = in.u8();
        (void)w->mem.write(0x1000, req.data(), req.size());
        std::vector<transport::Segment> rd{{0x1000, len}};
        const uint32_t wlen = in.u16() % 4096;
        std::vector<transport::Segment> wr{{0x10000, wlen}};
        (void)d.control({head++, rd, wr});
        break;
      }
      case 1:
      case 2:
      case 3: {  // a buffer on eventq / txq / rxq with arbitrary segments
        auto rd = segments(in);
        auto wr = segments(in);
        (void)d.io(uint16_t(op), {head++, rd, wr});
        break;
      }
      case 4: {
        const size_t n = in.u16() % buf.size();
        if (auto* s = d.stream_io(0)) (void)s->pull(buf.data(), n);
        break;
      }
      case 5: {
        const size_t n = in.u16() % buf.size();
        if (auto* s = d.stream_io(1)) (void)s->push(buf.data(), n);
        break;
      }
      case 6: (void)d.set_jack(in.u8() % 2, in.u8() & 1); break;
      case 7: (void)d.set_volume(in.u8() % 3, in.u8(), in.u8() & 1); break;
      case 8:
        if (in.u8() & 1) d.reset();
        else d.queue_stopped(in.u8() % 4, in.u8() & 1);
        break;
    }
  }
  (void)completions;
  return 0;
}
