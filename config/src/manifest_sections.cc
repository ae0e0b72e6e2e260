// The manifest's sections: the schema of [[vm]] (with [vm.gpu], [vm.snd], [[vm.device]]), [[display]],
// [[layout]] and [[audio.route]], each key typed and range-checked (docs/manifest.md).
#include <string>
#include <utility>

#include "manifest_parts.h"

namespace canopy::config {
namespace detail {
namespace {

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

}  // namespace

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

}  // namespace detail

using detail::choice_name;
const char* to_string(Backend b) { return choice_name<Backend>(detail::kBackends, b); }
const char* to_string(RestartPolicy r) { return choice_name<RestartPolicy>(detail::kRestarts, r); }
const char* to_string(StreamDirection d) { return choice_name<StreamDirection>(detail::kDirections, d); }
const char* to_string(AudioRole r) { return choice_name<AudioRole>(detail::kRoles, r); }
const char* to_string(DisplayOutput o) { return choice_name<DisplayOutput>(detail::kOutputs, o); }
const char* to_string(JackDevice d) { return choice_name<JackDevice>(detail::kJackDevices, d); }

uint32_t virtio_device_id(std::string_view type) {
  static constexpr std::pair<std::string_view, uint32_t> kIds[] = {
      {"console", 3}, {"rng", 4}, {"input", 18}, {"vsock", 19}, {"scmi", 32}, {"i2c", 34}, {"can", 36}, {"gpio", 41}};
  for (const auto& [n, id] : kIds) {
    if (n == type) return id;
  }
  return 0;
}

}  // namespace canopy::config
