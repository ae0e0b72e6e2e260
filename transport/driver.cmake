# Driver side of the split ring (DriverQueue) and the virtio-mmio register model (VirtioMmio).
target_sources(canopy_transport PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/src/driver_queue.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/virtio_mmio.cc)

canopy_test(canopy_driver_queue_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/src/driver_queue_test.cc
  DEPS canopy_transport)

canopy_test(canopy_virtio_mmio_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/src/virtio_mmio_test.cc
  DEPS canopy_transport)

canopy_fuzzer(fuzz_virtio_mmio
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/virtio_mmio_fuzz.cc
  DEPS canopy_transport
  CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/virtio_mmio)
