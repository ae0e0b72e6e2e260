// libFuzzer target: what the KVM backend takes from files and from the guest's port I/O — a kernel image
// (parse_bzimage + write_linux_boot into guest RAM) and COM1 register accesses. Nothing may write outside
// the RAM it is given or crash.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvm/boot.h"
#include "kvm/serial.h"

using namespace canopy::hypervisor::kvm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  if (data[0] & 1) {
    // Port I/O on the UART: pairs of (offset | 0x80 for a write, value).
    std::string out;
    Serial8250 s([&](uint8_t b) { out.push_back(char(b)); }, [] {});
    for (size_t i = 1; i + 1 < size; i += 2) {
      const uint16_t off = data[i] & 7;
      if (data[i] & 0x80) s.write(off, data[i + 1]);
      else (void)s.read(off);
    }
    return 0;
  }
  // A kernel image: the input becomes the first bytes of a file of at least 64 KiB (the rest zero), so
  // headers with arbitrary fields get past the size check; RAM is 40 MiB.
  static std::vector<uint8_t> ram(40u << 20);
  std::vector<uint8_t> image(std::max<size_t>(size - 1, 0x10000), 0);
  std::copy(data + 1, data + size, image.begin());
  const std::vector<uint8_t> initrd(data[1] * 4096u, 0x5a);
  (void)write_linux_boot({ram, {}}, ram.size(), image, initrd, std::string(data[1] % 64, 'x'), 0xe0000);
  return 0;
}
