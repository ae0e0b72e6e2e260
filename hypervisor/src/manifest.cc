// VM manifest loader: TOML (toml++, header-only, no exceptions) -> plain structs, with every error collected.
#include "canopy/hypervisor/manifest.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <span>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <utility>

// toml++ turns its internal assertions into optimizer assumptions under NDEBUG (TOML_ASSERT_ASSUME ->
// __builtin_assume with clang), and some inputs break them: a table header starting with a non-ASCII
// character ("[\xc3\xa9]") fails `is_bare_key_character(*cp) || is_string_delimiter(*cp)` in parse_key(),
// which is then undefined behaviour. With NDEBUG hidden and TOML_ASSERT defined as nothing, those checks are
// neither assumptions nor aborts; the parser goes on and reports the syntax error (as GCC builds already do,
// where TOML_ASSUME is empty). NDEBUG only changes toml++'s assertions and pure/const attributes.
#ifdef NDEBUG
#define CANOPY_MANIFEST_NDEBUG 1
#undef NDEBUG
#endif
#define TOML_ASSERT(expr) static_cast<void>(0)
#define TOML_EXCEPTIONS 0
#define TOML_HEADER_ONLY 1
#include <toml++/toml.h>
#ifdef CANOPY_MANIFEST_NDEBUG
#define NDEBUG 1
#undef CANOPY_MANIFEST_NDEBUG
#endif

namespace canopy::hypervisor {
namespace {

template <typename E>
struct Choice {
  std::string_view name;
  E value;
};

constexpr Choice<Backend> kBackends[] = {
    {"kvm", Backend::kKvm}, {"partition", Backend::kPartition}, {"auto", Backend::kAuto}};
constexpr Choice<Criticality> kCriticalities[] = {{"safety", Criticality::kSafety},
                                                  {"high", Criticality::kHigh},
                                                  {"normal", Criticality::kNormal},
                                                  {"low", Criticality::kLow}};
constexpr Choice<RestartPolicy> kRestarts[] = {
    {"never", RestartPolicy::kNever}, {"on-failure", RestartPolicy::kOnFailure}, {"always", RestartPolicy::kAlways}};
constexpr Choice<StreamDirection> kDirections[] = {{"output", StreamDirection::kOutput},
                                                   {"input", StreamDirection::kInput}};
constexpr Choice<AudioRole> kRoles[] = {{"chime", AudioRole::kChime},  {"alert", AudioRole::kAlert},
                                        {"phone", AudioRole::kPhone},  {"navigation", AudioRole::kNavigation},
                                        {"voice", AudioRole::kVoice},  {"media", AudioRole::kMedia},
                                        {"system", AudioRole::kSystem}};
constexpr Choice<JackDevice> kJackDevices[] = {{"line-out", JackDevice::kLineOut},
                                               {"speaker", JackDevice::kSpeaker},
                                               {"headphone", JackDevice::kHeadphone},
                                               {"line-in", JackDevice::kLineIn},
                                               {"mic", JackDevice::kMic}};
// virtio-snd channel positions (virtio spec 5.14.6.8.1.1) a stream's channel map may name.
constexpr std::string_view kPositions[] = {"NA",   "MONO", "FL",  "FR",  "RL",   "RR",   "FC",  "LFE", "SL",
                                           "SR",   "RC",   "FLC", "FRC", "RLC",  "RRC",  "FLW", "FRW", "FLH",
                                           "FCH",  "FRH",  "TC",  "TFL", "TFR",  "TFC",  "TRL", "TRR", "TRC",
                                           "TFLC", "TFRC", "TSL", "TSR", "LLFE", "RLFE", "BC",  "BLC", "BRC"};
constexpr Choice<DisplayOutput> kOutputs[] = {
    {"kms", DisplayOutput::kKms}, {"window", DisplayOutput::kWindow}, {"headless", DisplayOutput::kHeadless}};

// PCM rates virtio-snd can express (VIRTIO_SND_PCM_RATE_*, virtio spec 5.14.6.6.2).
constexpr uint32_t kRates[] = {5512,  8000,  11025, 16000, 22050,  32000,  44100,
                               48000, 64000, 88200, 96000, 176400, 192000, 384000};

// Top-level sections reserved for later versions of the schema: named so that a manifest written for a newer
// canopy-vmm fails with a clear message instead of "unknown key".
constexpr std::string_view kReservedSections[] = {"host",    "network",  "storage", "input",
                                                  "console", "watchdog", "health",  "usb"};

template <typename E>
const char* choice_name(std::span<const Choice<E>> choices, E v) {
  for (const auto& c : choices)
    if (c.value == v) return c.name.data();  // the names are string literals (NUL-terminated)
  return "?";
}

// Printable, single-line, bounded rendering of outside text for error messages.
std::string quote(std::string_view s) {
  constexpr size_t kMaxShown = 64;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMaxShown; ++i) {
    const auto ch = static_cast<unsigned char>(s[i]);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20 || ch == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  if (s.size() > kMaxShown) out += "...";
  out += '"';
  return out;
}

std::string key_segment(std::string_view k) {
  const bool bare = !k.empty() && std::all_of(k.begin(), k.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
  });
  return bare ? std::string(k) : quote(k);
}

std::string sub(const std::string& path, std::string_view key) {
  return path.empty() ? key_segment(key) : path + "." + key_segment(key);
}
std::string idx(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

const char* type_name(toml::node_type t) {
  switch (t) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

std::string fmt_size(uint64_t v) {
  if (v != 0 && v % (1ull << 30) == 0) return std::to_string(v >> 30) + "G";
  if (v != 0 && v % (1ull << 20) == 0) return std::to_string(v >> 20) + "M";
  if (v != 0 && v % (1ull << 10) == 0) return std::to_string(v >> 10) + "K";
  return std::to_string(v);
}

bool valid_name(std::string_view s) {
  return !s.empty() && s.size() <= 32 && std::all_of(s.begin(), s.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
  });
}

// toml++ up to 3.4 reaches TOML_UNREACHABLE (undefined behaviour; with UBSan a trap) in
// impl::is_non_ascii_horizontal_whitespace() for some non-ASCII code points, e.g. `a = 1 \u00e9` or a
// multi-line string continuing after a line-ending backslash with U+00A7 (marzer/tomlplusplus#190, #295;
// fixed upstream by PR #305, 2026-07). This predicate is true exactly for the code points that reach it; the
// loader rejects them before toml++ sees the text. Inside strings they can still be written as \uXXXX.
bool tomlpp_whitespace_bug(char32_t c) {
#if TOML_LIB_MAJOR < 3 || (TOML_LIB_MAJOR == 3 && TOML_LIB_MINOR <= 4)
  if (c <= 0xA0 || c >= 0xFEFF || c == 0x3000) return false;
  const uint64_t child = (static_cast<uint64_t>(c) - 0xA0) / 0x3FA;  // < 64 for c < 0xFEFF
  if ((1ull << child) & 0x7FFFFFFFFFFFF75Eull) return false;
  return child != 5 && child != 7;
#else
  (void)c;
  return false;
#endif
}

// The first code point in `text` that tomlpp_whitespace_bug() rejects, with its 1-based line and column
// (counted in code points, as toml++ does). Invalid UTF-8 is left for toml++ to report.
struct BadCodePoint {
  char32_t cp;
  uint32_t line, column;
};
std::optional<BadCodePoint> find_unsupported_code_point(std::string_view text) {
  uint32_t line = 1, column = 1;
  for (size_t i = 0; i < text.size();) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    size_t len = 1;
    char32_t cp = b0;
    if (b0 >= 0xC0 && b0 < 0xF8) {
      len = b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
      cp = b0 & (0x7F >> len);
      for (size_t k = 1; k < len; ++k) {
        if (i + k >= text.size() || (static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) {
          len = 1;
          cp = 0xFFFD;
          break;
        }
        cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
      }
    }
    if (tomlpp_whitespace_bug(cp)) return BadCodePoint{cp, line, column};
    if (cp == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
    i += len;
  }
  return std::nullopt;
}

class Ctx {
 public:
  explicit Ctx(std::string_view file) : file_(file) {}

  void add(const toml::source_region& r, std::string path, std::string msg) {
    uint32_t line = r.begin.line, column = r.begin.column;
    if (line == 0) line = column = 1;  // the root table has no position of its own
    add_at(line, column, std::move(path), std::move(msg));
  }
  void add(const toml::node& n, std::string path, std::string msg) { add(n.source(), std::move(path), std::move(msg)); }
  void add_at(uint32_t line, uint32_t column, std::string path, std::string msg) {
    if (errors_.size() >= kMaxErrors) {
      overflow_ = true;
      return;
    }
    errors_.push_back(ManifestError{file_, line, column, std::move(path), std::move(msg)});
  }
  bool ok() const { return errors_.empty(); }
  // The errors in file order (toml++ tables iterate keys sorted by name, and cross-reference checks run
  // last), then the overflow note.
  std::vector<ManifestError> take() {
    // A stable sort by position (std::stable_sort trips a libstdc++ 12 deprecation warning under clang).
    std::vector<size_t> order(errors_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return std::tuple(errors_[a].line, errors_[a].column, a) < std::tuple(errors_[b].line, errors_[b].column, b);
    });
    std::vector<ManifestError> sorted;
    sorted.reserve(errors_.size() + 1);
    for (size_t i : order) sorted.push_back(std::move(errors_[i]));
    errors_ = std::move(sorted);
    if (overflow_)
      errors_.push_back(ManifestError{file_, 0, 0, "",
                                      "too many errors; only the first " + std::to_string(kMaxErrors) + " are shown"});
    return std::move(errors_);
  }

 private:
  std::string file_;
  std::vector<ManifestError> errors_;
  bool overflow_ = false;
};

// --- typed access to single nodes -------------------------------------------------------------------------

std::optional<std::string> node_str(Ctx& c, const toml::node& n, const std::string& path) {
  const auto* v = n.as_string();
  if (v == nullptr) {
    c.add(n, path, std::string("expected a string, got ") + type_name(n.type()));
    return std::nullopt;
  }
  const std::string& s = v->get();
  if (s.size() > kMaxStringBytes) {
    c.add(n, path, "string longer than " + std::to_string(kMaxStringBytes) + " bytes");
    return std::nullopt;
  }
  return s;
}

std::optional<int64_t> node_int(Ctx& c, const toml::node& n, const std::string& path, int64_t lo, int64_t hi) {
  const auto* v = n.as_integer();
  if (v == nullptr) {
    c.add(n, path, std::string("expected an integer, got ") + type_name(n.type()));
    return std::nullopt;
  }
  const int64_t x = v->get();
  if (x < lo || x > hi) {
    c.add(n, path, std::to_string(x) + " is out of range (" + std::to_string(lo) + ".." + std::to_string(hi) + ")");
    return std::nullopt;
  }
  return x;
}

std::optional<std::string> node_name(Ctx& c, const toml::node& n, const std::string& path) {
  auto s = node_str(c, n, path);
  if (s && !valid_name(*s)) {
    c.add(n, path, quote(*s) + " is not a valid name (1..32 of a-z, 0-9, -)");
    return std::nullopt;
  }
  return s;
}

template <typename E>
std::optional<E> node_choice(Ctx& c, const toml::node& n, const std::string& path, std::span<const Choice<E>> cs) {
  auto s = node_str(c, n, path);
  if (!s) return std::nullopt;
  for (const auto& ch : cs)
    if (ch.name == *s) return ch.value;
  std::string msg = quote(*s) + " is not one of ";
  for (size_t i = 0; i < cs.size(); ++i) msg += (i ? ", \"" : "\"") + std::string(cs[i].name) + "\"";
  c.add(n, path, std::move(msg));
  return std::nullopt;
}

const toml::table* node_table(Ctx& c, const toml::node& n, const std::string& path) {
  const auto* t = n.as_table();
  if (t == nullptr) c.add(n, path, std::string("expected a table, got ") + type_name(n.type()));
  return t;
}

const toml::array* node_array(Ctx& c, const toml::node& n, const std::string& path, size_t max) {
  const auto* a = n.as_array();
  if (a == nullptr) {
    c.add(n, path, std::string("expected an array, got ") + type_name(n.type()));
    return nullptr;
  }
  if (a->size() > max) {
    c.add(n, path, std::to_string(a->size()) + " entries; at most " + std::to_string(max) + " allowed");
    return nullptr;
  }
  return a;
}

}  // namespace

std::optional<uint64_t> parse_size(std::string_view t) {
  size_t digits = 0;
  while (digits < t.size() && t[digits] >= '0' && t[digits] <= '9') ++digits;
  const std::string_view suffix = t.substr(digits);
  unsigned shift = 0;
  if (digits == 0 || digits > 12) return std::nullopt;  // 12 digits << 30 cannot overflow 64 bits
  if (suffix == "K") shift = 10;
  else if (suffix == "M") shift = 20;
  else if (suffix == "G") shift = 30;
  else if (!suffix.empty()) return std::nullopt;
  uint64_t bytes = 0;
  for (size_t k = 0; k < digits; ++k) bytes = bytes * 10 + static_cast<uint64_t>(t[k] - '0');
  return bytes << shift;
}

namespace {

// Sizes: integer bytes, or a string of digits with an optional binary suffix K, M or G.
std::optional<uint64_t> node_size(Ctx& c, const toml::node& n, const std::string& path, uint64_t lo, uint64_t hi) {
  uint64_t bytes = 0;
  std::string shown;
  if (const auto* i = n.as_integer()) {
    if (i->get() < 0) {
      c.add(n, path, std::to_string(i->get()) + " is not a size (use e.g. 512M, 2G)");
      return std::nullopt;
    }
    bytes = static_cast<uint64_t>(i->get());
    shown = std::to_string(bytes);
  } else if (const auto* s = n.as_string()) {
    shown = quote(s->get());
    const auto parsed = parse_size(s->get());
    if (!parsed) {
      c.add(n, path, shown + " is not a size (use e.g. 512M, 2G)");
      return std::nullopt;
    }
    bytes = *parsed;
  } else {
    c.add(n, path,
          std::string("expected a size (a string like \"512M\" or integer bytes), got ") + type_name(n.type()));
    return std::nullopt;
  }
  if (bytes < lo || bytes > hi) {
    c.add(n, path, shown + " is out of range (" + fmt_size(lo) + ".." + fmt_size(hi) + ")");
    return std::nullopt;
  }
  if (bytes % 4096 != 0) {
    c.add(n, path, shown + " is not a multiple of 4K");
    return std::nullopt;
  }
  return bytes;
}

// --- tables with a fixed set of keys ---------------------------------------------------------------------

class Reader {
 public:
  Reader(Ctx& c, const toml::table& t, std::string path, std::initializer_list<std::string_view> known)
      : c_(c), t_(t), path_(std::move(path)) {
    for (auto&& [k, v] : t) {
      (void)v;
      if (std::find(known.begin(), known.end(), k.str()) != known.end()) continue;
      std::string msg = "unknown key (known: ";
      bool first = true;
      for (auto kk : known) {
        msg += first ? "" : ", ";
        msg += kk;
        first = false;
      }
      c_.add(k.source(), sub(path_, k.str()), msg + ")");
    }
  }

  const std::string& path() const { return path_; }
  const toml::table& table() const { return t_; }
  std::string at(std::string_view key) const { return sub(path_, key); }

  // The node for `key`, or null (reporting it when required).
  const toml::node* get(std::string_view key, bool required, std::string_view why = {}) {
    const toml::node* n = t_.get(key);
    if (n == nullptr && required)
      c_.add(t_, path_, "missing required key \"" + std::string(key) + "\"" + std::string(why));
    return n;
  }

  template <typename T, typename F>
  void read(std::string_view key, bool required, T& out, F&& conv) {
    if (const auto* n = get(key, required)) {
      if (auto v = conv(*n, at(key))) out = static_cast<T>(*v);
    }
  }

  void str(std::string_view key, bool required, std::string& out) {
    read(key, required, out, [&](const toml::node& n, const std::string& p) { return node_str(c_, n, p); });
  }
  void name(std::string_view key, bool required, std::string& out) {
    read(key, required, out, [&](const toml::node& n, const std::string& p) { return node_name(c_, n, p); });
  }
  template <typename T>
  void integer(std::string_view key, bool required, T& out, int64_t lo, int64_t hi) {
    read(key, required, out, [&](const toml::node& n, const std::string& p) { return node_int(c_, n, p, lo, hi); });
  }
  // A number (integer or float) in [lo, hi].
  void number(std::string_view key, bool required, double& out, double lo, double hi) {
    read(key, required, out, [&](const toml::node& n, const std::string& p) -> std::optional<double> {
      double v = 0;
      if (const auto* i = n.as_integer()) v = double(i->get());
      else if (const auto* f = n.as_floating_point()) v = f->get();
      else {
        c_.add(n, p, std::string("expected a number, got ") + type_name(n.type()));
        return std::nullopt;
      }
      if (!(v >= lo && v <= hi)) {  // NaN fails too
        std::ostringstream o;
        o << v << " is out of range (" << lo << ".." << hi << ")";
        c_.add(n, p, o.str());
        return std::nullopt;
      }
      return v;
    });
  }
  void boolean(std::string_view key, bool required, bool& out) {
    read(key, required, out, [&](const toml::node& n, const std::string& p) -> std::optional<bool> {
      if (const auto* b = n.as_boolean()) return b->get();
      c_.add(n, p, std::string("expected a boolean, got ") + type_name(n.type()));
      return std::nullopt;
    });
  }
  template <typename E, size_t N>
  void choice(std::string_view key, bool required, E& out, const Choice<E> (&cs)[N]) {
    read(key, required, out, [&](const toml::node& n, const std::string& p) {
      return node_choice<E>(c_, n, p, std::span<const Choice<E>>(cs, N));
    });
  }
  const toml::array* array(std::string_view key, bool required, size_t max) {
    const auto* n = get(key, required);
    return n ? node_array(c_, *n, at(key), max) : nullptr;
  }
  const toml::table* subtable(std::string_view key) {
    const auto* n = get(key, false);
    return n ? node_table(c_, *n, at(key)) : nullptr;
  }

 private:
  Ctx& c_;
  const toml::table& t_;
  std::string path_;
};

// Arrays of tables ([[x]] or [{...}, ...]): calls f(table, path, index) for each table element.
template <typename F>
void each_table(Ctx& c, const toml::array& a, const std::string& path, F&& f) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (const auto* t = node_table(c, a[i], idx(path, i))) f(*t, idx(path, i), i);
  }
}

std::vector<std::string> string_list(Ctx& c, const toml::array& a, const std::string& path, bool names) {
  std::vector<std::string> out;
  for (size_t i = 0; i < a.size(); ++i) {
    auto s = names ? node_name(c, a[i], idx(path, i)) : node_str(c, a[i], idx(path, i));
    if (s) out.push_back(std::move(*s));
  }
  return out;
}

// --- sections ---------------------------------------------------------------------------------------------

struct VmSource {
  const toml::table* table = nullptr;
  const toml::array* start_after = nullptr;
};

}  // namespace

uint32_t virtio_device_id(std::string_view type) {
  static constexpr std::pair<std::string_view, uint32_t> kIds[] = {
      {"console", 3}, {"rng", 4}, {"input", 18}, {"vsock", 19}, {"scmi", 32}, {"i2c", 34}, {"can", 36}, {"gpio", 41}};
  for (const auto& [n, id] : kIds) {
    if (n == type) return id;
  }
  return 0;
}

namespace {

GpuConfig parse_gpu(Ctx& c, const toml::table& t, const std::string& path) {
  GpuConfig g;
  Reader r(c, t, path, {"scanouts", "backend", "args"});
  if (const auto* a = r.array("args", false, kMaxArgs)) g.args = string_list(c, *a, r.at("args"), false);
  if (const auto* a = r.array("scanouts", true, kMaxScanouts)) {
    if (a->empty()) c.add(*a, r.at("scanouts"), "at least one scanout is required");
    each_table(c, *a, r.at("scanouts"), [&](const toml::table& st, const std::string& sp, size_t) {
      Scanout s;
      Reader sr(c, st, sp, {"width", "height", "refresh_hz"});
      sr.integer("width", true, s.width, 1, kMaxScanoutDimension);
      sr.integer("height", true, s.height, 1, kMaxScanoutDimension);
      sr.integer("refresh_hz", false, s.refresh_hz, 1, kMaxRefreshHz);
      g.scanouts.push_back(s);
    });
  }
  r.str("backend", false, g.backend);
  return g;
}

SndConfig parse_snd(Ctx& c, const toml::table& t, const std::string& path) {
  SndConfig sc;
  Reader r(c, t, path, {"streams", "jacks", "backend", "args"});
  if (const auto* a = r.array("args", false, kMaxArgs)) sc.args = string_list(c, *a, r.at("args"), false);
  if (const auto* a = r.array("jacks", false, kMaxJacks)) {
    each_table(c, *a, r.at("jacks"), [&](const toml::table& jt, const std::string& jp, size_t) {
      SndJack j;
      Reader jr(c, jt, jp, {"name", "direction", "device", "connected"});
      jr.name("name", true, j.name);
      jr.choice("direction", true, j.direction, kDirections);
      if (j.direction == StreamDirection::kInput) j.device = JackDevice::kMic;
      jr.choice("device", false, j.device, kJackDevices);
      jr.boolean("connected", false, j.connected);
      sc.jacks.push_back(std::move(j));
    });
  }
  if (const auto* a = r.array("streams", true, kMaxStreams)) {
    if (a->empty()) c.add(*a, r.at("streams"), "at least one stream is required");
    std::unordered_map<std::string, size_t> seen;
    each_table(c, *a, r.at("streams"), [&](const toml::table& st, const std::string& sp, size_t i) {
      SndStream s;
      Reader sr(c, st, sp, {"name", "direction", "channels", "rates", "role", "positions"});
      sr.name("name", true, s.name);
      if (!s.name.empty()) {
        auto [it, fresh] = seen.emplace(s.name, i);
        if (!fresh)
          c.add(*st.get("name"), sr.at("name"),
                "duplicate stream name " + quote(s.name) + " (first at " + idx(r.at("streams"), it->second) + ")");
      }
      sr.choice("direction", true, s.direction, kDirections);
      sr.integer("channels", false, s.channels, 1, 8);
      if (const auto* ra = sr.array("rates", true, kMaxRates)) {
        if (ra->empty()) c.add(*ra, sr.at("rates"), "at least one rate is required");
        for (size_t k = 0; k < ra->size(); ++k) {
          auto v = node_int(c, (*ra)[k], idx(sr.at("rates"), k), 1, 384000);
          if (!v) continue;
          if (std::find(std::begin(kRates), std::end(kRates), *v) == std::end(kRates)) {
            c.add((*ra)[k], idx(sr.at("rates"), k), std::to_string(*v) + " Hz is not a virtio-snd rate");
            continue;
          }
          s.rates.push_back(static_cast<uint32_t>(*v));
        }
      }
      sr.choice("role", false, s.role, kRoles);
      if (const auto* pa = sr.array("positions", false, 8)) {
        s.positions = string_list(c, *pa, sr.at("positions"), false);
        for (size_t k = 0; k < s.positions.size(); ++k)
          if (std::find(std::begin(kPositions), std::end(kPositions), s.positions[k]) == std::end(kPositions))
            c.add((*pa)[k], idx(sr.at("positions"), k),
                  quote(s.positions[k]) + " is not a channel position (FL, FR, FC, LFE, RL, RR, SL, SR, MONO, ...)");
        if (s.positions.size() != s.channels)
          c.add(*pa, sr.at("positions"),
                std::to_string(s.positions.size()) + " positions for " + std::to_string(s.channels) + " channels");
      }
      sc.streams.push_back(std::move(s));
    });
  }
  r.str("backend", false, sc.backend);
  return sc;
}

VmConfig parse_vm(Ctx& c, const toml::table& t, const std::string& path, VmSource& src) {
  VmConfig vm;
  Reader r(c, t, path,
           {"name", "backend", "memory", "vcpus", "criticality", "restart", "max_restarts", "kernel", "initrd",
            "cmdline", "app", "args", "start_after", "watchdog_ms", "gpu", "snd", "device"});
  src.table = &t;
  r.name("name", true, vm.name);
  r.choice("backend", true, vm.backend, kBackends);
  if (const auto* n = r.get("memory", true)) {
    if (auto v = node_size(c, *n, r.at("memory"), kMinVmMemory, kMaxVmMemory)) vm.memory_bytes = *v;
  }
  r.integer("vcpus", false, vm.vcpus, 1, kMaxVcpus);
  r.choice("criticality", false, vm.criticality, kCriticalities);
  r.choice("restart", false, vm.restart, kRestarts);
  r.integer("max_restarts", false, vm.max_restarts, 0, 1000);
  r.integer("watchdog_ms", false, vm.watchdog_ms, 0, kMaxWatchdogMs);

  // Backend-specific keys, checked only when the backend itself is valid (no cascades).
  const toml::node* bn = t.get("backend");
  const bool has_backend = bn != nullptr && bn->is_string() &&
                           std::any_of(std::begin(kBackends), std::end(kBackends),
                                       [&](const Choice<Backend>& ch) { return ch.name == bn->as_string()->get(); });
  const bool kvm = vm.backend == Backend::kKvm || vm.backend == Backend::kAuto;
  const bool part = vm.backend == Backend::kPartition || vm.backend == Backend::kAuto;
  if (has_backend) {
    for (std::string_view k : {"kernel", "initrd", "cmdline"}) {
      if (!kvm && t.get(k) != nullptr) c.add(*t.get(k), r.at(k), "only for backend = \"kvm\" or \"auto\"");
    }
    for (std::string_view k : {"app", "args"}) {
      if (!part && t.get(k) != nullptr) c.add(*t.get(k), r.at(k), "only for backend = \"partition\" or \"auto\"");
    }
    if (kvm) r.get("kernel", true, " (required for backend = \"kvm\" and \"auto\")");
    if (part) r.get("app", true, " (required for backend = \"partition\" and \"auto\")");
  }
  r.str("kernel", false, vm.kernel);
  r.str("initrd", false, vm.initrd);
  r.str("cmdline", false, vm.cmdline);
  r.str("app", false, vm.app);
  if (const auto* a = r.array("args", false, kMaxArgs)) vm.args = string_list(c, *a, r.at("args"), false);
  if (const auto* a = r.array("start_after", false, kMaxStartAfter)) {
    src.start_after = a;
    vm.start_after = string_list(c, *a, r.at("start_after"), true);
    if (vm.start_after.size() != a->size()) src.start_after = nullptr;  // element errors already reported
  }
  if (const auto* g = r.subtable("gpu")) vm.gpu = parse_gpu(c, *g, r.at("gpu"));
  if (const auto* s = r.subtable("snd")) vm.snd = parse_snd(c, *s, r.at("snd"));
  if (const auto* a = r.array("device", false, kMaxDevices)) {
    each_table(c, *a, r.at("device"), [&](const toml::table& dt, const std::string& dp, size_t) {
      DeviceConfig d;
      Reader dr(c, dt, dp, {"type", "backend", "args"});
      dr.name("type", true, d.type);
      if (!d.type.empty()) {
        d.virtio_id = virtio_device_id(d.type);
        if (d.virtio_id == 0)
          c.add(*dt.get("type"), dr.at("type"),
                "unknown device type " + quote(d.type) +
                    " (known: console, rng, input, vsock, scmi, i2c, can, gpio; gpu and snd have their own tables)");
      }
      dr.str("backend", true, d.backend);
      if (const auto* aa = dr.array("args", false, kMaxArgs)) d.args = string_list(c, *aa, dr.at("args"), false);
      vm.devices.push_back(std::move(d));
    });
  }
  return vm;
}

DisplayConfig parse_display(Ctx& c, const toml::table& t, const std::string& path) {
  DisplayConfig d;
  Reader r(c, t, path, {"name", "width", "height", "refresh_hz", "output", "criticality"});
  r.name("name", true, d.name);
  r.integer("width", true, d.width, 1, kMaxDimension);
  r.integer("height", true, d.height, 1, kMaxDimension);
  r.integer("refresh_hz", false, d.refresh_hz, 1, kMaxRefreshHz);
  r.choice("output", false, d.output, kOutputs);
  if (t.get("criticality")) {
    Criticality cr = Criticality::kNormal;
    bool good = true;
    r.read("criticality", false, cr, [&](const toml::node& n, const std::string& p) {
      auto v = node_choice<Criticality>(c, n, p, std::span<const Choice<Criticality>>(kCriticalities));
      good = v.has_value();
      return v;
    });
    if (good) d.criticality = cr;
  }
  return d;
}

LayoutEntry parse_layout(Ctx& c, const toml::table& t, const std::string& path) {
  LayoutEntry l;
  Reader r(c, t, path,
           {"display", "vm", "scanout", "x", "y", "width", "height", "z", "crop", "alpha", "rotation", "stale_ms"});
  r.name("display", true, l.display);
  r.name("vm", true, l.vm);
  r.integer("scanout", false, l.scanout, 0, kMaxScanouts - 1);
  r.integer("x", false, l.x, 0, kMaxDimension);
  r.integer("y", false, l.y, 0, kMaxDimension);
  r.integer("width", true, l.width, 1, kMaxDimension);
  r.integer("height", true, l.height, 1, kMaxDimension);
  r.integer("z", false, l.z, -1000, 1000);
  if (const auto* ct = r.subtable("crop")) {
    Reader cr(c, *ct, r.at("crop"), {"x", "y", "width", "height"});
    cr.integer("x", false, l.crop.x, 0, kMaxScanoutDimension - 1);
    cr.integer("y", false, l.crop.y, 0, kMaxScanoutDimension - 1);
    cr.integer("width", true, l.crop.width, 1, kMaxScanoutDimension);
    cr.integer("height", true, l.crop.height, 1, kMaxScanoutDimension);
  }
  r.number("alpha", false, l.alpha, 0.0, 1.0);
  if (const auto* n = r.get("rotation", false)) {
    if (auto v = node_int(c, *n, r.at("rotation"), 0, 270)) {
      if (*v % 90 != 0) c.add(*n, r.at("rotation"), std::to_string(*v) + " is not a rotation (0, 90, 180 or 270)");
      else l.rotation = uint32_t(*v);
    }
  }
  if (const auto* n = r.get("stale_ms", false)) {
    if (auto v = node_int(c, *n, r.at("stale_ms"), 0, kMaxStaleMs)) l.stale_ms = uint32_t(*v);
  }
  return l;
}

AudioRoute parse_route(Ctx& c, const toml::table& t, const std::string& path) {
  AudioRoute a;
  Reader r(c, t, path, {"vm", "stream", "sink", "priority", "duck_others", "duck_db", "ramp_ms", "exclusive"});
  r.name("vm", true, a.vm);
  r.name("stream", true, a.stream);
  r.str("sink", true, a.sink);
  if (const auto* n = t.get("sink"); n != nullptr && n->is_string() && a.sink.empty())
    c.add(*n, r.at("sink"), "must not be empty");
  r.integer("priority", false, a.priority, 0, 100);
  r.boolean("duck_others", false, a.duck_others);
  r.number("duck_db", false, a.duck_db, -96.0, 0.0);
  r.integer("ramp_ms", false, a.ramp_ms, 0, 10000);
  r.boolean("exclusive", false, a.exclusive);
  return a;
}

// An array of tables at the top level (or under [audio]), capped.
template <typename F>
void section_array(Ctx& c, const toml::node& n, const std::string& path, size_t max, F&& f) {
  const auto* a = n.as_array();
  if (a == nullptr) {
    c.add(n, path, std::string("expected an array of tables ([[") + path + "]]), got " + type_name(n.type()));
    return;
  }
  if (a->size() > max) {
    c.add(n, path, std::to_string(a->size()) + " entries; at most " + std::to_string(max) + " allowed");
    return;
  }
  each_table(c, *a, path, f);
}

// --- cross references -------------------------------------------------------------------------------------

void check_start_after(Ctx& c, Manifest& m, const std::vector<VmSource>& srcs) {
  const size_t n = m.vms.size();
  std::unordered_map<std::string, size_t> by_name;
  for (size_t i = 0; i < n; ++i)
    if (!m.vms[i].name.empty()) by_name.emplace(m.vms[i].name, i);

  // deps[i]: (vm index, start_after element index) for every resolvable entry.
  std::vector<std::vector<std::pair<size_t, size_t>>> deps(n);
  for (size_t i = 0; i < n; ++i) {
    if (srcs[i].start_after == nullptr) continue;
    const auto& list = m.vms[i].start_after;
    for (size_t j = 0; j < list.size(); ++j) {
      const std::string p = idx(sub(idx("vm", i), "start_after"), j);
      const toml::node& node = (*srcs[i].start_after)[j];
      auto it = by_name.find(list[j]);
      if (it == by_name.end()) {
        c.add(node, p, "unknown VM " + quote(list[j]));
        continue;
      }
      if (std::find(list.begin(), list.begin() + static_cast<std::ptrdiff_t>(j), list[j]) !=
          list.begin() + static_cast<std::ptrdiff_t>(j)) {
        c.add(node, p, "duplicate entry " + quote(list[j]));
        continue;
      }
      deps[i].emplace_back(it->second, j);
    }
  }

  // Depth-first search for cycles (n <= kMaxVms, so recursion depth is bounded).
  enum class Color { kWhite, kGray, kBlack };
  std::vector<Color> color(n, Color::kWhite);
  std::vector<size_t> stack;
  bool cyclic = false;
  auto visit = [&](auto&& self, size_t v) -> void {
    color[v] = Color::kGray;
    stack.push_back(v);
    for (auto [d, j] : deps[v]) {
      if (color[d] == Color::kGray) {
        cyclic = true;
        std::string cycle;
        auto from = std::find(stack.begin(), stack.end(), d);
        for (auto it = from; it != stack.end(); ++it) cycle += m.vms[*it].name + " -> ";
        cycle += m.vms[d].name;
        c.add((*srcs[v].start_after)[j], idx(sub(idx("vm", v), "start_after"), j), "start_after cycle: " + cycle);
      } else if (color[d] == Color::kWhite) {
        self(self, d);
      }
    }
    stack.pop_back();
    color[v] = Color::kBlack;
  };
  for (size_t i = 0; i < n; ++i)
    if (color[i] == Color::kWhite) visit(visit, i);
  if (cyclic) return;

  // Boot order: repeatedly the first VM (file order) whose start_after VMs are all placed.
  std::vector<bool> placed(n, false);
  m.boot_order.clear();
  while (m.boot_order.size() < n) {
    for (size_t i = 0; i < n; ++i) {
      if (placed[i]) continue;
      if (std::all_of(deps[i].begin(), deps[i].end(), [&](auto dj) { return placed[dj.first]; })) {
        placed[i] = true;
        m.boot_order.push_back(i);
        break;
      }
    }
  }
}

void check_layouts(Ctx& c, const Manifest& m, const std::vector<const toml::table*>& srcs) {
  for (size_t i = 0; i < m.layouts.size(); ++i) {
    const LayoutEntry& l = m.layouts[i];
    const toml::table& t = *srcs[i];
    const std::string p = idx("layout", i);
    const DisplayConfig* d = l.display.empty() ? nullptr : m.find_display(l.display);
    if (!l.display.empty() && d == nullptr)
      c.add(*t.get("display"), sub(p, "display"), "unknown display " + quote(l.display));
    const VmConfig* vm = l.vm.empty() ? nullptr : m.find_vm(l.vm);
    if (!l.vm.empty() && vm == nullptr) c.add(*t.get("vm"), sub(p, "vm"), "unknown VM " + quote(l.vm));
    if (vm != nullptr) {
      if (!vm->gpu) {
        c.add(*t.get("vm"), sub(p, "vm"), "VM " + quote(l.vm) + " has no gpu");
      } else if (l.scanout >= vm->gpu->scanouts.size()) {
        const toml::node* sn = t.get("scanout");
        c.add(sn ? sn->source() : t.source(), sub(p, "scanout"),
              "VM " + quote(l.vm) + " has " + std::to_string(vm->gpu->scanouts.size()) + " scanout(s); index " +
                  std::to_string(l.scanout) + " does not exist");
      }
    }
    if (vm != nullptr && vm->gpu && l.scanout < vm->gpu->scanouts.size() && l.crop.width != 0 && l.crop.height != 0) {
      const Scanout& so = vm->gpu->scanouts[l.scanout];
      if (uint64_t{l.crop.x} + l.crop.width > so.width || uint64_t{l.crop.y} + l.crop.height > so.height)
        c.add(*t.get("crop"), sub(p, "crop"),
              "crop " + std::to_string(l.crop.x) + "," + std::to_string(l.crop.y) + " " + std::to_string(l.crop.width) +
                  "x" + std::to_string(l.crop.height) + " does not fit scanout " + std::to_string(l.scanout) +
                  " of VM " + quote(l.vm) + " (" + std::to_string(so.width) + "x" + std::to_string(so.height) + ")");
    }
    if (d != nullptr && l.width != 0 && l.height != 0 &&
        (uint64_t{l.x} + l.width > d->width || uint64_t{l.y} + l.height > d->height)) {
      c.add(t, p,
            "rectangle " + std::to_string(l.x) + "," + std::to_string(l.y) + " " + std::to_string(l.width) + "x" +
                std::to_string(l.height) + " does not fit display " + quote(d->name) + " (" + std::to_string(d->width) +
                "x" + std::to_string(d->height) + ")");
    }
  }
}

void check_routes(Ctx& c, const Manifest& m, const std::vector<const toml::table*>& srcs) {
  for (size_t i = 0; i < m.audio_routes.size(); ++i) {
    const AudioRoute& a = m.audio_routes[i];
    const toml::table& t = *srcs[i];
    const std::string p = idx("audio.route", i);
    if (a.vm.empty()) continue;
    const VmConfig* vm = m.find_vm(a.vm);
    if (vm == nullptr) {
      c.add(*t.get("vm"), sub(p, "vm"), "unknown VM " + quote(a.vm));
      continue;
    }
    if (a.stream.empty()) continue;
    const bool found = vm->snd && std::any_of(vm->snd->streams.begin(), vm->snd->streams.end(),
                                              [&](const SndStream& s) { return s.name == a.stream; });
    if (!found)
      c.add(*t.get("stream"), sub(p, "stream"), "VM " + quote(a.vm) + " has no snd stream " + quote(a.stream));
  }
}

template <typename T>
void check_unique_names(Ctx& c, const std::vector<T>& items, const std::vector<const toml::table*>& srcs,
                        const char* section, const char* what) {
  std::unordered_map<std::string, size_t> seen;
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].name.empty()) continue;
    auto [it, fresh] = seen.emplace(items[i].name, i);
    if (!fresh)
      c.add(*srcs[i]->get("name"), sub(idx(section, i), "name"),
            std::string("duplicate ") + what + " name " + quote(items[i].name) + " (first at " +
                idx(section, it->second) + ")");
  }
}

}  // namespace

const char* to_string(Backend b) { return choice_name<Backend>(kBackends, b); }
const char* to_string(Criticality c) { return choice_name<Criticality>(kCriticalities, c); }
const char* to_string(RestartPolicy r) { return choice_name<RestartPolicy>(kRestarts, r); }
const char* to_string(StreamDirection d) { return choice_name<StreamDirection>(kDirections, d); }
const char* to_string(AudioRole r) { return choice_name<AudioRole>(kRoles, r); }
const char* to_string(DisplayOutput o) { return choice_name<DisplayOutput>(kOutputs, o); }
const char* to_string(JackDevice d) { return choice_name<JackDevice>(kJackDevices, d); }

const VmConfig* Manifest::find_vm(std::string_view name) const {
  for (const auto& v : vms)
    if (v.name == name) return &v;
  return nullptr;
}

const DisplayConfig* Manifest::find_display(std::string_view name) const {
  for (const auto& d : displays)
    if (d.name == name) return &d;
  return nullptr;
}

std::string ManifestError::to_string() const {
  std::string s = file;
  if (line != 0) s += ":" + std::to_string(line) + ":" + std::to_string(column);
  s += ": ";
  if (!key_path.empty()) s += key_path + ": ";
  return s + message;
}

LoadResult load_manifest_string(std::string_view text, std::string_view name) {
  Ctx c(name);
  LoadResult out;
  if (text.size() > kMaxManifestBytes) {
    c.add_at(0, 0, "", "manifest is larger than " + std::to_string(kMaxManifestBytes) + " bytes");
    out.errors = c.take();
    return out;
  }
  if (auto bad = find_unsupported_code_point(text)) {
    char cp[16];
    std::snprintf(cp, sizeof cp, "U+%04X", static_cast<unsigned>(bad->cp));
    c.add_at(bad->line, bad->column, "",
             std::string("character ") + cp +
                 " is not supported by this build's TOML parser outside \\u escapes (toml++ bug, "
                 "docs/manifest.md)");
    out.errors = c.take();
    return out;
  }
  toml::parse_result parsed = toml::parse(text, name);
  if (!parsed) {
    const auto& e = parsed.error();
    std::string desc(e.description());
    for (char& ch : desc)
      if (static_cast<unsigned char>(ch) < 0x20) ch = ' ';
    c.add(e.source(), "", "TOML syntax error: " + desc);
    out.errors = c.take();
    return out;
  }
  const toml::table& root = parsed.table();

  Manifest m;
  std::vector<VmSource> vm_srcs;
  std::vector<const toml::table*> vm_tables, display_srcs, layout_srcs, route_srcs;
  for (auto&& [k, v] : root) {
    const std::string_view key = k.str();
    const std::string path = key_segment(key);
    if (key == "version") {
      if (auto ver = node_int(c, v, path, 0, INT32_MAX)) {
        if (*ver != 1) c.add(v, path, std::to_string(*ver) + " is not supported (this canopy-vmm reads version 1)");
      }
    } else if (key == "vm") {
      section_array(c, v, path, kMaxVms, [&](const toml::table& t, const std::string& p, size_t) {
        VmSource src;
        m.vms.push_back(parse_vm(c, t, p, src));
        vm_srcs.push_back(src);
        vm_tables.push_back(&t);
      });
    } else if (key == "display") {
      section_array(c, v, path, kMaxDisplays, [&](const toml::table& t, const std::string& p, size_t) {
        m.displays.push_back(parse_display(c, t, p));
        display_srcs.push_back(&t);
      });
    } else if (key == "layout") {
      section_array(c, v, path, kMaxLayouts, [&](const toml::table& t, const std::string& p, size_t) {
        m.layouts.push_back(parse_layout(c, t, p));
        layout_srcs.push_back(&t);
      });
    } else if (key == "audio") {
      if (const auto* at = node_table(c, v, path)) {
        Reader ar(c, *at, path, {"route"});
        if (const auto* rn = at->get("route")) {
          section_array(c, *rn, ar.at("route"), kMaxAudioRoutes,
                        [&](const toml::table& t, const std::string& p, size_t) {
                          m.audio_routes.push_back(parse_route(c, t, p));
                          route_srcs.push_back(&t);
                        });
        }
      }
    } else if (std::find(std::begin(kReservedSections), std::end(kReservedSections), key) !=
               std::end(kReservedSections)) {
      c.add(k.source(), path, "section reserved for a future version of the manifest (not supported yet)");
    } else {
      c.add(k.source(), path, "unknown key (known: version, vm, display, layout, audio)");
    }
  }
  if (root.get("vm") == nullptr) c.add_at(1, 1, "vm", "no VMs: add at least one [[vm]] table");

  check_unique_names(c, m.vms, vm_tables, "vm", "VM");
  check_unique_names(c, m.displays, display_srcs, "display", "display");
  check_start_after(c, m, vm_srcs);
  check_layouts(c, m, layout_srcs);
  check_routes(c, m, route_srcs);

  if (c.ok()) {
    out.manifest = std::move(m);
  } else {
    out.errors = c.take();
  }
  return out;
}

LoadResult load_manifest_file(const std::string& path) {
  LoadResult out;
  auto fail = [&](std::string msg) {
    out.errors.push_back(ManifestError{path, 0, 0, "", std::move(msg)});
    return std::move(out);
  };
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return fail(std::string("cannot open: ") + std::strerror(errno));
  std::string text;
  char buf[65536];
  size_t got = 0;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) {
    text.append(buf, got);
    if (text.size() > kMaxManifestBytes) break;
  }
  const bool err = std::ferror(f) != 0;
  const int saved = errno;
  std::fclose(f);
  if (err) return fail(std::string("cannot read: ") + std::strerror(saved));
  return load_manifest_string(text, path);
}

}  // namespace canopy::hypervisor
