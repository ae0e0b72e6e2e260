canopy_bench(canopy_bench_gpu
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/gpu_bench.cc
  DEPS canopy_gpu)
target_include_directories(canopy_bench_gpu PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
