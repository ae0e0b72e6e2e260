// Criticality: how much a VM's output matters when the shared machine is short (ISO 26262's split of a
// cockpit: the cluster is safety relevant, the infotainment is not). One definition for everyone: the
// manifest says it per VM and per display; the compositor's frame scheduler and canopy-gpu's priority
// follow it. Ordered: a smaller value is more critical (safety > high > normal > low).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace canopy::config {

enum class Criticality : uint8_t { kSafety = 0, kHigh = 1, kNormal = 2, kLow = 3 };

// "safety", "high", "normal", "low".
const char* to_string(Criticality c);
std::optional<Criticality> parse_criticality(std::string_view text);
// a is at least as critical as b.
constexpr bool at_least(Criticality a, Criticality b) { return uint8_t(a) <= uint8_t(b); }

}  // namespace canopy::config
