#include "canopy/config/policy_table.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "canopy/base/le.h"

namespace canopy::config {
namespace {

constexpr uint32_t kMagic = 0x54504e43;  // "CNPT"
constexpr uint32_t kVersion = 1;
constexpr size_t kNameBytes = 32;
constexpr uint32_t kDuck = 1, kExclusive = 2;

#pragma pack(push, 1)
struct Header {
  le32 magic;
  le32 version;
  le32 num_vms;
  le32 slots_per_vm;
  char vm[kPolicyTableMaxVms][kNameBytes];
  uint8_t pad[48];
};
struct Entry {
  char stream[kNameBytes];
  le32 used;
  le32 priority;
  le32 flags;
  le32 duck_mdb;  // -duck_db in milli-dB (0..96000)
  le32 ramp_ms;
  uint8_t pad[12];
};
#pragma pack(pop)
static_assert(sizeof(Header) == 320 && sizeof(Entry) == 64);
static_assert(kPolicyTableBytes == sizeof(Header) + size_t(kPolicyTableMaxVms) * kPolicySlotsPerVm * sizeof(Entry));

bool valid_name(const char* raw, std::string& out) {
  const size_t len = strnlen(raw, kNameBytes);
  if (len == 0 || len == kNameBytes) return false;
  for (size_t i = len; i < kNameBytes; ++i)
    if (raw[i] != '\0') return false;
  for (size_t i = 0; i < len; ++i) {
    const char c = raw[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
          c == '.'))
      return false;
  }
  out.assign(raw, len);
  return true;
}

}  // namespace

int PolicyTable::slot_of(const std::string& vm, const std::string& stream) const {
  for (size_t v = 0; v < vms.size(); ++v) {
    if (vms[v] != vm) continue;
    for (uint32_t k = 0; k < kPolicySlotsPerVm; ++k)
      if (entries[v * kPolicySlotsPerVm + k].stream == stream) return int(v * kPolicySlotsPerVm + k);
  }
  return -1;
}

Result<PolicyTable> policy_table_from_manifest(const Manifest& m) {
  PolicyTable t;
  t.entries.resize(size_t(kPolicyTableMaxVms) * kPolicySlotsPerVm);
  for (const VmConfig& c : m.vms) {
    if (!c.snd) continue;
    if (t.vms.size() == kPolicyTableMaxVms)
      return make_error(Errc::kLimit, "audio policy: more VMs with a sound device than the table holds (8)");
    const size_t v = t.vms.size();
    t.vms.push_back(c.name);
    uint32_t k = 0;
    for (const SndStream& s : c.snd->streams) {
      if (k == kPolicySlotsPerVm)
        return make_error(Errc::kLimit, "audio policy: a VM has more streams than the table holds (8)");
      if (s.name.empty() || s.name.size() >= kNameBytes || c.name.size() >= kNameBytes)
        return make_error(Errc::kInvalidArgument, "audio policy: a VM or stream name of 32 bytes or more");
      PolicyTableEntry& e = t.entries[v * kPolicySlotsPerVm + k++];
      e.stream = s.name;
      for (const AudioRoute& r : m.audio_routes)
        if (r.vm == c.name && r.stream == s.name)
          e.policy = {r.priority, r.duck_others, r.duck_db, r.ramp_ms, r.exclusive};
    }
  }
  return t;
}

std::vector<uint8_t> encode_policy_table(const PolicyTable& t) {
  std::vector<uint8_t> out(kPolicyTableBytes, 0);
  Header h{};
  h.magic = kMagic;
  h.version = kVersion;
  h.num_vms = uint32_t(t.vms.size());
  h.slots_per_vm = kPolicySlotsPerVm;
  for (size_t v = 0; v < t.vms.size() && v < kPolicyTableMaxVms; ++v)
    std::memcpy(h.vm[v], t.vms[v].data(), std::min(t.vms[v].size(), kNameBytes - 1));
  std::memcpy(out.data(), &h, sizeof h);
  for (size_t i = 0; i < t.entries.size() && i < size_t(kPolicyTableMaxVms) * kPolicySlotsPerVm; ++i) {
    const PolicyTableEntry& e = t.entries[i];
    if (e.stream.empty()) continue;
    Entry w{};
    std::memcpy(w.stream, e.stream.data(), std::min(e.stream.size(), kNameBytes - 1));
    w.used = 1;
    w.priority = e.policy.priority;
    w.flags = (e.policy.duck_others ? kDuck : 0) | (e.policy.exclusive ? kExclusive : 0);
    w.duck_mdb = uint32_t(std::lround(-e.policy.duck_db * 1000.0));
    w.ramp_ms = e.policy.ramp_ms;
    std::memcpy(out.data() + sizeof(Header) + i * sizeof(Entry), &w, sizeof w);
  }
  return out;
}

Result<PolicyTable> parse_policy_table(std::span<const uint8_t> bytes) {
  auto bad = [](const char* what) { return make_error(Errc::kInvalidArgument, what); };
  if (bytes.size() != kPolicyTableBytes) return bad("audio policy table: wrong size");
  Header h;
  std::memcpy(&h, bytes.data(), sizeof h);
  if (h.magic.get() != kMagic || h.version.get() != kVersion) return bad("audio policy table: not of this version");
  if (h.num_vms.get() > kPolicyTableMaxVms || h.slots_per_vm.get() != kPolicySlotsPerVm)
    return bad("audio policy table: counts out of range");
  PolicyTable t;
  for (uint32_t v = 0; v < h.num_vms.get(); ++v) {
    std::string name;
    if (!valid_name(h.vm[v], name)) return bad("audio policy table: a bad VM name");
    t.vms.push_back(name);
  }
  t.entries.resize(size_t(kPolicyTableMaxVms) * kPolicySlotsPerVm);
  for (size_t i = 0; i < t.entries.size(); ++i) {
    Entry w;
    std::memcpy(&w, bytes.data() + sizeof(Header) + i * sizeof(Entry), sizeof w);
    if (w.used.get() == 0) continue;
    if (w.used.get() != 1 || i / kPolicySlotsPerVm >= t.vms.size()) return bad("audio policy table: a stray entry");
    PolicyTableEntry& e = t.entries[i];
    if (!valid_name(w.stream, e.stream)) return bad("audio policy table: a bad stream name");
    if (w.priority.get() > 100 || w.flags.get() > 3 || w.duck_mdb.get() > 96000 || w.ramp_ms.get() > 10000)
      return bad("audio policy table: a value out of range");
    e.policy = {w.priority.get(), (w.flags.get() & kDuck) != 0, -double(w.duck_mdb.get()) / 1000.0, w.ramp_ms.get(),
                (w.flags.get() & kExclusive) != 0};
  }
  return t;
}

}  // namespace canopy::config
