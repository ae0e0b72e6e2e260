#include "canopy/config/criticality.h"

namespace canopy::config {

const char* to_string(Criticality c) {
  switch (c) {
    case Criticality::kSafety: return "safety";
    case Criticality::kHigh: return "high";
    case Criticality::kNormal: return "normal";
    case Criticality::kLow: return "low";
  }
  return "?";
}

std::optional<Criticality> parse_criticality(std::string_view text) {
  for (Criticality c : {Criticality::kSafety, Criticality::kHigh, Criticality::kNormal, Criticality::kLow})
    if (text == to_string(c)) return c;
  return std::nullopt;
}

}  // namespace canopy::config
