#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <limits>
#include <string>

#include "canopy/base/checked.h"
#include "canopy/base/le.h"
#include "canopy/base/log.h"
#include "canopy/base/proc_stat.h"
#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy {
namespace {

TEST(Checked, AddDetectsOverflow) {
  EXPECT_EQ(checked_add<uint64_t>(1, 2), 3u);
  EXPECT_FALSE(checked_add<uint64_t>(std::numeric_limits<uint64_t>::max(), 1));
  EXPECT_FALSE(checked_add<uint32_t>(0xffffffffu, 1));
}

TEST(Checked, MulDetectsOverflow) {
  EXPECT_EQ(checked_mul<uint32_t>(0x10000, 0xffff), 0xffff0000u);
  EXPECT_FALSE(checked_mul<uint32_t>(0x10000, 0x10000));
}

TEST(Checked, RangeWithin) {
  EXPECT_TRUE(range_within(0, 16, 16));
  EXPECT_TRUE(range_within(16, 0, 16));
  EXPECT_FALSE(range_within(17, 0, 16));
  EXPECT_FALSE(range_within(8, 9, 16));
  EXPECT_FALSE(range_within(8, std::numeric_limits<uint64_t>::max(), 16));
}

TEST(Le, StoresLittleEndianBytes) {
  le32 v = 0x11223344u;
  const auto* b = reinterpret_cast<const uint8_t*>(&v);
  EXPECT_EQ(b[0], 0x44);
  EXPECT_EQ(b[3], 0x11);
  EXPECT_EQ(v.get(), 0x11223344u);
}

Result<int> half(int x) {
  if (x % 2) return make_error(Errc::kInvalidArgument, "odd");
  return x / 2;
}

Status chain(int x, int* out) {
  CANOPY_ASSIGN_OR_RETURN(int h, half(x));
  *out = h;
  return {};
}

TEST(Result, CarriesValueOrError) {
  auto a = half(4);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, 2);
  auto b = half(3);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.code(), Errc::kInvalidArgument);
  EXPECT_STREQ(b.error().what, "odd");
  int out = 0;
  EXPECT_TRUE(chain(8, &out).ok());
  EXPECT_EQ(out, 4);
  EXPECT_EQ(chain(5, &out).code(), Errc::kInvalidArgument);
}

TEST(Result, HoldsMoveOnlyValues) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  close(p[1]);
  Result<UniqueFd> r(UniqueFd{p[0]});
  UniqueFd fd = std::move(r).value();
  EXPECT_EQ(fd.get(), p[0]);
}

TEST(UniqueFd, ClosesOnDestructionAndMoveLeavesInvalid) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  {
    UniqueFd a(p[0]);
    UniqueFd b(std::move(a));
    EXPECT_FALSE(a.valid());
    EXPECT_TRUE(b.valid());
  }
  EXPECT_EQ(fcntl(p[0], F_GETFD), -1);
  close(p[1]);
}

TEST(RateLimiter, DropsPastBurstAndCountsThem) {
  RateLimiter rl(3, 60000);
  uint64_t sup = 0;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(rl.allow(&sup));
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(rl.allow(&sup));
}

// A read-only descriptor of a memfd opened again read-write through /proc/self/fd: the way round a
// read-only hand-over. Refused once the file is mode 0444, for its owner and anyone but root (as root
// the attempt runs under another uid); the control, without, is let through.
TEST(UniqueFd, AFileHandedOutReadOnlyCannotBeReopenedWritable) {
  for (bool forbid : {true, false}) {
    SCOPED_TRACE(forbid ? "mode 0444" : "control: the memfd's own mode 0777");
    UniqueFd file(::memfd_create("canopy-base-test", MFD_CLOEXEC));
    ASSERT_TRUE(file.valid());
    ASSERT_EQ(::ftruncate(file.get(), 4096), 0);
    if (forbid) {
      ASSERT_TRUE(forbid_writable_reopen(file.get()).ok());
    }
    auto ro = reopen_read_only(file.get());
    ASSERT_TRUE(ro.ok()) << "reopening read-only still works";
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      if (::geteuid() == 0 && (::setgid(0x7bf60) != 0 || ::setuid(0x7bf60) != 0)) _exit(2);
      const int rw = ::open(("/proc/self/fd/" + std::to_string(ro->get())).c_str(), O_RDWR | O_CLOEXEC);
      _exit(rw >= 0 ? 1 : errno == EACCES ? 0 : 2);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), forbid ? 0 : 1);
  }
}

// /proc/PID/stat read by field: the parent (4) of a process whose name holds what could be taken for
// the end of the name and for fields ("x) 1 2 (y"), the status a zombie keeps (52), and nothing for a
// field past the end, the state (3), or a process that is not there.
TEST(ProcStat, ReadsFieldsPastANameThatLooksLikeFields) {
  int go[2], ready[2];
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::prctl(PR_SET_NAME, "x) 1 2 (y", 0, 0, 0);
    char c = 1;
    if (::write(ready[1], &c, 1) != 1) _exit(2);
    _exit(::read(go[0], &c, 1) == 1 ? 7 : 3);
  }
  ::close(go[0]);
  ::close(ready[1]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  EXPECT_EQ(proc_stat_field(pid, 4), std::optional<long long>(::getpid()));
  EXPECT_EQ(proc_stat_field(pid, 1000), std::nullopt);
  EXPECT_EQ(proc_stat_field(pid, 3), std::nullopt);
  ASSERT_EQ(::write(go[1], &c, 1), 1);
  // Once it has exited, unreaped: the status it exits with (7), a wait status.
  siginfo_t si{};
  ASSERT_EQ(::waitid(P_PID, id_t(pid), &si, WEXITED | WNOWAIT), 0);
  const auto status = proc_stat_field(pid, 52);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFEXITED(int(*status)));
  EXPECT_EQ(WEXITSTATUS(int(*status)), 7);
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  EXPECT_EQ(proc_stat_field(pid, 4), std::nullopt) << "a reaped process is not there";
  ::close(go[1]);
  ::close(ready[0]);
}

}  // namespace
}  // namespace canopy
