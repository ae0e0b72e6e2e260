// The manifest loader's access to toml++: text helpers, the toml++ workaround, typed access to nodes.
#include "toml_access.h"

#include <cstdio>

namespace canopy::config {

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

namespace detail {

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

namespace {

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

}  // namespace

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

std::vector<std::string> string_list(Ctx& c, const toml::array& a, const std::string& path, bool names) {
  std::vector<std::string> out;
  for (size_t i = 0; i < a.size(); ++i) {
    auto s = names ? node_name(c, a[i], idx(path, i)) : node_str(c, a[i], idx(path, i));
    if (s) out.push_back(std::move(*s));
  }
  return out;
}

}  // namespace detail
}  // namespace canopy::config
