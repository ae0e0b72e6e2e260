// What the GPU fuzz targets share: 4 MiB of guest RAM at GPA 0, a device with small caps behind a given
// renderer and a holding headless output, and the input format, a sequence of requests
// [u8 queue | u16 length | bytes]:
//   queue % 4 == 0  a control command      1  a cursor command
//   queue % 4 == 2  settle: the target's own completions (fences, frame releases)
//   queue % 4 == 3  guest memory write at (first byte << 12)
// Invariants: every response parses as a header with a known type; after the input and a last settle,
// every control request was answered exactly once; a reset leaves no accounting behind.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

#include "canopy/gpu/device.h"

namespace canopy::gpu::fuzzing {

inline void check(bool ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
  }
}

struct Rig {
  static constexpr uint64_t kRam = 4 << 20;
  transport::GuestMemory mem;
  HeadlessOutput out{{.hold_frames = true, .checksum = true}};
  std::map<uint64_t, int> answers;
  std::unique_ptr<GpuDevice> dev;
  uint64_t token = 1;

  // False when the rig cannot be built (nothing to fuzz then).
  bool start(std::unique_ptr<Renderer> renderer, uint64_t extra_features = 0) {
    UniqueFd fd(memfd_create("fuzz-ram", MFD_CLOEXEC));
    if (ftruncate(fd.get(), kRam) != 0) return false;
    if (!mem.add_region({0, kRam, 0, 0}, std::move(fd)).ok()) return false;
    GpuOptions o;
    o.scanouts = {{640, 480, 60}, {320, 240, 60}};
    o.features |= extra_features;
    o.caps.max_resources = 64;
    o.caps.max_host_bytes = 16 << 20;
    o.caps.max_backing_bytes = 16 << 20;
    o.caps.max_command_bytes = 64 << 10;
    o.caps.max_backing_entries = 1024;
    o.caps.max_dimension = 4096;
    o.caps.max_3d_bytes = 64 << 20;
    auto d = GpuDevice::create(o, std::move(renderer), &out, [this](uint64_t t, std::span<const uint8_t> b) {
      check(b.size() >= sizeof(proto::CtrlHdr), "response shorter than a header");
      proto::CtrlHdr h;
      std::memcpy(&h, b.data(), sizeof h);
      check(h.type.get() >= uint32_t(proto::Resp::kOkNodata) &&
                h.type.get() <= uint32_t(proto::Resp::kErrInvalidParameter),
            "response type");
      ++answers[t];
    });
    if (!d.ok()) return false;
    dev = std::move(*d);
    dev->set_memory(&mem);
    dev->set_acked_features(dev->offered_features());
    return true;
  }

  // Feeds the input; `settle` runs for queue byte 2 and once at the end. Then checks the invariants.
  template <typename Settle>
  void run(const uint8_t* data, size_t size, Settle settle) {
    size_t at = 0;
    while (at + 3 <= size) {
      const uint8_t q = data[at];
      size_t len = size_t(data[at + 1]) | size_t(data[at + 2]) << 8;
      at += 3;
      if (len > size - at) len = size - at;
      std::span<const uint8_t> req(data + at, len);
      at += len;
      switch (q % 4) {
        case 0: dev->control(token++, req, 4096); break;
        case 1: (void)dev->cursor(req); break;
        case 2: settle(); break;
        case 3:
          if (!req.empty()) (void)mem.write(uint64_t(req[0]) << 12, req.data(), req.size());  // guest writes pixels
          break;
      }
    }
    settle();
    for (uint64_t t = 1; t < token; ++t) check(answers[t] == 1, "every control request answered exactly once");
    dev->reset();
    const auto st = dev->stats();
    check(
        st.resources == 0 && st.backing_bytes == 0 && st.host_bytes == 0 && st.gpu_bytes == 0 && st.pending_fences == 0,
        "reset releases everything");
  }
};

}  // namespace canopy::gpu::fuzzing
