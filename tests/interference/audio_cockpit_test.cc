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

// The line of `text` that starts with `prefix` ("" when none).
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
    char tmpl[] = "/tmp/canopy-audio-board-XXXXXX";
    const std::string shared = ::mkdtemp(tmpl);
    ASSERT_EQ(::chmod(shared.c_str(), 01777), 0);
    const std::string board = shared + "/board";
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
    std::vector<std::string> extra = {"--scratch-dir", "@DIR@/scratch"};
    if (!protect) extra.push_back("--no-policy-board");
    {
      test_support::Vmm vmm(manifest, extra);
      // The attacks first, all of them reported, its stream running from then on.
      ASSERT_TRUE(test_support::Vmm::wait_until([&] {
        return vmm.log().find("hostile summary:") != std::string::npos;
      })) << vmm.log();
      const std::string log = vmm.log();
      for (const char* attack : {"state-write", "table-write", "claim-priority", "fill-slots"}) {
        const std::string line = line_of(log, std::string("hostile ") + attack + ": ");
        EXPECT_NE(line.find(protect ? ": refused (" : ": DONE ("), std::string::npos) << attack << ": " << line;
      }
      EXPECT_EQ(line_of(log, "hostile summary:"),
                std::string("hostile summary: attempted=4 done=") + (protect ? "0" : "4") + " confined=1")
          << log;
      // Then the chime, to its end; the cluster stopped, so that its canopy-snd writes what it played.
      std::ofstream(vmm.dir() + "/go") << "go\n";
      ASSERT_TRUE(test_support::Vmm::wait_until([&] {
        const std::string l = vmm.log();
        return l.find("tone: done") != std::string::npos || l.find("tone: FAIL") != std::string::npos;
      })) << vmm.log();
      EXPECT_EQ(vmm.log().find("tone: FAIL"), std::string::npos) << vmm.log();
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
    std::system(("rm -rf " + shared).c_str());
  }
}

}  // namespace
}  // namespace canopy
