# vhost-user: message channel, back-end library + program skeleton, front-end library.
target_sources(canopy_transport PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/src/vhost_user_channel.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/vhost_user_backend.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/vhost_user_frontend.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/backend_main.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/backend_sandbox.cc)
find_package(PkgConfig REQUIRED)
pkg_check_modules(SECCOMP REQUIRED IMPORTED_TARGET libseccomp)
target_link_libraries(canopy_transport PRIVATE PkgConfig::SECCOMP)

canopy_program(canopy-vhost-rng SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tools/vhost_rng.cc DEPS canopy_transport)

canopy_test(canopy_vhost_user_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/src/vhost_user_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/src/backend_sandbox_test.cc
  DEPS canopy_transport canopy_transport_testing
  LABELS "unit;tsan")

canopy_fuzzer(fuzz_vhost_user_message
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/vhost_user_message_fuzz.cc
  DEPS canopy_transport
  CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/vhost_user_message)
