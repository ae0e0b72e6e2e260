#include "canopy/config/snd_options.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string_view>
#include <vector>

namespace canopy::config {

namespace proto = protocol::virtio_snd;

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  return out;
}

bool to_u32(const std::string& s, uint32_t max, uint32_t& out) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos || s.size() > 10) return false;
  const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  if (v > max) return false;
  out = uint32_t(v);
  return true;
}

bool to_double(const std::string& s, double& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (errno || *end || !std::isfinite(v)) return false;
  out = v;
  return true;
}

bool valid_name(const std::string& s) {
  return !s.empty() && s.size() <= 64 &&
         s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == std::string::npos;
}

Error bad(const char* what) { return make_error(Errc::kInvalidArgument, what); }

}  // namespace

Result<StreamConfig> parse_stream_spec(const std::string& spec) {
  StreamConfig s;
  bool have_dir = false;
  for (const std::string& kv : split(spec, ',')) {
    const size_t eq = kv.find('=');
    const std::string k = kv.substr(0, eq), v = eq == std::string::npos ? "" : kv.substr(eq + 1);
    const bool flag = eq == std::string::npos;
    uint32_t n = 0;
    if (k == "name" && valid_name(v)) s.name = v;
    else if (k == "dir" && (v == "output" || v == "input")) {
      s.direction = v == "output" ? proto::Direction::kOutput : proto::Direction::kInput;
      have_dir = true;
    } else if (k == "channels" && to_u32(v, proto::kChmapMaxSize, n) && n >= 1) {
      s.channels_max = uint8_t(n);
      if (s.channels_min > n) s.channels_min = 1;
    } else if (k == "channels-min" && to_u32(v, proto::kChmapMaxSize, n) && n >= 1) s.channels_min = uint8_t(n);
    else if (k == "rates") {
      s.rates = 0;
      for (const std::string& r : split(v, ':')) {
        const int bit = to_u32(r, 1000000, n) ? proto::rate_bit(n) : -1;
        if (bit < 0) return bad("--stream: rates must be virtio-snd rates separated by ':' (e.g. 44100:48000)");
        s.rates |= 1ull << bit;
      }
    } else if (k == "role" && valid_name(v)) s.role = v;
    else if (k == "target" && !v.empty() && v.size() < 256) s.target = v;
    else if (k == "positions") {
      s.positions.clear();
      for (const std::string& p : split(v, ':')) {
        const int pos = proto::position_from_name(p.c_str());
        if (pos < 0) return bad("--stream: positions are names like FL:FR:FC:LFE separated by ':'");
        s.positions.push_back(uint8_t(pos));
      }
    } else if (k == "priority" && to_u32(v, 100, n)) s.policy.priority = n;
    else if (k == "duck-others" && flag) s.policy.duck_others = true;
    else if (k == "exclusive" && flag) s.policy.exclusive = true;
    else if (k == "duck-db" && to_double(v, s.policy.duck_db) && s.policy.duck_db <= 0 && s.policy.duck_db >= kMuteDb) {
    } else if (k == "ramp-ms" && to_u32(v, 10000, n)) s.policy.ramp_ms = n;
    else
      return bad(
          "--stream: unknown key or bad value (keys: name dir channels channels-min rates role target positions "
          "priority duck-others duck-db ramp-ms exclusive)");
  }
  if (s.name.empty() || !have_dir) return bad("--stream: name= and dir= are required");
  if (s.channels_min > s.channels_max) return bad("--stream: channels-min above channels");
  if (!s.positions.empty() && s.positions.size() != s.channels_max)
    return bad("--stream: positions must name one position per channel");
  return s;
}

Result<JackConfig> parse_jack_spec(const std::string& spec) {
  JackConfig j;
  bool have_dir = false, have_device = false;
  for (const std::string& kv : split(spec, ',')) {
    const size_t eq = kv.find('=');
    const std::string k = kv.substr(0, eq), v = eq == std::string::npos ? "" : kv.substr(eq + 1);
    if (k == "name" && valid_name(v)) j.name = v;
    else if (k == "dir" && (v == "output" || v == "input")) {
      j.direction = v == "output" ? proto::Direction::kOutput : proto::Direction::kInput;
      have_dir = true;
    } else if (k == "device") {
      have_device = true;
      if (v == "line-out") j.hda_device = proto::kHdaDevLineOut;
      else if (v == "speaker") j.hda_device = proto::kHdaDevSpeaker;
      else if (v == "headphone") j.hda_device = proto::kHdaDevHpOut;
      else if (v == "line-in") j.hda_device = proto::kHdaDevLineIn;
      else if (v == "mic") j.hda_device = proto::kHdaDevMicIn;
      else return bad("--jack: device is line-out, speaker, headphone, line-in or mic");
    } else if (k == "connected" && (v == "0" || v == "1")) j.connected = v == "1";
    else return bad("--jack: unknown key or bad value (keys: name dir device connected)");
  }
  if (j.name.empty() || !have_dir) return bad("--jack: name= and dir= are required");
  if (!have_device)
    j.hda_device = j.direction == proto::Direction::kOutput ? proto::kHdaDevLineOut : proto::kHdaDevMicIn;
  return j;
}

std::string stream_spec(const StreamConfig& s) {
  std::string o = "name=" + s.name + ",dir=" + (s.direction == proto::Direction::kOutput ? "output" : "input") +
                  ",channels=" + std::to_string(s.channels_max);
  if (s.channels_min != 1) o += ",channels-min=" + std::to_string(s.channels_min);
  if (s.rates) {
    o += ",rates=";
    bool first = true;
    for (int b = 0; b < proto::kRateCount; ++b)
      if (s.rates >> b & 1) {
        if (!first) o += ':';
        o += std::to_string(proto::kRates[b]);
        first = false;
      }
  }
  o += ",role=" + s.role;
  if (!s.target.empty()) o += ",target=" + s.target;
  if (!s.positions.empty()) {
    o += ",positions=";
    for (size_t i = 0; i < s.positions.size(); ++i) {
      if (i) o += ':';
      o += proto::position_name(s.positions[i]);
    }
  }
  o += ",priority=" + std::to_string(s.policy.priority);
  if (s.policy.duck_others) o += ",duck-others";
  if (s.policy.exclusive) o += ",exclusive";
  char db[32];
  std::snprintf(db, sizeof db, "%g", s.policy.duck_db);
  o += std::string(",duck-db=") + db + ",ramp-ms=" + std::to_string(s.policy.ramp_ms);
  return o;
}

std::string jack_spec(const JackConfig& j) {
  const char* device = "line-out";
  switch (j.hda_device) {
    case proto::kHdaDevSpeaker: device = "speaker"; break;
    case proto::kHdaDevHpOut: device = "headphone"; break;
    case proto::kHdaDevLineIn: device = "line-in"; break;
    case proto::kHdaDevMicIn: device = "mic"; break;
    default: break;
  }
  return "name=" + j.name + ",dir=" + (j.direction == proto::Direction::kOutput ? "output" : "input") +
         ",device=" + device + ",connected=" + (j.connected ? "1" : "0");
}

}  // namespace canopy::config
