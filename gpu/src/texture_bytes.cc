#include "texture_bytes.h"

#include <algorithm>

#include "canopy/base/checked.h"

namespace canopy::gpu {
namespace {

// Gallium's targets as virgl numbers them.
constexpr uint32_t kTargetBuffer = 0, kTarget3d = 3;

// A format's storage: bytes per texel, or per 4x4 block when `block` is set.
struct Storage {
  uint32_t bytes = 16;
  bool block = false;
};

// Virgl's format numbers (Gallium's, as virglrenderer's virgl_hw.h lists them), grouped by size.
Storage storage(uint32_t f) {
  switch (f) {
    // 1 byte: L8, A8, S8, R8 (unorm, snorm, uint, sint), L8 sRGB, B2G3R3, A8 / L8 (snorm, uint, sint)
    case 9:
    case 10:
    case 23:
    case 64:
    case 74:
    case 95:
    case 139:
    case 147:
    case 148:
    case 177:
    case 181:
    case 201:
    case 203:
    case 205:
    case 207: return {1};
    // 2 bytes: 16-bit packed RGB(A), L8A8, L16, Z16, R16, R8G8, R16F, A16 / L16 variants
    case 5:
    case 6:
    case 7:
    case 12:
    case 13:
    case 16:
    case 48:
    case 56:
    case 65:
    case 75:
    case 91:
    case 96:
    case 122:
    case 135:
    case 141:
    case 149:
    case 151:
    case 152:
    case 155:
    case 156:
    case 178:
    case 182:
    case 185:
    case 189:
    case 204:
    case 208:
    case 209:
    case 211:
    case 213:
    case 215: return {2};
    // 3 bytes: R8G8B8 (snorm, uint, sint)
    case 76:
    case 179:
    case 183: return {3};
    // 4 bytes: 8-bit RGBA / BGRA / XRGB in every order and type, 10-10-10-2, Z32, Z24S8, R32, R16G16,
    // R11G11B10F, R9G9B9E5, L16A16, A32 / L32
    case 1:
    case 2:
    case 3:
    case 4:
    case 8:
    case 17:
    case 18:
    case 19:
    case 20:
    case 21:
    case 28:
    case 49:
    case 57:
    case 67:
    case 77:
    case 92:
    case 100:
    case 101:
    case 121:
    case 124:
    case 125:
    case 131:
    case 134:
    case 136:
    case 137:
    case 140:
    case 153:
    case 157:
    case 159:
    case 160:
    case 180:
    case 184:
    case 186:
    case 190:
    case 193:
    case 197:
    case 212:
    case 216:
    case 217:
    case 219:
    case 221:
    case 223:
    case 225:
    case 229:
    case 230:
    case 233:
    case 308: return {4};
    // 6 bytes: R16G16B16 (float, uint, sint)
    case 93:
    case 187:
    case 191: return {6};
    // 8 bytes: R32G32, R16G16B16A16 / X16, Z32F_S8X24, L32A32
    case 29:
    case 51:
    case 59:
    case 94:
    case 126:
    case 161:
    case 188:
    case 192:
    case 194:
    case 198:
    case 220:
    case 224:
    case 234:
    case 235: return {8};
    // 12 bytes: R32G32B32
    case 30:
    case 195:
    case 199: return {12};
    // 8-byte 4x4 blocks: DXT1 (RGB, RGBA, sRGB), RGTC1
    case 105:
    case 106:
    case 109:
    case 110:
    case 113:
    case 114: return {8, true};
    // 16-byte 4x4 blocks: DXT3, DXT5, RGTC2, BPTC
    case 107:
    case 108:
    case 111:
    case 112:
    case 115:
    case 116:
    case 255:
    case 256:
    case 257:
    case 258: return {16, true};
    default: return {16};  // R32G32B32A32 and every format not listed: the widest
  }
}

}  // namespace

std::optional<uint64_t> texture_bytes(const Resource3dArgs& a) {
  if (a.target == kTargetBuffer) return uint64_t(a.width);
  const Storage s = storage(a.format);
  uint64_t total = 0;
  for (uint32_t level = 0; level <= a.last_level && level < 32; ++level) {
    const uint64_t w = std::max<uint64_t>(1, a.width >> level), h = std::max<uint64_t>(1, a.height >> level);
    // A 3D texture's depth halves with each level; array layers do not.
    const uint64_t d = a.target == kTarget3d ? std::max<uint64_t>(1, a.depth >> level) : a.depth;
    const uint64_t texels = s.block ? ((w + 3) / 4) * ((h + 3) / 4) : w * h;  // <= 2^28: no overflow
    auto bytes = checked_mul<uint64_t>(texels * s.bytes, d);
    if (!bytes) return std::nullopt;
    auto sum = checked_add(total, *bytes);
    if (!sum) return std::nullopt;
    total = *sum;
  }
  return checked_mul<uint64_t>(total, uint64_t(a.array_size) * std::max<uint32_t>(a.nr_samples, 1));
}

}  // namespace canopy::gpu
