// libFuzzer target: the scanout channel's packet parser (canopy/protocol/scanout_channel.h), both directions.
// The first input byte says how many descriptors arrive with the packet (0..9) and which direction.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "canopy/protocol/scanout_channel.h"

using namespace canopy;
using namespace canopy::protocol::scanout;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const uint8_t ctl = data[0];
  std::vector<UniqueFd> fds;
  for (int i = 0; i < (ctl & 0x0f) % 10; ++i) fds.emplace_back(fcntl(devnull, F_DUPFD_CLOEXEC, 3));
  const Direction dir = (ctl & 0x80) ? Direction::kToDevice : Direction::kToCompositor;
  auto m = parse(std::span<const uint8_t>(data + 1, size - 1), std::move(fds), dir);
  if (m.ok()) {
    // Touch what a receiver would read.
    switch (m->type) {
      case Type::kHello: (void)m->vm_name(); break;
      case Type::kBuffer: (void)m->pieces(); break;
      case Type::kFrame: (void)m->damage(); break;
      default: break;
    }
  }
  return 0;
}
