#include "canopy/config/policy_table.h"

#include <gtest/gtest.h>

#include <cstring>

namespace canopy::config {
namespace {

Manifest two_vms() {
  auto r = load_manifest_string(R"(
version = 1
[[vm]]
name = "cluster"
backend = "partition"
memory = "32M"
app = "a"
[vm.snd]
streams = [{ name = "chime", direction = "output", channels = 2, rates = [48000] }]
[[vm]]
name = "ivi"
backend = "partition"
memory = "32M"
app = "a"
[vm.snd]
streams = [{ name = "music", direction = "output", channels = 2, rates = [48000] },
           { name = "mic", direction = "input", channels = 1, rates = [48000] }]
[[vm]]
name = "quiet"
backend = "partition"
memory = "32M"
app = "a"
[[audio.route]]
vm = "cluster"
stream = "chime"
sink = "default"
priority = 100
duck_others = true
duck_db = -18.5
ramp_ms = 40
)",
                                "test.toml");
  for (const auto& e : r.errors) ADD_FAILURE() << e.to_string();
  return r.ok() ? *r.manifest : Manifest{};
}

TEST(PolicyTable, FromTheManifestThroughBytesAndBack) {
  auto t = policy_table_from_manifest(two_vms());
  ASSERT_TRUE(t.ok()) << t.error().what;
  ASSERT_EQ(t->vms, (std::vector<std::string>{"cluster", "ivi"}));  // only VMs with a sound device
  const auto bytes = encode_policy_table(*t);
  ASSERT_EQ(bytes.size(), kPolicyTableBytes);
  auto back = parse_policy_table(bytes);
  ASSERT_TRUE(back.ok()) << back.error().what;
  EXPECT_EQ(back->vms, t->vms);
  const int chime = back->slot_of("cluster", "chime"), music = back->slot_of("ivi", "music");
  EXPECT_EQ(chime, 0);
  EXPECT_EQ(music, int(kPolicySlotsPerVm));
  EXPECT_EQ(back->slot_of("ivi", "mic"), int(kPolicySlotsPerVm) + 1);
  EXPECT_EQ(back->slot_of("ivi", "chime"), -1);
  const StreamPolicy& c = back->entries[size_t(chime)].policy;
  EXPECT_EQ(c.priority, 100u);
  EXPECT_TRUE(c.duck_others);
  EXPECT_DOUBLE_EQ(c.duck_db, -18.5);
  EXPECT_EQ(c.ramp_ms, 40u);
  EXPECT_EQ(back->entries[size_t(music)].policy.priority, StreamPolicy{}.priority);  // no route: defaults
}

TEST(PolicyTable, BadTablesAreRefused) {
  auto t = policy_table_from_manifest(two_vms());
  ASSERT_TRUE(t.ok());
  const auto good = encode_policy_table(*t);
  auto edit = [&](size_t at, uint8_t v) {
    auto b = good;
    b.at(at) = v;
    return parse_policy_table(b).ok();
  };
  EXPECT_FALSE(edit(0, 0));                      // magic
  EXPECT_FALSE(edit(4, 2));                      // version
  EXPECT_FALSE(edit(8, 9));                      // VM count
  EXPECT_FALSE(edit(16, '/'));                   // VM name
  EXPECT_FALSE(edit(320 + 36, 101));             // priority of the first entry
  EXPECT_FALSE(edit(320 + 40, 4));               // flags
  EXPECT_FALSE(edit(320 + 2 * 8 * 64 + 32, 1));  // an entry of a VM the table does not have
  EXPECT_FALSE(parse_policy_table(std::span<const uint8_t>(good.data(), good.size() - 1)).ok());
}

TEST(PolicyTable, MoreVmsOrStreamsThanTheTableHoldsAreAnError) {
  Manifest m = two_vms();
  for (int i = 0; i < 7; ++i) {
    VmConfig c = m.vms[0];
    c.name = "vm" + std::to_string(i);
    m.vms.push_back(c);
  }
  EXPECT_FALSE(policy_table_from_manifest(m).ok());
  Manifest s = two_vms();
  for (int i = 0; i < 8; ++i) s.vms[1].snd->streams.push_back({"extra" + std::to_string(i)});
  EXPECT_FALSE(policy_table_from_manifest(s).ok());
}

}  // namespace
}  // namespace canopy::config
