// The demo apps' drawing surface: a double-buffered blob scanout in the partition's own RAM, drawn with
// pixman and shown zero copy (RESOURCE_CREATE_BLOB + SET_SCANOUT_BLOB + a fenced RESOURCE_FLUSH).
//
// Flow control comes from the fences: a flush's fence retires when the compositor no longer reads
// that frame (it was replaced on screen), so before drawing into a buffer again the app waits for the
// flush that last showed it. A compositor that is gone releases at once; one that is stuck cannot
// block the app longer than wait_ms per frame (the frame is then drawn anyway; wait_ms 0 never waits,
// up to kMaxInFlight unanswered flushes).
//
// Also: small pixman drawing helpers (rectangles, polygons as triangle fans, arcs, 7-segment digits).
// Threading: one thread.
#pragma once

#include <pixman.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/guest/gpu_client.h"
#include "canopy/guest/partition.h"

namespace canopy::demo {

class Swapchain {
 public:
  static Result<std::unique_ptr<Swapchain>> create(guest::Partition& part, guest::GpuClient& gpu, uint32_t scanout,
                                                   uint32_t width, uint32_t height, int wait_ms = 200);
  ~Swapchain();
  pixman_image_t* back() const { return bufs_[cur_].image; }
  uint32_t width() const { return w_; }
  uint32_t height() const { return h_; }
  // Shows the back buffer (SET_SCANOUT_BLOB + fenced flush) and makes the other one the back buffer,
  // waiting until the compositor released it.
  Status present();
  uint64_t frames() const { return frames_; }
  uint64_t late_releases() const { return late_; }  // waits that timed out
  static constexpr size_t kMaxInFlight = 8;         // fenced flushes not yet answered

 private:
  Swapchain(guest::GpuClient& g) : gpu_(g) {}
  struct Buf {
    uint32_t resource = 0;
    void* map = nullptr;
    size_t map_len = 0;
    pixman_image_t* image = nullptr;
  };
  guest::GpuClient& gpu_;
  uint32_t scanout_ = 0, w_ = 0, h_ = 0;
  int wait_ms_ = 200;
  Buf bufs_[2];
  int cur_ = 0;
  std::deque<uint64_t> in_flight_;  // flush tickets, oldest first
  uint64_t frames_ = 0, late_ = 0;
};

// ---- drawing helpers (colours are 0xAARRGGBB, premultiplied where alpha < 255) ----
void fill_rect(pixman_image_t* dst, uint32_t argb, int x, int y, int w, int h);
// A filled convex or star-shaped polygon (a fan from its first point), anti-aliased.
void fill_polygon(pixman_image_t* dst, uint32_t argb, const std::vector<std::pair<double, double>>& pts);
// A ring segment centred on (cx, cy), radii r0 < r1, from angle a0 to a1 (radians, 0 = +x, clockwise on screen).
void fill_arc(pixman_image_t* dst, uint32_t argb, double cx, double cy, double r0, double r1, double a0, double a1);
void fill_circle(pixman_image_t* dst, uint32_t argb, double cx, double cy, double r);
// A thick line from (x0, y0) to (x1, y1).
void draw_line(pixman_image_t* dst, uint32_t argb, double x0, double y0, double x1, double y1, double width);
// Seven-segment text: digits, '-', ' ' and the letters P R N D; `h` is the glyph height. Returns the width.
int draw_text(pixman_image_t* dst, uint32_t argb, int x, int y, int h, const char* text);

}  // namespace canopy::demo

namespace canopy::demo {

// The demo apps' main loop: attaches to canopy-vmm as a partition, opens its virtio-gpu device, makes a
// swapchain the size of scanout 0 and calls draw(image, seconds, frame) at --fps until the VMM asks it
// to stop or --frames are done. Flags every app takes:
//   --fps N            frame rate (default: the app's)
//   --frames N         stop after N frames (0: run until stopped)
//   --hang-after-s S   after S seconds stop presenting (a hung guest; heartbeats go on)
//   --flood            present as fast as possible, ignoring --fps (a guest flooding frames)
//   --chime-after-file F  chimes (AudioPlan kChimes): the first starts as soon as the file F exists
//                      (instead of at first_s), the next every_s after it; the test mode of
//                      demos/run-cockpit.sh orders the chime after the music this way, by events
// Returns the process exit status.
struct DrawArgs {
  pixman_image_t* image;
  uint32_t width, height;
  double t;        // seconds since the first frame
  uint64_t frame;  // from 0
};
// Sound (when the VM has a [vm.snd]): stream 0 at 48 kHz, stereo S16, through the guest-drivers
// SndClient, serviced between frames every period. Continuous: played from the start (the IVI's music).
// Chimes: each one STARTs the stream, plays `length_s` and STOPs it again — the policy ducks lower
// streams exactly while a chime runs — the first at `first_s`, then every `every_s`. At the end the app
// prints "NAME: audio: N periods, latency_ms p50=.. p99=.. (write -> heard)". Progress lines on the way
// (events a script can wait for): "NAME: audio: playing" (the first period was taken by the device) and
// "NAME: audio: 100 periods" for continuous sound; "NAME: audio: chime N started" and "NAME: audio:
// chime N done" (all its periods taken, the stream stopped) for chimes.
struct AudioPlan {
  enum class Kind { kContinuous, kChimes } kind = Kind::kContinuous;
  double period_ms = 10;
  uint32_t periods = 4;
  // Fills `frames` interleaved stereo frames from sample `pos` of the sound (a chime starts at 0).
  void (*render)(int16_t* out, size_t frames, uint64_t pos) = nullptr;
  double first_s = 1, every_s = 5, length_s = 0.6;
};
int run_app(const char* name, double default_fps, int argc, char** argv, void (*draw)(const DrawArgs&),
            const AudioPlan* audio = nullptr);

}  // namespace canopy::demo
