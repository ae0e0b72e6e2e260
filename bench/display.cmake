canopy_bench(canopy_bench_display
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/display_bench.cc
  DEPS canopy_display canopy_hypervisor)
if(TARGET canopy_bench_display)
  target_include_directories(canopy_bench_display PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_compile_definitions(canopy_bench_display PRIVATE CANOPY_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
endif()
