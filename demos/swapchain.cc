#include "swapchain.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace canopy::demo {

namespace proto = canopy::protocol::virtio_gpu;

Result<std::unique_ptr<Swapchain>> Swapchain::create(guest::Partition& part, guest::GpuClient& gpu, uint32_t scanout,
                                                     uint32_t width, uint32_t height, int wait_ms) {
  std::unique_ptr<Swapchain> sc(new Swapchain(gpu));
  sc->scanout_ = scanout;
  sc->w_ = width;
  sc->h_ = height;
  sc->wait_ms_ = wait_ms;
  const uint64_t bytes = uint64_t(width) * height * 4;
  for (auto& b : sc->bufs_) {
    CANOPY_ASSIGN_OR_RETURN(auto area, part.alloc(bytes));
    // The app is the guest: it draws straight into its own RAM (the file behind it, mapped here).
    CANOPY_ASSIGN_OR_RETURN(auto ranges, part.memory().file_ranges(area.gpa, bytes));
    if (ranges.size() != 1) return make_error(Errc::kUnsupported, "swapchain: buffer spans RAM regions");
    b.map_len = size_t(bytes);
    b.map = ::mmap(nullptr, b.map_len, PROT_READ | PROT_WRITE, MAP_SHARED, ranges[0].fd, off_t(ranges[0].offset));
    if (b.map == MAP_FAILED) {
      b.map = nullptr;
      return make_error(Errc::kIo, "swapchain: mmap of guest RAM", errno);
    }
    b.image = pixman_image_create_bits(PIXMAN_x8r8g8b8, int(width), int(height), static_cast<uint32_t*>(b.map),
                                       int(width * 4));
    if (!b.image) return make_error(Errc::kNoMemory, "swapchain: pixman image");
    transport::Segment seg{area.gpa, uint32_t(bytes)};
    CANOPY_ASSIGN_OR_RETURN(b.resource, gpu.create_blob({&seg, 1}, bytes));
  }
  return sc;
}

Swapchain::~Swapchain() {
  for (auto& b : bufs_) {
    if (b.image) pixman_image_unref(b.image);
    if (b.map) ::munmap(b.map, b.map_len);
  }
}

Status Swapchain::present() {
  Buf& b = bufs_[cur_];
  CANOPY_TRY(gpu_.set_scanout_blob(scanout_, b.resource, proto::Format::kB8G8R8X8, w_, h_, w_ * 4, 0, {0, 0, w_, h_}));
  proto::ResourceFlush f{};
  f.hdr = proto::make_hdr(proto::Cmd::kResourceFlush, proto::kFlagFence, gpu_.next_fence_id());
  f.resource_id = b.resource;
  f.r.width = w_;
  f.r.height = h_;
  CANOPY_ASSIGN_OR_RETURN(auto ticket, gpu_.submit(f));
  in_flight_.push_back(ticket);
  ++frames_;
  cur_ ^= 1;
  // The new back buffer was shown by the flush before this one: wait until it is released.
  // Past kMaxInFlight unanswered flushes (the client's request slots) it waits as long as it takes.
  while (in_flight_.size() > 1) {
    const bool full = in_flight_.size() >= kMaxInFlight;
    auto c = gpu_.next_completion(full ? 5000 : wait_ms_);
    if (!c.ok()) {
      if (c.error().code != Errc::kTimeout || full) return c.error();
      ++late_;
      break;  // draw anyway; the completion is taken later
    }
    std::erase(in_flight_, c->ticket);
  }
  return {};
}

// ---- drawing ----------------------------------------------------------------------------------

namespace {

pixman_color_t color(uint32_t argb) {
  auto c16 = [](uint32_t v) { return uint16_t(v * 0x101); };
  return pixman_color_t{c16((argb >> 16) & 0xff), c16((argb >> 8) & 0xff), c16(argb & 0xff), c16(argb >> 24)};
}

pixman_point_fixed_t pt(double x, double y) { return {pixman_double_to_fixed(x), pixman_double_to_fixed(y)}; }

void triangles(pixman_image_t* dst, uint32_t argb, const std::vector<pixman_triangle_t>& tris) {
  if (tris.empty()) return;
  pixman_color_t c = color(argb);
  pixman_image_t* src = pixman_image_create_solid_fill(&c);
  pixman_composite_triangles(PIXMAN_OP_OVER, src, dst, PIXMAN_a8, 0, 0, 0, 0, int(tris.size()), tris.data());
  pixman_image_unref(src);
}

}  // namespace

void fill_rect(pixman_image_t* dst, uint32_t argb, int x, int y, int w, int h) {
  // Clipped here: pixman's solid fill fast path writes outside the image for rectangles that cross it.
  const int iw = pixman_image_get_width(dst), ih = pixman_image_get_height(dst);
  const int x0 = std::max(x, 0), y0 = std::max(y, 0), x1 = std::min(x + w, iw), y1 = std::min(y + h, ih);
  x = x0;
  y = y0;
  w = x1 - x0;
  h = y1 - y0;
  if (w <= 0 || h <= 0 || (argb >> 24) == 0) return;
  pixman_color_t c = color(argb);
  pixman_rectangle16_t r{int16_t(x), int16_t(y), uint16_t(w), uint16_t(h)};
  pixman_image_fill_rectangles((argb >> 24) == 0xff ? PIXMAN_OP_SRC : PIXMAN_OP_OVER, dst, &c, 1, &r);
}

void fill_polygon(pixman_image_t* dst, uint32_t argb, const std::vector<std::pair<double, double>>& p) {
  std::vector<pixman_triangle_t> t;
  for (size_t i = 1; i + 1 < p.size(); ++i)
    t.push_back({pt(p[0].first, p[0].second), pt(p[i].first, p[i].second), pt(p[i + 1].first, p[i + 1].second)});
  triangles(dst, argb, t);
}

void fill_arc(pixman_image_t* dst, uint32_t argb, double cx, double cy, double r0, double r1, double a0, double a1) {
  const int n = std::max(2, int(std::abs(a1 - a0) * r1 / 6.0));
  std::vector<pixman_triangle_t> t;
  for (int i = 0; i < n; ++i) {
    const double b0 = a0 + (a1 - a0) * i / n, b1 = a0 + (a1 - a0) * (i + 1) / n;
    auto p = [&](double r, double a) { return pt(cx + r * std::cos(a), cy + r * std::sin(a)); };
    t.push_back({p(r0, b0), p(r1, b0), p(r1, b1)});
    if (r0 > 0) t.push_back({p(r0, b0), p(r1, b1), p(r0, b1)});
  }
  triangles(dst, argb, t);
}

void fill_circle(pixman_image_t* dst, uint32_t argb, double cx, double cy, double r) {
  fill_arc(dst, argb, cx, cy, 0, r, 0, 2 * M_PI);
}

void draw_line(pixman_image_t* dst, uint32_t argb, double x0, double y0, double x1, double y1, double width) {
  const double dx = x1 - x0, dy = y1 - y0, len = std::hypot(dx, dy);
  if (len <= 0) return;
  const double nx = -dy / len * width / 2, ny = dx / len * width / 2;
  fill_polygon(dst, argb, {{x0 + nx, y0 + ny}, {x1 + nx, y1 + ny}, {x1 - nx, y1 - ny}, {x0 - nx, y0 - ny}});
}

int draw_text(pixman_image_t* dst, uint32_t argb, int x, int y, int h, const char* text) {
  // Segments a..g (top, top-right, bottom-right, bottom, bottom-left, top-left, middle).
  auto segs = [](char ch) -> uint8_t {
    switch (ch) {
      case '0': return 0x3f;
      case '1': return 0x06;
      case '2': return 0x5b;
      case '3': return 0x4f;
      case '4': return 0x66;
      case '5': return 0x6d;
      case '6': return 0x7d;
      case '7': return 0x07;
      case '8': return 0x7f;
      case '9': return 0x6f;
      case '-': return 0x40;
      case 'P': return 0x73;
      case 'R': return 0x50;
      case 'N': return 0x54;
      case 'D': return 0x5e;
      default: return 0;
    }
  };
  const int w = h / 2, t = std::max(2, h / 9), gap = h / 5;
  int cx = x;
  for (const char* c = text; *c; ++c) {
    const uint8_t s = segs(*c);
    const int half = h / 2;
    if (s & 0x01) fill_rect(dst, argb, cx, y, w, t);
    if (s & 0x02) fill_rect(dst, argb, cx + w - t, y, t, half);
    if (s & 0x04) fill_rect(dst, argb, cx + w - t, y + half, t, h - half);
    if (s & 0x08) fill_rect(dst, argb, cx, y + h - t, w, t);
    if (s & 0x10) fill_rect(dst, argb, cx, y + half, t, h - half);
    if (s & 0x20) fill_rect(dst, argb, cx, y, t, half);
    if (s & 0x40) fill_rect(dst, argb, cx, y + half - t / 2, w, t);
    cx += w + gap;
  }
  return cx - x;
}

}  // namespace canopy::demo

// ---- the apps' main loop ----------------------------------------------------------------------

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "canopy/guest/snd_client.h"

namespace canopy::demo {

namespace {

namespace sndp = canopy::protocol::virtio_snd;

// The sound side of run_app (AudioPlan).
class DemoAudio {
 public:
  static std::unique_ptr<DemoAudio> open(const char* name, guest::Partition& part, const AudioPlan& plan,
                                         const std::string& chime_file) {
    auto dev = part.find_device(sndp::kDeviceId);
    if (!dev.ok()) {
      std::fprintf(stderr, "%s: no [vm.snd]: silent\n", name);
      return nullptr;
    }
    std::unique_ptr<DemoAudio> a(new DemoAudio(name, plan));
    a->transport_ = part.transport(*dev);
    guest::SndClient::Options o;
    auto area = part.alloc(guest::SndClient::kAreaBytes);
    if (!area.ok()) return nullptr;
    o.area = *area;
    auto c = guest::SndClient::create(*a->transport_, part.memory(), o);
    if (!c.ok()) {
      std::fprintf(stderr, "%s: virtio-snd init failed: %s: silent\n", name, c.error().what);
      return nullptr;
    }
    a->snd_ = std::move(*c);
    a->frames_ = uint32_t(std::lround(plan.period_ms * 48.0));
    a->buf_.resize(size_t(a->frames_) * 2);
    if (!a->snd_->set_params(0, plan.periods * a->frames_ * 4, a->frames_ * 4, 2, sndp::Format::kS16, 48000).ok()) {
      std::fprintf(stderr, "%s: virtio-snd refused 48 kHz stereo S16 (%s): silent\n", name,
                   sndp::code_name(a->snd_->last_status()));
      return nullptr;
    }
    a->next_chime_ = plan.first_s;
    a->chime_file_ = chime_file;
    std::fprintf(stderr, "%s: sound on virtio-snd stream 0 (%.1f ms periods, %u buffered)\n", name, plan.period_ms,
                 plan.periods);
    return a;
  }

  void service(double t) {
    (void)snd_->poll();
    for (;;) {
      auto c = snd_->next_tx(0);
      if (!c.ok()) break;
      ++periods_;
      latency_.push_back((c->completed_ns - c->submitted_ns) / 1e6 + c->host_delay_ms(192.0));
      if (plan_.kind == AudioPlan::Kind::kContinuous && (periods_ == 1 || periods_ == 100)) {
        if (periods_ == 1) std::fprintf(stderr, "%s: audio: playing\n", name_);
        else std::fprintf(stderr, "%s: audio: 100 periods\n", name_);
      }
    }
    if (plan_.kind == AudioPlan::Kind::kContinuous) {
      if (!playing_) begin();
      fill(~uint64_t(0));
      return;
    }
    const uint64_t len = uint64_t(plan_.length_s * 48000);
    if (!chime_file_.empty()) {
      // The first chime waits for the file (an event from outside); the schedule runs from then on.
      if (access(chime_file_.c_str(), F_OK) != 0) return;
      chime_file_.clear();
      next_chime_ = t;
    }
    if (!playing_ && t >= next_chime_) {
      begin();
      ++chimes_;
      next_chime_ += plan_.every_s;
      std::fprintf(stderr, "%s: audio: chime %llu started\n", name_, (unsigned long long)chimes_);
    }
    if (!playing_) return;
    fill(len);
    if (pos_ >= len && snd_->tx_in_flight() == 0) {
      (void)snd_->stop(0);
      (void)snd_->release(0);
      playing_ = false;
      std::fprintf(stderr, "%s: audio: chime %llu done\n", name_, (unsigned long long)chimes_);
    }
  }

  ~DemoAudio() {
    // The summary first: the VMM may be tearing the device down already.
    std::sort(latency_.begin(), latency_.end());
    auto pct = [&](double q) {
      return latency_.empty() ? 0.0 : latency_[std::min(latency_.size() - 1, size_t(q * latency_.size()))];
    };
    std::fprintf(stderr, "%s: audio: %llu periods%s, latency_ms p50=%.1f p99=%.1f (write -> heard)\n", name_,
                 (unsigned long long)periods_,
                 plan_.kind == AudioPlan::Kind::kChimes ? (", " + std::to_string(chimes_) + " chimes").c_str() : "",
                 pct(0.5), pct(0.99));
    if (playing_) {
      (void)snd_->stop(0);
      (void)snd_->release(0);
    }
  }

 private:
  DemoAudio(const char* name, const AudioPlan& plan) : name_(name), plan_(plan) {}
  void begin() {
    pos_ = 0;
    if (!snd_->prepare(0).ok()) return;
    fill(plan_.kind == AudioPlan::Kind::kChimes ? uint64_t(plan_.length_s * 48000) : ~uint64_t(0));
    playing_ = snd_->start(0).ok();
  }
  // Keeps `periods` buffers with the device until the sound's `len` frames are written.
  void fill(uint64_t len) {
    while (snd_->tx_in_flight() < plan_.periods && pos_ < len) {
      plan_.render(buf_.data(), frames_, pos_);
      pos_ += frames_;
      if (!snd_->write(0, std::span(reinterpret_cast<const uint8_t*>(buf_.data()), buf_.size() * 2)).ok()) return;
    }
  }

  const char* name_;
  AudioPlan plan_;
  std::unique_ptr<guest::VirtioTransport> transport_;
  std::unique_ptr<guest::SndClient> snd_;
  uint32_t frames_ = 0;
  std::vector<int16_t> buf_;
  uint64_t pos_ = 0;
  bool playing_ = false;
  double next_chime_ = 0;
  std::string chime_file_;  // the first chime waits for this file ("" : at first_s)
  uint64_t periods_ = 0, chimes_ = 0;
  std::vector<double> latency_;
};

}  // namespace

int run_app(const char* name, double fps, int argc, char** argv, void (*draw)(const DrawArgs&),
            const AudioPlan* audio_plan) {
  uint64_t max_frames = 0;
  double hang_after = -1;
  bool flood = false;
  std::string chime_file;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--fps" && i + 1 < argc) fps = std::atof(argv[++i]);
    else if (a == "--frames" && i + 1 < argc) max_frames = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--hang-after-s" && i + 1 < argc) hang_after = std::atof(argv[++i]);
    else if (a == "--flood") flood = true;
    else if (a == "--chime-after-file" && i + 1 < argc) chime_file = argv[++i];
    else {
      std::fprintf(stderr, "%s: unknown argument %s\n", name, a.c_str());
      return 2;
    }
  }
  if (fps <= 0 || fps > 1000) {
    std::fprintf(stderr, "%s: --fps out of range\n", name);
    return 2;
  }
  auto p = guest::Partition::attach();
  if (!p.ok()) {
    std::fprintf(stderr, "%s: not started by canopy-vmm as a partition: %s\n", name, p.error().what);
    return 2;
  }
  guest::Partition& part = **p;
  auto dev = part.find_device(16);
  if (!dev.ok()) {
    std::fprintf(stderr, "%s: the manifest gives this VM no [vm.gpu]\n", name);
    return 2;
  }
  auto transport = part.transport(*dev);
  guest::GpuClient::Options o;
  auto area = part.alloc(guest::GpuClient::kAreaBytes);
  if (!area.ok()) return 2;
  o.area = *area;
  auto gc = guest::GpuClient::create(*transport, part.memory(), o);
  if (!gc.ok()) {
    std::fprintf(stderr, "%s: virtio-gpu init failed: %s\n", name, gc.error().what);
    return 1;
  }
  guest::GpuClient& gpu = **gc;
  auto info = gpu.display_info();
  if (!info.ok() || (*info)[0].r.width.get() == 0) {
    std::fprintf(stderr, "%s: scanout 0 has no mode\n", name);
    return 1;
  }
  const uint32_t w = (*info)[0].r.width.get(), h = (*info)[0].r.height.get();
  auto sc = Swapchain::create(part, gpu, 0, w, h, flood ? 0 : 200);
  if (!sc.ok()) {
    std::fprintf(stderr, "%s: swapchain %ux%u: %s\n", name, w, h, sc.error().what);
    return 1;
  }
  std::fprintf(stderr, "%s: drawing %ux%u at %.0f fps%s\n", name, w, h, fps, flood ? " (flooding)" : "");
  std::unique_ptr<DemoAudio> audio = audio_plan ? DemoAudio::open(name, part, *audio_plan, chime_file) : nullptr;
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto period = std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(1.0 / fps));
  auto next = start;
  for (uint64_t frame = 0; max_frames == 0 || frame < max_frames;) {
    if (!part.poll_events().ok() || part.stop_requested()) break;
    const double t = std::chrono::duration<double>(clock::now() - start).count();
    (void)part.heartbeat(frame);
    if (hang_after >= 0 && t >= hang_after) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // hung: alive, no frames
      continue;
    }
    draw(DrawArgs{(*sc)->back(), w, h, t, frame});
    if (Status s = (*sc)->present(); !s.ok()) {
      std::fprintf(stderr, "%s: present failed: %s\n", name, s.error().what);
      return 1;
    }
    ++frame;
    if (audio) audio->service(std::chrono::duration<double>(clock::now() - start).count());
    if (!flood) {
      next += period;
      auto now = clock::now();
      if (next < now) next = now;  // late: no burst to catch up
      // Sound is serviced every period in between frames.
      const auto step = std::chrono::duration_cast<clock::duration>(
          std::chrono::duration<double, std::milli>(audio_plan ? audio_plan->period_ms : 1e9));
      while (audio && now + step < next) {
        std::this_thread::sleep_until(now + step);
        now = clock::now();
        audio->service(std::chrono::duration<double>(now - start).count());
      }
      std::this_thread::sleep_until(next);
    }
  }
  std::fprintf(stderr, "%s: %llu frames, %llu late releases\n", name, (unsigned long long)(*sc)->frames(),
               (unsigned long long)(*sc)->late_releases());
  return 0;
}

}  // namespace canopy::demo
