// The cross-VM audio policy board against a taken-over IVI canopy-snd (docs/security.md, "Audio
// policy"). With canopy-vmm's board (the manifest's sealed table, a state segment per VM, only one's
// own writable) the IVI can neither claim the chime's priority, nor fill the slots, nor write the
// cluster's state or the table: the chime keeps ducking the music and is never ducked itself. Each
// attack runs again against the shared file board (canopy-snd without canopy-vmm, where each back-end
// declares its own policy), where it works: the control run.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "canopy/audio/policy.h"
#include "canopy/config/policy_table.h"

namespace canopy::audio {
namespace {

constexpr uint64_t kNow = 5'000'000'000;

StreamPolicy chime() { return {100, true, -20.0, 40, false}; }
StreamPolicy music() { return {10, false, -20.0, 50, false}; }
// What a taken-over IVI back-end declares for its music.
StreamPolicy claimed() { return {100000, false, -20.0, 0, true}; }

// What canopy-vmm makes: the sealed table, and per VM its state segment and a read-only reopening.
struct VmmBoard {
  UniqueFd table;
  std::vector<UniqueFd> rw, ro;
  VmmBoard() {
    config::PolicyTable t;
    t.vms = {"cluster", "ivi"};
    t.entries.resize(size_t(config::kPolicyTableMaxVms) * config::kPolicySlotsPerVm);
    t.entries[0] = {"chime", chime()};
    t.entries[config::kPolicySlotsPerVm] = {"media", music()};
    const auto bytes = config::encode_policy_table(t);
    table = UniqueFd(memfd_create("table", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    EXPECT_EQ(pwrite(table.get(), bytes.data(), bytes.size(), 0), ssize_t(bytes.size()));
    EXPECT_EQ(fcntl(table.get(), F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), 0);
    for (int v = 0; v < 2; ++v) {
      UniqueFd s(memfd_create("state", MFD_CLOEXEC | MFD_ALLOW_SEALING));
      EXPECT_EQ(ftruncate(s.get(), off_t(config::kPolicyStateBytes)), 0);
      auto r = reopen_read_only(s.get());
      EXPECT_TRUE(r.ok());
      ro.push_back(r.ok() ? std::move(*r) : UniqueFd());
      rw.push_back(std::move(s));
    }
  }
  // The board a VM's canopy-snd gets: its own state writable, the other's read-only.
  std::unique_ptr<PolicyBoard> of(const std::string& vm) {
    const bool cluster = vm == "cluster";
    auto b = PolicyBoard::from_vmm(table.get(),
                                   {cluster ? rw[0].get() : ro[0].get(), cluster ? ro[1].get() : rw[1].get()}, vm);
    EXPECT_TRUE(b.ok()) << b.error().what;
    return b.ok() ? std::move(*b) : nullptr;
  }
};

TEST(AudioPolicy, TheIviCannotClaimTheChimesPriority) {
  // Control: on the shared board the IVI's declared policy counts, and its music mutes the chime.
  {
    auto board = PolicyBoard::anonymous();
    ASSERT_TRUE(board.ok());
    auto c = (*board)->claim("cluster/chime", chime());
    auto i = (*board)->claim("ivi/media", claimed());
    ASSERT_TRUE(c.ok() && i.ok());
    (*board)->set_active(*c, true, kNow);
    (*board)->set_active(*i, true, kNow);
    EXPECT_EQ((*board)->target(*c, kNow).db, kMuteDb) << "control: the attack works on the shared board";
  }
  VmmBoard vmm;
  auto cluster = vmm.of("cluster"), ivi = vmm.of("ivi");
  ASSERT_TRUE(cluster && ivi);
  auto c = cluster->claim("cluster/chime", chime());
  auto i = ivi->claim("ivi/media", claimed());  // the declared policy is not what counts
  ASSERT_TRUE(c.ok() && i.ok());
  cluster->set_active(*c, true, kNow);
  ivi->set_active(*i, true, kNow);
  EXPECT_EQ(cluster->target(*c, kNow).db, 0.0) << "the chime is not ducked";
  EXPECT_EQ(ivi->target(*i, kNow).db, -20.0) << "the music is ducked by the manifest's chime";
  EXPECT_EQ(ivi->target(*i, kNow).ramp_ms, 40u);
  // A stream the manifest does not name gets no slot; nor does another VM's stream.
  EXPECT_FALSE(ivi->claim("ivi/extra", claimed()).ok());
  auto other = ivi->claim("cluster/chime", claimed());
  EXPECT_FALSE(other.ok());
}

TEST(AudioPolicy, TheIviCannotFillTheSlots) {
  // Control: 64 claims on the shared board leave the cluster none.
  {
    auto board = PolicyBoard::anonymous();
    ASSERT_TRUE(board.ok());
    for (uint32_t n = 0; n < PolicyBoard::kSlots; ++n) ASSERT_TRUE((*board)->claim("ivi/x", music()).ok());
    EXPECT_FALSE((*board)->claim("cluster/chime", chime()).ok()) << "control: the attack works on the shared board";
  }
  VmmBoard vmm;
  auto ivi = vmm.of("ivi");
  ASSERT_TRUE(ivi);
  for (int n = 0; n < 100; ++n) (void)ivi->claim("ivi/media", claimed());
  // Its own slots are all it can set: every index, active.
  for (uint32_t s = 0; s < config::kPolicyTableMaxVms * config::kPolicySlotsPerVm; ++s) ivi->set_active(s, true, kNow);
  auto cluster = vmm.of("cluster");
  ASSERT_TRUE(cluster);
  auto c = cluster->claim("cluster/chime", chime());
  ASSERT_TRUE(c.ok());
  cluster->set_active(*c, true, kNow);
  EXPECT_EQ(cluster->target(*c, kNow).db, 0.0);
  auto i = ivi->claim("ivi/media", claimed());
  ASSERT_TRUE(i.ok());
  EXPECT_EQ(ivi->target(*i, kNow).db, -20.0);
  // The IVI's set_active on the chime's slot did not reach the cluster's segment: switched off by its
  // owner, the chime no longer ducks anybody.
  cluster->set_active(*c, false, kNow);
  EXPECT_EQ(ivi->target(*i, kNow).db, 0.0);
}

TEST(AudioPolicy, TheIviCannotWriteTheClustersStateOrTheTable) {
  VmmBoard vmm;
  // What the IVI's canopy-snd holds: the table and the cluster's segment read-only, whatever it tries.
  EXPECT_EQ(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, vmm.ro[0].get(), 0), MAP_FAILED);
  EXPECT_EQ(errno, EACCES);
  EXPECT_EQ(pwrite(vmm.ro[0].get(), "x", 1, 0), -1);
  void* ro = mmap(nullptr, 4096, PROT_READ, MAP_SHARED, vmm.ro[0].get(), 0);
  ASSERT_NE(ro, MAP_FAILED);
  EXPECT_NE(mprotect(ro, 4096, PROT_READ | PROT_WRITE), 0);
  munmap(ro, 4096);
  EXPECT_EQ(mmap(nullptr, config::kPolicyTableBytes, PROT_READ | PROT_WRITE, MAP_SHARED, vmm.table.get(), 0),
            MAP_FAILED);
  EXPECT_EQ(pwrite(vmm.table.get(), "x", 1, 0), -1);
  EXPECT_EQ(errno, EPERM);
  // The board refuses to be built on a writable segment of another VM, or an unsealed table.
  EXPECT_FALSE(PolicyBoard::from_vmm(vmm.table.get(), {vmm.rw[0].get(), vmm.rw[1].get()}, "ivi").ok());
  UniqueFd unsealed(memfd_create("t", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(unsealed.get(), off_t(config::kPolicyTableBytes)), 0);
  EXPECT_FALSE(PolicyBoard::from_vmm(unsealed.get(), {vmm.ro[0].get(), vmm.rw[1].get()}, "ivi").ok());

  // Control: the shared board is one writable file; a participant that writes the cluster's slot
  // (here: clears the whole board) takes the chime's ducking away.
  char path[] = "/tmp/canopy-policy-test-XXXXXX";
  const int tmp = mkstemp(path);
  ASSERT_GE(tmp, 0);
  close(tmp);
  unlink(path);
  auto a = PolicyBoard::open(path), b = PolicyBoard::open(path);
  ASSERT_TRUE(a.ok() && b.ok());
  auto c = (*a)->claim("cluster/chime", chime());
  auto i = (*b)->claim("ivi/media", music());
  ASSERT_TRUE(c.ok() && i.ok());
  (*a)->set_active(*c, true, kNow);
  ASSERT_EQ((*b)->target(*i, kNow).db, -20.0);
  UniqueFd f(open(path, O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(f.valid());
  struct stat st{};
  ASSERT_EQ(fstat(f.get(), &st), 0);
  auto* m = static_cast<uint8_t*>(mmap(nullptr, size_t(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, f.get(), 0));
  ASSERT_NE(m, MAP_FAILED);
  std::fill(m + 64, m + st.st_size, uint8_t(0));
  munmap(m, size_t(st.st_size));
  EXPECT_EQ((*b)->target(*i, kNow).db, 0.0) << "control: the attack works on the shared board";
  unlink(path);
}

// A back-end that is gone stops counting after kStaleNs, with no kill(pid, 0) across identities: its
// state is no longer refreshed.
TEST(AudioPolicy, AGoneBackEndStopsDuckingWithoutLookingAtItsPid) {
  VmmBoard vmm;
  auto cluster = vmm.of("cluster"), ivi = vmm.of("ivi");
  ASSERT_TRUE(cluster && ivi);
  auto c = cluster->claim("cluster/chime", chime());
  auto i = ivi->claim("ivi/media", music());
  ASSERT_TRUE(c.ok() && i.ok());
  cluster->set_active(*c, true, kNow);
  EXPECT_EQ(ivi->target(*i, kNow + PolicyBoard::kStaleNs).db, -20.0);
  cluster.reset();  // "dies" without releasing: its slot stays active, unrefreshed
  EXPECT_EQ(ivi->target(*i, kNow + PolicyBoard::kStaleNs + 1).db, 0.0);
}

}  // namespace
}  // namespace canopy::audio
