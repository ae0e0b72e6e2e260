canopy_bench(canopy_bench_gpu
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/gpu_bench.cc
  DEPS canopy_gpu)
target_include_directories(canopy_bench_gpu PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})

# A guest-side KMS client (page-flip rate, cursor round trip) that bench/gpu_guest_bench.sh runs inside
# a Linux guest against canopy-gpu and against QEMU's own virtio-gpu devices.
find_package(PkgConfig REQUIRED)
pkg_check_modules(LIBDRM REQUIRED IMPORTED_TARGET libdrm)
canopy_program(canopy-drm-bench
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/guest/drm_bench.cc
  DEPS PkgConfig::LIBDRM)
