// canopy-partition-solid: a guest partition that shows one colour, kSolid below, through its virtio-gpu
// device's swapchain (the demo apps' blob scanout, demos/swapchain.h), a frame at a time at --fps, so
// that a test knows the picture its layer must have on every composition: the cluster of
// stepped_test's whole cockpit. It takes the demo apps' flags (--fps, --frames, ...).
#include "swapchain.h"

namespace {

constexpr uint32_t kSolid = 0xff2a7fd4;  // opaque ARGB; stepped_test computes its CRC from it

void draw(const canopy::demo::DrawArgs& a) {
  canopy::demo::fill_rect(a.image, kSolid, 0, 0, int(a.width), int(a.height));
}

}  // namespace

int main(int argc, char** argv) { return canopy::demo::run_app("canopy-partition-solid", 60, argc, argv, draw); }
