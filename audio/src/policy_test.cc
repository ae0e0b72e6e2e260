#include "canopy/audio/policy.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "snd_test_util.h"

namespace canopy::audio {
namespace {

using proto::Code;
using testing::Harness;

constexpr uint32_t kOk = uint32_t(Code::kOk);

SndOptions one_stream(const char* vm, const char* name, StreamPolicy p) {
  SndOptions o;
  StreamConfig s;
  s.name = name;
  s.rates = 1u << 7;
  s.channels_max = 1;
  s.policy = p;
  o.streams = {s};
  o.vm = vm;
  return o;
}

TEST(PolicyBoard, TargetsFollowPriorityDuckingAndExclusivity) {
  auto b = PolicyBoard::anonymous();
  ASSERT_TRUE(b.ok());
  PolicyBoard& board = **b;
  StreamPolicy chime{100, true, -20, 40, false}, nav{70, true, -10, 20, false}, music{10, false, -20, 50, false},
      phone{90, false, -20, 50, true};
  const uint32_t c = *board.claim("cluster/chime", chime), n = *board.claim("ivi/nav", nav),
                 m = *board.claim("ivi/music", music), p = *board.claim("ivi/phone", phone);
  const uint64_t t = monotonic_ns();
  EXPECT_EQ(board.target(m, t).db, 0);
  board.set_active(n, true, t);
  EXPECT_EQ(board.target(m, t).db, -10);
  EXPECT_EQ(board.target(m, t).ramp_ms, 20u);
  EXPECT_EQ(board.target(c, t).db, 0);  // nav does not duck the higher chime
  board.set_active(c, true, t);
  EXPECT_EQ(board.target(m, t).db, -20);  // the deepest duck wins
  EXPECT_EQ(board.target(m, t).ramp_ms, 40u);
  EXPECT_EQ(board.target(n, t).db, -20);
  board.set_active(p, true, t);
  EXPECT_EQ(board.target(m, t).db, kMuteDb);  // an exclusive higher stream mutes
  EXPECT_EQ(board.target(c, t).db, 0);        // ... but not a higher one
  // A running slot its owner stopped refreshing is ignored after kStaleNs.
  EXPECT_EQ(board.target(m, t + PolicyBoard::kStaleNs + 1).db, 0);
  board.set_active(p, false, t);
  board.set_active(c, false, t);
  board.set_active(n, false, t);
  EXPECT_EQ(board.target(m, t).db, 0);
  board.release(c);
  auto again = board.claim("cluster/chime", chime);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, c);
  EXPECT_NE(board.describe(t).find("ivi/music pid="), std::string::npos);
}

// The board is shared memory any process of the user can write: a label that fills its 32 bytes with no
// NUL, or holds a line break, must not make describe() read past it into the next slot or forge lines
// of its own in canopy-snd's stats.
TEST(PolicyBoard, DescribeBoundsAndCleansLabelsFromSharedMemory) {
  char dir[] = "/tmp/canopy-policy-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/board";
  auto board = PolicyBoard::open(path);
  ASSERT_TRUE(board.ok());
  ASSERT_TRUE((*board)->claim("ivi/music", StreamPolicy{}).ok());
  ASSERT_TRUE((*board)->claim("cluster/chime", StreamPolicy{}).ok());
  // A hostile writer of the file: the first label becomes 31 'X' and a line break, with no NUL.
  {
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    std::string bytes(4096, '\0');
    bytes.resize(size_t(::pread(fd, bytes.data(), bytes.size(), 0)));
    const size_t at = bytes.find("ivi/music");
    ASSERT_NE(at, std::string::npos);
    const std::string forged = std::string(31, 'X') + "\n";
    ASSERT_EQ(::pwrite(fd, forged.data(), forged.size(), off_t(at)), ssize_t(forged.size()));
    ::close(fd);
  }
  const std::string d = (*board)->describe(monotonic_ns());
  EXPECT_EQ(d.rfind(std::string(31, 'X') + "? pid=", 0), 0u) << d;
  EXPECT_EQ(std::count(d.begin(), d.end(), '\n'), 2) << d;  // one line per claimed slot, no more
  ::unlink(path.c_str());
  ::rmdir(dir);
}

TEST(PolicyBoard, TwoProcessesShareOneBoardFile) {
  char dir[] = "/tmp/canopy-policy-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/board";
  auto a = PolicyBoard::open(path);
  ASSERT_TRUE(a.ok());
  const uint32_t music = *(*a)->claim("ivi/music", StreamPolicy{10, false, -20, 50, false});
  // Ordered by pipes, not by time: the child claims and starts its chime, sends the time it used, and
  // keeps the slot until the parent has looked; the parent reads the board at that same time, so how
  // late either process runs (a loaded machine) cannot make the slot look stale.
  int to_parent[2], to_child[2];
  ASSERT_EQ(pipe2(to_parent, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(to_child, O_CLOEXEC), 0);
  const pid_t child = fork();
  if (child == 0) {
    close(to_parent[0]);
    close(to_child[1]);
    auto b = PolicyBoard::open(path);
    if (!b.ok()) _exit(2);
    const uint32_t chime = *(*b)->claim("cluster/chime", StreamPolicy{100, true, -18, 30, false});
    const uint64_t t = monotonic_ns();
    (*b)->set_active(chime, true, t);
    if (write(to_parent[1], &t, sizeof t) != ssize_t(sizeof t)) _exit(3);
    char go;
    (void)!read(to_child[0], &go, 1);  // hold the slot until the parent has looked (or is gone)
    _exit(0);
  }
  close(to_parent[1]);
  close(to_child[0]);
  uint64_t t = 0;
  pollfd pf{to_parent[0], POLLIN, 0};
  ASSERT_EQ(poll(&pf, 1, 30000), 1) << "the child did not report within 30 s (hang guard)";
  ASSERT_EQ(read(to_parent[0], &t, sizeof t), ssize_t(sizeof t));
  EXPECT_EQ((*a)->target(music, t).db, -18);
  EXPECT_EQ((*a)->target(music, t).ramp_ms, 30u);
  ASSERT_EQ(write(to_child[1], "x", 1), 1);
  close(to_child[1]);
  close(to_parent[0]);
  int st = 0;
  ASSERT_EQ(waitpid(child, &st, 0), child);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  // The chime's process is gone: its slot is reclaimed by the next claim, and no longer ducks once stale.
  auto other = (*a)->claim("x/y", StreamPolicy{});
  ASSERT_TRUE(other.ok());
  EXPECT_EQ((*a)->target(music, monotonic_ns()).db, 0);
  // A file that is not a board is refused.
  const std::string junk = std::string(dir) + "/junk";
  FILE* f = fopen(junk.c_str(), "w");
  fputs("hello", f);
  fclose(f);
  EXPECT_FALSE(PolicyBoard::open(junk).ok());
  unlink(junk.c_str());
  unlink(path.c_str());
  rmdir(dir);
}

// Two devices (two VMs) on one board: the music stream ramps to the chime's duck_db over exactly the
// chime's ramp, sample by sample, and back after it stops.
TEST(PolicyBoard, TheChimeDucksTheMusicOverItsRampSampleAccurately) {
  auto b = PolicyBoard::anonymous();
  ASSERT_TRUE(b.ok());
  Harness music(one_stream("ivi", "music", StreamPolicy{10, false, -20, 50, false}), b->get());
  Harness chime(one_stream("cluster", "chime", StreamPolicy{100, true, -20, 10, false}), b->get());
  const uint32_t period = 480 * 2;  // 10 ms of 48 kHz mono S16
  for (Harness* h : {&music, &chime}) {
    ASSERT_EQ(h->set_params(0, 8 * period, period, 1, proto::Format::kS16, 7), kOk);
    ASSERT_EQ(h->pcm(Code::kPcmPrepare, 0), kOk);
  }
  std::vector<uint8_t> loud(period);
  for (size_t i = 0; i < loud.size(); i += 2) {
    const int16_t v = 20000;
    std::memcpy(&loud[i], &v, 2);
  }
  for (int i = 0; i < 8; ++i) music.tx(0, loud);
  ASSERT_EQ(music.pcm(Code::kPcmStart, 0), kOk);
  std::vector<uint8_t> got(period);
  auto sample = [&](size_t frame) {
    int16_t v;
    std::memcpy(&v, &got[frame * 2], 2);
    return v;
  };
  ASSERT_EQ(music.dev->stream_io(0)->pull(got.data(), got.size()), got.size());
  EXPECT_EQ(sample(479), 20000);
  ASSERT_EQ(chime.pcm(Code::kPcmStart, 0), kOk);
  // The next 480 frames: a 10 ms ramp of 480 frames from 0 to -20 dB, frame by frame.
  ASSERT_EQ(music.dev->stream_io(0)->pull(got.data(), got.size()), got.size());
  EXPECT_EQ(sample(0), 20000);
  EXPECT_NEAR(sample(240), 20000 * std::pow(10.0, -10.0 / 20), 2);
  EXPECT_NEAR(sample(479), 20000 * std::pow(10.0, -20.0 * 479 / 480 / 20), 2);
  ASSERT_EQ(music.dev->stream_io(0)->pull(got.data(), got.size()), got.size());
  EXPECT_EQ(sample(0), 2000);
  EXPECT_EQ(sample(479), 2000);
  EXPECT_EQ(music.dev->stats(0).ducks, 1u);
  EXPECT_EQ(music.dev->stats(0).gain_db, -20);
  ASSERT_EQ(chime.pcm(Code::kPcmStop, 0), kOk);
  // Restored over the same ramp.
  ASSERT_EQ(music.dev->stream_io(0)->pull(got.data(), got.size()), got.size());
  EXPECT_EQ(sample(0), 2000);
  EXPECT_EQ(sample(479) > 19500, true);
  ASSERT_EQ(music.dev->stream_io(0)->pull(got.data(), got.size()), got.size());
  EXPECT_EQ(sample(0), 20000);
  EXPECT_EQ(music.dev->stats(0).gain_db, 0);
}

}  // namespace
}  // namespace canopy::audio
