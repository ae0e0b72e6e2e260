// canopy-partition-rng: a guest partition app that drives a virtio-rng device through the partition
// transport, the way a Linux guest's virtio_rng driver would: the smallest real workload for canopy-vmm
// (and the one its tests and benchmarks use).
//
// Each round: a 4 KiB device-writable buffer, kick, wait for the used buffer, check it, heartbeat with the
// number of rounds done as progress. When the device needs a reset (its back-end was restarted) or stops
// answering, the app resets it and initialises it again, as a driver must (virtio 1.2 §2.1.2).
//   --expect-pattern   check the data is the back-end's --pattern text ("canopy-rng:" repeated)
//   --interval-ms N    pause between rounds (default 10)
//   --hang-after N     after N rounds stop heartbeating and hang (watchdog tests)
//   --exit-after N     after N rounds exit with --exit-code (default 0)
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "canopy/base/log.h"
#include "canopy/guest/partition.h"
#include "canopy/guest/virtio_driver.h"

namespace {

using namespace canopy;
using namespace canopy::guest;

constexpr uint32_t kRngDeviceId = 4;
constexpr uint32_t kRequestBytes = 4096;

struct Options {
  bool expect_pattern = false;
  int interval_ms = 10;
  long hang_after = -1;
  long exit_after = -1;
  int exit_code = 0;
};

bool pattern_ok(const uint8_t* p, size_t n) {
  static constexpr char kText[] = "canopy-rng:";
  constexpr size_t kLen = sizeof kText - 1;
  // The data continues the back-end's cycle wherever the previous request left it: find the phase.
  for (size_t k = 0; k < kLen; ++k) {
    size_t i = 0;
    while (i < n && p[i] == uint8_t(kText[(k + i) % kLen])) ++i;
    if (i == n) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  set_log_tag("canopy-partition-rng");
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto num = [&](long& out) {
      if (i + 1 >= argc) return false;
      out = std::strtol(argv[++i], nullptr, 10);
      return true;
    };
    long v = 0;
    if (a == "--expect-pattern") o.expect_pattern = true;
    else if (a == "--interval-ms" && num(v)) o.interval_ms = int(v);
    else if (a == "--hang-after" && num(v)) o.hang_after = v;
    else if (a == "--exit-after" && num(v)) o.exit_after = v;
    else if (a == "--exit-code" && num(v)) o.exit_code = int(v);
    else {
      std::fprintf(stderr, "canopy-partition-rng: bad argument %s\n", a.c_str());
      return 2;
    }
  }
  auto p = Partition::attach();
  if (!p.ok()) {
    std::fprintf(stderr, "canopy-partition-rng: attach failed: %s\n", p.error().what);
    return 1;
  }
  Partition& part = **p;
  auto dev = part.find_device(kRngDeviceId);
  if (!dev.ok()) {
    std::fprintf(stderr, "canopy-partition-rng: no virtio-rng device\n");
    return 1;
  }
  auto t = part.transport(*dev);
  VirtioDriver driver(*t, part.memory());
  auto rings = part.alloc(64 << 10);
  auto buf = part.alloc(kRequestBytes);
  if (!rings.ok() || !buf.ok()) {
    std::fprintf(stderr, "canopy-partition-rng: RAM too small\n");
    return 1;
  }
  DriverOptions dopt;
  dopt.device_id = kRngDeviceId;
  dopt.num_queues = 1;
  dopt.max_queue_size = 64;
  dopt.ring_area = *rings;
  dopt.wanted_features = transport::kVirtioFEventIdx;

  uint64_t rounds = 0, reinits = 0;
  std::vector<uint8_t> data(kRequestBytes);
  bool need_init = true;
  while (!part.stop_requested()) {
    if (need_init) {
      if (Status s = driver.init(dopt); !s.ok()) {
        CANOPY_WARN("device init failed (%s); retrying", s.error().what);
        (void)part.heartbeat(rounds);
        usleep(20 * 1000);
        continue;
      }
      need_init = false;
      if (rounds > 0) {
        ++reinits;
        CANOPY_INFO("device re-initialised (%llu so far)", (unsigned long long)reinits);
      }
    }
    auto& q = driver.queue(0);
    (void)part.memory().fill(buf->gpa, 0, kRequestBytes);
    auto added = q.add({}, {{buf->gpa, kRequestBytes}}, uint64_t(1));
    if (!added.ok() || !driver.kick(0).ok()) {
      need_init = true;
      continue;
    }
    bool done = false;
    for (int tries = 0; tries < 50 && !done && !part.stop_requested(); ++tries) {
      auto irq = driver.wait_interrupt(100);
      if (!irq.ok() && irq.code() == Errc::kClosed) return 0;  // the VMM is gone
      auto used = q.get_used();
      if (used.ok() && used->has_value()) {
        done = true;
        const uint32_t len = (*used)->len;
        (void)part.memory().read(buf->gpa, data.data(), len);
        if (len == 0 || (o.expect_pattern && !pattern_ok(data.data(), len))) {
          std::fprintf(stderr, "canopy-partition-rng: bad data in round %llu (%u bytes)\n", (unsigned long long)rounds,
                       len);
          return 3;
        }
      } else if (driver.needs_reset()) {
        break;
      } else if (irq.ok() || irq.code() == Errc::kTimeout) {
        (void)part.heartbeat(rounds);  // still alive while waiting
      }
    }
    if (!done) {
      // No answer: the back-end died or was restarted. Reset and initialise again.
      CANOPY_INFO("no answer from the device (needs reset: %d); resetting it", int(driver.needs_reset()));
      (void)driver.reset();
      need_init = true;
      continue;
    }
    ++rounds;
    if (o.hang_after >= 0 && long(rounds) >= o.hang_after) {
      CANOPY_INFO("hanging after %llu rounds (no more heartbeats)", (unsigned long long)rounds);
      for (;;) pause();
    }
    if (Status s = part.heartbeat(rounds); !s.ok() && s.error().code == Errc::kClosed) return 0;
    if (o.exit_after >= 0 && long(rounds) >= o.exit_after) return o.exit_code;
    if (o.interval_ms > 0) usleep(useconds_t(o.interval_ms) * 1000);
  }
  return 0;
}
