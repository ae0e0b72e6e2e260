# The partition message transport (docs/partition-transport.md): wire format, checks, socket I/O.
target_sources(canopy_transport PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src/virtio_msg.cc)

canopy_test(canopy_virtio_msg_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/src/virtio_msg_test.cc
  DEPS canopy_transport)

canopy_fuzzer(fuzz_virtio_msg
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/virtio_msg_fuzz.cc
  DEPS canopy_transport
  CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/virtio_msg)
