// Transport benchmarks, each against a reference measured in the same run:
//   BM_VirtqueueRoundTrip  one chain kick -> used across processes (vhost-user back-end in a child)
//   BM_EventfdPingPong     raw eventfd ping-pong across processes: the notification floor
//   BM_DescriptorsPolled   descriptors/s with the device polling the ring on another thread, no notifications
//   BM_GuestMemoryRead     bounds-checked copies out of guest memory vs BM_Memcpy
#include <benchmark/benchmark.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "bench_main.h"
#include "canopy/transport/driver_queue.h"
#include "canopy/transport/vhost_user_backend.h"
#include "canopy/transport/vhost_user_frontend.h"

using namespace canopy;
using namespace canopy::transport;
using namespace canopy::transport::vhost_user;

namespace {

constexpr uint64_t kMemSize = 16ull << 20;
constexpr uint64_t kUva = 0x7e0000000000;
constexpr uint64_t kData = 0x100000;

UniqueFd make_ram() {
  int fd = memfd_create("bench-ram", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, kMemSize) != 0) std::abort();
  return UniqueFd(fd);
}

void wait_readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  while (poll(&p, 1, 5000) != 1) {
  }
  uint64_t v;
  if (read(fd, &v, sizeof v) != sizeof v) std::abort();
}

void signal_fd(int fd) {
  uint64_t one = 1;
  if (write(fd, &one, sizeof one) != sizeof one) std::abort();
}

void BM_EventfdPingPong(benchmark::State& state) {
  UniqueFd ping(eventfd(0, EFD_CLOEXEC)), pong(eventfd(0, EFD_CLOEXEC));
  pid_t child = fork();
  if (child == 0) {
    for (;;) {
      uint64_t v;
      if (read(ping.get(), &v, sizeof v) != sizeof v) _exit(0);
      if (v == 2) _exit(0);
      signal_fd(pong.get());
    }
  }
  for (auto _ : state) {
    signal_fd(ping.get());
    uint64_t v;
    if (read(pong.get(), &v, sizeof v) != sizeof v) std::abort();
  }
  uint64_t two = 2;
  if (write(ping.get(), &two, sizeof two) != sizeof two) std::abort();
  waitpid(child, nullptr, 0);
}
BENCHMARK(BM_EventfdPingPong)->UseRealTime();

class NopDevice : public Device {
 public:
  uint64_t features() const override { return kVirtioFVersion1 | kVirtioFEventIdx; }
  uint16_t num_queues() const override { return 1; }
  void on_kick(QueueHandle& q) override {
    (void)q.process([](const DescriptorChain&, DescriptorReader&, DescriptorWriter& wr) -> Result<uint32_t> {
      uint32_t v = 1;
      CANOPY_TRY(wr.write_obj(v));
      return wr.bytes_written();
    });
  }
};

void BM_VirtqueueRoundTrip(benchmark::State& state) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  pid_t child = fork();
  if (child == 0) {
    close(sv[0]);
    NopDevice dev;
    Backend backend(dev);
    (void)backend.run(UniqueFd(sv[1]));
    _exit(0);
  }
  close(sv[1]);
  Frontend fe{UniqueFd(sv[0])};
  UniqueFd ram = make_ram();
  GuestMemory mem;
  if (!mem.add_region({0, kMemSize, kUva, 0}, ram.dup()).ok()) std::abort();
  UniqueFd kick(eventfd(0, EFD_CLOEXEC)), call(eventfd(0, EFD_CLOEXEC));
  auto layout = layout_split_ring(256, 0x1000, kData - 0x1000);
  DriverQueue dq;
  DriverQueue::Config cfg;
  cfg.size = 256;
  cfg.addrs = layout->addrs;
  cfg.features = kVirtioFEventIdx;
  FrontendRegion r{{0, kMemSize, kUva, 0}, ram.get()};
  bool ok = dq.init(&mem, cfg).ok() &&
            fe.set_features(kVirtioFVersion1 | kVirtioFEventIdx | kVhostUserFProtocolFeatures).ok() &&
            fe.set_protocol_features(proto_bit(kProtoReplyAck)).ok() && fe.set_owner().ok() &&
            fe.set_mem_table(std::span<const FrontendRegion>(&r, 1)).ok() && fe.set_vring_num(0, 256).ok() &&
            fe.set_vring_base(0, 0).ok() &&
            fe.set_vring_addr(0, kUva + cfg.addrs.desc, kUva + cfg.addrs.avail, kUva + cfg.addrs.used).ok() &&
            fe.set_vring_call(0, call.get()).ok() && fe.set_vring_kick(0, kick.get()).ok() &&
            fe.set_vring_enable(0, true).ok();
  if (!ok) {
    state.SkipWithError("vhost-user set-up failed");
  } else {
    for (auto _ : state) {
      if (!dq.add({}, {{kData, 4}}, 1).ok() || !dq.publish().ok()) std::abort();
      if (dq.kick_needed()) signal_fd(kick.get());
      for (;;) {
        auto u = dq.get_used();
        if (!u.ok()) std::abort();
        if (*u) break;
        auto pending = dq.enable_interrupts();
        if (pending.ok() && !*pending) wait_readable(call.get());
      }
    }
  }
  kill(child, SIGTERM);
  waitpid(child, nullptr, 0);
}
BENCHMARK(BM_VirtqueueRoundTrip)->UseRealTime();

void BM_DescriptorsPolled(benchmark::State& state) {
  UniqueFd ram = make_ram();
  GuestMemory mem;
  if (!mem.add_region({0, kMemSize, 0, 0}, std::move(ram)).ok()) std::abort();
  constexpr uint16_t kSize = 256;
  auto layout = layout_split_ring(kSize, 0x1000, kData - 0x1000);
  DriverQueue dq;
  DriverQueue::Config cfg;
  cfg.size = kSize;
  cfg.addrs = layout->addrs;
  if (!dq.init(&mem, cfg).ok()) std::abort();
  DeviceQueue devq;
  if (!devq.configure(&mem, kSize, cfg.addrs, 0).ok()) std::abort();
  std::atomic<bool> stop{false};
  std::thread device([&] {
    DescriptorChain chain;
    while (!stop.load(std::memory_order_relaxed)) {
      auto r = devq.pop(chain);
      if (!r.ok()) std::abort();
      if (!*r) continue;
      if (!devq.push_used(chain.head(), chain.writable_bytes()).ok()) std::abort();
    }
  });
  uint64_t descriptors = 0;
  for (auto _ : state) {
    // One iteration: fill the ring, publish, and wait until the polling device has returned it all.
    while (dq.num_free() > 0) {
      if (!dq.add({{kData, 64}}, {}, 0).ok()) std::abort();
    }
    if (!dq.publish().ok()) std::abort();
    while (dq.in_flight() > 0) {
      auto u = dq.get_used();
      if (!u.ok()) std::abort();
      if (*u) ++descriptors;
    }
  }
  stop = true;
  device.join();
  state.SetItemsProcessed(int64_t(descriptors));
}
BENCHMARK(BM_DescriptorsPolled)->UseRealTime();

void BM_Memcpy(benchmark::State& state) {
  const size_t n = size_t(state.range(0));
  std::vector<uint8_t> a(n, 1), b(n);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), n);
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(n));
}
BENCHMARK(BM_Memcpy)->Arg(1 << 20);

void BM_GuestMemoryRead(benchmark::State& state) {
  const size_t n = size_t(state.range(0));
  GuestMemory mem;
  if (!mem.add_region({0, kMemSize, 0, 0}, make_ram()).ok()) std::abort();
  if (!mem.fill(0, 1, n).ok()) std::abort();
  std::vector<uint8_t> b(n);
  for (auto _ : state) {
    if (!mem.read(0, b.data(), n).ok()) std::abort();
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(n));
}
BENCHMARK(BM_GuestMemoryRead)->Arg(1 << 20);

[[maybe_unused]] const bool kRatios = [] {
  using canopy::bench::add_ratio;
  add_ratio({"virtqueue round trip / eventfd ping-pong", "BM_VirtqueueRoundTrip/real_time",
             "BM_EventfdPingPong/real_time", "time"});
  add_ratio({"guest memory read / memcpy bandwidth", "BM_GuestMemoryRead/1048576", "BM_Memcpy/1048576", "rate"});
  return true;
}();

}  // namespace

CANOPY_BENCH_MAIN()
