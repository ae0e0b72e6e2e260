// The audio policy table: the manifest's [[audio.route]] policies as canopy-vmm hands them to every
// canopy-snd of a cockpit (docs/audio-policy.md), so that priorities and ducking come from the manifest
// and never from a back-end.
//
// canopy-vmm writes the table into a memfd and seals it (F_SEAL_WRITE): no process can change it
// after. Beside it each VM with a virtio-snd device has a state segment (one PolicyStateSlot per
// stream: running, last refreshed) that only that VM's canopy-snd gets writable; every other canopy-snd
// gets it read-only. A stream's slot is fixed by the table (VM index x kPolicySlotsPerVm + its place),
// so there is nothing to claim and nothing to fill.
//
// Layout (little-endian): a 320-byte header (magic "CNPT", version, VM count, slots per VM, the VM
// names), then kPolicyTableMaxVms x kPolicySlotsPerVm 64-byte entries (unused: all zero).
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/config/manifest.h"
#include "canopy/config/snd_options.h"

namespace canopy::config {

inline constexpr uint32_t kPolicyTableMaxVms = 8;
inline constexpr uint32_t kPolicySlotsPerVm = 8;
inline constexpr size_t kPolicyTableBytes = 320 + size_t(kPolicyTableMaxVms) * kPolicySlotsPerVm * 64;

struct PolicyTableEntry {
  std::string stream;  // "" = unused
  StreamPolicy policy;
};

struct PolicyTable {
  std::vector<std::string> vms;           // VM index -> name
  std::vector<PolicyTableEntry> entries;  // kPolicyTableMaxVms * kPolicySlotsPerVm, VM-major
  // The slot of `vm`'s `stream`, or -1.
  int slot_of(const std::string& vm, const std::string& stream) const;
};

// Every VM with a virtio-snd device, in manifest order, with each of its streams (and their
// route's policy; a stream without a route gets StreamPolicy's defaults). Errors: more VMs or streams
// than the table has room for.
Result<PolicyTable> policy_table_from_manifest(const Manifest& m);
std::vector<uint8_t> encode_policy_table(const PolicyTable& t);
// Checks everything (magic, version, counts, names, values in range). Errors: kInvalidArgument.
Result<PolicyTable> parse_policy_table(std::span<const uint8_t> bytes);

// One stream's running state in its VM's state segment.
struct PolicyStateSlot {
  std::atomic<uint32_t> active;
  uint32_t reserved;
  std::atomic<uint64_t> refreshed_ns;  // CLOCK_MONOTONIC
};
static_assert(sizeof(PolicyStateSlot) == 16);
inline constexpr size_t kPolicyStateBytes = 4096;  // a page; kPolicySlotsPerVm slots at its start

}  // namespace canopy::config
