// libFuzzer target: the VMM's side of the partition transport for one device (DeviceBridge), fed with
// what a hostile partition can send. Input: a sequence of records
//   len (u8) | fds (u8: count % 3, kind bit 2: 1 = eventfds, 0 = a pipe) | len bytes of packet
// Each packet goes through msg::parse (to the VMM) and, when accepted, DeviceBridge::handle, as the
// supervisor does. Invariants (a violation aborts):
//   - every reply the VMM builds passes the partition side's own check (msg::check to the partition);
//   - the status never shows DRIVER_OK without FEATURES_OK (unless DEVICE_NEEDS_RESET says it failed).
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>

#include "canopy/base/log.h"
#include "canopy/transport/virtio_msg.h"
#include "canopy/transport/virtio_ring.h"
#include "device_bridge.h"

using namespace canopy;
using namespace canopy::hypervisor;
namespace msg = canopy::transport::msg;

namespace {
constexpr uint64_t kRam = 1 << 20;
constexpr uint64_t kOffered =
    transport::kVirtioFVersion1 | transport::kVirtioFEventIdx | transport::kVirtioFIndirectDesc;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int ram = [] {
    set_log_level(LogLevel::kError);
    int fd = memfd_create("fuzz-ram", MFD_CLOEXEC);
    if (ftruncate(fd, kRam) != 0) std::abort();
    return fd;
  }();
  DeviceBridge d(BackendSpec{"rng", 4, "", {}}, 0);
  d.configure_offline(RamInfo{ram, kRam}, 2, kOffered, 8);
  size_t at = 0;
  while (at + 2 <= size) {
    const size_t len = data[at];
    const uint8_t fdspec = data[at + 1];
    at += 2;
    if (at + len > size) break;
    std::vector<UniqueFd> fds;
    for (int i = 0; i < (fdspec & 3) % 3; ++i) {
      if (fdspec & 4) {
        fds.emplace_back(eventfd(0, EFD_CLOEXEC));
      } else {
        int p[2];
        if (pipe2(p, O_CLOEXEC) != 0) std::abort();
        close(p[1]);
        fds.emplace_back(p[0]);
      }
    }
    auto m = msg::parse(std::span<const uint8_t>(data + at, len), std::move(fds), msg::Direction::kToVmm);
    at += len;
    if (!m.ok() || m->type() == msg::Type::kHello || m->type() == msg::Type::kHeartbeat) continue;
    DeviceBridge::Reply r = d.handle(*m);
    auto reply =
        msg::encode(m->type(), msg::kFlagResponse, 0, m->header.id, r.code,
                    r.code == msg::Code::kOk ? std::span<const uint8_t>(r.payload) : std::span<const uint8_t>{});
    if (!msg::check(reply, 0, msg::Direction::kToPartition).ok()) std::abort();
    const uint8_t st = d.status();
    if ((st & transport::kStatusDriverOk) && !(st & transport::kStatusFeaturesOk) &&
        !(st & transport::kStatusDeviceNeedsReset))
      std::abort();
  }
  return 0;
}
