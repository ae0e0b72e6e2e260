// The CPU renderer: pixman composites each layer with its dst->src transform.
#include <pixman.h>

#include <algorithm>
#include <cmath>

#include "canopy/display/renderer.h"

namespace canopy::display {
namespace {

using buffers::Format;

pixman_format_code_t pixman_format(Format f, bool& opaque) {
  opaque = false;
  switch (f) {
    case Format::kXRGB8888: opaque = true; return PIXMAN_x8r8g8b8;
    case Format::kARGB8888: return PIXMAN_a8r8g8b8;
    case Format::kXBGR8888: opaque = true; return PIXMAN_x8b8g8r8;
    case Format::kABGR8888: return PIXMAN_a8b8g8r8;
    case Format::kRGB565: opaque = true; return PIXMAN_r5g6b5;
    default: return pixman_format_code_t(0);
  }
}

struct ImageRef {
  pixman_image_t* p = nullptr;
  explicit ImageRef(pixman_image_t* i) : p(i) {}
  ~ImageRef() {
    if (p) pixman_image_unref(p);
  }
  ImageRef(const ImageRef&) = delete;
  ImageRef& operator=(const ImageRef&) = delete;
};

class PixmanRenderer final : public Renderer {
 public:
  const char* name() const override { return "pixman"; }
  Stats stats() const override { return stats_; }

  Status compose(std::span<const LayerDraw> layers, const Canvas& t, uint32_t background) override {
    if (!t.data || t.width == 0 || t.height == 0 || t.stride < t.width * 4 || t.stride % 4)
      return make_error(Errc::kInvalidArgument, "pixman: bad canvas");
    ImageRef dst(pixman_image_create_bits_no_clear(PIXMAN_x8r8g8b8, int(t.width), int(t.height),
                                                   reinterpret_cast<uint32_t*>(t.data), int(t.stride)));
    if (!dst.p) return make_error(Errc::kNoMemory, "pixman: canvas image");
    const pixman_color_t bg{uint16_t(((background >> 16) & 0xff) * 0x101), uint16_t(((background >> 8) & 0xff) * 0x101),
                            uint16_t((background & 0xff) * 0x101), 0xffff};
    const pixman_box32_t all{0, 0, int32_t(t.width), int32_t(t.height)};
    pixman_image_fill_boxes(PIXMAN_OP_SRC, dst.p, &bg, 1, &all);
    Status result;
    for (const LayerDraw& d : layers) {
      Status s = draw(d, dst.p, t);
      if (!s.ok() && result.ok()) result = s;
    }
    ++stats_.compositions;
    return result;
  }

 private:
  static Status draw(const LayerDraw& d, pixman_image_t* dst, const Canvas& t) {
    const LayerSpec& l = *d.layer;
    const Image& im = d.image;
    if (l.alpha <= 0 || l.dst.empty()) return {};
    bool opaque = false;
    const pixman_format_code_t fmt = pixman_format(im.format, opaque);
    if (fmt == 0) return make_error(Errc::kUnsupported, "pixman: frame format not supported");
    const uint32_t bpp = PIXMAN_FORMAT_BPP(fmt) / 8;
    if (!im.data || im.width == 0 || im.height == 0 || im.stride < uint64_t(im.width) * bpp || im.stride % 4)
      return make_error(Errc::kInvalidArgument, "pixman: bad frame geometry");
    const Rect src = resolved_src(l, im.width, im.height);
    if (src.empty()) return {};
    // pixman only reads source images; the cast is for its API.
    ImageRef s(pixman_image_create_bits_no_clear(fmt, int(im.width), int(im.height),
                                                 const_cast<uint32_t*>(reinterpret_cast<const uint32_t*>(im.data)),
                                                 int(im.stride)));
    if (!s.p) return make_error(Errc::kNoMemory, "pixman: frame image");
    const Affine m = dst_to_src(l, src);
    pixman_transform tr;
    pixman_transform_init_identity(&tr);
    tr.matrix[0][0] = pixman_double_to_fixed(m.a);
    tr.matrix[0][1] = pixman_double_to_fixed(m.b);
    tr.matrix[0][2] = pixman_double_to_fixed(m.e);
    tr.matrix[1][0] = pixman_double_to_fixed(m.c);
    tr.matrix[1][1] = pixman_double_to_fixed(m.d);
    tr.matrix[1][2] = pixman_double_to_fixed(m.f);
    const bool exact = is_integer_translation(m);
    if (!exact) {
      pixman_image_set_transform(s.p, &tr);
      pixman_image_set_filter(s.p, PIXMAN_FILTER_BILINEAR, nullptr, 0);
    }
    pixman_image_set_repeat(s.p, PIXMAN_REPEAT_PAD);
    // The part of dst on the canvas.
    const int64_t x0 = std::max<int64_t>(l.dst.x, 0), y0 = std::max<int64_t>(l.dst.y, 0);
    const int64_t x1 = std::min<int64_t>(int64_t(l.dst.x) + l.dst.width, t.width);
    const int64_t y1 = std::min<int64_t>(int64_t(l.dst.y) + l.dst.height, t.height);
    if (x1 <= x0 || y1 <= y0) return {};
    const int32_t off_x = int32_t(x0 - l.dst.x), off_y = int32_t(y0 - l.dst.y);
    // Untransformed: source pixel = dst-relative pixel + the crop's corner.
    const int32_t sx = exact ? off_x + int32_t(m.e) : off_x, sy = exact ? off_y + int32_t(m.f) : off_y;
    ImageRef mask(nullptr);
    pixman_op_t op = opaque ? PIXMAN_OP_SRC : PIXMAN_OP_OVER;
    if (l.alpha < 1.0) {
      const pixman_color_t a{0, 0, 0, uint16_t(std::lround(std::clamp(l.alpha, 0.0, 1.0) * 0xffff))};
      mask.p = pixman_image_create_solid_fill(&a);
      op = PIXMAN_OP_OVER;
    }
    pixman_image_composite32(op, s.p, mask.p, dst, sx, sy, 0, 0, int32_t(x0), int32_t(y0), int32_t(x1 - x0),
                             int32_t(y1 - y0));
    return {};
  }

  Stats stats_;
};

}  // namespace

std::unique_ptr<Renderer> make_pixman_renderer() { return std::make_unique<PixmanRenderer>(); }

}  // namespace canopy::display
