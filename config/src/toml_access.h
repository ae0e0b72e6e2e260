// The manifest loader's access to toml++ (internal to config/): the parser's include with its NDEBUG
// workaround, the error collector (Ctx), typed access to single nodes, and tables with a fixed set of
// keys (Reader). The sections (manifest_sections.cc) and checks (manifest_checks.cc) are written with it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "canopy/config/manifest.h"

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

namespace canopy::config::detail {

template <typename E>
struct Choice {
  std::string_view name;
  E value;
};

template <typename E>
const char* choice_name(std::span<const Choice<E>> choices, E v) {
  for (const auto& c : choices)
    if (c.value == v) return c.name.data();  // the names are string literals (NUL-terminated)
  return "?";
}

// Printable, single-line, bounded rendering of outside text for error messages; a TOML key as a path
// segment; path + "." + key; path + "[i]"; toml++'s type names; "512M"-style sizes; a-z 0-9 - names.
std::string quote(std::string_view s);
std::string key_segment(std::string_view k);
std::string sub(const std::string& path, std::string_view key);
inline std::string idx(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }
const char* type_name(toml::node_type t);
std::string fmt_size(uint64_t v);
bool valid_name(std::string_view s);

// The first code point in `text` that toml++ (up to 3.4) mishandles (toml_access.cc), with its 1-based
// line and column (counted in code points, as toml++ does). Invalid UTF-8 is left for toml++ to report.
struct BadCodePoint {
  char32_t cp;
  uint32_t line, column;
};
std::optional<BadCodePoint> find_unsupported_code_point(std::string_view text);

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

std::optional<std::string> node_str(Ctx& c, const toml::node& n, const std::string& path);
std::optional<int64_t> node_int(Ctx& c, const toml::node& n, const std::string& path, int64_t lo, int64_t hi);
std::optional<std::string> node_name(Ctx& c, const toml::node& n, const std::string& path);
const toml::table* node_table(Ctx& c, const toml::node& n, const std::string& path);
const toml::array* node_array(Ctx& c, const toml::node& n, const std::string& path, size_t max);
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

// Sizes: integer bytes, or a string of digits with an optional binary suffix K, M or G.
std::optional<uint64_t> node_size(Ctx& c, const toml::node& n, const std::string& path, uint64_t lo, uint64_t hi);

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

std::vector<std::string> string_list(Ctx& c, const toml::array& a, const std::string& path, bool names);

}  // namespace canopy::config::detail
