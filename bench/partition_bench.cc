// Guest partitions under canopy-vmm's supervisor: how fast a partition goes from "start" to its first
// completed virtqueue request (back-end spawn + handshake, partition spawn + confinement, HELLO, device
// init, one virtio-rng round trip), and how fast a killed partition is back doing the same.
// Reference measured in the same run: spawning and reaping a trivial process (/bin/true) with the same
// clone3 path, the floor for anything that starts processes.
#include <signal.h>

#include <chrono>
#include <string>

#include "bench_main.h"
#include "canopy/base/log.h"
#include "canopy/config/manifest.h"
#include "canopy/hypervisor/process.h"
#include "canopy/hypervisor/supervisor.h"

namespace {

using namespace canopy;
using namespace canopy::hypervisor;
using Clock = std::chrono::steady_clock;

Manifest manifest() {
  auto r = load_manifest_string(
      "[[vm]]\nname = \"p\"\nbackend = \"partition\"\nmemory = \"32M\"\nrestart = \"always\"\nmax_restarts = 1000\n"
      "app = \"canopy-partition-rng\"\nargs = [\"--interval-ms\", \"5\"]\n"
      "[[vm.device]]\ntype = \"rng\"\nbackend = \"canopy-vhost-rng\"\n",
      "bench.toml");
  if (!r.ok()) std::abort();
  return *r.manifest;
}

struct Harness {
  std::unique_ptr<Supervisor> sup;
  bool first = false;  // a heartbeat reporting >= 1 completed request since the last start
  Clock::time_point first_at;

  explicit Harness(bool confine) {
    SupervisorOptions o;
    o.confine = confine;
    o.stop_grace_ms = 2000;
    auto s = Supervisor::create(manifest(), o);
    if (!s.ok()) std::abort();
    sup = std::move(*s);
    sup->on_vm_started = [this](const std::string&) { first = false; };
    sup->on_heartbeat = [this](const std::string&, uint64_t progress) {
      if (!first && progress >= 1) {
        first = true;
        first_at = Clock::now();
      }
    };
  }
  bool wait_first() {
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!first && Clock::now() < deadline) sup->run_once(50);
    return first;
  }
  VmStatus status() { return sup->status()[0]; }
  void stop() {
    (void)sup->stop_vm("p");
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (status().pid > 0 && Clock::now() < deadline) sup->run_once(20);
  }
};

void BM_PartitionStartToFirstVirtqueueMessage(benchmark::State& state) {
  set_log_level(LogLevel::kWarn);
  Harness h(state.range(0) != 0);
  for (auto _ : state) {
    h.first = false;
    const auto t0 = Clock::now();
    if (!h.sup->start_vm("p").ok() || !h.wait_first()) {
      state.SkipWithError("partition did not start");
      break;
    }
    state.SetIterationTime(std::chrono::duration<double>(h.first_at - t0).count());
    h.stop();
  }
  state.SetLabel(state.range(0) ? "confined" : "unconfined");
}
BENCHMARK(BM_PartitionStartToFirstVirtqueueMessage)->Arg(1)->Arg(0)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_PartitionRestartAfterKill(benchmark::State& state) {
  set_log_level(LogLevel::kWarn);
  Harness h(true);
  for (auto _ : state) {
    // Untimed: a running partition that has completed a request, with a fresh restart count (so every
    // measured restart is a first restart, without back-off).
    state.PauseTiming();
    h.stop();
    if (!h.sup->start_vm("p").ok() || !h.wait_first()) {
      state.SkipWithError("partition did not start");
      break;
    }
    const pid_t pid = h.status().pid;
    state.ResumeTiming();
    const auto t0 = Clock::now();
    kill(pid, SIGKILL);
    h.first = false;
    if (!h.wait_first()) {
      state.SkipWithError("partition did not come back");
      break;
    }
    state.SetIterationTime(std::chrono::duration<double>(h.first_at - t0).count());
  }
  h.stop();
}
BENCHMARK(BM_PartitionRestartAfterKill)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_SpawnTrivialProcess(benchmark::State& state) {
  for (auto _ : state) {
    SpawnOptions o;
    o.path = "/bin/true";
    o.argv = {"/bin/true"};
    auto c = spawn(o);
    if (!c.ok() || !c->wait(5000).ok()) {
      state.SkipWithError("spawn failed");
      break;
    }
  }
}
BENCHMARK(BM_SpawnTrivialProcess)->Unit(benchmark::kMillisecond)->UseRealTime();

const bool kRatios = [] {
  using canopy::bench::add_ratio;
  add_ratio({"partition start -> first virtqueue message / trivial process spawn",
             "BM_PartitionStartToFirstVirtqueueMessage/1/manual_time", "BM_SpawnTrivialProcess/real_time", "time"});
  add_ratio({"partition restart after kill / trivial process spawn", "BM_PartitionRestartAfterKill/manual_time",
             "BM_SpawnTrivialProcess/real_time", "time"});
  add_ratio({"confined / unconfined partition start", "BM_PartitionStartToFirstVirtqueueMessage/1/manual_time",
             "BM_PartitionStartToFirstVirtqueueMessage/0/manual_time", "time"});
  return true;
}();

}  // namespace

CANOPY_BENCH_MAIN()
