// The cross-VM audio policy under canopy-vmm, attacked by the IVI's sound back-end taken over
// (docs/security.md, "Audio policy"): canopy-vmm as root runs the cluster, a partition playing a 1 kHz
// chime through its real canopy-snd (null host: what it plays is recorded), and the IVI, whose sound
// back-end is canopy-test-hostile: it holds exactly what canopy-vmm gives the IVI's canopy-snd and is
// confined as canopy-snd is. It goes at the board (the cluster's state segment, the sealed table, a
// priority above the chime's, exclusive, every slot) and keeps its stream running; then the chime
// plays. With canopy-vmm's board every attempt is refused and the chime is heard as played, never
// ducked. Control, --no-policy-board (each back-end on the shared file board, as without canopy-vmm):
// the same attacks work and the chime is muted.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "canopy/audio/wav.h"
#include "canopy/test_support/vmm.h"

namespace canopy {
namespace {

const std::string kBin = CANOPY_BIN_DIR;

// The first line of `text` holding `prefix`, from `prefix` on (a log line's own prefix dropped; "" when
// none).
std::string line_of(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (const size_t at = line.find(prefix); at != std::string::npos) return line.substr(at);
  return {};
}

TEST(AudioCockpit, TheIvisSoundBackEndTakenOverNeitherChangesTheBoardNorTheChime) {
  if (::geteuid() != 0) {
    if (std::getenv("CANOPY_NO_SKIP")) FAIL() << "needs root to give each VM's back-ends a uid (CANOPY_NO_SKIP=1)";
    GTEST_SKIP() << "needs root to give each VM's back-ends a uid";
  }
  for (bool protect : {true, false}) {
    SCOPED_TRACE(protect ? "canopy-vmm's board" : "control: --no-policy-board, the shared file board");
    // The shared file board, made before anything opens it, writable to both VMs' uids (in the
    // protected run only the back-ends' options name it: they use canopy-vmm's board instead).
    struct Folder {
      std::string path;
      ~Folder() {
        if (!path.empty()) std::system(("rm -rf " + path).c_str());
      }
    } shared;
    char tmpl[] = "/tmp/canopy-audio-board-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    shared.path = tmpl;
    ASSERT_EQ(::chmod(tmpl, 01777), 0);
    const std::string board = shared.path + "/board";
    {
      const int f = ::open(board.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      ASSERT_GE(f, 0);
      ASSERT_EQ(::fchmod(f, 0666), 0);
      ::close(f);
    }
    const std::string manifest =
        "[[vm]]\nname = \"cluster\"\nbackend = \"partition\"\nmemory = \"32M\"\ncriticality = \"safety\"\n"
        "restart = \"never\"\napp = \"" +
        kBin +
        "/canopy-partition-tone\"\nargs = [\"--hz\", \"1000\", \"--ms\", \"300\", \"--start-after-file\", "
        "\"@DIR@/go\", \"--level-db\", \"-6\"]\n[vm.snd]\nbackend = \"" +
        kBin +
        "/canopy-snd\"\nstreams = [{ name = \"chime\", direction = \"output\", channels = 2, rates = [48000], "
        "role = \"chime\" }]\nargs = [\"--host=null\", \"--wav-dir=@DIR@/scratch/cluster\", \"--policy=" +
        board +
        "\"]\n"
        "[[vm]]\nname = \"ivi\"\nbackend = \"partition\"\nmemory = \"32M\"\nrestart = \"never\"\napp = \"" +
        kBin + "/canopy-partition-probe\"\n[vm.snd]\nbackend = \"" + kBin +
        "/canopy-test-hostile\"\nstreams = [{ name = \"music\", direction = \"output\", channels = 2, rates = "
        "[48000], role = \"media\" }]\nargs = [\"--policy=" +
        board +
        "\", \"--victim=cluster\"]\n"
        "[[audio.route]]\nvm = \"cluster\"\nstream = \"chime\"\nsink = \"default\"\npriority = 100\n"
        "duck_others = true\nduck_db = -20\nramp_ms = 40\n"
        "[[audio.route]]\nvm = \"ivi\"\nstream = \"music\"\nsink = \"default\"\npriority = 10\n";
    // A stopped partition's back-ends end on their own when canopy-vmm closes their sockets (canopy-snd
    // then writes its stats and recording): 3 s before any signal, for a slow machine (the partition,
    // its tone played, waits that long too before it is killed).
    std::vector<std::string> extra = {"--scratch-dir", "@DIR@/scratch", "--stop-grace-ms", "3000"};
    if (!protect) extra.push_back("--no-policy-board");
    test_support::Vmm vmm(manifest, extra);
    // The attacks first, all of them reported (the summary's whole line), its stream running from then on.
    ASSERT_TRUE(test_support::Vmm::wait_until([&] {
      const std::string l = vmm.log();
      const size_t at = l.find("hostile summary:");
      return at != std::string::npos && l.find('\n', at) != std::string::npos;
    })) << vmm.log();
    const std::string log = vmm.log();
    EXPECT_EQ(log.find("hostile: canopy-vmm's board:"), std::string::npos) << log;
    EXPECT_EQ(log.find("hostile: the shared board:"), std::string::npos) << log;
    if (protect) {
      // Refused by the protections, not by anything else: the read-only descriptor and its mode, the
      // seals, the table's priority.
      const std::string state = line_of(log, "hostile state-write: ");
      EXPECT_NE(state.find(": refused ( pwrite: Bad file descriptor;"), std::string::npos) << state;
      EXPECT_NE(state.find("reopen: Permission denied;"), std::string::npos) << state;
      const std::string table = line_of(log, "hostile table-write: ");
      EXPECT_NE(table.find(": refused ( ftruncate: Operation not permitted; pwrite: Operation not permitted;"),
                std::string::npos)
          << table;
      const std::string claim = line_of(log, "hostile claim-priority: ");
      EXPECT_NE(claim.find(": refused (the board shows: ivi/music vm_slot="), std::string::npos) << claim;
      EXPECT_NE(claim.find(" priority=10 "), std::string::npos) << claim;
      EXPECT_NE(claim.find(" active=1 "), std::string::npos) << claim;
      EXPECT_NE(line_of(log, "hostile fill-slots: ").find(": refused (0 of 64 more streams granted)"),
                std::string::npos)
          << log;
      EXPECT_EQ(line_of(log, "hostile summary:"), "hostile summary: attempted=4 done=0 confined=1") << log;
    } else {
      for (const char* attack : {"state-write", "claim-priority", "fill-slots"}) {
        const std::string line = line_of(log, std::string("hostile ") + attack + ": ");
        EXPECT_NE(line.find(": DONE ("), std::string::npos) << attack << ": " << line;
      }
      EXPECT_EQ(line_of(log, "hostile summary:"), "hostile summary: attempted=3 done=3 confined=1") << log;
    }
    // Then the chime, to its end; the cluster stopped, so that its canopy-snd writes what it played.
    std::ofstream(vmm.dir() + "/go") << "go\n";
    ASSERT_TRUE(test_support::Vmm::wait_until([&] {
      const std::string l = vmm.log();
      return l.find("tone: done") != std::string::npos || l.find("tone: FAIL") != std::string::npos;
    })) << vmm.log();
    EXPECT_EQ(vmm.log().find("tone: FAIL"), std::string::npos) << vmm.log();
    if (protect) {
      // The chime was on canopy-vmm's board, ranked by it: the IVI's stream, below it, was ducked.
      EXPECT_TRUE(test_support::Vmm::wait_until([&] {
        return vmm.log().find("hostile: its stream ducked by the board to -20.0 dB") != std::string::npos;
      })) << vmm.log();
    }
    EXPECT_EQ(vmm.ctl("stop cluster force").rfind("ok", 0), 0u);
    const std::string stats_path = vmm.dir() + "/scratch/cluster/cluster-snd.txt";
    const std::string wav_path = vmm.dir() + "/scratch/cluster/cluster-chime.wav";
    ASSERT_TRUE(test_support::Vmm::wait_until([&] {
      return vmm.text("vm cluster", "state") == "stopped" && ::access(stats_path.c_str(), F_OK) == 0;
    })) << vmm.log();
    const std::string stats = line_of(test_support::read_file(stats_path), "stream cluster/chime ");
    ASSERT_FALSE(stats.empty()) << test_support::read_file(stats_path);
    auto wav = audio::read_wav(wav_path);
    ASSERT_TRUE(wav.ok()) << wav_path << ": " << wav.error().what;
    const audio::ToneReport t = audio::analyze_tone(*wav, 0, -80);
    std::printf("%s: cluster canopy-snd: %s; the chime as played: found=%d %.1f Hz %.1f dB\n",
                protect ? "protected" : "control", stats.c_str(), t.found ? 1 : 0, t.hz, t.level_db);
    if (protect) {
      // Heard as the guest played it: its 1 kHz at -6 dB, never ducked.
      EXPECT_EQ(stats.find(" ducks="), std::string::npos) << stats;
      ASSERT_TRUE(t.found);
      EXPECT_NEAR(t.hz, 1000, 2);
      EXPECT_NEAR(t.level_db, -6, 0.5);
    } else {
      // The IVI's exclusive claim above it muted the chime.
      EXPECT_NE(stats.find(" ducks="), std::string::npos) << "control: the chime was never ducked: " << stats;
      EXPECT_NE(stats.find(" deepest_db=-96.0"), std::string::npos) << stats;
      EXPECT_TRUE(!t.found || t.level_db < -60) << "control: the chime was heard at " << t.level_db << " dB";
    }
  }
}

}  // namespace
}  // namespace canopy
