// canopy-partition-gpu-flood: a hostile guest partition against its canopy-gpu's caps (docs/gpu.md,
// "Limits"). It says "gpu-flood: ready" and waits for a display change (canopy_partition_test sends one
// over canopy-gpu's control socket once it has measured the back-end at rest), then:
//   1. backing bookkeeping: 1x1 resources, each with 3900 single-page backing entries (as many as one
//      request of the guest client holds), until the device refuses one;
//   2. host memory: 1024x1024 XRGB8888 2D resources, each backed by the same 4 MiB of its RAM and
//      uploaded whole (so canopy-gpu's copy of each is really there), until the device refuses one.
// It prints "gpu-flood: entries N refused RESP", "gpu-flood: 2d N refused RESP" and "gpu-flood: holding",
// then keeps everything and heartbeats until it is stopped, so that the test measures canopy-gpu holding
// what the flood made it hold.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "canopy/guest/gpu_client.h"
#include "canopy/guest/partition.h"

using namespace canopy;
using namespace canopy::guest;

namespace {

constexpr int kGuardMs = 30000;      // hang guard of each request: answers come in milliseconds
constexpr uint32_t kEntries = 3900;  // as many as one request of the guest client holds
constexpr int kMaxResources = 1000;  // more than any cap lets through: the device refuses first

}  // namespace

int main() {
  auto p = Partition::attach(kGuardMs);
  if (!p.ok()) return 2;
  Partition& part = **p;
  auto dev = part.find_device(16);
  if (!dev.ok()) return 2;
  auto t = part.transport(*dev);
  GpuClient::Options o;
  o.timeout_ms = kGuardMs;
  auto area = part.alloc(GpuClient::kAreaBytes);
  auto image = part.alloc(4 << 20);
  auto pages = part.alloc(uint64_t(kEntries) * 4096);
  if (!area.ok() || !image.ok() || !pages.ok()) return 2;
  o.area = *area;
  auto gc = GpuClient::create(*t, part.memory(), o);
  if (!gc.ok()) {
    std::fprintf(stderr, "gpu-flood: device init failed: %s\n", gc.error().what);
    return 2;
  }
  GpuClient& g = **gc;
  const std::vector<uint8_t> pixels(4 << 20, 0x5a);
  if (!part.memory().write(image->gpa, pixels.data(), pixels.size()).ok()) return 2;

  std::fprintf(stderr, "gpu-flood: ready\n");
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!g.take_config_changed() && std::chrono::steady_clock::now() < end) {
    (void)part.heartbeat(1);
    usleep(10000);
  }

  std::vector<transport::Segment> entries;
  for (uint32_t i = 0; i < kEntries; ++i) entries.push_back({pages->gpa + uint64_t(i) * 4096, 4096});
  int made = 0;
  uint32_t refused = 0;
  for (; made < kMaxResources; ++made) {
    auto id = g.create_2d(proto::Format::kX8R8G8B8, 1, 1);
    if (!id.ok() || !g.attach_backing(*id, entries).ok()) {
      refused = g.last_response();
      break;
    }
    if (made % 8 == 0) (void)part.heartbeat(2);
  }
  std::fprintf(stderr, "gpu-flood: entries %d refused %s\n", made, proto::resp_name(refused));

  made = 0;
  refused = 0;
  for (; made < kMaxResources; ++made) {
    auto id = g.create_2d(proto::Format::kX8R8G8B8, 1024, 1024);
    const transport::Segment whole{image->gpa, 4 << 20};
    if (!id.ok() || !g.attach_backing(*id, {&whole, 1}).ok() ||
        !g.transfer_to_host_2d(*id, {0, 0, 1024, 1024}, 0).ok()) {
      refused = g.last_response();
      break;
    }
    if (made % 8 == 0) (void)part.heartbeat(3);
  }
  std::fprintf(stderr, "gpu-flood: 2d %d refused %s\n", made, proto::resp_name(refused));

  std::fprintf(stderr, "gpu-flood: holding\n");
  for (;;) {
    (void)part.heartbeat(4);
    usleep(20000);
  }
}
