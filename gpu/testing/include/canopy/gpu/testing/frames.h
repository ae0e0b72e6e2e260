// Test support: frames as the device gives them to an output, for tests of outputs (channel output,
// the compositor's dma-buf path) without a guest.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

#include "canopy/gpu/scanout_output.h"

namespace canopy::gpu::testing {

// Frame `seq` of a 32x64 XRGB8888 blob scanout (stride 128) of resource 5 with backing `generation`,
// its pixels in `pieces`; the frames of one backing share `cache`. `on_release` hears its release.
inline std::shared_ptr<Frame> blob_frame(
    uint64_t seq, uint64_t generation, FramePieces pieces, std::shared_ptr<Frame::ViewCache> cache,
    std::function<void(uint64_t)> on_release = [](uint64_t) {}) {
  auto f = std::make_shared<Frame>();
  f->seq = seq;
  f->drm_fourcc = 0x34325258;  // XR24
  f->width = 32;
  f->height = 64;
  f->stride = 128;
  f->blob = true;
  f->resource_id = 5;
  f->generation = generation;
  f->pieces = std::move(pieces);
  f->view_cache = std::move(cache);
  f->release_token = seq;
  f->on_release = std::move(on_release);
  return f;
}

}  // namespace canopy::gpu::testing
