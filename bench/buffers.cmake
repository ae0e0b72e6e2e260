# Buffers: cross-process fence wake latency vs a raw shared futex, fence signal cost, memcpy bandwidth.
canopy_bench(canopy_bench_fence
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fence_bench.cc
  DEPS canopy_buffers)
if(TARGET canopy_bench_fence)
  target_include_directories(canopy_bench_fence PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
endif()
