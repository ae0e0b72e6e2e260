// The compositor's composition: what each output draws and how (compositor_impl.h).
#include "compositor_impl.h"

namespace canopy::display {

void Compositor::Impl::forget_memory(const void* base) {
  if (renderer) renderer->forget_memory(base);
  for (auto& o : outputs)
    if (o.sink) o.sink->forget_memory(base);
}

void Compositor::Impl::build_draws(size_t oi, const OutputScheduler::Plan& plan, std::vector<LayerDraw>& draws,
                                   std::vector<Source>& sources, std::vector<LayerSpec>& specs) {
  Output& o = outputs[oi];
  const OutputSpec& spec = layout.outputs[oi];
  draws.reserve(spec.layers.size() * 2);
  specs.reserve(spec.layers.size());  // (stable: the draws point into it)
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    const auto& lp = plan.layers[l];
    switch (lp.show) {
      case OutputScheduler::Show::kNothing: break;
      case OutputScheduler::Show::kNew:
      case OutputScheduler::Show::kReused: {
        auto it = frames.find(lp.frame);
        if (it == frames.end()) break;
        draws.push_back({&spec.layers[l], it->second.image});
        sources.push_back({it->second.buf, lp.frame});
        add_cursor(it->second, spec.layers[l], draws, sources, specs);
        break;
      }
      case OutputScheduler::Show::kFallback:
        draws.push_back({&o.fallback_spec[l], o.fallback[l].image()});
        sources.push_back({});
        break;
    }
  }
}

void Compositor::Impl::add_cursor(const FrameRec& f, const LayerSpec& l, std::vector<LayerDraw>& draws,
                                  std::vector<Source>& sources, std::vector<LayerSpec>& specs) {
  auto c = conns.find(f.conn);
  if (c == conns.end()) return;
  auto cur = c->second.cursors.find(f.scanout);
  if (cur == c->second.cursors.end() || !cur->second.visible || !cur->second.image) return;
  const Cursor& k = cur->second;
  const Rect piece{int32_t(int64_t(k.x) - k.hot_x), int32_t(int64_t(k.y) - k.hot_y), kCursorSize, kCursorSize};
  auto spec = sub_layer(l, resolved_src(l, f.image.width, f.image.height), piece);
  if (!spec) return;
  specs.push_back(*spec);
  const auto* px = reinterpret_cast<const uint8_t*>(k.image->map.data());
  draws.push_back(
      {&specs.back(), Image{px, kCursorSize, kCursorSize, kCursorSize * 4, Format::kARGB8888, k.image->mapping()}});
  sources.push_back({k.image, 0});
}

std::vector<PlaneLayer> Compositor::Impl::plane_layers(size_t oi, const std::vector<LayerDraw>& draws,
                                                       const std::vector<Source>& sources) {
  std::vector<PlaneLayer> out;
  if (draws.empty()) return out;
  const OutputSpec& spec = layout.outputs[oi];
  const LayerDraw& bottom = draws.front();
  const bool opaque_format = bottom.image.format == Format::kXRGB8888 || bottom.image.format == Format::kXBGR8888 ||
                             bottom.image.format == Format::kRGB565;
  const bool covered = opaque_format && bottom.layer->alpha >= 1.0 && bottom.layer->dst.x <= 0 &&
                       bottom.layer->dst.y <= 0 &&
                       int64_t(bottom.layer->dst.x) + bottom.layer->dst.width >= int64_t(spec.width) &&
                       int64_t(bottom.layer->dst.y) + bottom.layer->dst.height >= int64_t(spec.height);
  if ((opt.background & 0xffffff) != 0 && !covered) return out;
  for (size_t i = 0; i < draws.size(); ++i) {
    const Source& src = sources[i];
    if (!src.buf || src.buf->pieces.empty()) return {};
    PlaneLayer pl;
    pl.layer = draws[i].layer;
    pl.image = draws[i].image;
    pl.buffer_base = src.buf->map.data();
    pl.pieces = src.buf->pieces;
    if (src.frame) {
      // The sink's hold is one more reference on the frame: it goes back to its VM only when the
      // sink drops the hold (the display no longer reads it).
      frames.at(src.frame).refs++;
      const uint64_t id = src.frame;
      pl.hold = std::shared_ptr<void>(src.buf.get(), [this, id](void*) { unref(id); });
    } else {
      pl.hold = src.buf;
    }
    out.push_back(std::move(pl));
  }
  return out;
}

Status Compositor::Impl::compose(size_t oi, const OutputScheduler::Plan& plan) {
  Output& o = outputs[oi];
  const OutputSpec& spec = layout.outputs[oi];
  std::vector<LayerDraw> draws;
  std::vector<Source> sources;
  std::vector<LayerSpec> cursor_specs;
  build_draws(oi, plan, draws, sources, cursor_specs);
  if (o.sink->offers_planes()) {
    o.last_plan = plan;
    auto layers = plane_layers(oi, draws, sources);
    if (!layers.empty()) {
      const TimePoint t0 = clock.now();
      auto shown = o.sink->present_planes(layers);
      layers.clear();  // (the sink keeps the holds it needs)
      if (!shown.ok()) return shown.error();
      if (*shown) {
        trace_event("present-planes", t0, clock.now(), uint32_t(oi), draws.size());
        ++o.on_planes;
        o.canvas_stale = true;
        return {};
      }
    }
  }
  o.canvas_stale = false;
  const TimePoint t0 = clock.now();
  Status st = renderer->compose(draws, o.canvas, opt.background);
  const TimePoint t1 = clock.now();
  trace_event("compose", t0, t1, uint32_t(oi), draws.size());
  if (!st.ok()) CANOPY_WARN_RL("canopy-display: output %s: %s", spec.name.c_str(), st.error().what);
  if (!renderer->usable()) {
    // A lost or hung GPU: go on with the CPU renderer from this frame on.
    CANOPY_ERROR("canopy-display: renderer %s stopped working; composing with pixman from now on", renderer->name());
    renderer = make_pixman_renderer();
    ++renderer_switches;
    CANOPY_TRY(renderer->compose(draws, o.canvas, opt.background));
  }
  Status ps = o.sink->present(o.canvas);
  trace_event("present", t1, clock.now(), uint32_t(oi));
  return ps;
}

Status Compositor::Impl::compose_due() {
  for (size_t i = 0; i < outputs.size(); ++i) {
    Output& o = outputs[i];
    if (!o.sink->poll()) sinks_open = false;
    // Catch up at most a few periods per call: a late output skips to the next deadline ahead.
    for (int guard = 0; guard < 4 && clock.now() >= o.sched->next_latch(); ++guard) {
      const TimePoint t0 = clock.now();
      auto plan = o.sched->latch();
      if (plan.wait) break;
      trace_event("latch", t0, clock.now(), uint32_t(i));
      CANOPY_TRY(compose(i, plan));
      o.sched->presented();
      take_releases(o);
    }
  }
  return {};
}

}  // namespace canopy::display
