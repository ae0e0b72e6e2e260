// The compositor's control socket, stats and traces (compositor_impl.h).
#include <linux/openat2.h>
#include <sys/syscall.h>

#include <string_view>

#include "canopy/base/crc32.h"
#include "canopy/base/peer.h"
#include "compositor_impl.h"

namespace canopy::display {

namespace {

// `name` opened relative to `dir`; with `confined`, resolved beneath it only (openat2 RESOLVE_BENEATH:
// no absolute path, no "..", no symlink anywhere on the way).
Result<UniqueFd> open_in(int dir, const std::string& name, int flags, bool confined) {
  if (name.empty()) return make_error(Errc::kInvalidArgument, "empty name");
  open_how how{};
  how.flags = uint64_t(flags | O_CLOEXEC);
  how.mode = (flags & O_CREAT) ? 0644 : 0;
  how.resolve = confined ? RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS : 0;
  const long fd = ::syscall(SYS_openat2, dir, name.c_str(), &how, sizeof how);
  if (fd < 0)
    return make_error(errno == EXDEV || errno == ELOOP ? Errc::kInvalidArgument : Errc::kIo,
                      errno == EXDEV || errno == ELOOP ? "the name leads outside the control folder"
                                                       : "cannot open the name in the control folder",
                      errno);
  return UniqueFd(int(fd));
}

// `name` in `dir`, created or truncated, as a stdio file (open_in's rules).
Result<std::FILE*> create_in(int dir, const std::string& name, bool confined) {
  CANOPY_ASSIGN_OR_RETURN(auto fd, open_in(dir, name, O_WRONLY | O_CREAT | O_TRUNC, confined));
  std::FILE* f = ::fdopen(fd.get(), "w");
  if (!f) return make_error(Errc::kIo, "fdopen failed", errno);
  (void)fd.release();
  return f;
}

}  // namespace

void Compositor::Impl::start_trace() {
  trace.clear();
  tracing = true;
}

void Compositor::Impl::trace_event(const char* name, TimePoint start, TimePoint end, uint32_t tid, uint64_t arg) {
  if (!tracing || trace.size() >= kMaxTraceEvents) return;
  trace.push_back({name, us_since(epoch, start), us_since(start, end), tid, arg});
}

void Compositor::Impl::on_control() {
  for (;;) {
    UniqueFd s(::accept4(control.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!s.valid()) return;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(s.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        !peer_is_operator(s.get(), opt.control_group))
      continue;
    if (opt.control_refuses_descendants_of > 0 && peer_descends_from(s.get(), opt.control_refuses_descendants_of)) {
      // A VM, a back-end or anything they started: closed unanswered.
      CANOPY_WARN_RL("canopy-display: control connection of pid %d refused: started by canopy-vmm", int(cred.pid));
      continue;
    }
    if (serve_control(s.get())) continue;
    if (control_pending.size() >= kMaxPendingControl) {
      ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, control_pending.begin()->second.get(), nullptr);
      control_pending.erase(control_pending.begin());
    }
    if (!watch(s.get()).ok()) continue;
    control_pending.emplace(next_control++, std::move(s));
  }
}

bool Compositor::Impl::serve_control(int fd) {
  char buf[kMaxControlRequest];
  const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
  if (n > 0 && std::string_view(buf, size_t(n)) == "step" && opt.stepped_clock != nullptr && !step_client.valid()) {
    // Answered once the step is composed (Compositor::run_once, after this turn's input).
    step_client = UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    return true;
  }
  if (n > 0) {
    std::string reply = control_request(std::string(buf, size_t(n)));
    (void)::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  return true;
}

bool Compositor::Impl::on_control_pending(int fd) {
  for (auto it = control_pending.begin(); it != control_pending.end(); ++it) {
    if (it->second.get() != fd) continue;
    if (serve_control(fd)) {
      ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
      control_pending.erase(it);
    }
    return true;
  }
  return false;
}

std::string Compositor::Impl::control_request(const std::string& req) {
  const auto sp = req.find(' ');
  const std::string cmd = req.substr(0, sp), arg = sp == std::string::npos ? "" : req.substr(sp + 1);
  if (cmd == "stats" && arg.empty()) return stats_text();
  const bool writes = cmd == "snapshot" || (cmd == "trace-stop" && !arg.empty());
  if (writes && !control_dir.valid()) return "error: no control folder (--control-dir): nothing is written\n";
  if (cmd == "snapshot") {
    auto dir = arg.empty() ? open_in(control_dir.get(), ".", O_PATH | O_DIRECTORY, true)
                           : open_in(control_dir.get(), arg, O_PATH | O_DIRECTORY, true);
    if (!dir.ok()) return std::string("error: ") + dir.error().what + "\n";
    auto st = snapshot(dir->get(), true);
    return st.ok() ? "ok\n" : std::string("error: ") + st.error().what + "\n";
  }
  if (cmd == "trace-start" && arg.empty()) {
    start_trace();
    return "ok\n";
  }
  if (cmd == "trace-stop" && !arg.empty()) {
    auto f = create_in(control_dir.get(), arg, true);
    if (!f.ok()) return std::string("error: ") + f.error().what + "\n";
    auto st = write_trace(*f);
    return st.ok() ? "ok\n" : std::string("error: ") + st.error().what + "\n";
  }
  if (cmd == "quit" && arg.empty()) {
    quit = true;
    return "ok\n";
  }
  if (cmd == "step" && arg.empty())
    return opt.stepped_clock ? "error: a step is under way\n" : "error: the clock is not stepped (--stepped)\n";
  return "error: unknown request (stats | snapshot [DIR] | trace-start | trace-stop FILE | quit | step)\n";
}

Status Compositor::Impl::step() {
  UniqueFd client = std::move(step_client);
  Status s = poll_input(0);  // what devices sent before the request
  if (s.ok()) {
    FakeClock& c = *opt.stepped_clock;
    c.set(std::max(c.now(), next_latch()));
    s = compose_due();
  }
  ++steps;
  const std::string reply = s.ok() ? step_report() : std::string("error: ") + s.error().what + "\n";
  (void)::send(client.get(), reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  return s;
}

std::string Compositor::Impl::step_report() const {
  std::string s = "step " + std::to_string(steps) + "\n";
  char line[256];
  for (size_t i = 0; i < outputs.size(); ++i) {
    const OutputSpec& spec = layout.outputs[i];
    const Canvas& cv = outputs[i].canvas;
    const OutputStats& st = outputs[i].sched->stats();
    for (size_t l = 0; l < spec.layers.size(); ++l) {
      // The layer's rectangle as it lies on the output (clipped to it).
      const Rect& d = spec.layers[l].dst;
      const int64_t x0 = std::clamp<int64_t>(d.x, 0, cv.width), y0 = std::clamp<int64_t>(d.y, 0, cv.height);
      const int64_t x1 = std::clamp<int64_t>(int64_t(d.x) + d.width, 0, cv.width);
      const int64_t y1 = std::clamp<int64_t>(int64_t(d.y) + d.height, 0, cv.height);
      const uint32_t crc = x1 > x0 && y1 > y0 ? image_crc32(cv.data + y0 * cv.stride + x0 * 4, uint32_t((x1 - x0) * 4),
                                                            uint32_t(y1 - y0), cv.stride)
                                              : 0;
      const LayerStats& ls = st.layers[l];
      std::snprintf(
          line, sizeof line, "layer %s %s/%u crc=%08x new=%llu reused=%llu fallback_entries=%llu fallback=%d\n",
          spec.name.c_str(), spec.layers[l].vm.c_str(), spec.layers[l].scanout, crc, (unsigned long long)ls.new_frames,
          (unsigned long long)ls.reused, (unsigned long long)ls.fallback_entries, ls.fallback ? 1 : 0);
      s += line;
    }
  }
  // The frames each VM's connection had sent when the step took them in (a test waits for more before
  // the next step, so that the next one has a new frame of that VM to show).
  for (const auto& [id, c] : conns) {
    if (!c.hello) continue;
    std::snprintf(line, sizeof line, "vm %s frames=%llu\n", c.stats.vm.c_str(), (unsigned long long)c.stats.frames);
    s += line;
  }
  return s;
}

Status Compositor::Impl::snapshot(int dir, bool confined) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    Output& o = outputs[i];
    if (o.canvas_stale && o.last_plan) {
      // Shown on planes: compose the same picture for the file (its frames are still held).
      std::vector<LayerDraw> draws;
      std::vector<Source> sources;
      std::vector<LayerSpec> specs;
      build_draws(i, *o.last_plan, draws, sources, specs);
      CANOPY_TRY(renderer->compose(draws, o.canvas, opt.background));
      o.canvas_stale = false;
    }
    CANOPY_ASSIGN_OR_RETURN(std::FILE * f, create_in(dir, layout.outputs[i].name + ".png", confined));
    Status s = write_png(f, o.canvas);
    if (std::fclose(f) != 0 && s.ok()) return make_error(Errc::kIo, "snapshot: writing the file failed", errno);
    CANOPY_TRY(s);
  }
  return {};
}

Status Compositor::Impl::write_trace(std::FILE* f) {
  tracing = false;
  std::fprintf(f, "{\"traceEvents\":[\n");
  for (size_t i = 0; i < outputs.size(); ++i)
    std::fprintf(f,
                 "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":%zu,\"args\":{\"name\":\"output %s\"}},\n",
                 i, layout.outputs[i].name.c_str());
  std::fprintf(f, "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":100,\"args\":{\"name\":\"frames in\"}}");
  for (const auto& e : trace)
    std::fprintf(f, ",\n{\"name\":\"%s\",\"ph\":\"%s\",\"pid\":1,\"tid\":%u,\"ts\":%lld%s,\"args\":{\"n\":%llu}%s}",
                 e.name, e.dur_us > 0 ? "X" : "i", e.tid, (long long)e.ts_us,
                 e.dur_us > 0 ? (",\"dur\":" + std::to_string(e.dur_us)).c_str() : "", (unsigned long long)e.arg,
                 e.dur_us > 0 ? "" : ",\"s\":\"t\"");
  std::fprintf(f, "\n]}\n");
  const bool ok = std::fclose(f) == 0;
  trace.clear();
  return ok ? Status{} : make_error(Errc::kIo, "trace: write failed");
}

std::string Compositor::Impl::stats_text() const {
  std::string s;
  char line[512];
  const Renderer::Stats rs = renderer->stats();
  std::snprintf(line, sizeof line, "renderer %s compositions=%llu imports=%llu bytes_staged=%llu switches=%llu\n",
                renderer->name(), (unsigned long long)rs.compositions, (unsigned long long)rs.imports,
                (unsigned long long)rs.bytes_staged, (unsigned long long)renderer_switches);
  s += line;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const OutputSpec& spec = layout.outputs[i];
    const OutputStats& st = outputs[i].sched->stats();
    std::snprintf(line, sizeof line,
                  "output %s %ux%u@%u criticality=%s sink=%s renderer=%s compositions=%llu missed_deadlines=%llu "
                  "waits=%llu on_planes=%llu\n",
                  spec.name.c_str(), spec.width, spec.height, spec.refresh_hz, to_string(spec.criticality),
                  outputs[i].sink->name(), renderer->name(), (unsigned long long)st.compositions,
                  (unsigned long long)st.missed_deadlines, (unsigned long long)st.waits,
                  (unsigned long long)outputs[i].on_planes);
    s += line;
    for (size_t l = 0; l < spec.layers.size(); ++l) {
      const LayerStats& ls = st.layers[l];
      std::snprintf(line, sizeof line,
                    "  layer %zu vm=%s scanout=%u new=%llu reused=%llu missed=%llu dropped=%llu fallback=%d "
                    "fallback_entries=%llu latency_p50_us=%lld latency_p99_us=%lld\n",
                    l, spec.layers[l].vm.c_str(), spec.layers[l].scanout, (unsigned long long)ls.new_frames,
                    (unsigned long long)ls.reused, (unsigned long long)ls.missed, (unsigned long long)ls.dropped,
                    ls.fallback ? 1 : 0, (unsigned long long)ls.fallback_entries,
                    (long long)(ls.latency.percentile(0.5).count() / 1000),
                    (long long)(ls.latency.percentile(0.99).count() / 1000));
      s += line;
    }
  }
  for (const auto& [id, c] : conns) {
    if (!c.hello) continue;
    std::snprintf(line, sizeof line,
                  "vm %s connected=%d frames=%llu refused=%llu blob_frames=%llu fenced_frames=%llu bytes_copied=%llu "
                  "buffers=%zu mapped_bytes=%llu brokered=%d criticality=%s\n",
                  c.stats.vm.c_str(), c.stats.connected ? 1 : 0, (unsigned long long)c.stats.frames,
                  (unsigned long long)c.stats.frames_refused, (unsigned long long)c.stats.blob_frames,
                  (unsigned long long)c.stats.fenced_frames, (unsigned long long)c.stats.bytes_copied, c.stats.buffers,
                  (unsigned long long)c.stats.mapped_bytes, c.stats.brokered ? 1 : 0,
                  c.stats.brokered ? c.stats.criticality.c_str() : "-");
    s += line;
  }
  return s;
}

}  // namespace canopy::display
