// The cross-VM audio policy (the automotive AudioManager idea, docs/audio-policy.md): every canopy-snd
// process of a cockpit shares one small board in shared memory, one slot per stream with its priority,
// its ducking rule and whether it is running. Each stream reads the board on every host cycle and ramps
// its own gain toward the target it finds there, so a cluster chime ducks the IVI's music within one
// host cycle of its PCM_START, sample-accurately, with no daemon and no IPC round trip.
//
// Target of a stream S: the lowest of
//   - duck_db of every running stream with duck_others and a higher priority than S (ramped over that
//     stream's ramp_ms), and
//   - kMuteDb for every running exclusive stream with a higher priority than S;
// 0 dB when there is none. A running slot counts only while its owner refreshes it (a crashed or hung
// process stops ducking others after kStaleNs); slots of dead processes are reclaimed.
//
// Threading: lock-free (atomics in a shared mapping); any thread, any process.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "canopy/audio/device.h"
#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy::audio {

class PolicyBoard {
 public:
  static constexpr uint32_t kSlots = 64;
  static constexpr uint64_t kStaleNs = 1'000'000'000;  // a running slot not refreshed for this long is ignored

  // Joins the board at `path` (created 0600 when absent; the file is the board).
  static Result<std::unique_ptr<PolicyBoard>> open(const std::string& path);
  // A private board (memfd): one process, tests.
  static Result<std::unique_ptr<PolicyBoard>> anonymous();
  ~PolicyBoard();

  // Takes a free slot for a stream; returns its index. `label` ("vm/stream") is for status output.
  Result<uint32_t> claim(const std::string& label, const StreamPolicy& p);
  void release(uint32_t slot);
  void set_active(uint32_t slot, bool active, uint64_t now_ns);
  void refresh(uint32_t slot, uint64_t now_ns);

  struct Target {
    double db = 0;         // 0, a duck_db, or kMuteDb
    uint32_t ramp_ms = 0;  // the ramp of the stream that sets it
  };
  Target target(uint32_t slot, uint64_t now_ns) const;

  // "label priority=P active=0/1 ..." per used slot (canopy-snd --policy-status).
  std::string describe(uint64_t now_ns) const;

  struct Slot;

 private:
  PolicyBoard() = default;
  static Result<std::unique_ptr<PolicyBoard>> map(UniqueFd fd);
  UniqueFd fd_;
  Slot* slots_ = nullptr;
  size_t bytes_ = 0;
};

uint64_t monotonic_ns();

}  // namespace canopy::audio
