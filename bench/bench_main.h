// Shared main() for Canopy's Google Benchmark suites: runs the benchmarks, then prints ratios of one
// result against a reference measured in the same run (e.g. virtqueue round trip / raw eventfd
// ping-pong), so reports compare against the machine's own physical limit, never a fixed number.
#pragma once

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace canopy::bench {

struct Ratio {
  std::string label;
  std::string numerator;    // benchmark name (as reported, e.g. "BM_Foo/real_time")
  std::string denominator;  // reference benchmark name
  std::string unit;         // "time" compares time per iteration; "rate" compares bytes/items per second
};

inline std::vector<Ratio>& ratios() {
  static std::vector<Ratio> r;
  return r;
}

inline bool add_ratio(Ratio r) {
  ratios().push_back(std::move(r));
  return true;
}

class RecordingReporter : public benchmark::ConsoleReporter {
 public:
  // Colour only on a terminal: report.sh greps the plain lines.
  RecordingReporter() : ConsoleReporter(isatty(STDOUT_FILENO) ? OO_Defaults : OO_Tabular) {}
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      Rec rec;
      rec.time_ns = r.GetAdjustedRealTime();  // in the run's time unit
      rec.time_unit = r.time_unit;
      for (const auto& [k, v] : r.counters) {
        if (k == "bytes_per_second" || k == "items_per_second") rec.rate = double(v);
      }
      results_[r.benchmark_name()] = rec;
    }
    ConsoleReporter::ReportRuns(runs);
  }
  void print_ratios() const {
    for (const auto& ratio : ratios()) {
      auto a = results_.find(ratio.numerator);
      auto b = results_.find(ratio.denominator);
      if (a == results_.end() || b == results_.end()) {
        std::printf("ratio %s: not measured (filtered out or failed)\n", ratio.label.c_str());
        continue;
      }
      double va, vb;
      if (ratio.unit == "rate") {
        va = a->second.rate;
        vb = b->second.rate;
      } else {
        va = a->second.time_ns * benchmark::GetTimeUnitMultiplier(b->second.time_unit) /
             benchmark::GetTimeUnitMultiplier(a->second.time_unit);
        vb = b->second.time_ns;
      }
      if (vb == 0) continue;
      std::printf("ratio %s = %.3f  (%s / %s)\n", ratio.label.c_str(), va / vb, ratio.numerator.c_str(),
                  ratio.denominator.c_str());
    }
    std::fflush(stdout);
  }

 private:
  struct Rec {
    double time_ns = 0;
    benchmark::TimeUnit time_unit = benchmark::kNanosecond;
    double rate = 0;
  };
  std::map<std::string, Rec> results_;
};

}  // namespace canopy::bench

#define CANOPY_BENCH_MAIN()                                           \
  int main(int argc, char** argv) {                                   \
    benchmark::Initialize(&argc, argv);                               \
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1; \
    canopy::bench::RecordingReporter reporter;                        \
    benchmark::RunSpecifiedBenchmarks(&reporter);                     \
    reporter.print_ratios();                                          \
    benchmark::Shutdown();                                            \
    return 0;                                                         \
  }
