canopy_bench(canopy_bench_partition
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/partition_bench.cc
  DEPS canopy_hypervisor)
target_include_directories(canopy_bench_partition PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
add_dependencies(canopy_bench_partition canopy-vhost-rng canopy-partition-rng)
