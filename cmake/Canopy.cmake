# Shared build settings and helper functions for Canopy's libraries, tests, fuzzers and benchmarks.

# Warnings apply to our own code only (targets made with the helpers below).
set(CANOPY_WARNINGS -Wall -Wextra -Werror -Wno-missing-field-initializers)

if(CANOPY_SANITIZE)
  set(CANOPY_SAN_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    list(APPEND CANOPY_SAN_FLAGS -fsanitize=fuzzer-no-link)
    set(CANOPY_LIBFUZZER ON)
  endif()
  add_compile_options(${CANOPY_SAN_FLAGS})
  add_link_options(-fsanitize=address,undefined)
endif()

# ThreadSanitizer (clang): scripts/run-tests.sh builds the tests labelled "tsan" (the threaded ones) this
# way in build-tsan; tests/tsan.supp silences only the uninstrumented libraries.
if(CANOPY_TSAN)
  if(CANOPY_SANITIZE)
    message(FATAL_ERROR "CANOPY_TSAN and CANOPY_SANITIZE cannot be combined")
  endif()
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
endif()

# canopy_library(NAME SOURCES ... [DEPS ...])  static library with include/ as public headers.
function(canopy_library name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS;PUBLIC_DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  target_include_directories(${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include
                                      PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_compile_options(${name} PRIVATE ${CANOPY_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS} PUBLIC ${A_PUBLIC_DEPS})
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
endfunction()

# canopy_program(NAME SOURCES ... [DEPS ...])  a program in build/bin.
function(canopy_program name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_compile_options(${name} PRIVATE ${CANOPY_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS})
endfunction()

# canopy_test(NAME SOURCES ... [DEPS ...] [LABELS ...] [TIMEOUT s] [IN_GUEST])  a GoogleTest binary
# registered with ctest. IN_GUEST: built but not registered, because it needs what only a Linux guest has
# here (e.g. /dev/udmabuf); a conformance test runs it inside a QEMU guest (tests/conformance).
function(canopy_test name)
  if(NOT CANOPY_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(A "IN_GUEST" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  if(NOT A_LABELS)
    set(A_LABELS unit)
  endif()
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 120)
  endif()
  add_executable(${name} ${A_SOURCES})
  target_compile_options(${name} PRIVATE ${CANOPY_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS} GTest::gtest GTest::gtest_main GTest::gmock Threads::Threads)
  if(A_IN_GUEST)
    return()
  endif()
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT})
endfunction()

# canopy_fuzzer(NAME SOURCES ... DEPS ... CORPUS dir)
# With clang + CANOPY_SANITIZE: a libFuzzer binary. Otherwise: the same target linked with a small
# driver that replays files. Either way ctest replays the checked-in corpus (label "fuzz").
function(canopy_fuzzer name)
  cmake_parse_arguments(A "" "CORPUS" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_compile_options(${name} PRIVATE ${CANOPY_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS})
  if(CANOPY_LIBFUZZER)
    target_link_options(${name} PRIVATE -fsanitize=fuzzer)
    # -runs=0 executes every corpus input once and exits.
    add_test(NAME ${name}_corpus COMMAND ${name} -runs=0 ${A_CORPUS})
  else()
    target_sources(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.cc)
    add_test(NAME ${name}_corpus COMMAND ${name} ${A_CORPUS})
  endif()
  set_tests_properties(${name}_corpus PROPERTIES LABELS "fuzz;unit" TIMEOUT 300)
  set_property(GLOBAL APPEND PROPERTY CANOPY_FUZZERS "${name}|${A_CORPUS}")
endfunction()

# canopy_bench(NAME SOURCES ... DEPS ...)  a Google Benchmark binary.
function(canopy_bench name)
  if(NOT CANOPY_BUILD_BENCH)
    return()
  endif()
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_compile_options(${name} PRIVATE ${CANOPY_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS} benchmark::benchmark Threads::Threads)
endfunction()

# canopy_unity_group(TARGET NAME SOURCES ...)  compile sources that hold the parts of one class (split by
# idea, sharing an internal header) as one translation unit: the files stay apart for readers, the
# build does not parse the shared headers once per file.
function(canopy_unity_group target group)
  set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_MODE GROUP)
  foreach(src ${ARGN})
    set_source_files_properties(${src} TARGET_DIRECTORY ${target} PROPERTIES UNITY_GROUP ${group})
  endforeach()
endfunction()
