// Timeline fence benchmarks.
//  BM_FutexPingPong   reference: two processes bounce a counter through a raw shared futex (the floor for
//                     a cross-process sleep/wake round trip on this machine).
//  BM_FencePingPong   the same round trip through two canopy Timelines (signal -> wait), one per direction.
//  BM_FenceSignalNoWaiter  the producer's cost of signal() with nobody asleep (atomics + eventfd write).
//  BM_MemcpyBandwidth the copy-path reference: 64 MiB memcpy between shared-memory buffers.
// Prints "ratio fence/futex = X" (round-trip time of the fence over the raw futex, measured in this run).
#include <benchmark/benchmark.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstring>

#include "bench_main.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/buffers/timeline.h"

namespace {

using canopy::buffers::Access;
using canopy::buffers::SharedMemory;
using canopy::buffers::Timeline;

constexpr int kPingPongIterations = 10000;
constexpr uint32_t kStop = UINT32_MAX;

// --- raw shared futex ---------------------------------------------------------------------------------

// One direction of the ping-pong: a counter and the number of sleepers on it. The setter skips FUTEX_WAKE
// when nobody sleeps, as Timeline::signal does, so the ratio isolates the fence's own overhead.
struct RawWord {
  std::atomic<uint32_t> value;
  std::atomic<uint32_t> waiters;
};

struct RawPair {
  RawWord ping;
  RawWord pong;
};

void raw_wait_at_least(RawWord* w, uint32_t target) {
  for (;;) {
    const uint32_t v = w->value.load(std::memory_order_seq_cst);
    if (v >= target) return;
    w->waiters.fetch_add(1, std::memory_order_seq_cst);
    ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&w->value), FUTEX_WAIT, v, nullptr, nullptr, 0);
    w->waiters.fetch_sub(1, std::memory_order_seq_cst);
  }
}

void raw_set(RawWord* w, uint32_t v) {
  w->value.store(v, std::memory_order_seq_cst);
  if (w->waiters.load(std::memory_order_seq_cst) != 0)
    ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&w->value), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

void BM_FutexPingPong(benchmark::State& state) {
  void* mem = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    state.SkipWithError("mmap failed");
    return;
  }
  auto* pair = new (mem) RawPair{};
  const pid_t child = ::fork();
  if (child == 0) {
    ::alarm(60);
    for (uint32_t n = 1;; ++n) {
      raw_wait_at_least(&pair->ping, n);
      if (pair->ping.value.load(std::memory_order_acquire) == kStop) ::_exit(0);
      raw_set(&pair->pong, n);
    }
  }
  uint32_t n = 0;
  for (auto _ : state) {
    ++n;
    raw_set(&pair->ping, n);
    raw_wait_at_least(&pair->pong, n);
  }
  raw_set(&pair->ping, kStop);
  ::waitpid(child, nullptr, 0);
  ::munmap(mem, 4096);
}
BENCHMARK(BM_FutexPingPong)->Iterations(kPingPongIterations)->UseRealTime();

// --- timeline fences ----------------------------------------------------------------------------------

void BM_FencePingPong(benchmark::State& state) {
  // ping: produced by this process; pong: produced by the child (it attaches after the fork).
  auto ping = Timeline::create_producer();
  auto pong = Timeline::create();
  if (!ping.ok() || !pong.ok()) {
    state.SkipWithError("timeline creation failed");
    return;
  }
  const pid_t child = ::fork();
  if (child == 0) {
    ::alarm(60);
    if (!pong->attach_producer().ok()) ::_exit(2);
    for (uint64_t n = 1;; ++n) {
      auto r = ping->wait(n, Timeline::Clock::now() + std::chrono::seconds(10));
      if (r.code() == canopy::Errc::kProducerLost) ::_exit(0);  // the parent detached: done
      if (!r.ok() || !pong->signal(n).ok()) ::_exit(3);
    }
  }
  uint64_t n = 0;
  for (auto _ : state) {
    ++n;
    if (!ping->signal(n).ok() || !pong->wait(n, Timeline::Clock::now() + std::chrono::seconds(10)).ok()) {
      state.SkipWithError("fence round trip failed");
      break;
    }
  }
  ping->detach();
  int status = 0;
  ::waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) state.SkipWithError("fence child failed");
}
BENCHMARK(BM_FencePingPong)->Iterations(kPingPongIterations)->UseRealTime();

[[maybe_unused]] const bool kRatio =
    canopy::bench::add_ratio({"fence/futex", "BM_FencePingPong/iterations:10000/real_time",
                              "BM_FutexPingPong/iterations:10000/real_time", "time"});

void BM_FenceSignalNoWaiter(benchmark::State& state) {
  auto t = Timeline::create_producer();
  if (!t.ok()) {
    state.SkipWithError("timeline creation failed");
    return;
  }
  uint64_t n = 0;
  for (auto _ : state) {
    if (!t->signal(++n).ok()) state.SkipWithError("signal failed");
    if ((n & 0xffff) == 0) (void)t->consume_event();
  }
  state.SetItemsProcessed(int64_t(state.iterations()));
}
BENCHMARK(BM_FenceSignalNoWaiter)->Iterations(200000);

// --- memcpy ---------------------------------------------------------------------------------------------

void BM_MemcpyBandwidth(benchmark::State& state) {
  const uint64_t size = uint64_t(state.range(0));
  auto src = SharedMemory::create("bench-src", size);
  auto dst = SharedMemory::create("bench-dst", size);
  if (!src.ok() || !dst.ok()) {
    state.SkipWithError("memfd failed");
    return;
  }
  auto s = src->map(Access::kReadWrite);
  auto d = dst->map(Access::kReadWrite);
  if (!s.ok() || !d.ok()) {
    state.SkipWithError("map failed");
    return;
  }
  std::memset(s->data(), 0x5a, size);  // fault every page in before timing
  std::memset(d->data(), 0, size);
  for (auto _ : state) {
    std::memcpy(d->data(), s->data(), size);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(size));
}
BENCHMARK(BM_MemcpyBandwidth)->Arg(64 << 20)->Iterations(20)->UseRealTime();

}  // namespace

CANOPY_BENCH_MAIN()
