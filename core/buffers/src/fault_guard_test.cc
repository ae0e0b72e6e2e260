// The fault guard: a mapping whose file is truncated under it reads zeros instead of killing the
// process, beside the control run that shows the same truncation kills a process without the guard.
#include "canopy/buffers/fault_guard.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "canopy/base/sanitizer.h"
#include "canopy/base/unique_fd.h"

namespace canopy::buffers {
namespace {

constexpr size_t kLen = 2 * 4096;

UniqueFd memfd_of(size_t len) {
  UniqueFd fd(::memfd_create("canopy-fault-guard-test", MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::ftruncate(fd.get(), off_t(len)), 0);
  return fd;
}

uint8_t* map(int fd, size_t len) {
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  EXPECT_NE(p, MAP_FAILED);
  return static_cast<uint8_t*>(p);
}

// The sanitizer runtimes that handle SIGBUS themselves.
constexpr bool kSanitizer = kAddressSanitizer || kThreadSanitizer;

// Died of the SIGBUS: by the signal, or (sanitizer builds, whose runtime handled SIGBUS before the guard
// was installed and is chained to) by the runtime's report and exit.
// (abort_on_error=1 makes that report end in SIGABRT).
bool died_of_sigbus(int status) {
  if (WIFSIGNALED(status)) return WTERMSIG(status) == SIGBUS || (kSanitizer && WTERMSIG(status) == SIGABRT);
  return kSanitizer && WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 3 &&
         WEXITSTATUS(status) != 4;
}

// Runs fn in a child; returns its wait status.
template <typename Fn>
int in_child(Fn fn) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    fn();
    ::_exit(0);
  }
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  return status;
}

// Control: without the guard, reading a mapping whose file was truncated kills the process (SIGBUS).
TEST(FaultGuard, ControlATruncatedFileKillsAnUnguardedReader) {
  const int status = in_child([] {
    ::signal(SIGBUS, SIG_DFL);  // no guard (nor a sanitizer's handler) in this process
    UniqueFd fd = memfd_of(kLen);
    volatile uint8_t* p = map(fd.get(), kLen);
    p[4096] = 7;
    (void)::ftruncate(fd.get(), 0);
    const uint8_t v = p[4096];
    ::_exit(v == 0 ? 3 : 4);  // not reached
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "the child exited with " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGBUS);
}

TEST(FaultGuard, AGuardedRangeReadsZerosAfterItsFileShrankAndIsMarkedLost) {
  UniqueFd fd = memfd_of(kLen);
  uint8_t* p = map(fd.get(), kLen);
  p[0] = 1;
  p[4096] = 2;
  const int slot = fault_guard::add(p, kLen);
  ASSERT_NE(slot, fault_guard::kNoSlot);
  EXPECT_FALSE(fault_guard::lost(slot));
  const uint64_t before = fault_guard::lost_count();
  ASSERT_EQ(::ftruncate(fd.get(), 0), 0);
  volatile uint8_t* v = p;
  EXPECT_EQ(v[4096], 0);  // faulted, survived, zeros
  EXPECT_EQ(v[0], 0);     // the whole range was replaced
  v[100] = 9;             // and it can be written (private pages: nothing reaches the file)
  EXPECT_EQ(v[100], 9);
  EXPECT_TRUE(fault_guard::lost(slot));
  EXPECT_EQ(fault_guard::lost_count(), before + 1);
  pollfd pf{fault_guard::event_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&pf, 1, 0), 1);  // the owner is woken
  uint64_t n = 0;
  EXPECT_EQ(::read(fault_guard::event_fd(), &n, sizeof n), ssize_t(sizeof n));
  struct stat st{};
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  fault_guard::remove(slot);
  ::munmap(p, kLen);
}

// The guard takes only its own ranges: a SIGBUS elsewhere still ends the process as before.
TEST(FaultGuard, ASigbusOutsideEveryGuardedRangeStillKills) {
  const int status = in_child([] {
    UniqueFd guarded = memfd_of(kLen);
    uint8_t* g = map(guarded.get(), kLen);
    (void)fault_guard::add(g, kLen);
    UniqueFd fd = memfd_of(kLen);
    volatile uint8_t* p = map(fd.get(), kLen);
    (void)::ftruncate(fd.get(), 0);
    const uint8_t v = p[0];
    ::_exit(v == 0 ? 3 : 4);  // not reached
  });
  EXPECT_TRUE(died_of_sigbus(status)) << "wait status " << status;
}

TEST(FaultGuard, ARemovedRangeIsNoLongerGuarded) {
  const int status = in_child([] {
    UniqueFd fd = memfd_of(kLen);
    volatile uint8_t* p = map(fd.get(), kLen);
    const int slot = fault_guard::add(const_cast<uint8_t*>(p), kLen);
    fault_guard::remove(slot);
    (void)::ftruncate(fd.get(), 0);
    const uint8_t v = p[0];
    ::_exit(v == 0 ? 3 : 4);  // not reached
  });
  EXPECT_TRUE(died_of_sigbus(status)) << "wait status " << status;
}

}  // namespace
}  // namespace canopy::buffers
