#include "canopy/gpu/edid.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace canopy::gpu {
namespace {

TEST(Edid, BaseBlockIsValidAndDescribesTheMode) {
  auto e = make_edid({1920, 1080, 60}, 2);
  ASSERT_TRUE(e.ok());
  const auto& b = *e;
  const uint8_t header[8] = {0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0};
  EXPECT_EQ(0, std::memcmp(b.data(), header, 8));
  uint8_t sum = 0;
  for (uint8_t v : b) sum = uint8_t(sum + v);
  EXPECT_EQ(sum, 0) << "checksum";
  EXPECT_EQ(b[18], 1);
  EXPECT_EQ(b[19], 4);
  // Detailed timing 1: 1920x1080, CVT-RB: 2080 x 1111 total, 138.5 MHz.
  const uint8_t* d = &b[54];
  EXPECT_EQ(d[0] | d[1] << 8, 13850);
  EXPECT_EQ(d[2] | (d[4] >> 4) << 8, 1920);
  EXPECT_EQ(d[3] | (d[4] & 0xf) << 8, 160);
  EXPECT_EQ(d[5] | (d[7] >> 4) << 8, 1080);
  EXPECT_EQ(d[6] | (d[7] & 0xf) << 8, 31);
  // Name descriptor "Canopy-2".
  EXPECT_EQ(b[93], 0xfc);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(&b[95]), 8), "Canopy-2");
  // The established 640x480, 800x600 and 1024x768 modes fit inside 1920x1080.
  EXPECT_EQ(b[35], 0x21);
  EXPECT_EQ(b[36], 0x08);
}

TEST(Edid, SmallModesListOnlyEstablishedModesThatFit) {
  auto e = make_edid({800, 600, 60}, 0);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ((*e)[35], 0x21);
  EXPECT_EQ((*e)[36], 0x00);
}

TEST(Edid, CvtReducedBlankingMatchesVesaDmt) {
  auto t = cvt_reduced_blanking({1280, 800, 60});
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->h_total, 1440u);
  EXPECT_EQ(t->v_total, 823u);
  EXPECT_EQ(t->pixel_clock_khz, 71000u);  // DMT 1280x800@60 reduced blanking: 71.00 MHz
}

TEST(Edid, RefusesModesAnEdidCannotCarry) {
  EXPECT_FALSE(make_edid({0, 768, 60}, 0).ok());
  EXPECT_FALSE(make_edid({4096, 2160, 60}, 0).ok());
  EXPECT_FALSE(make_edid({1024, 768, 0}, 0).ok());
  EXPECT_FALSE(make_edid({4095, 4095, 240}, 0).ok());  // clock over 655.35 MHz
}

}  // namespace
}  // namespace canopy::gpu
