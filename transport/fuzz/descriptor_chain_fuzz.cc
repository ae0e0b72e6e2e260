// libFuzzer target: the device-side chain walker. The input is the guest's memory image: a 16-entry
// descriptor table, the avail ring, and data/indirect areas. The device pops every published chain and
// reads/writes through it; nothing may crash, hang or touch memory outside the guest region.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#include "canopy/transport/virtqueue.h"

using namespace canopy;
using namespace canopy::transport;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static constexpr uint64_t kMem = 0x4000;
  static constexpr uint16_t kQ = 16;
  static int fd = [] {
    int f = memfd_create("fuzz-guest", MFD_CLOEXEC);
    if (ftruncate(f, kMem) != 0) __builtin_trap();
    return f;
  }();
  GuestMemory mem;
  if (!mem.add_region({0, kMem, 0, 0}, UniqueFd(dup(fd))).ok()) __builtin_trap();  // set-up, not input
  (void)mem.fill(0, 0, kMem);
  if (size < 1) return 0;
  const uint8_t features = data[0];
  (void)mem.write(0, data + 1, size - 1 < kMem ? size - 1 : kMem);
  // Layout: desc @0 (256 B), avail @0x100, used @0x200.
  VringAddrs addrs{0, 0x100, 0x200};
  DeviceQueue q;
  uint64_t f = (features & 1 ? kVirtioFIndirectDesc : 0) | (features & 2 ? kVirtioFEventIdx : 0);
  if (!q.configure(&mem, kQ, addrs, f).ok()) return 0;
  q.set_last_avail_idx(features >> 4);
  DescriptorChain chain;
  uint8_t buf[256];
  for (int i = 0; i < 64; ++i) {
    auto r = q.pop(chain);
    if (!r.ok()) {
      if (q.broken()) break;
      continue;
    }
    if (!*r) break;
    DescriptorReader rd(mem, chain);
    while (rd.remaining()) {
      size_t n = rd.remaining() < sizeof buf ? rd.remaining() : sizeof buf;
      if (!rd.read(buf, n).ok()) __builtin_trap();  // a validated chain must be readable
    }
    DescriptorWriter wr(mem, chain);
    if (!wr.fill(0xab, wr.remaining()).ok()) __builtin_trap();
    (void)q.push_used(chain.head(), wr.bytes_written());
    (void)q.should_notify();
  }
  return 0;
}
