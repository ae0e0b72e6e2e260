canopy_bench(canopy_bench_transport
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/transport_bench.cc
  DEPS canopy_transport)
target_include_directories(canopy_bench_transport PRIVATE ${PROJECT_SOURCE_DIR}/transport/src ${CMAKE_CURRENT_SOURCE_DIR})
