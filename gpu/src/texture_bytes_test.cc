// The 3D budget's estimate of a resource: its format's size, its mip chain, layers and samples.
#include "texture_bytes.h"

#include <gtest/gtest.h>

namespace canopy::gpu {
namespace {

Resource3dArgs tex(uint32_t target, uint32_t format, uint32_t w, uint32_t h, uint32_t last_level = 0,
                   uint32_t depth = 1, uint32_t layers = 1, uint32_t samples = 0) {
  Resource3dArgs a;
  a.target = target;
  a.format = format;
  a.width = w;
  a.height = h;
  a.depth = depth;
  a.array_size = layers;
  a.last_level = last_level;
  a.nr_samples = samples;
  return a;
}

constexpr uint32_t kBuffer = 0, k2d = 2, k3d = 3, k2dArray = 7;
constexpr uint32_t kRgba8 = 67, kR8 = 64, kRgba32f = 31, kDxt1 = 105, kDxt5 = 108, kUnknown = 1000;

TEST(TextureBytes, FormatsAreChargedTheirSize) {
  EXPECT_EQ(texture_bytes(tex(k2d, kRgba8, 64, 64)), 64u * 64 * 4);
  EXPECT_EQ(texture_bytes(tex(k2d, kR8, 64, 64)), 64u * 64);
  EXPECT_EQ(texture_bytes(tex(k2d, kRgba32f, 64, 64)), 64u * 64 * 16) << "4 bytes a texel was a quarter of it";
  EXPECT_EQ(texture_bytes(tex(k2d, kDxt1, 64, 64)), 16u * 16 * 8);  // 4x4 blocks of 8 bytes
  EXPECT_EQ(texture_bytes(tex(k2d, kDxt5, 6, 6)), 2u * 2 * 16);     // partial blocks are whole blocks
  EXPECT_EQ(texture_bytes(tex(k2d, kUnknown, 64, 64)), 64u * 64 * 16) << "unknown: the widest";
  EXPECT_EQ(texture_bytes(tex(kBuffer, kR8, 1 << 20, 1)), 1u << 20) << "a buffer's width is its size";
}

TEST(TextureBytes, EveryMipLevelLayerAndSampleIsCharged) {
  // 64x64 RGBA8 with 7 levels: 64^2 + 32^2 + ... + 1^2 texels.
  uint64_t texels = 0;
  for (uint32_t s = 64; s >= 1; s /= 2) texels += uint64_t(s) * s;
  EXPECT_EQ(texture_bytes(tex(k2d, kRgba8, 64, 64, 6)), texels * 4);
  // Levels past the smallest still cost a texel each (a guest may ask for 31).
  EXPECT_EQ(texture_bytes(tex(k2d, kRgba8, 64, 64, 31)), (texels + 25) * 4);
  // A 3D texture's depth halves with its levels; an array's layers do not.
  EXPECT_EQ(texture_bytes(tex(k3d, kR8, 8, 8, 1, 8)), 8u * 8 * 8 + 4u * 4 * 4);
  EXPECT_EQ(texture_bytes(tex(k2dArray, kR8, 8, 8, 1, 1, 6)), (8u * 8 + 4u * 4) * 6);
  EXPECT_EQ(texture_bytes(tex(k2d, kRgba8, 16, 16, 0, 1, 1, 4)), 16u * 16 * 4 * 4);
}

TEST(TextureBytes, SumsThatDoNotFitAreRefused) {
  EXPECT_FALSE(texture_bytes(tex(k3d, kRgba32f, 16384, 16384, 31, 16384, 16384, 32)).has_value());
}

}  // namespace
}  // namespace canopy::gpu
