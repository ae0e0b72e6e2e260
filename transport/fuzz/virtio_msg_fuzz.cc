// libFuzzer target: the partition message transport's packet checks (virtio_msg.h), in both directions.
// Input: byte 0 = (descriptor count % 4) | (direction << 2); the rest is one packet.
// Invariants: parse() never crashes; an accepted packet re-encodes to the very same bytes; its payload
// has the size its header says; the descriptors given are kept (or all closed on refusal, no leak).
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "canopy/transport/virtio_msg.h"

using namespace canopy;
using namespace canopy::transport;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t nfds = data[0] % 4;
  const auto dir = (data[0] >> 2) & 1 ? msg::Direction::kToPartition : msg::Direction::kToVmm;
  std::span<const uint8_t> packet(data + 1, size - 1);
  std::vector<UniqueFd> fds;
  for (size_t i = 0; i < nfds; ++i) fds.emplace_back(eventfd(0, EFD_CLOEXEC));
  auto m = msg::parse(packet, std::move(fds), dir);
  if (!m.ok()) return 0;
  if (m->payload.size() != m->header.size.get()) std::abort();
  if (m->fds.size() != nfds) std::abort();
  auto again = msg::encode(m->type(), m->header.flags, m->header.device, m->header.id,
                           msg::Code(m->header.status.get()), m->payload);
  if (again.size() != packet.size() || std::memcmp(again.data(), packet.data(), again.size()) != 0) std::abort();
  return 0;
}
