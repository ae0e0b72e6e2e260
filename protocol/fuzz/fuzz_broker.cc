// libFuzzer target: the connection broker's packet parser (canopy/protocol/broker.h), on each link. The
// first input byte says which link (high nibble: 0 device->broker, 1 broker->device, 2+ broker->service)
// and how many descriptors arrive with the packet (low nibble, 0..3).
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "canopy/protocol/broker.h"

using namespace canopy;
using namespace canopy::protocol::broker;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const uint8_t ctl = data[0];
  std::vector<UniqueFd> fds;
  for (int i = 0; i < (ctl & 0x0f) % 4; ++i) fds.emplace_back(fcntl(devnull, F_DUPFD_CLOEXEC, 3));
  const Link link = Link((ctl >> 4) > 2 ? 2 : ctl >> 4);
  auto m = parse(std::span<const uint8_t>(data + 1, size - 1), std::move(fds), link);
  if (m.ok() && m->type == Type::kAdmit && !valid_vm_name(m->vm)) __builtin_trap();  // parse let a bad name through
  return 0;
}
