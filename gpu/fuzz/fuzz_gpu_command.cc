// Fuzz target: command decode + the device model. The input is a sequence of requests, each
// [u8 queue | u16 length | bytes], fed to one GpuDevice over 4 MiB of guest RAM with a headless output
// that holds frames and releases them when a request asks (queue byte 2). Invariants: every control
// request is answered exactly once (after the final release), with a header the driver can parse; the
// device's accounting returns to zero after a reset.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "canopy/gpu/device.h"

using namespace canopy;
using namespace canopy::gpu;

namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static constexpr uint64_t kRam = 4 << 20;
  transport::GuestMemory mem;
  {
    UniqueFd fd(memfd_create("fuzz-ram", MFD_CLOEXEC));
    if (ftruncate(fd.get(), kRam) != 0) return 0;
    if (!mem.add_region({0, kRam, 0, 0}, std::move(fd)).ok()) return 0;
  }
  HeadlessOutput out({.hold_frames = true, .checksum = true});
  std::map<uint64_t, int> answers;
  GpuOptions o;
  o.scanouts = {{640, 480, 60}, {320, 240, 60}};
  o.caps.max_resources = 64;
  o.caps.max_host_bytes = 16 << 20;
  o.caps.max_backing_bytes = 16 << 20;
  o.caps.max_command_bytes = 64 << 10;
  o.caps.max_backing_entries = 1024;
  auto dev = GpuDevice::create(o, make_2d_renderer(), &out, [&](uint64_t t, std::span<const uint8_t> b) {
    check(b.size() >= sizeof(proto::CtrlHdr), "response shorter than a header");
    proto::CtrlHdr h;
    std::memcpy(&h, b.data(), sizeof h);
    check(h.type.get() >= uint32_t(proto::Resp::kOkNodata) && h.type.get() <= uint32_t(proto::Resp::kErrInvalidParameter),
          "response type");
    ++answers[t];
  });
  if (!dev.ok()) return 0;
  (*dev)->set_memory(&mem);
  (*dev)->set_acked_features((*dev)->offered_features());
  uint64_t token = 1;
  size_t at = 0;
  while (at + 3 <= size) {
    const uint8_t q = data[at];
    size_t len = size_t(data[at + 1]) | size_t(data[at + 2]) << 8;
    at += 3;
    if (len > size - at) len = size - at;
    std::span<const uint8_t> req(data + at, len);
    at += len;
    switch (q % 4) {
      case 0:
        (*dev)->control(token++, req, 4096);
        break;
      case 1:
        (void)(*dev)->cursor(req);
        break;
      case 2:
        out.release_held();
        (*dev)->process_releases();
        break;
      case 3:
        if (!req.empty()) (void)mem.write(uint64_t(req[0]) << 12, req.data(), req.size());  // guest writes pixels
        break;
    }
  }
  out.release_held();
  (*dev)->process_releases();
  for (uint64_t t = 1; t < token; ++t) check(answers[t] == 1, "every control request answered exactly once");
  (*dev)->reset();
  const auto& st = (*dev)->stats();
  check(st.resources == 0 && st.backing_bytes == 0 && st.host_bytes == 0 && st.pending_fences == 0,
        "reset releases everything");
  return 0;
}
