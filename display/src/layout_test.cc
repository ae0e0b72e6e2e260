#include "canopy/display/layout.h"

#include <gtest/gtest.h>

#include "canopy/config/manifest.h"

namespace canopy::display {
namespace {

const std::string kExamples = CANOPY_HYPERVISOR_EXAMPLES;

TEST(Layout, FromTheCockpitManifest) {
  auto r = config::load_manifest_file(kExamples + "/cockpit.toml");
  ASSERT_TRUE(r.ok());
  const Layout l = layout_from_manifest(*r.manifest);
  ASSERT_EQ(l.outputs.size(), 2u);
  const OutputSpec* cluster = l.find("cluster");
  ASSERT_NE(cluster, nullptr);
  EXPECT_EQ(cluster->width, 1920u);
  EXPECT_EQ(cluster->height, 720u);
  EXPECT_EQ(cluster->refresh_hz, 60u);
  EXPECT_EQ(cluster->criticality, Criticality::kSafety) << "the most critical VM on it";
  ASSERT_EQ(cluster->layers.size(), 1u);
  EXPECT_EQ(cluster->layers[0].vm, "cluster");
  EXPECT_EQ(cluster->layers[0].stale_ms, kDefaultSafetyStaleMs) << "safety layers get the watchdog by default";
  EXPECT_EQ(cluster->layers[0].dst, (Rect{0, 0, 1920, 720}));
  EXPECT_TRUE(cluster->layers[0].src.empty()) << "no crop: the whole scanout";

  const OutputSpec* center = l.find("center");
  ASSERT_NE(center, nullptr);
  EXPECT_EQ(center->criticality, Criticality::kNormal);
  ASSERT_EQ(center->layers.size(), 2u);
  EXPECT_EQ(center->layers[0].scanout, 0u);
  EXPECT_EQ(center->layers[1].scanout, 1u) << "z = 1 in front";
  EXPECT_EQ(center->layers[1].stale_ms, 0u) << "normal VMs: no watchdog unless asked";
  EXPECT_EQ(l.find("nope"), nullptr);
}

TEST(Layout, ExplicitCriticalityAndZOrderKeepsManifestOrderForTies) {
  auto r = config::load_manifest_string(
      "[[vm]]\nname = \"a\"\nbackend = \"kvm\"\nmemory = \"512M\"\nkernel = \"k\"\ncriticality = \"low\"\n"
      "[vm.gpu]\nscanouts = [{ width = 64, height = 64 }, { width = 32, height = 32 }]\n"
      "[[display]]\nname = \"d\"\nwidth = 100\nheight = 100\ncriticality = \"high\"\n"
      "[[layout]]\ndisplay = \"d\"\nvm = \"a\"\nscanout = 1\nwidth = 10\nheight = 10\nz = 5\n"
      "[[layout]]\ndisplay = \"d\"\nvm = \"a\"\nwidth = 20\nheight = 20\nz = -1\n"
      "[[layout]]\ndisplay = \"d\"\nvm = \"a\"\nscanout = 1\nx = 50\nwidth = 30\nheight = 30\nz = 5\nrotation = 270\n"
      "alpha = 0.25\nstale_ms = 40\ncrop = { x = 1, y = 2, width = 3, height = 4 }\n",
      "t.toml");
  for (const auto& e : r.errors) ADD_FAILURE() << e.to_string();
  ASSERT_TRUE(r.ok());
  const Layout l = layout_from_manifest(*r.manifest);
  const OutputSpec& o = l.outputs[0];
  EXPECT_EQ(o.criticality, Criticality::kHigh);
  ASSERT_EQ(o.layers.size(), 3u);
  EXPECT_EQ(o.layers[0].dst.width, 20u);
  EXPECT_EQ(o.layers[1].dst.width, 10u);
  EXPECT_EQ(o.layers[2].dst.width, 30u);
  EXPECT_EQ(o.layers[2].rotation, Rotation::k270);
  EXPECT_DOUBLE_EQ(o.layers[2].alpha, 0.25);
  EXPECT_EQ(o.layers[2].stale_ms, 40u);
  EXPECT_EQ(o.layers[2].src, (Rect{1, 2, 3, 4}));
  EXPECT_EQ(o.layers[2].criticality, Criticality::kLow);
}

// Where the corners of dst land in the source, for every rotation (crop 10,20 200x100).
TEST(Layout, DstToSrcCornersForEachRotation) {
  const Rect src{10, 20, 200, 100};
  struct Case {
    Rotation r;
    uint32_t w, h;               // dst size (rotated 90/270 swaps the source's sides)
    double tl[2], tr[2], bl[2];  // source points at dst's top-left, top-right, bottom-left corners
  } cases[] = {
      {Rotation::k0, 100, 50, {10, 20}, {210, 20}, {10, 120}},
      {Rotation::k90, 50, 100, {10, 120}, {10, 20}, {210, 120}},
      {Rotation::k180, 100, 50, {210, 120}, {10, 120}, {210, 20}},
      {Rotation::k270, 50, 100, {210, 20}, {210, 120}, {10, 20}},
  };
  for (const auto& c : cases) {
    LayerSpec l;
    l.rotation = c.r;
    l.dst = Rect{5, 5, c.w, c.h};
    const Affine m = dst_to_src(l, src);
    const auto tl = m.apply(0, 0), tr = m.apply(c.w, 0), bl = m.apply(0, c.h);
    SCOPED_TRACE(int(c.r));
    EXPECT_DOUBLE_EQ(tl.x, c.tl[0]);
    EXPECT_DOUBLE_EQ(tl.y, c.tl[1]);
    EXPECT_DOUBLE_EQ(tr.x, c.tr[0]);
    EXPECT_DOUBLE_EQ(tr.y, c.tr[1]);
    EXPECT_DOUBLE_EQ(bl.x, c.bl[0]);
    EXPECT_DOUBLE_EQ(bl.y, c.bl[1]);
    EXPECT_FALSE(is_integer_translation(m));
  }
  LayerSpec same;
  same.dst = Rect{0, 0, 200, 100};
  EXPECT_TRUE(is_integer_translation(dst_to_src(same, src)));
}

// A cursor-sized piece of the frame placed where that part of the frame shows, clipped to the crop.
TEST(Layout, SubLayerLandsWhereItsPartOfTheFrameShows) {
  const Rect src{10, 20, 200, 100};
  LayerSpec l;
  l.dst = Rect{5, 5, 100, 50};  // half size
  l.alpha = 0.5;
  auto s = sub_layer(l, src, Rect{110, 70, 64, 64});
  ASSERT_TRUE(s);
  EXPECT_EQ(s->src, (Rect{0, 0, 64, 50})) << "clipped at the crop's bottom";
  EXPECT_EQ(s->dst, (Rect{55, 30, 32, 25}));
  EXPECT_EQ(s->alpha, 0.5);
  s = sub_layer(l, src, Rect{-10, 20, 64, 64});
  ASSERT_TRUE(s);
  EXPECT_EQ(s->src, (Rect{20, 0, 44, 64})) << "clipped at the crop's left";
  EXPECT_EQ(s->dst, (Rect{5, 5, 22, 32}));
  l.rotation = Rotation::k90;
  l.dst = Rect{5, 5, 50, 100};
  s = sub_layer(l, src, Rect{110, 70, 64, 64});
  ASSERT_TRUE(s);
  EXPECT_EQ(s->src, (Rect{0, 0, 64, 50}));
  EXPECT_EQ(s->dst, (Rect{5, 55, 25, 32}));
  EXPECT_EQ(s->rotation, Rotation::k90);
  EXPECT_FALSE(sub_layer(l, src, Rect{300, 0, 64, 64})) << "outside the crop";
  l.dst = Rect{5, 5, 2, 4};
  EXPECT_FALSE(sub_layer(l, src, Rect{10, 20, 4, 4})) << "under a pixel on the output";
}

TEST(Layout, ResolvedSourceClampsTheCropToTheFrame) {
  LayerSpec l;
  EXPECT_EQ(resolved_src(l, 640, 480), (Rect{0, 0, 640, 480})) << "no crop";
  l.src = Rect{600, 400, 100, 100};
  EXPECT_EQ(resolved_src(l, 640, 480), (Rect{600, 400, 40, 80})) << "a frame smaller than the crop";
  l.src = Rect{700, 0, 10, 10};
  EXPECT_TRUE(resolved_src(l, 640, 480).empty()) << "crop outside the frame";
}

}  // namespace
}  // namespace canopy::display
