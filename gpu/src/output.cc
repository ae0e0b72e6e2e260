#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "canopy/gpu/scanout_output.h"

namespace canopy::gpu {

// ---- Frame ----------------------------------------------------------------------------------

Result<std::shared_ptr<const FrameView>> Frame::map(uint64_t* copied) const {
  if (!view_cache || !pieces) return make_error(Errc::kState, "frame: no pieces");
  std::lock_guard<std::mutex> lk(view_cache->mu);
  if (view_cache->view) return view_cache->view;
  std::vector<buffers::FilePiece> fp;
  fp.reserve(pieces->size());
  for (const auto& p : *pieces) fp.push_back({p.fd->get(), p.offset, p.length});
  auto view = std::make_shared<FrameView>();
  if (buffers::scatter_mappable(fp)) {
    CANOPY_ASSIGN_OR_RETURN(view->mapping, buffers::map_scattered(fp, buffers::Access::kRead));
  } else {
    // Pieces that are not page aligned (a partition's own allocator may hand such): copy them.
    uint64_t total = 0;
    for (const auto& p : fp) total += p.length;
    if (total > buffers::kMaxSharedMemorySize) return make_error(Errc::kLimit, "frame: view above cap");
    view->copy.resize(size_t(total));
    uint64_t at = 0;
    for (const auto& p : fp) {
      uint64_t done = 0;
      while (done < p.length) {
        ssize_t n = pread(p.fd, view->copy.data() + at + done, size_t(p.length - done), off_t(p.offset + done));
        if (n <= 0) return make_error(Errc::kIo, "frame: pread", errno);
        done += uint64_t(n);
      }
      at += p.length;
    }
    if (copied) *copied += total;
  }
  view_cache->view = view;
  return std::shared_ptr<const FrameView>(view);
}

bool Frame::wait_acquire(int timeout_ms) const {
  if (acquired()) return true;
  return acquire_timeline->wait_for(acquire_point, std::chrono::milliseconds(timeout_ms)).ok();
}

bool Frame::acquired() const { return !acquire_timeline || acquire_timeline->signalled() >= acquire_point; }

void Frame::release() {
  if (released_.exchange(true, std::memory_order_acq_rel)) return;
  if (on_release && release_token) on_release(release_token);
}

// ---- OutputTee ------------------------------------------------------------------------------

void OutputTee::add(ScanoutOutput* out) { outs_.push_back(Consumer{out, {}}); }

void OutputTee::remove(ScanoutOutput* out) {
  std::erase_if(outs_, [out](const Consumer& c) { return c.out == out; });
}

void OutputTee::pass(Consumer& c, std::function<void()> event) {
  if (c.waiting.empty()) return event();
  c.waiting.push_back({nullptr, std::move(event)});
  if (c.waiting.size() > kMaxWaiting) hand_on(c, true);
}

void OutputTee::hand(Consumer& c, std::shared_ptr<Frame> f) {
  if (c.out->takes_acquire_fences() || (c.waiting.empty() && f->acquired())) return c.out->on_frame(std::move(f));
  c.waiting.push_back({std::move(f), nullptr});
  if (c.waiting.size() > kMaxWaiting) hand_on(c, true);
}

void OutputTee::hand_on(Consumer& c, bool all) {
  while (!c.waiting.empty()) {
    Waiting& w = c.waiting.front();
    if (w.frame) {
      // A frame whose producer is gone cannot become complete: it goes as it is rather than stop the
      // events behind it; so does every frame when the consumer's queue is full (`all`).
      if (!all && !w.frame->acquired() && w.frame->acquire_timeline->producer_state() != buffers::ProducerState::kLost)
        break;
      auto f = std::move(w.frame);
      c.waiting.pop_front();
      c.out->on_frame(std::move(f));
    } else {
      auto event = std::move(w.event);
      c.waiting.pop_front();
      event();
    }
  }
}

void OutputTee::on_scanout(const ScanoutState& s) {
  for (auto& c : outs_) pass(c, [o = c.out, s] { o->on_scanout(s); });
}

void OutputTee::on_frame(std::shared_ptr<Frame> frame) {
  if (outs_.size() == 1) return hand(outs_[0], std::move(frame));
  // Each consumer gets its own Frame; the device's is released when every copy is.
  struct Join {
    std::shared_ptr<Frame> original;
    explicit Join(std::shared_ptr<Frame> f) : original(std::move(f)) {}
    ~Join() { original->release(); }
  };
  auto join = std::make_shared<Join>(frame);
  for (auto& c : outs_) {
    auto f = std::make_shared<Frame>();
    f->scanout = frame->scanout;
    f->seq = frame->seq;
    f->resource_id = frame->resource_id;
    f->drm_fourcc = frame->drm_fourcc;
    f->width = frame->width;
    f->height = frame->height;
    f->stride = frame->stride;
    f->offset = frame->offset;
    f->pieces = frame->pieces;
    f->damage = frame->damage;
    f->bytes_copied = frame->bytes_copied;
    f->blob = frame->blob;
    f->aliased = frame->aliased;
    f->presented = frame->presented;
    f->generation = frame->generation;
    f->acquire_timeline = frame->acquire_timeline;
    f->acquire_point = frame->acquire_point;
    f->view_cache = frame->view_cache;
    f->release_token = 1;
    f->on_release = [join](uint64_t) mutable { join.reset(); };
    hand(c, std::move(f));
  }
}

void OutputTee::on_cursor(const CursorUpdate& cu) {
  for (auto& c : outs_) pass(c, [o = c.out, cu] { o->on_cursor(cu); });
}

void OutputTee::on_backing_gone(uint32_t resource_id, uint64_t generation) {
  for (auto& c : outs_) pass(c, [o = c.out, resource_id, generation] { o->on_backing_gone(resource_id, generation); });
}

void OutputTee::on_acquired() {
  for (auto& c : outs_) {
    hand_on(c, false);
    c.out->on_acquired();
  }
}

size_t OutputTee::waiting() const {
  size_t n = 0;
  for (const auto& c : outs_) n += c.waiting.size();
  return n;
}

// ---- HeadlessOutput -------------------------------------------------------------------------

HeadlessOutput::HeadlessOutput(Options o) : opt_(std::move(o)) {
  if (!opt_.log_path.empty()) log_ = fopen(opt_.log_path.c_str(), "we");
  if (opt_.release_after_ms > 0) releaser_ = std::thread([this] { release_loop(); });
}

void HeadlessOutput::release_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stopping_) {
    const auto now = Frame::Clock::now();
    const auto delay = std::chrono::milliseconds(opt_.release_after_ms);
    auto next = now + delay;
    std::vector<std::shared_ptr<Frame>> due;
    for (auto it = held_.begin(); it != held_.end();) {
      if ((*it)->presented + delay <= now) {
        due.push_back(std::move(*it));
        it = held_.erase(it);
      } else {
        next = std::min(next, (*it)->presented + delay);
        ++it;
      }
    }
    if (!due.empty()) {
      lk.unlock();
      for (auto& f : due) f->release();
      due.clear();
      lk.lock();
      continue;
    }
    cv_.wait_until(lk, next);
  }
}

HeadlessOutput::~HeadlessOutput() {
  if (releaser_.joinable()) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    releaser_.join();
  }
  release_held();
  if (log_) fclose(log_);
}

void HeadlessOutput::log(const char* fmt, ...) {
  if (!log_) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(log_, fmt, ap);
  va_end(ap);
  fflush(log_);
}

void HeadlessOutput::on_scanout(const ScanoutState& s) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stats_.size() <= s.scanout) stats_.resize(s.scanout + 1);
    stats_[s.scanout].state = s;
  }
  log("scanout %u %s %ux%u resource %u\n", s.scanout, s.enabled ? "on" : "off", s.width, s.height, s.resource_id);
}

void HeadlessOutput::on_frame(std::shared_ptr<Frame> frame) {
  uint32_t crc = 0;
  bool crc_ok = false;
  uint64_t copied = frame->bytes_copied;  // the device's copies, and below this output's own
  if (opt_.checksum) {
    auto view = frame->map(&copied);
    const uint64_t row = uint64_t(frame->width) * 4;
    if (view.ok() && frame->height > 0 &&
        frame->offset + uint64_t(frame->stride) * (frame->height - 1) + row <= (*view)->size()) {
      crc = image_crc32((*view)->data() + frame->offset, uint32_t(row), frame->height, frame->stride);
      crc_ok = true;
    }
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stats_.size() <= frame->scanout) stats_.resize(frame->scanout + 1);
    auto& st = stats_[frame->scanout];
    ++st.frames;
    st.bytes_copied += copied;
    st.last_crc = crc;
    st.last_width = frame->width;
    st.last_height = frame->height;
    st.last_fourcc = frame->drm_fourcc;
    st.last_damage = frame->damage;
  }
  const Rect d = frame->damage.empty() ? Rect{} : frame->damage[0];
  char fourcc[5] = {char(frame->drm_fourcc), char(frame->drm_fourcc >> 8), char(frame->drm_fourcc >> 16),
                    char(frame->drm_fourcc >> 24), 0};
  // " acquire N": the frame waited for point N of its scanout's acquire timeline (a 3D frame read back
  // after its fence).
  char acquire[32] = "";
  if (frame->acquire_point)
    std::snprintf(acquire, sizeof acquire, " acquire %llu", (unsigned long long)frame->acquire_point);
  log("frame %u seq %llu %ux%u %s stride %u %s copied %llu%s damage %u,%u %ux%u crc %s%08x\n", frame->scanout,
      (unsigned long long)frame->seq, frame->width, frame->height, fourcc, frame->stride,
      frame->blob      ? "blob"
      : frame->aliased ? "alias"
                       : "2d",
      (unsigned long long)copied, acquire, d.x, d.y, d.width, d.height, crc_ok ? "" : "none-", crc);
  if (on_frame_hook) on_frame_hook(*frame);
  if (opt_.hold_frames || opt_.release_after_ms > 0) {
    std::lock_guard<std::mutex> lk(mu_);
    held_.push_back(std::move(frame));
    cv_.notify_all();
  } else {
    frame->release();
  }
}

void HeadlessOutput::on_cursor(const CursorUpdate& c) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stats_.size() <= c.scanout) stats_.resize(c.scanout + 1);
    ++stats_[c.scanout].cursor_updates;
    stats_[c.scanout].last_cursor = c;
  }
  uint32_t crc = 0;
  if (c.image_changed && c.image)
    crc = image_crc32(reinterpret_cast<const uint8_t*>(c.image->argb.data()), c.image->width * 4, c.image->height,
                      c.image->width * 4);
  log("cursor %u %s %u,%u hot %u,%u%s crc %08x\n", c.scanout, c.visible ? "show" : "hide", c.x, c.y, c.hot_x, c.hot_y,
      c.image_changed ? " image" : "", crc);
}

HeadlessOutput::ScanoutStats HeadlessOutput::stats(uint32_t scanout) const {
  std::lock_guard<std::mutex> lk(mu_);
  return scanout < stats_.size() ? stats_[scanout] : ScanoutStats{};
}

uint64_t HeadlessOutput::total_frames() const {
  std::lock_guard<std::mutex> lk(mu_);
  uint64_t n = 0;
  for (const auto& s : stats_) n += s.frames;
  return n;
}

size_t HeadlessOutput::held() const {
  std::lock_guard<std::mutex> lk(mu_);
  return held_.size();
}

void HeadlessOutput::release_held() {
  std::vector<std::shared_ptr<Frame>> h;
  {
    std::lock_guard<std::mutex> lk(mu_);
    h.swap(held_);
  }
  for (auto& f : h) f->release();
}

}  // namespace canopy::gpu
