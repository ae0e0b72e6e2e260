// Fuzz target: command decode + the device model with the 2D renderer (gpu_fuzz_rig.h: the input
// format and the invariants); queue byte 2 releases the frames the output holds.
#include "gpu_fuzz_rig.h"

using namespace canopy::gpu;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzzing::Rig rig;
  fuzzing::check(rig.start(make_2d_renderer()), "set-up: the rig's device did not start");
  rig.run(data, size, [&] {
    rig.out.release_held();
    rig.dev->process_releases();
  });
  return 0;
}
