// What a 3D resource costs the host's GPU memory, for GpuCaps::max_3d_bytes: its format's bytes per
// texel (or per compressed block), every mip level down to last_level, its layers and samples.
#pragma once

#include <cstdint>
#include <optional>

#include "canopy/gpu/renderer.h"

namespace canopy::gpu {

// The bytes of RESOURCE_CREATE_3D's resource (a PIPE_BUFFER's width is its size); nullopt when the sum
// does not fit 64 bits. Formats this table does not know are charged as the widest (16 bytes a texel),
// never less than they may take.
std::optional<uint64_t> texture_bytes(const Resource3dArgs& a);

}  // namespace canopy::gpu
