// The cross-VM audio policy (the automotive AudioManager idea, docs/audio-policy.md): every canopy-snd
// process of a cockpit reads one small board in shared memory, one slot per stream with its priority,
// its ducking rule and whether it is running. Two boards:
//   - from canopy-vmm (PolicyBoard::from_vmm): the manifest's policy table, sealed (config/policy_table.h),
//     and a state segment per VM of which only its own is writable here. A back-end cannot change a
//     priority, take another stream's slot or write another VM's state.
//   - a shared file (PolicyBoard::open; canopy-snd without canopy-vmm): 64 slots each process claims
//     with the policy it declares itself, trusting every process that may open the file. Each stream reads the board on
//     every host cycle and ramps
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

  // Joins the shared board at `path` (created 0600 when absent; the file is the board).
  static Result<std::unique_ptr<PolicyBoard>> open(const std::string& path);
  // A private shared board (memfd): one process, tests.
  static Result<std::unique_ptr<PolicyBoard>> anonymous();
  // canopy-vmm's board: `table` the sealed policy table, `states` each VM's state segment in the table's
  // VM order (read-only descriptors but `own`'s), `vm` this back-end's VM. Errors: a table that does not
  // parse, a descriptor that does not map, a writable table.
  static Result<std::unique_ptr<PolicyBoard>> from_vmm(int table, const std::vector<int>& states,
                                                       const std::string& vm);
  virtual ~PolicyBoard() = default;

  // The slot of a stream; returns its index. `label` ("vm/stream") names it; `p` is its policy where
  // the board takes it from the back-end (the shared file), ignored where the manifest gives it.
  virtual Result<uint32_t> claim(const std::string& label, const StreamPolicy& p) = 0;
  virtual void release(uint32_t slot) = 0;
  virtual void set_active(uint32_t slot, bool active, uint64_t now_ns) = 0;
  virtual void refresh(uint32_t slot, uint64_t now_ns) = 0;

  struct Target {
    double db = 0;         // 0, a duck_db, or kMuteDb
    uint32_t ramp_ms = 0;  // the ramp of the stream that sets it
  };
  virtual Target target(uint32_t slot, uint64_t now_ns) const = 0;

  // "label priority=P active=0/1 ..." per used slot (canopy-snd --policy-status).
  virtual std::string describe(uint64_t now_ns) const = 0;
};

uint64_t monotonic_ns();

}  // namespace canopy::audio
