// The VM manifest loader: the examples parse to the expected model; every kind of mistake gives one exact,
// positioned error; canopy-vmm --check reports the same.
#include "canopy/config/manifest.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "canopy/test_support/command.h"

namespace canopy::hypervisor {

// The manifest and its types (canopy/config/manifest.h) are the VMM's vocabulary.
using namespace ::canopy::config;  // NOLINT(google-build-using-namespace)
namespace {

using ::testing::ElementsAre;

const std::string kExamples = CANOPY_HYPERVISOR_EXAMPLES;

std::vector<std::string> errors_of(std::string_view text) {
  LoadResult r = load_manifest_string(text, "t.toml");
  EXPECT_EQ(r.ok(), r.errors.empty());
  std::vector<std::string> out;
  for (const auto& e : r.errors) out.push_back(e.to_string());
  return out;
}

// A valid KVM VM named `name` (5 lines), for building bad manifests around.
std::string vm(const std::string& name, const std::string& extra = "") {
  return "[[vm]]\nname = \"" + name + "\"\nbackend = \"kvm\"\nmemory = \"512M\"\nkernel = \"k\"\n" + extra;
}

// A VM with one 1024x768 scanout and an output stream "media" (9 lines).
std::string gfx_vm(const std::string& name) {
  return vm(name) + "[vm.gpu]\nscanouts = [{ width = 1024, height = 768 }]\n" +
         "[vm.snd]\nstreams = [{ name = \"media\", direction = \"output\", rates = [48000] }]\n";
}

TEST(ManifestTest, ParsesCockpitExample) {
  LoadResult r = load_manifest_file(kExamples + "/cockpit.toml");
  for (const auto& e : r.errors) ADD_FAILURE() << e.to_string();
  ASSERT_TRUE(r.ok());
  const Manifest& m = *r.manifest;
  ASSERT_EQ(m.vms.size(), 2u);
  const VmConfig& cl = m.vms[0];
  EXPECT_EQ(cl.name, "cluster");
  EXPECT_EQ(cl.backend, Backend::kPartition);
  EXPECT_EQ(cl.memory_bytes, 256ull << 20);
  EXPECT_EQ(cl.vcpus, 2u);
  EXPECT_EQ(cl.criticality, Criticality::kSafety);
  EXPECT_EQ(cl.restart, RestartPolicy::kAlways);
  EXPECT_EQ(cl.max_restarts, 100u);
  EXPECT_EQ(cl.app, "/usr/lib/canopy/cluster-app");
  EXPECT_THAT(cl.args, ElementsAre("--units", "metric"));
  ASSERT_TRUE(cl.gpu.has_value());
  ASSERT_EQ(cl.gpu->scanouts.size(), 1u);
  EXPECT_EQ(cl.gpu->scanouts[0].width, 1920u);
  EXPECT_EQ(cl.gpu->backend, "canopy-gpu");
  ASSERT_TRUE(cl.snd.has_value());
  EXPECT_EQ(cl.snd->backend, "canopy-snd");
  EXPECT_EQ(cl.snd->streams[0].role, AudioRole::kChime);

  const VmConfig& ivi = m.vms[1];
  EXPECT_EQ(ivi.backend, Backend::kKvm);
  EXPECT_EQ(ivi.memory_bytes, 2ull << 30);
  EXPECT_EQ(ivi.kernel, "/var/lib/canopy/ivi/bzImage");
  EXPECT_EQ(ivi.cmdline, "console=hvc0 quiet");
  EXPECT_THAT(ivi.start_after, ElementsAre("cluster"));
  ASSERT_EQ(ivi.gpu->scanouts.size(), 2u);
  EXPECT_EQ(ivi.gpu->scanouts[0].refresh_hz, 60u);  // default
  EXPECT_EQ(ivi.gpu->scanouts[1].refresh_hz, 30u);
  ASSERT_EQ(ivi.snd->streams.size(), 3u);
  EXPECT_EQ(ivi.snd->streams[2].direction, StreamDirection::kInput);
  EXPECT_THAT(ivi.snd->streams[2].rates, ElementsAre(16000u, 48000u));
  EXPECT_EQ(ivi.snd->streams[1].channels, 1u);

  ASSERT_EQ(m.displays.size(), 2u);
  EXPECT_EQ(m.displays[1].name, "center");
  EXPECT_EQ(m.displays[1].refresh_hz, 60u);
  ASSERT_EQ(m.layouts.size(), 3u);
  EXPECT_EQ(m.layouts[2].scanout, 1u);
  EXPECT_EQ(m.layouts[2].x, 560u);
  EXPECT_EQ(m.layouts[2].z, 1);
  ASSERT_EQ(m.audio_routes.size(), 3u);
  EXPECT_EQ(m.audio_routes[0].priority, 100u);
  EXPECT_TRUE(m.audio_routes[0].duck_others);
  EXPECT_FALSE(m.audio_routes[2].duck_others);
  EXPECT_THAT(m.boot_order, ElementsAre(0u, 1u));
  EXPECT_EQ(m.find_vm("ivi"), &m.vms[1]);
  EXPECT_EQ(m.find_display("nope"), nullptr);
}

TEST(ManifestTest, ParsesMinimalExampleWithDefaults) {
  LoadResult r = load_manifest_file(kExamples + "/minimal.toml");
  ASSERT_TRUE(r.ok());
  const VmConfig& v = r.manifest->vms[0];
  EXPECT_EQ(v.vcpus, 1u);
  EXPECT_EQ(v.criticality, Criticality::kNormal);
  EXPECT_EQ(v.restart, RestartPolicy::kOnFailure);
  EXPECT_EQ(v.max_restarts, 3u);
  EXPECT_FALSE(v.gpu.has_value());
  EXPECT_TRUE(r.manifest->displays.empty());
}

TEST(ManifestTest, BootOrderFollowsStartAfterThenFileOrder) {
  LoadResult r =
      load_manifest_string(vm("a", "start_after = [\"c\"]\n") + vm("b") + vm("c", "start_after = [\"b\"]\n"), "t.toml");
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(r.manifest->boot_order, ElementsAre(1u, 2u, 0u));
}

TEST(ManifestTest, AcceptsIntegerBytesAndAutoBackend) {
  LoadResult r = load_manifest_string(
      "[[vm]]\nname = \"x\"\nbackend = \"auto\"\nmemory = 33554432\nkernel = \"k\"\napp = \"a\"\n", "t.toml");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.manifest->vms[0].memory_bytes, 32ull << 20);
}

TEST(ManifestTest, RejectsUnknownKey) {
  EXPECT_THAT(errors_of("[[vm]]\nname = \"a\"\nbackend = \"kvm\"\nmemroy = \"512M\"\nkernel = \"k\"\n"),
              ElementsAre("t.toml:1:1: vm[0]: missing required key \"memory\"",
                          "t.toml:4:1: vm[0].memroy: unknown key (known: name, backend, memory, vcpus, "
                          "criticality, restart, max_restarts, kernel, initrd, cmdline, app, args, start_after, "
                          "watchdog_ms, gpu, snd, device)"));
}

TEST(ManifestTest, RejectsBadSize) {
  EXPECT_THAT(errors_of("[[vm]]\nname = \"a\"\nbackend = \"kvm\"\nmemory = \"12Q\"\nkernel = \"k\"\n"),
              ElementsAre("t.toml:4:10: vm[0].memory: \"12Q\" is not a size (use e.g. 512M, 2G)"));
}

TEST(ManifestTest, RejectsSizeOutOfRangeOrUnaligned) {
  EXPECT_THAT(errors_of("[[vm]]\nname = \"a\"\nbackend = \"kvm\"\nmemory = \"8M\"\nkernel = \"k\"\n"),
              ElementsAre("t.toml:4:10: vm[0].memory: \"8M\" is out of range (16M..64G)"));
  EXPECT_THAT(errors_of("[[vm]]\nname = \"a\"\nbackend = \"kvm\"\nmemory = \"65G\"\nkernel = \"k\"\n"),
              ElementsAre("t.toml:4:10: vm[0].memory: \"65G\" is out of range (16M..64G)"));
  EXPECT_THAT(errors_of("[[vm]]\nname = \"a\"\nbackend = \"kvm\"\nmemory = 16777217\nkernel = \"k\"\n"),
              ElementsAre("t.toml:4:10: vm[0].memory: 16777217 is not a multiple of 4K"));
  EXPECT_THAT(errors_of("[[vm]]\nname = \"a\"\nbackend = \"kvm\"\nmemory = \"99999999999999G\"\nkernel = \"k\"\n"),
              ElementsAre("t.toml:4:10: vm[0].memory: \"99999999999999G\" is not a size (use e.g. 512M, 2G)"));
}

TEST(ManifestTest, RejectsDuplicateVmName) {
  EXPECT_THAT(errors_of(vm("a") + vm("b") + vm("a")),
              ElementsAre("t.toml:12:8: vm[2].name: duplicate VM name \"a\" (first at vm[0])"));
}

TEST(ManifestTest, RejectsStartAfterCycle) {
  EXPECT_THAT(errors_of(vm("a", "start_after = [\"b\"]\n") + vm("b", "start_after = [\"a\"]\n")),
              ElementsAre("t.toml:12:16: vm[1].start_after[0]: start_after cycle: a -> b -> a"));
  EXPECT_THAT(errors_of(vm("a", "start_after = [\"a\"]\n")),
              ElementsAre("t.toml:6:16: vm[0].start_after[0]: start_after cycle: a -> a"));
}

TEST(ManifestTest, RejectsStartAfterUnknownVm) {
  EXPECT_THAT(errors_of(vm("a", "start_after = [\"zz\"]\n")),
              ElementsAre("t.toml:6:16: vm[0].start_after[0]: unknown VM \"zz\""));
}

TEST(ManifestTest, RejectsLayoutReferencingMissingVm) {
  EXPECT_THAT(errors_of(gfx_vm("a") + "[[display]]\nname = \"d\"\nwidth = 1024\nheight = 768\n"
                                      "[[layout]]\ndisplay = \"d\"\nvm = \"b\"\nwidth = 10\nheight = 10\n"),
              ElementsAre("t.toml:16:6: layout[0].vm: unknown VM \"b\""));
}

TEST(ManifestTest, RejectsLayoutScanoutThatDoesNotExist) {
  EXPECT_THAT(
      errors_of(gfx_vm("a") + "[[display]]\nname = \"d\"\nwidth = 1024\nheight = 768\n"
                              "[[layout]]\ndisplay = \"d\"\nvm = \"a\"\nscanout = 1\nwidth = 10\nheight = 10\n"),
      ElementsAre("t.toml:17:11: layout[0].scanout: VM \"a\" has 1 scanout(s); index 1 does not exist"));
}

TEST(ManifestTest, RejectsRectangleOutsideDisplay) {
  EXPECT_THAT(errors_of(gfx_vm("a") + "[[display]]\nname = \"d\"\nwidth = 1024\nheight = 768\n"
                                      "[[layout]]\ndisplay = \"d\"\nvm = \"a\"\nx = 100\nwidth = 1000\nheight = 768\n"),
              ElementsAre("t.toml:14:1: layout[0]: rectangle 100,0 1000x768 does not fit display \"d\" (1024x768)"));
}

TEST(ManifestTest, LayoutCropAlphaRotationStaleAndDisplayCriticality) {
  LoadResult r = load_manifest_string(
      gfx_vm("a") +
          "[[display]]\nname = \"d\"\nwidth = 1024\nheight = 768\ncriticality = \"safety\"\n"
          "[[layout]]\ndisplay = \"d\"\nvm = \"a\"\nwidth = 300\nheight = 400\nalpha = 0.5\nrotation = 90\n"
          "stale_ms = 100\ncrop = { x = 24, y = 8, width = 1000, height = 700 }\n"
          "[[layout]]\ndisplay = \"d\"\nvm = \"a\"\nwidth = 10\nheight = 10\nalpha = 1\n",
      "t.toml");
  for (const auto& e : r.errors) ADD_FAILURE() << e.to_string();
  ASSERT_TRUE(r.ok());
  const Manifest& m = *r.manifest;
  EXPECT_EQ(m.displays[0].criticality, Criticality::kSafety);
  const LayoutEntry& l = m.layouts[0];
  EXPECT_EQ(l.crop.x, 24u);
  EXPECT_EQ(l.crop.y, 8u);
  EXPECT_EQ(l.crop.width, 1000u);
  EXPECT_EQ(l.crop.height, 700u);
  EXPECT_DOUBLE_EQ(l.alpha, 0.5);
  EXPECT_EQ(l.rotation, 90u);
  EXPECT_EQ(l.stale_ms, 100u);
  const LayoutEntry& l2 = m.layouts[1];
  EXPECT_EQ(l2.crop.width, 0u) << "no crop: the whole scanout";
  EXPECT_DOUBLE_EQ(l2.alpha, 1.0);
  EXPECT_EQ(l2.rotation, 0u);
  EXPECT_FALSE(l2.stale_ms.has_value());
}

TEST(ManifestTest, RejectsBadCropAlphaRotation) {
  const std::string head = gfx_vm("a") + "[[display]]\nname = \"d\"\nwidth = 1024\nheight = 768\n" +
                           "[[layout]]\ndisplay = \"d\"\nvm = \"a\"\nwidth = 10\nheight = 10\n";
  EXPECT_THAT(
      errors_of(head + "crop = { x = 100, width = 1000, height = 10 }\n"),
      ElementsAre("t.toml:19:8: layout[0].crop: crop 100,0 1000x10 does not fit scanout 0 of VM \"a\" (1024x768)"));
  EXPECT_THAT(errors_of(head + "crop = { x = 1, height = 10 }\n"),
              ElementsAre("t.toml:19:8: layout[0].crop: missing required key \"width\""));
  EXPECT_THAT(errors_of(head + "alpha = 1.5\n"),
              ElementsAre("t.toml:19:9: layout[0].alpha: 1.5 is out of range (0..1)"));
  EXPECT_THAT(errors_of(head + "alpha = nan\n"),
              ElementsAre("t.toml:19:9: layout[0].alpha: nan is out of range (0..1)"));
  EXPECT_THAT(errors_of(head + "alpha = \"half\"\n"),
              ElementsAre("t.toml:19:9: layout[0].alpha: expected a number, got a string"));
  EXPECT_THAT(errors_of(head + "rotation = 45\n"),
              ElementsAre("t.toml:19:12: layout[0].rotation: 45 is not a rotation (0, 90, 180 or 270)"));
  EXPECT_THAT(errors_of(head + "rotation = 360\n"),
              ElementsAre("t.toml:19:12: layout[0].rotation: 360 is out of range (0..270)"));
  EXPECT_THAT(errors_of(head + "stale_ms = 60001\n"),
              ElementsAre("t.toml:19:12: layout[0].stale_ms: 60001 is out of range (0..60000)"));
}

TEST(ManifestTest, RejectsWrongType) {
  EXPECT_THAT(errors_of(vm("a", "vcpus = \"4\"\n")),
              ElementsAre("t.toml:6:9: vm[0].vcpus: expected an integer, got a string"));
  EXPECT_THAT(errors_of("[vm]\nname = \"a\"\n"),
              ElementsAre("t.toml:1:1: vm: expected an array of tables ([[vm]]), got a table"));
}

TEST(ManifestTest, RejectsOutOfRangeAndBadChoice) {
  EXPECT_THAT(errors_of(vm("a", "vcpus = 65\ncriticality = \"urgent\"\n")),
              ElementsAre("t.toml:6:9: vm[0].vcpus: 65 is out of range (1..64)",
                          "t.toml:7:15: vm[0].criticality: \"urgent\" is not one of \"safety\", \"high\", "
                          "\"normal\", \"low\""));
  EXPECT_THAT(errors_of(vm("Bad_Name")),
              ElementsAre("t.toml:2:8: vm[0].name: \"Bad_Name\" is not a valid name (1..32 of a-z, 0-9, -)"));
}

TEST(ManifestTest, ReportsTomlSyntaxErrorWithItsLine) {
  // The description after "TOML syntax error: " is toml++'s own (3.3.0 here).
  EXPECT_THAT(errors_of("[[vm]]\nname = \"a\"\nmemory = = 3\n"),
              ElementsAre("t.toml:3:10: TOML syntax error: Error while parsing value: could not determine value "
                          "type"));
}

// Regression: toml++ 3.3.0 reaches __builtin_unreachable() for these (found by fuzz_manifest; upstream
// marzer/tomlplusplus#190). The loader must reject them itself, and keep accepting other non-ASCII text.
TEST(ManifestTest, RejectsCodePointsThatBreakTheTomlParser) {
  EXPECT_THAT(errors_of("a = 1 \xc3\xa9\n"),
              ElementsAre("t.toml:1:7: character U+00E9 is not supported by this build's TOML parser outside "
                          "\\u escapes (toml++ bug, docs/manifest.md)"));
  EXPECT_THAT(errors_of("# x\ns = \"\"\"\\\n\xc2\xa7\"\"\"\n"),
              ElementsAre("t.toml:3:1: character U+00A7 is not supported by this build's TOML parser outside "
                          "\\u escapes (toml++ bug, docs/manifest.md)"));
  LoadResult r = load_manifest_string(vm("a", "cmdline = \"\\u00e9 \xe2\x82\xac\" # \xe2\x9c\x93\n"), "t.toml");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.manifest->vms[0].cmdline, "\xc3\xa9 \xe2\x82\xac");
}

// Regression: toml++ asserts (an optimizer assumption under NDEBUG) that a table header starts with a key
// character; a non-ASCII one must give a syntax error, not undefined behaviour.
TEST(ManifestTest, RejectsNonAsciiTableHeader) {
  const auto errs = errors_of("[\xe2\x82\xac]\n");
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_THAT(errs[0], ::testing::StartsWith("t.toml:1:2: TOML syntax error: "));
}

TEST(ManifestTest, ChecksBackendSpecificKeys) {
  EXPECT_THAT(errors_of("[[vm]]\nname = \"p\"\nbackend = \"partition\"\nmemory = \"64M\"\nkernel = \"k\"\n"),
              ElementsAre("t.toml:1:1: vm[0]: missing required key \"app\" (required for backend = \"partition\" "
                          "and \"auto\")",
                          "t.toml:5:10: vm[0].kernel: only for backend = \"kvm\" or \"auto\""));
  EXPECT_THAT(errors_of("[[vm]]\nname = \"k\"\nbackend = \"kvm\"\nmemory = \"64M\"\n"),
              ElementsAre("t.toml:1:1: vm[0]: missing required key \"kernel\" (required for backend = \"kvm\" "
                          "and \"auto\")"));
}

TEST(ManifestTest, RejectsReservedAndUnknownSections) {
  EXPECT_THAT(errors_of(vm("a") + "[network]\nx = 1\n[foo]\n"),
              ElementsAre("t.toml:6:2: network: section reserved for a future version of the manifest (not "
                          "supported yet)",
                          "t.toml:8:2: foo: unknown key (known: version, vm, display, layout, audio)"));
  EXPECT_THAT(errors_of(""), ElementsAre("t.toml:1:1: vm: no VMs: add at least one [[vm]] table"));
  EXPECT_THAT(errors_of("version = 2\n" + vm("a")),
              ElementsAre("t.toml:1:11: version: 2 is not supported (this canopy-vmm reads version 1)"));
}

TEST(ManifestTest, RejectsAudioRouteToMissingStream) {
  EXPECT_THAT(errors_of(gfx_vm("a") + "[[audio.route]]\nvm = \"a\"\nstream = \"nav\"\nsink = \"default\"\n"
                                      "priority = 101\n"),
              ElementsAre("t.toml:12:10: audio.route[0].stream: VM \"a\" has no snd stream \"nav\"",
                          "t.toml:14:12: audio.route[0].priority: 101 is out of range (0..100)"));
}

TEST(ManifestTest, CollectsEveryError) {
  const auto errs = errors_of(vm("a", "vcpus = 0\n") + vm("b", "restart = \"sometimes\"\n") +
                              "[[display]]\nname = \"d\"\nwidth = 0\nheight = 10\noutput = \"vga\"\n");
  EXPECT_EQ(errs.size(), 4u);
}

TEST(ManifestTest, EnforcesArrayCaps) {
  std::string text;
  for (char ch = 'a'; ch < 'a' + 17; ++ch) text += vm(std::string(1, ch));
  EXPECT_THAT(errors_of(text), ElementsAre("t.toml:1:1: vm: 17 entries; at most 16 allowed"));
}

TEST(ManifestTest, StopsCollectingAtMaxErrors) {
  std::string text = "[[vm]]\nname = \"a\"\nbackend = \"kvm\"\nmemory = \"512M\"\nkernel = \"k\"\n";
  for (int i = 0; i < 150; ++i) text += "bad" + std::to_string(i) + " = 1\n";
  const auto errs = errors_of(text);
  ASSERT_EQ(errs.size(), kMaxErrors + 1);
  EXPECT_EQ(errs.back(), "t.toml: too many errors; only the first 100 are shown");
}

TEST(ManifestTest, ReportsUnreadableFile) {
  LoadResult r = load_manifest_file("/nonexistent/x.toml");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].to_string(), "/nonexistent/x.toml: cannot open: No such file or directory");
}

using canopy::test_support::run_command;

TEST(CanopyVmmTest, CheckAcceptsCockpitExample) {
  std::string out;
  const std::string file = kExamples + "/cockpit.toml";
  EXPECT_EQ(run_command(std::string(CANOPY_VMM_BIN) + " --check " + file, out), 0);
  EXPECT_EQ(out, file + ": ok (2 VMs, 2 displays)\n");
}

TEST(CanopyVmmTest, CheckAcceptsPartitionsExample) {
  std::string out;
  const std::string file = kExamples + "/partitions.toml";
  EXPECT_EQ(run_command(std::string(CANOPY_VMM_BIN) + " --check " + file, out), 0);
  EXPECT_EQ(out, file + ": ok (2 VMs, 0 displays)\n");
}

TEST(ManifestTest, ReadsDevicesWatchdogAndBackEndArgs) {
  auto r = load_manifest_string(
      "[[vm]]\nname = \"p\"\nbackend = \"partition\"\nmemory = \"32M\"\napp = \"a\"\nwatchdog_ms = 250\n"
      "[vm.gpu]\nscanouts = [{ width = 64, height = 32 }]\nargs = [\"--x\"]\n"
      "[[vm.device]]\ntype = \"rng\"\nbackend = \"canopy-vhost-rng\"\nargs = [\"--pattern\"]\n",
      "t.toml");
  ASSERT_TRUE(r.ok());
  const VmConfig& vm = r.manifest->vms[0];
  EXPECT_EQ(vm.watchdog_ms, 250u);
  ASSERT_TRUE(vm.gpu.has_value());
  EXPECT_EQ(vm.gpu->args, std::vector<std::string>{"--x"});
  ASSERT_EQ(vm.devices.size(), 1u);
  EXPECT_EQ(vm.devices[0].type, "rng");
  EXPECT_EQ(vm.devices[0].virtio_id, 4u);
  EXPECT_EQ(vm.devices[0].backend, "canopy-vhost-rng");
  EXPECT_EQ(vm.devices[0].args, std::vector<std::string>{"--pattern"});
}

TEST(ManifestTest, RejectsUnknownDeviceTypeMissingBackEndAndWatchdogOutOfRange) {
  EXPECT_THAT(
      errors_of("[[vm]]\nname = \"p\"\nbackend = \"partition\"\nmemory = \"32M\"\napp = \"a\"\n"
                "watchdog_ms = 600001\n[[vm.device]]\ntype = \"toaster\"\n"),
      ::testing::ElementsAre(
          "t.toml:6:15: vm[0].watchdog_ms: 600001 is out of range (0..600000)",
          "t.toml:7:1: vm[0].device[0]: missing required key \"backend\"",
          "t.toml:8:8: vm[0].device[0].type: unknown device type \"toaster\" (known: console, rng, input, vsock, "
          "scmi, i2c, can, gpio; gpu and snd have their own tables)"));
}

TEST(CanopyVmmTest, CheckPrintsEveryErrorAndFails) {
  char path[] = "/tmp/canopy-vmm-test-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  std::ofstream(path) << vm("a", "vcpus = 0\n") << vm("a");
  std::string out;
  EXPECT_EQ(run_command(std::string(CANOPY_VMM_BIN) + " --check " + path, out), 1);
  EXPECT_EQ(out, std::string(path) + ":6:9: vm[0].vcpus: 0 is out of range (1..64)\n" + path +
                     ":8:8: vm[1].name: duplicate VM name \"a\" (first at vm[0])\n");
  unlink(path);
}

TEST(CanopyVmmTest, HelpAndBadArguments) {
  std::string out;
  EXPECT_EQ(run_command(std::string(CANOPY_VMM_BIN) + " --help", out), 0);
  EXPECT_THAT(out, ::testing::HasSubstr("--check FILE"));
  EXPECT_EQ(run_command(std::string(CANOPY_VMM_BIN) + " " + kExamples + "/cockpit.toml", out), 2);
  EXPECT_THAT(out, ::testing::HasSubstr("bad arguments"));
  EXPECT_EQ(run_command(std::string(CANOPY_VMM_BIN) + " run " + kExamples + "/cockpit.toml --frobnicate", out), 2);
  EXPECT_THAT(out, ::testing::HasSubstr("bad argument --frobnicate"));
}

}  // namespace
}  // namespace canopy::hypervisor

namespace canopy::hypervisor {
namespace {

using ::testing::HasSubstr;

const char* const kSndVm =
    "[[vm]]\nname = \"a\"\nbackend = \"partition\"\nmemory = \"32M\"\napp = \"x\"\n[vm.snd]\n"
    "streams = [{ name = \"chime\", direction = \"output\", channels = 2, rates = [48000], positions = [\"FL\", "
    "\"FR\"] },\n"
    "           { name = \"mic\", direction = \"input\", channels = 1, rates = [16000] }]\n"
    "jacks = [{ name = \"speaker\", direction = \"output\", device = \"speaker\" },\n"
    "         { name = \"mic\", direction = \"input\", connected = false }]\n";

TEST(ManifestTest, SndJacksChannelMapsAndRouteDucking) {
  LoadResult r = load_manifest_string(std::string(kSndVm) +
                                          "[[audio.route]]\nvm = \"a\"\nstream = \"chime\"\nsink = \"default\"\n"
                                          "priority = 100\nduck_others = true\nduck_db = -18.5\nramp_ms = 30\n"
                                          "exclusive = true\n",
                                      "t.toml");
  ASSERT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].to_string());
  const VmConfig& v = r.manifest->vms[0];
  ASSERT_EQ(v.snd->jacks.size(), 2u);
  EXPECT_EQ(v.snd->jacks[0].device, JackDevice::kSpeaker);
  EXPECT_TRUE(v.snd->jacks[0].connected);
  EXPECT_EQ(v.snd->jacks[1].device, JackDevice::kMic);  // an input jack defaults to a microphone
  EXPECT_FALSE(v.snd->jacks[1].connected);
  EXPECT_EQ(v.snd->streams[0].positions, (std::vector<std::string>{"FL", "FR"}));
  const AudioRoute& a = r.manifest->audio_routes[0];
  EXPECT_EQ(a.duck_db, -18.5);
  EXPECT_EQ(a.ramp_ms, 30u);
  EXPECT_TRUE(a.exclusive);
}

TEST(ManifestTest, RejectsBadPositionsJacksAndDucking) {
  std::string bad = kSndVm;
  bad.replace(bad.find("[\"FL\", \"FR\"]"), 12, "[\"FL\", \"XX\", \"FR\"]");
  bad.replace(bad.find("device = \"speaker\""), 18, "device = \"tuba\"");
  EXPECT_THAT(errors_of(bad + "[[audio.route]]\nvm = \"a\"\nstream = \"chime\"\nsink = \"default\"\nduck_db = 3\n"
                              "ramp_ms = 20000\n"),
              ElementsAre(HasSubstr("3 positions for 2 channels"), HasSubstr("\"XX\" is not a channel position"),
                          HasSubstr("jacks[0].device"), HasSubstr("audio.route[0].duck_db"),
                          HasSubstr("audio.route[0].ramp_ms")));
}

}  // namespace
}  // namespace canopy::hypervisor
