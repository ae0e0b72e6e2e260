#include "canopy/gpu/device.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "canopy/buffers/image.h"
#include "gpu_test_util.h"

namespace canopy::gpu {
namespace {

using proto::Cmd;
using proto::Resp;

using testing::Harness;
constexpr uint32_t R(Resp r) { return uint32_t(r); }

uint32_t pattern_crc(uint32_t w, uint32_t h, uint32_t pixel) {
  std::vector<uint32_t> px(size_t(w) * h, pixel);
  return image_crc32(reinterpret_cast<const uint8_t*>(px.data()), w * 4, h, w * 4);
}

TEST(GpuDevice, DisplayInfoListsEveryConfiguredScanout) {
  GpuOptions o;
  o.scanouts = {{1024, 768, 60}, {1920, 1080, 60}, {800, 480, 60}};
  Harness h(o);
  const uint64_t t = h.send(proto::make_hdr(Cmd::kGetDisplayInfo));
  ASSERT_EQ(h.response(t).type.get(), R(Resp::kOkDisplayInfo));
  proto::RespDisplayInfo info;
  ASSERT_EQ(h.responses[t].size(), sizeof info);
  std::memcpy(&info, h.responses[t].data(), sizeof info);
  EXPECT_EQ(info.pmodes[1].r.width.get(), 1920u);
  EXPECT_EQ(info.pmodes[2].r.height.get(), 480u);
  EXPECT_EQ(info.pmodes[2].enabled.get(), 1u);
  EXPECT_EQ(info.pmodes[3].enabled.get(), 0u);
  EXPECT_EQ(h.dev->config().num_scanouts.get(), 3u);
}

TEST(GpuDevice, EdidPerScanoutAndBadScanout) {
  GpuOptions o;
  o.scanouts = {{1024, 768, 60}, {1280, 800, 60}};
  Harness h(o);
  proto::GetEdid g{};
  g.hdr = proto::make_hdr(Cmd::kGetEdid);
  g.scanout = 1;
  const uint64_t t = h.send(g);
  ASSERT_EQ(h.response(t).type.get(), R(Resp::kOkEdid));
  proto::RespEdid e;
  ASSERT_EQ(h.responses[t].size(), sizeof e);
  std::memcpy(&e, h.responses[t].data(), sizeof e);
  EXPECT_EQ(e.size.get(), 128u);
  EXPECT_EQ(e.edid[56] | (e.edid[58] >> 4) << 8, 1280);  // preferred mode width
  g.scanout = 2;
  EXPECT_EQ(h.call(g), R(Resp::kErrInvalidParameter));
  g.scanout = 0xffffffff;
  EXPECT_EQ(h.call(g), R(Resp::kErrInvalidParameter));
  h.dev->set_acked_features(0);  // EDID not negotiated
  g.scanout = 0;
  EXPECT_EQ(h.call(g), R(Resp::kErrUnspec));
}

TEST(GpuDevice, ResourceCreate2dValidatesEveryField) {
  Harness h;
  EXPECT_EQ(h.create_2d(0, 64, 64), R(Resp::kErrInvalidResourceId));
  EXPECT_EQ(h.create_2d(1, 64, 64), R(Resp::kOkNodata));
  EXPECT_EQ(h.create_2d(1, 64, 64), R(Resp::kErrInvalidResourceId));
  EXPECT_EQ(h.create_2d(2, 64, 64, proto::Format(5)), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.create_2d(2, 0, 64), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.create_2d(2, 64, 16385), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.dev->stats().resources, 1u);
}

TEST(GpuDevice, TransferAndFlushDeliverTheGuestPixels) {
  Harness h({}, {.checksum = true});
  ASSERT_EQ(h.create_2d(1, 64, 32), R(Resp::kOkNodata));
  h.fill_ram(0x10000, 64 * 32 * 4, 0xff336699);
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 64 * 32 * 4)}), R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 64, 32), R(Resp::kOkNodata));
  ASSERT_EQ(h.transfer(1, 64, 32), R(Resp::kOkNodata));
  ASSERT_EQ(h.call(h.flush_cmd(1, 64, 32)), R(Resp::kOkNodata));
  auto st = h.out.stats(0);
  EXPECT_EQ(st.frames, 1u);
  EXPECT_EQ(st.last_crc, pattern_crc(64, 32, 0xff336699));
  EXPECT_EQ(st.bytes_copied, 64u * 32 * 4);
  EXPECT_EQ(st.last_fourcc, buffers::fourcc_code('X', 'R', '2', '4'));
  ASSERT_EQ(st.last_damage.size(), 1u);
  EXPECT_EQ(st.last_damage[0], (Rect{0, 0, 64, 32}));
}

// A frame names its buffer by resource id and backing generation. Frames of one backing share a
// generation; DETACH_BACKING, a new ATTACH_BACKING and RESOURCE_UNREF each end it, and the output is told
// which one ended; generations are never reused, not even by a re-created resource id.
TEST(GpuDevice, FramesNameTheirBackingAndTheOutputHearsWhenItGoes) {
  struct Recorder : HeadlessOutput {
    void on_frame(std::shared_ptr<Frame> f) override {
      frames.emplace_back(f->resource_id, f->generation);
      HeadlessOutput::on_frame(std::move(f));
    }
    void on_backing_gone(uint32_t r, uint64_t g) override { gone.emplace_back(r, g); }
    std::vector<std::pair<uint32_t, uint64_t>> frames, gone;
  } rec;
  Harness h({}, {}, nullptr, &rec);
  auto flush = [&] { return h.call(h.flush_cmd(1, 64, 32)); };
  proto::ResourceDetachBacking d{};
  d.hdr = proto::make_hdr(Cmd::kResourceDetachBacking);
  d.resource_id = 1;
  proto::ResourceUnref u{};
  u.hdr = proto::make_hdr(Cmd::kResourceUnref);
  u.resource_id = 1;
  ASSERT_EQ(h.create_2d(1, 64, 32), R(Resp::kOkNodata));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 64 * 32 * 4)}), R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 64, 32), R(Resp::kOkNodata));
  ASSERT_EQ(flush(), R(Resp::kOkNodata));
  ASSERT_EQ(flush(), R(Resp::kOkNodata));
  ASSERT_EQ(rec.frames.size(), 2u);
  const uint64_t g1 = rec.frames[0].second;
  EXPECT_NE(g1, 0u);
  EXPECT_EQ(rec.frames[1], std::make_pair(1u, g1)) << "one backing, one buffer";
  EXPECT_TRUE(rec.gone.empty());
  ASSERT_EQ(h.call(d), R(Resp::kOkNodata));
  EXPECT_EQ(rec.gone, (std::vector<std::pair<uint32_t, uint64_t>>{{1, g1}}));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 64 * 32 * 4)}), R(Resp::kOkNodata));
  EXPECT_EQ(rec.gone.size(), 1u) << "a backing no frame showed has nothing to forget";
  ASSERT_EQ(flush(), R(Resp::kOkNodata));
  const uint64_t g2 = rec.frames.back().second;
  EXPECT_GT(g2, g1) << "the same memory re-attached is a new buffer";
  ASSERT_EQ(h.call(u), R(Resp::kOkNodata));
  EXPECT_EQ(rec.gone.back(), std::make_pair(1u, g2));
  // The same resource id again: a new generation.
  ASSERT_EQ(h.create_2d(1, 64, 32), R(Resp::kOkNodata));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 64 * 32 * 4)}), R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 64, 32), R(Resp::kOkNodata));
  ASSERT_EQ(flush(), R(Resp::kOkNodata));
  EXPECT_GT(rec.frames.back().second, g2);
  EXPECT_EQ(rec.frames.back().first, 1u);
}

TEST(GpuDevice, TransferGathersRowsAcrossScatteredEntries) {
  Harness h({}, {.checksum = true});
  ASSERT_EQ(h.create_2d(1, 16, 4), R(Resp::kOkNodata));
  // 4 rows of 64 bytes in entries of 40 + 100 + 116 bytes at scattered addresses.
  h.fill_ram(0x30000, 40, 0x11111111);
  h.fill_ram(0x10000, 100, 0x11111111);
  h.fill_ram(0x50000, 116, 0x11111111);
  ASSERT_EQ(h.attach(1, {Harness::entry(0x30000, 40), Harness::entry(0x10000, 100), Harness::entry(0x50000, 116)}),
            R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 16, 4), R(Resp::kOkNodata));
  ASSERT_EQ(h.transfer(1, 16, 4), R(Resp::kOkNodata));
  ASSERT_EQ(h.call(h.flush_cmd(1, 16, 4)), R(Resp::kOkNodata));
  EXPECT_EQ(h.out.stats(0).last_crc, pattern_crc(16, 4, 0x11111111));
  // A partial transfer: rows 1..2, columns 4..7, source offset as Linux computes it.
  h.fill_ram(0x30000, 40, 0x22222222);
  h.fill_ram(0x10000, 100, 0x22222222);
  h.fill_ram(0x50000, 116, 0x22222222);
  ASSERT_EQ(h.transfer(1, 4, 2, 1 * 64 + 4 * 4, 4, 1), R(Resp::kOkNodata));
  ASSERT_EQ(h.call(h.flush_cmd(1, 16, 4)), R(Resp::kOkNodata));
  std::vector<uint32_t> expect(16 * 4, 0x11111111);
  for (int y = 1; y <= 2; ++y)
    for (int x = 4; x < 8; ++x) expect[y * 16 + x] = 0x22222222;
  EXPECT_EQ(h.out.stats(0).last_crc, image_crc32(reinterpret_cast<const uint8_t*>(expect.data()), 64, 4, 64));
  EXPECT_EQ(h.out.stats(0).bytes_copied, 16u * 4 * 4 + 4 * 2 * 4);
}

TEST(GpuDevice, TransferRefusesRectanglesAndOffsetsOutsideTheResourceOrBacking) {
  Harness h;
  ASSERT_EQ(h.create_2d(1, 64, 64), R(Resp::kOkNodata));
  EXPECT_EQ(h.transfer(1, 64, 64), R(Resp::kErrUnspec));  // no backing yet
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 64 * 64 * 4)}), R(Resp::kOkNodata));
  EXPECT_EQ(h.transfer(1, 65, 1), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.transfer(1, 1, 1, 0, 0xffffffff, 0), R(Resp::kErrInvalidParameter));  // x + width wraps 32 bits
  EXPECT_EQ(h.transfer(1, 64, 64, 4), R(Resp::kErrInvalidParameter));               // one pixel past the backing
  EXPECT_EQ(h.transfer(1, 1, 1, ~uint64_t{0} - 2), R(Resp::kErrInvalidParameter));  // offset + row wraps 64 bits
  EXPECT_EQ(h.transfer(7, 1, 1), R(Resp::kErrInvalidResourceId));
  EXPECT_EQ(h.dev->stats().bytes_copied, 0u);
}

TEST(GpuDevice, AttachBackingRefusesOverlappingWrappingAndOutsideEntries) {
  Harness h;
  ASSERT_EQ(h.create_2d(1, 64, 64), R(Resp::kOkNodata));
  EXPECT_EQ(h.attach(1, {Harness::entry(0x10000, 8192), Harness::entry(0x11000, 4096)}), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.attach(1, {Harness::entry(0x10000, 4096), Harness::entry(0x10000, 4096)}), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.attach(1, {Harness::entry(~uint64_t{0} - 100, 4096)}), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.attach(1, {Harness::entry(Harness::kRam - 4096, 8192)}), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.attach(1, {Harness::entry(Harness::kRam, 4096)}), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.attach(1, {Harness::entry(0x10000, 0)}), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.attach(1, {}), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.attach(9, {Harness::entry(0x10000, 4096)}), R(Resp::kErrInvalidResourceId));
  EXPECT_EQ(h.dev->stats().backing_bytes, 0u);
  // nr_entries larger than the entries that follow: the command is malformed.
  proto::ResourceAttachBacking a{};
  a.hdr = proto::make_hdr(Cmd::kResourceAttachBacking);
  a.resource_id = 1;
  a.nr_entries = 2;
  auto one = Harness::entry(0x10000, 4096);
  EXPECT_EQ(h.call(a, std::span(reinterpret_cast<const uint8_t*>(&one), sizeof one)), R(Resp::kErrUnspec));
  a.nr_entries = 16385;  // over the per-request cap
  EXPECT_EQ(h.call(a), R(Resp::kErrOutOfMemory));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 4096)}), R(Resp::kOkNodata));
  EXPECT_EQ(h.attach(1, {Harness::entry(0x20000, 4096)}), R(Resp::kErrUnspec));  // already attached
  EXPECT_EQ(h.dev->stats().backing_bytes, 4096u);
}

// CVE-2016-10029 class: a scanout id at or beyond num_scanouts.
TEST(GpuDevice, SetScanoutRefusesScanoutIdsOutOfRange) {
  GpuOptions o;
  o.scanouts = {{1024, 768, 60}, {1024, 768, 60}};
  Harness h(o);
  ASSERT_EQ(h.create_2d(1, 64, 64), R(Resp::kOkNodata));
  EXPECT_EQ(h.set_scanout(2, 1, 64, 64), R(Resp::kErrInvalidScanoutId));
  EXPECT_EQ(h.set_scanout(16, 1, 64, 64), R(Resp::kErrInvalidScanoutId));
  EXPECT_EQ(h.set_scanout(0xffffffff, 1, 64, 64), R(Resp::kErrInvalidScanoutId));
  EXPECT_EQ(h.set_scanout(0, 1, 65, 64), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.set_scanout(0, 1, 0, 64), R(Resp::kErrInvalidParameter));
  EXPECT_EQ(h.set_scanout(0, 2, 64, 64), R(Resp::kErrInvalidResourceId));
  EXPECT_EQ(h.set_scanout(1, 1, 64, 64), R(Resp::kOkNodata));
  EXPECT_TRUE(h.out.stats(1).state.enabled);
  EXPECT_EQ(h.set_scanout(1, 0, 0, 0), R(Resp::kOkNodata));
  EXPECT_FALSE(h.out.stats(1).state.enabled);
}

// CVE-2016-10028 / CVE-2021-3546 class: capset index and id/version from the guest.
TEST(GpuDevice, CapsetQueriesOutOfRangeAreRefused) {
  Harness h;
  proto::GetCapsetInfo ci{};
  ci.hdr = proto::make_hdr(Cmd::kGetCapsetInfo);
  for (uint32_t idx : {0u, 1u, 0x7fffffffu, 0xffffffffu}) {
    ci.capset_index = idx;
    const uint64_t t = h.send(ci);
    EXPECT_EQ(h.response(t).type.get(), R(Resp::kErrInvalidParameter)) << idx;
    EXPECT_EQ(h.responses[t].size(), sizeof(proto::CtrlHdr));
  }
  proto::GetCapset c{};
  c.hdr = proto::make_hdr(Cmd::kGetCapset);
  c.capset_id = 0xffffffff;
  c.capset_version = 0xffffffff;
  EXPECT_EQ(h.call(c), R(Resp::kErrInvalidParameter));
  c.capset_id = 1;  // virgl: not offered by the 2D renderer
  c.capset_version = 0;
  EXPECT_EQ(h.call(c), R(Resp::kErrInvalidParameter));
}

// CVE-2021-3544 class: memory leaks through unref / detach / failed attaches.
TEST(GpuDevice, UnrefAndDetachReleaseEverything) {
  Harness h;
  for (int round = 0; round < 50; ++round) {
    ASSERT_EQ(h.create_2d(1, 128, 128), R(Resp::kOkNodata));
    ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 65536)}), R(Resp::kOkNodata));
    EXPECT_EQ(h.attach(1, {Harness::entry(0x90000, 4096)}), R(Resp::kErrUnspec));
    ASSERT_EQ(h.set_scanout(0, 1, 128, 128), R(Resp::kOkNodata));
    proto::ResourceDetachBacking d{};
    d.hdr = proto::make_hdr(Cmd::kResourceDetachBacking);
    d.resource_id = 1;
    ASSERT_EQ(h.call(d), R(Resp::kOkNodata));
    EXPECT_EQ(h.call(d), R(Resp::kErrUnspec));
    ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 65536)}), R(Resp::kOkNodata));
    proto::ResourceUnref u{};
    u.hdr = proto::make_hdr(Cmd::kResourceUnref);
    u.resource_id = 1;
    ASSERT_EQ(h.call(u), R(Resp::kOkNodata));
    EXPECT_EQ(h.call(u), R(Resp::kErrInvalidResourceId));
  }
  EXPECT_EQ(h.dev->stats().resources, 0u);
  EXPECT_EQ(h.dev->stats().backing_bytes, 0u);
  EXPECT_EQ(h.dev->stats().host_bytes, 0u);
  EXPECT_FALSE(h.out.stats(0).state.enabled) << "unref of a scanned-out resource disables the scanout";
}

TEST(GpuDevice, CapsAnswerOutOfMemory) {
  GpuOptions o;
  o.caps.max_resources = 2;
  o.caps.max_backing_bytes = 3 * 4096;
  o.caps.max_host_bytes = 64 * 64 * 4 * 2;
  o.caps.max_command_bytes = 4096;
  o.caps.max_contexts = 1;
  Harness h(o);
  ASSERT_EQ(h.create_2d(1, 64, 64), R(Resp::kOkNodata));
  EXPECT_EQ(h.create_2d(2, 64, 65), R(Resp::kErrOutOfMemory));  // host bytes
  ASSERT_EQ(h.create_2d(2, 64, 64), R(Resp::kOkNodata));
  EXPECT_EQ(h.create_2d(3, 1, 1), R(Resp::kErrOutOfMemory));  // resource count
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 8192)}), R(Resp::kOkNodata));
  EXPECT_EQ(h.attach(2, {Harness::entry(0x20000, 8192)}), R(Resp::kErrOutOfMemory));  // backing bytes
  std::vector<uint8_t> big(4097, 0);
  auto gdi = proto::make_hdr(Cmd::kGetDisplayInfo);
  std::memcpy(big.data(), &gdi, sizeof gdi);
  EXPECT_EQ(h.response(h.send_bytes(big)).type.get(), R(Resp::kErrOutOfMemory));  // command size
  proto::CtxCreate cc{};
  cc.hdr = proto::make_hdr(Cmd::kCtxCreate, 0, 0, 1);
  EXPECT_EQ(h.call(cc), R(Resp::kOkNodata));
  cc.hdr.ctx_id = 2;
  EXPECT_EQ(h.call(cc), R(Resp::kErrOutOfMemory));
}

// Backing entries are capped per command (as QEMU does) and per device: a guest cannot make the device
// hold bookkeeping for max_resources x max_backing_entries scattered entries. The control: with no
// per-device cap the same guest attaches every resource's entries.
TEST(GpuDevice, BackingEntriesAreCappedPerDevice) {
  for (bool capped : {false, true}) {
    SCOPED_TRACE(capped ? "capped" : "control: no per-device cap");
    GpuOptions o;
    o.caps.max_backing_entries = 64;
    o.caps.max_backing_entries_total = capped ? 128 : 1u << 30;
    Harness h(o);
    std::vector<proto::MemEntry> scattered;
    for (uint32_t i = 0; i < 64; ++i) scattered.push_back(Harness::entry(0x100000 + 2 * 4096ull * i, 4096));
    uint32_t attached = 0;
    for (uint32_t id = 1; id <= 4; ++id) {
      ASSERT_EQ(h.create_2d(id, 16, 16), R(Resp::kOkNodata));
      const uint32_t r = h.attach(id, scattered);
      if (r == R(Resp::kOkNodata)) ++attached;
      else EXPECT_EQ(r, R(Resp::kErrOutOfMemory));
    }
    EXPECT_EQ(attached, capped ? 2u : 4u);
    EXPECT_EQ(h.dev->stats().backing_entries, attached * 64u);
    if (capped) {
      proto::ResourceUnref u{};
      u.hdr = proto::make_hdr(Cmd::kResourceUnref);
      u.resource_id = 1;
      ASSERT_EQ(h.call(u), R(Resp::kOkNodata));
      EXPECT_EQ(h.dev->stats().backing_entries, 64u);
      EXPECT_EQ(h.attach(3, scattered), R(Resp::kOkNodata)) << "room again once a resource went";
    }
  }
}

TEST(GpuDevice, FencedFlushRetiresWhenTheOutputReleasesAndInOrderOnItsTimeline) {
  Harness h({}, {.hold_frames = true});
  ASSERT_EQ(h.create_2d(1, 32, 32), R(Resp::kOkNodata));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 32 * 32 * 4)}), R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 32, 32), R(Resp::kOkNodata));
  h.order.clear();
  const uint64_t flush = h.send(h.flush_cmd(1, 32, 32, proto::kFlagFence, 10));
  EXPECT_FALSE(h.answered(flush)) << "held by the output";
  // A later fenced command that completes at once still waits behind fence 10 (same timeline) ...
  proto::TransferToHost2d t{};
  t.hdr = proto::make_hdr(Cmd::kTransferToHost2d, proto::kFlagFence, 11);
  t.resource_id = 1;
  t.r.width = 32;
  t.r.height = 32;
  const uint64_t xfer = h.send(t);
  EXPECT_FALSE(h.answered(xfer));
  // ... while an unfenced command is answered immediately.
  const uint64_t info = h.send(proto::make_hdr(Cmd::kGetDisplayInfo));
  EXPECT_TRUE(h.answered(info));
  EXPECT_EQ(h.dev->stats().pending_fences, 2u);
  h.out.release_held();
  h.dev->process_releases();
  ASSERT_TRUE(h.answered(flush));
  ASSERT_TRUE(h.answered(xfer));
  EXPECT_EQ(h.order, (std::vector<uint64_t>{info, flush, xfer}));
  EXPECT_EQ(h.response(flush).fence_id.get(), 10u);
  EXPECT_EQ(h.response(flush).flags.get(), proto::kFlagFence);
  EXPECT_EQ(h.response(xfer).fence_id.get(), 11u);
  EXPECT_EQ(h.dev->stats().fences_retired, 2u);
}

// A release on the device's own thread (the compositor's RELEASE read by the device's loop) needs no
// wake-up: release_fd() stays quiet and process_releases() retires it. One from another thread wakes
// release_fd().
TEST(GpuDevice, ReleasesOnTheDevicesThreadRetireWithoutTheEventfdHop) {
  Harness h({}, {.hold_frames = true});
  ASSERT_EQ(h.create_2d(1, 32, 32), R(Resp::kOkNodata));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 32 * 32 * 4)}), R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 32, 32), R(Resp::kOkNodata));
  const uint64_t flush = h.send(h.flush_cmd(1, 32, 32, proto::kFlagFence, 10));
  EXPECT_FALSE(h.answered(flush));
  h.out.release_held();  // this thread made the device's calls: it is the device's thread
  pollfd p{h.dev->release_fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0) << "a release on the device's thread woke it";
  h.dev->process_releases();
  ASSERT_TRUE(h.answered(flush));
  EXPECT_EQ(h.dev->releases_direct(), 1u);
  EXPECT_EQ(h.dev->releases_woken(), 0u);
  const uint64_t flush2 = h.send(h.flush_cmd(1, 32, 32, proto::kFlagFence, 11));
  EXPECT_FALSE(h.answered(flush2));
  std::thread([&] { h.out.release_held(); }).join();
  EXPECT_EQ(::poll(&p, 1, 0), 1) << "a release from another thread did not wake the device";
  h.dev->process_releases();
  ASSERT_TRUE(h.answered(flush2));
  EXPECT_EQ(h.dev->releases_woken(), 1u);
  EXPECT_EQ(::poll(&p, 1, 0), 0);  // drained
}

TEST(GpuDevice, RingsOfAContextAreIndependentTimelines) {
  Harness h({}, {.hold_frames = true});
  proto::CtxCreate cc{};
  cc.hdr = proto::make_hdr(Cmd::kCtxCreate, 0, 0, 5);
  ASSERT_EQ(h.call(cc), R(Resp::kOkNodata));
  ASSERT_EQ(h.create_2d(1, 32, 32), R(Resp::kOkNodata));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 32 * 32 * 4)}), R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 32, 32), R(Resp::kOkNodata));
  const uint32_t ring = proto::kFlagFence | proto::kFlagInfoRingIdx;
  const uint64_t held = h.send(h.flush_cmd(1, 32, 32, ring, 1, 5, 0));
  proto::CmdSubmit s{};
  s.hdr = proto::make_hdr(Cmd::kSubmit3d, ring, 1, 5, 1);
  const uint64_t other_ring = h.send(s);
  s.hdr = proto::make_hdr(Cmd::kSubmit3d, ring, 2, 5, 0);
  const uint64_t same_ring = h.send(s);
  EXPECT_FALSE(h.answered(held));
  EXPECT_TRUE(h.answered(other_ring)) << "ring 1 does not wait for ring 0";
  EXPECT_FALSE(h.answered(same_ring)) << "ring 0 retires in order";
  EXPECT_EQ(h.response(other_ring).ring_idx, 1);
  h.out.release_held();
  h.dev->process_releases();
  EXPECT_EQ(h.order.back(), same_ring);
  // Bad ring information is answered (with its fence) rather than lost.
  s.hdr = proto::make_hdr(Cmd::kSubmit3d, ring, 3, 5, 64);
  EXPECT_EQ(h.call(s), R(Resp::kErrInvalidParameter));
  s.hdr = proto::make_hdr(Cmd::kSubmit3d, ring, 4, 6, 0);
  const uint64_t no_ctx = h.send(s);
  EXPECT_EQ(h.response(no_ctx).type.get(), R(Resp::kErrInvalidContextId));
  EXPECT_EQ(h.response(no_ctx).fence_id.get(), 4u);
  s.hdr = proto::make_hdr(Cmd::kSubmit3d, 0, 0, 5, 0);
  s.size = 4;  // a command stream: the 2D renderer has none to run it
  uint32_t junk = 0;
  EXPECT_EQ(h.call(s, std::span(reinterpret_cast<const uint8_t*>(&junk), 4)), R(Resp::kErrInvalidParameter));
  s.size = 8;  // longer than what follows
  EXPECT_EQ(h.call(s, std::span(reinterpret_cast<const uint8_t*>(&junk), 4)), R(Resp::kErrInvalidParameter));
}

TEST(GpuDevice, ContextCommandsValidateIds) {
  Harness h;
  proto::CtxCreate cc{};
  cc.hdr = proto::make_hdr(Cmd::kCtxCreate, 0, 0, 0);
  EXPECT_EQ(h.call(cc), R(Resp::kErrInvalidContextId));
  cc.hdr.ctx_id = 3;
  cc.nlen = 65;
  EXPECT_EQ(h.call(cc), R(Resp::kErrInvalidParameter));
  cc.nlen = 4;
  cc.context_init = 0x100;
  EXPECT_EQ(h.call(cc), R(Resp::kErrInvalidParameter));
  cc.context_init = 1;  // virgl capset: not with the 2D renderer
  EXPECT_EQ(h.call(cc), R(Resp::kErrInvalidParameter));
  cc.context_init = 0;
  EXPECT_EQ(h.call(cc), R(Resp::kOkNodata));
  EXPECT_EQ(h.call(cc), R(Resp::kErrInvalidContextId));
  proto::CtxResource cr{};
  cr.hdr = proto::make_hdr(Cmd::kCtxAttachResource, 0, 0, 3);
  cr.resource_id = 1;
  EXPECT_EQ(h.call(cr), R(Resp::kErrInvalidResourceId));
  ASSERT_EQ(h.create_2d(1, 4, 4), R(Resp::kOkNodata));
  EXPECT_EQ(h.call(cr), R(Resp::kOkNodata));
  cr.hdr.ctx_id = 4;
  EXPECT_EQ(h.call(cr), R(Resp::kErrInvalidContextId));
  proto::CtxDestroy d{};
  d.hdr = proto::make_hdr(Cmd::kCtxDestroy, 0, 0, 3);
  EXPECT_EQ(h.call(d), R(Resp::kOkNodata));
  EXPECT_EQ(h.call(d), R(Resp::kErrInvalidContextId));
}

struct BlobSetup {
  static constexpr uint32_t kW = 64, kH = 64;
  // Four scattered, non-adjacent pages (out of address order), as a Linux guest hands them.
  std::vector<proto::MemEntry> entries{Harness::entry(0x80000, 4096), Harness::entry(0x20000, 4096),
                                       Harness::entry(0x140000, 4096), Harness::entry(0x61000, 4096)};
  uint32_t create(Harness& h, uint32_t id, uint64_t size = 4 * 4096) {
    proto::ResourceCreateBlob b{};
    b.hdr = proto::make_hdr(Cmd::kResourceCreateBlob);
    b.resource_id = id;
    b.blob_mem = uint32_t(proto::BlobMem::kGuest);
    b.blob_flags = proto::kBlobFlagShareable;
    b.nr_entries = uint32_t(entries.size());
    b.size = size;
    return h.call(b, std::span(reinterpret_cast<const uint8_t*>(entries.data()), entries.size() * sizeof entries[0]));
  }
  proto::SetScanoutBlob scanout(uint32_t id) {
    proto::SetScanoutBlob s{};
    s.hdr = proto::make_hdr(Cmd::kSetScanoutBlob);
    s.resource_id = id;
    s.width = kW;
    s.height = kH;
    s.format = uint32_t(proto::Format::kB8G8R8X8);
    s.strides[0] = kW * 4;
    s.r.width = kW;
    s.r.height = kH;
    return s;
  }
  void paint(Harness& h, uint32_t pixel) {
    for (const auto& e : entries) h.fill_ram(e.addr, e.length, pixel);
  }
};

TEST(GpuDevice, BlobScanoutArrivesWithZeroBytesCopiedFromScatteredPages) {
  Harness h({}, {.checksum = true});
  BlobSetup b;
  ASSERT_EQ(b.create(h, 7), R(Resp::kOkNodata));
  ASSERT_EQ(h.call(b.scanout(7)), R(Resp::kOkNodata));
  b.paint(h, 0xff00ff00);
  ASSERT_EQ(h.call(h.flush_cmd(7, 64, 64)), R(Resp::kOkNodata));
  auto st = h.out.stats(0);
  EXPECT_EQ(st.frames, 1u);
  EXPECT_EQ(st.bytes_copied, 0u);
  EXPECT_EQ(st.last_crc, pattern_crc(64, 64, 0xff00ff00));
  // The view maps guest memory itself: the guest's next frame is visible without any copy.
  b.paint(h, 0xffff0000);
  ASSERT_EQ(h.call(h.flush_cmd(7, 64, 64)), R(Resp::kOkNodata));
  EXPECT_EQ(h.out.stats(0).last_crc, pattern_crc(64, 64, 0xffff0000));
  EXPECT_EQ(h.dev->stats().bytes_copied, 0u);
  EXPECT_EQ(h.dev->stats().guest_copies_uncharged, 0u);
}

// A frame's bytes_copied is what GuestMemory itself counted while its resource was filled, not a
// computed figure: a path that copied guest memory, blob or not, shows up in the frame that follows.
TEST(GpuDevice, FramesCarryTheGuestMemoryCopiesGuestMemoryCounted) {
  Harness h({}, {.checksum = true});
  ASSERT_EQ(h.create_2d(1, 64, 32), R(Resp::kOkNodata));
  h.fill_ram(0x10000, 64 * 32 * 4, 0xff336699);
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 64 * 32 * 4)}), R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 64, 32), R(Resp::kOkNodata));
  const uint64_t before = h.mem.bytes_copied();
  ASSERT_EQ(h.transfer(1, 64, 16, 0, 0, 0), R(Resp::kOkNodata));
  ASSERT_EQ(h.transfer(1, 64, 16, 64 * 16 * 4, 0, 16), R(Resp::kOkNodata));
  ASSERT_EQ(h.call(h.flush_cmd(1, 64, 32)), R(Resp::kOkNodata));
  const uint64_t counted = h.mem.bytes_copied() - before;
  EXPECT_EQ(counted, 64u * 32 * 4);
  EXPECT_EQ(h.out.stats(0).bytes_copied, counted);  // both transfers, in the one frame that followed
  EXPECT_EQ(h.dev->stats().bytes_copied, counted);
  EXPECT_EQ(h.dev->stats().guest_copies_uncharged, 0u);
  // The next frame copied nothing new.
  ASSERT_EQ(h.call(h.flush_cmd(1, 64, 32)), R(Resp::kOkNodata));
  EXPECT_EQ(h.out.stats(0).bytes_copied, counted);
}

// A transfer that fails part way (the second backing entry's memory is gone) has still copied the rows
// before it: they are charged to the resource, not lost (they used to show as uncharged).
TEST(GpuDevice, RowsCopiedBeforeATransferFailsAreChargedToTheResource) {
  Harness h({}, {.checksum = true});
  constexpr uint64_t kHigh = 64 << 20, kHighSize = 64 << 10;
  UniqueFd extra(::memfd_create("gpu-test-ram-high", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(extra.get(), off_t(kHighSize)), 0);
  ASSERT_TRUE(h.mem.add_region({kHigh, kHighSize, 0, 0}, std::move(extra)).ok());
  ASSERT_EQ(h.create_2d(1, 64, 32), R(Resp::kOkNodata));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 64 * 16 * 4), Harness::entry(kHigh, 64 * 16 * 4)}),
            R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 64, 32), R(Resp::kOkNodata));
  ASSERT_TRUE(h.mem.remove_region(kHigh, kHighSize).ok());
  const uint64_t before = h.mem.bytes_copied();
  EXPECT_EQ(h.transfer(1, 64, 32), R(Resp::kErrUnspec));
  const uint64_t counted = h.mem.bytes_copied() - before;
  EXPECT_EQ(counted, 64u * 16 * 4);  // the first entry's rows
  EXPECT_EQ(h.dev->stats().guest_copies_uncharged, 0u);
  EXPECT_EQ(h.dev->stats().bytes_copied, counted);
  ASSERT_EQ(h.call(h.flush_cmd(1, 64, 32)), R(Resp::kOkNodata));
  EXPECT_EQ(h.out.stats(0).bytes_copied, counted);
}

// UPDATE_CURSOR copies the cursor image (here from guest memory, alias mode): that copy is counted as
// the cursor's, as GuestMemory counted it, and never lands in the next frame's figure.
TEST(GpuDevice, CursorImageCopiesAreCountedApartFromFrames) {
  GpuOptions o;
  o.alias_2d = true;
  Harness h(o, {.checksum = true});
  ASSERT_EQ(h.create_2d(1, 64, 64), R(Resp::kOkNodata));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 64 * 64 * 4)}), R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 64, 64), R(Resp::kOkNodata));
  ASSERT_EQ(h.create_2d(3, 64, 64, proto::Format::kB8G8R8A8), R(Resp::kOkNodata));
  h.fill_ram(0x40000, 64 * 64 * 4, 0x80ffffff);
  ASSERT_EQ(h.attach(3, {Harness::entry(0x40000, 64 * 64 * 4)}), R(Resp::kOkNodata));
  proto::UpdateCursor u{};
  u.hdr = proto::make_hdr(Cmd::kUpdateCursor);
  u.resource_id = 3;
  const uint64_t before = h.mem.bytes_copied();
  ASSERT_EQ(h.dev->cursor(std::span(reinterpret_cast<const uint8_t*>(&u), sizeof u)).type.get(), R(Resp::kOkNodata));
  const uint64_t counted = h.mem.bytes_copied() - before;
  ASSERT_TRUE(h.out.stats(0).last_cursor.image);
  EXPECT_EQ(h.out.stats(0).last_cursor.image->argb[0], 0x80ffffffu);
  EXPECT_EQ(counted, 64u * 64 * 4);
  EXPECT_EQ(h.dev->stats().cursor_bytes_copied, counted);
  ASSERT_EQ(h.call(h.flush_cmd(1, 64, 64)), R(Resp::kOkNodata));
  EXPECT_EQ(h.out.stats(0).frames, 1u);
  EXPECT_EQ(h.out.stats(0).bytes_copied, 0u);  // an aliased frame: nothing copied for it
  EXPECT_EQ(h.dev->stats().bytes_copied, 0u);
  EXPECT_EQ(h.dev->stats().guest_copies_uncharged, 0u);
}

// Linux 6.12's virtio_gpu makes dumb buffers guest blobs once RESOURCE_BLOB is negotiated (without 3D)
// and sends TRANSFER_TO_HOST_2D before each flush. The blob is guest memory shown in place: the transfer
// succeeds and copies nothing (it used to answer ERR_INVALID_PARAMETER, found in the nested KVM test).
TEST(GpuDevice, TransferToAGuestBlobSucceedsAndCopiesNothing) {
  Harness h({}, {.checksum = true});
  BlobSetup b;
  ASSERT_EQ(b.create(h, 7), R(Resp::kOkNodata));
  ASSERT_EQ(h.call(b.scanout(7)), R(Resp::kOkNodata));
  b.paint(h, 0xff123456);
  EXPECT_EQ(h.transfer(7, 64, 64), R(Resp::kOkNodata));
  EXPECT_EQ(h.transfer(7, 16, 16, 4096, 8, 8), R(Resp::kOkNodata));
  ASSERT_EQ(h.call(h.flush_cmd(7, 64, 64)), R(Resp::kOkNodata));
  EXPECT_EQ(h.out.stats(0).last_crc, pattern_crc(64, 64, 0xff123456));
  EXPECT_EQ(h.out.stats(0).bytes_copied, 0u);
  EXPECT_EQ(h.dev->stats().bytes_copied, 0u);
  EXPECT_EQ(h.transfer(8, 64, 64), R(Resp::kErrInvalidResourceId));
}

TEST(GpuDevice, BlobCommandsValidateMemoryAndLayout) {
  Harness h;
  BlobSetup b;
  EXPECT_EQ(b.create(h, 7, 4 * 4096 + 1), R(Resp::kErrInvalidParameter));  // size beyond the pages
  EXPECT_EQ(b.create(h, 0), R(Resp::kErrInvalidResourceId));
  proto::ResourceCreateBlob host{};
  host.hdr = proto::make_hdr(Cmd::kResourceCreateBlob);
  host.resource_id = 8;
  host.blob_mem = uint32_t(proto::BlobMem::kHost3d);
  host.size = 4096;
  EXPECT_EQ(h.call(host), R(Resp::kErrInvalidParameter));
  ASSERT_EQ(b.create(h, 7), R(Resp::kOkNodata));
  auto s = b.scanout(7);
  s.strides[0] = 63 * 4;
  EXPECT_EQ(h.call(s), R(Resp::kErrInvalidParameter));  // stride below width
  s = b.scanout(7);
  s.offsets[0] = 4;
  EXPECT_EQ(h.call(s), R(Resp::kErrInvalidParameter));  // framebuffer runs past the blob
  s = b.scanout(7);
  s.format = 99;
  EXPECT_EQ(h.call(s), R(Resp::kErrInvalidParameter));
  s = b.scanout(7);
  s.scanout_id = 1;
  EXPECT_EQ(h.call(s), R(Resp::kErrInvalidScanoutId));
  EXPECT_EQ(h.set_scanout(0, 7, 64, 64), R(Resp::kErrInvalidParameter));  // blobs use SET_SCANOUT_BLOB
  EXPECT_EQ(h.attach(7, {Harness::entry(0x10000, 4096)}), R(Resp::kErrInvalidParameter));
  ASSERT_EQ(h.create_2d(9, 64, 64), R(Resp::kOkNodata));
  EXPECT_EQ(h.call(b.scanout(9)), R(Resp::kErrInvalidParameter));  // not a blob
  h.dev->set_acked_features(0);
  EXPECT_EQ(b.create(h, 10), R(Resp::kErrUnspec));  // RESOURCE_BLOB not negotiated
}

TEST(GpuDevice, AssignUuidIsStablePerResource) {
  Harness h;
  ASSERT_EQ(h.create_2d(1, 4, 4), R(Resp::kOkNodata));
  proto::ResourceAssignUuid a{};
  a.hdr = proto::make_hdr(Cmd::kResourceAssignUuid);
  a.resource_id = 1;
  const uint64_t t1 = h.send(a), t2 = h.send(a);
  ASSERT_EQ(h.response(t1).type.get(), R(Resp::kOkResourceUuid));
  ASSERT_EQ(h.responses[t1].size(), sizeof(proto::RespResourceUuid));
  EXPECT_EQ(h.responses[t1], h.responses[t2]);
  EXPECT_EQ(h.responses[t1][24 + 6] >> 4, 4) << "version 4";
  a.resource_id = 2;
  EXPECT_EQ(h.call(a), R(Resp::kErrInvalidResourceId));
}

TEST(GpuDevice, CursorUpdatesReachTheOutput) {
  Harness h;
  ASSERT_EQ(h.create_2d(3, 64, 64, proto::Format::kB8G8R8A8), R(Resp::kOkNodata));
  h.fill_ram(0x40000, 64 * 64 * 4, 0x80ffffff);
  ASSERT_EQ(h.attach(3, {Harness::entry(0x40000, 64 * 64 * 4)}), R(Resp::kOkNodata));
  ASSERT_EQ(h.transfer(3, 64, 64), R(Resp::kOkNodata));
  proto::UpdateCursor u{};
  u.hdr = proto::make_hdr(Cmd::kUpdateCursor);
  u.resource_id = 3;
  u.pos.x = 100;
  u.pos.y = 50;
  u.hot_x = 2;
  u.hot_y = 3;
  auto send_cursor = [&](const proto::UpdateCursor& c) {
    return h.dev->cursor(std::span(reinterpret_cast<const uint8_t*>(&c), sizeof c)).type.get();
  };
  EXPECT_EQ(send_cursor(u), R(Resp::kOkNodata));
  auto st = h.out.stats(0);
  EXPECT_EQ(st.cursor_updates, 1u);
  EXPECT_TRUE(st.last_cursor.visible);
  ASSERT_TRUE(st.last_cursor.image);
  EXPECT_EQ(st.last_cursor.image->argb[0], 0x80ffffffu);
  EXPECT_EQ(st.last_cursor.hot_y, 3u);
  u.hdr.type = uint32_t(Cmd::kMoveCursor);
  u.pos.x = 7;
  EXPECT_EQ(send_cursor(u), R(Resp::kOkNodata));
  EXPECT_EQ(h.out.stats(0).last_cursor.x, 7u);
  EXPECT_FALSE(h.out.stats(0).last_cursor.image_changed);
  u.hdr.type = uint32_t(Cmd::kUpdateCursor);
  u.pos.scanout_id = 1;
  EXPECT_EQ(send_cursor(u), R(Resp::kErrInvalidScanoutId));
  u.pos.scanout_id = 0;
  ASSERT_EQ(h.create_2d(4, 32, 32), R(Resp::kOkNodata));
  u.resource_id = 4;
  EXPECT_EQ(send_cursor(u), R(Resp::kErrInvalidParameter));
  u.resource_id = 0;
  EXPECT_EQ(send_cursor(u), R(Resp::kOkNodata));
  EXPECT_FALSE(h.out.stats(0).last_cursor.visible);
  uint8_t shorty[20] = {};
  EXPECT_EQ(h.dev->cursor(shorty).type.get(), R(Resp::kErrUnspec));
}

TEST(GpuDevice, DisplayChangeSetsTheEventAndNewModes) {
  Harness h;
  EXPECT_EQ(h.dev->config().events_read.get(), 0u);
  ASSERT_TRUE(h.dev->set_display(0, true, {1280, 720, 60}).ok());
  EXPECT_TRUE(h.dev->take_config_changed());
  EXPECT_EQ(h.dev->config().events_read.get(), proto::kEventDisplay);
  const uint64_t t = h.send(proto::make_hdr(Cmd::kGetDisplayInfo));
  proto::RespDisplayInfo info;
  std::memcpy(&info, h.responses[t].data(), sizeof info);
  EXPECT_EQ(info.pmodes[0].r.width.get(), 1280u);
  const le32 clear = proto::kEventDisplay;
  ASSERT_TRUE(h.dev->write_config(4, std::span(reinterpret_cast<const uint8_t*>(&clear), 4)).ok());
  EXPECT_EQ(h.dev->config().events_read.get(), 0u);
  EXPECT_FALSE(h.dev->write_config(8, std::span(reinterpret_cast<const uint8_t*>(&clear), 4)).ok());
  EXPECT_FALSE(h.dev->set_display(1, true, {1280, 720, 60}).ok());
}

TEST(GpuDevice, MalformedRequestsGetErrUnspec) {
  Harness h;
  uint8_t shorty[16] = {};
  EXPECT_EQ(h.response(h.send_bytes(shorty)).type.get(), R(Resp::kErrUnspec));
  EXPECT_EQ(h.call(proto::make_hdr(Cmd(0x0142))), R(Resp::kErrUnspec));
  EXPECT_EQ(h.call(proto::make_hdr(Cmd::kGetDisplayInfo, 0x80)), R(Resp::kErrUnspec));  // unknown flag bit
  EXPECT_EQ(h.call(proto::make_hdr(Cmd::kResourceCreate2d)), R(Resp::kErrUnspec));      // truncated body
  EXPECT_EQ(h.call(proto::make_hdr(Cmd::kUpdateCursor)), R(Resp::kErrUnspec));  // a cursor command on the control queue
  EXPECT_EQ(h.call(proto::make_hdr(Cmd::kResourceMapBlob)), R(Resp::kErrUnspec));
  EXPECT_EQ(h.dev->stats().errors, 6u);
}

TEST(GpuDevice, ResetDropsResourcesScanoutsAndPendingFences) {
  Harness h({}, {.hold_frames = true});
  ASSERT_EQ(h.create_2d(1, 32, 32), R(Resp::kOkNodata));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 4096)}), R(Resp::kOkNodata));
  ASSERT_EQ(h.set_scanout(0, 1, 32, 32), R(Resp::kOkNodata));
  const uint64_t t = h.send(h.flush_cmd(1, 32, 32, proto::kFlagFence, 1));
  EXPECT_FALSE(h.answered(t));
  h.dev->reset();
  h.out.release_held();
  h.dev->process_releases();
  EXPECT_FALSE(h.answered(t));
  EXPECT_EQ(h.dev->stats().resources, 0u);
  EXPECT_EQ(h.dev->stats().backing_bytes, 0u);
  EXPECT_EQ(h.dev->stats().pending_fences, 0u);
  EXPECT_FALSE(h.out.stats(0).state.enabled);
}

TEST(GpuDevice, AliasModeShowsGuestMemoryWithoutTransferCopies) {
  GpuOptions o;
  o.alias_2d = true;
  Harness h(o, {.checksum = true});
  ASSERT_EQ(h.create_2d(1, 64, 64), R(Resp::kOkNodata));
  ASSERT_EQ(h.attach(1, {Harness::entry(0x10000, 8192), Harness::entry(0x30000, 64 * 64 * 4 - 8192)}),
            R(Resp::kOkNodata));
  h.fill_ram(0x10000, 8192, 0xff123456);
  h.fill_ram(0x30000, 64 * 64 * 4 - 8192, 0xff123456);
  ASSERT_EQ(h.set_scanout(0, 1, 64, 64), R(Resp::kOkNodata));
  ASSERT_EQ(h.transfer(1, 64, 64), R(Resp::kOkNodata));
  ASSERT_EQ(h.call(h.flush_cmd(1, 64, 64)), R(Resp::kOkNodata));
  EXPECT_EQ(h.out.stats(0).last_crc, pattern_crc(64, 64, 0xff123456));
  EXPECT_EQ(h.out.stats(0).bytes_copied, 0u);
  EXPECT_EQ(h.dev->stats().bytes_copied, 0u);
  EXPECT_EQ(h.dev->stats().guest_copies_uncharged, 0u);
}

// An output that has to copy a frame's pieces (not page aligned: no scattered mapping) counts that copy
// itself, once per resource view: its stats and its frame log say so.
TEST(HeadlessOutput, CountsItsOwnCopyOfPiecesThatAreNotPageAligned) {
  UniqueFd fd(::memfd_create("unaligned", MFD_CLOEXEC));
  ASSERT_EQ(::ftruncate(fd.get(), 8192), 0);
  const SharedFd shared = std::make_shared<const UniqueFd>(std::move(fd));
  const auto pieces =
      std::make_shared<const std::vector<FramePiece>>(std::vector<FramePiece>{{shared, 100, 16 * 16 * 4}});
  const auto cache = std::make_shared<Frame::ViewCache>();
  char path[] = "/tmp/canopy-headless-log.XXXXXX";
  const int log_fd = ::mkstemp(path);
  ASSERT_GE(log_fd, 0);
  ::close(log_fd);
  HeadlessOutput out({.log_path = path, .checksum = true});
  for (int i = 0; i < 2; ++i) {
    auto f = std::make_shared<Frame>();
    f->width = 16;
    f->height = 16;
    f->stride = 64;
    f->drm_fourcc = buffers::fourcc_code('X', 'R', '2', '4');
    f->pieces = pieces;
    f->view_cache = cache;
    f->blob = true;
    out.on_frame(std::move(f));
  }
  EXPECT_EQ(out.stats(0).frames, 2u);
  EXPECT_EQ(out.stats(0).bytes_copied, 16u * 16 * 4);  // the first frame made the view; the second reused it
  std::FILE* log = std::fopen(path, "r");
  ASSERT_NE(log, nullptr);
  char line[256];
  ASSERT_NE(std::fgets(line, sizeof line, log), nullptr);
  EXPECT_NE(std::strstr(line, " blob copied 1024 "), nullptr) << line;
  std::fclose(log);
  ::unlink(path);
}

// The tee takes acquire points for its consumers: one that waits for them itself gets a frame at once;
// for one that reads frames as they arrive the tee holds the frame, and every event behind it, until the
// point has signalled and the device says so (on_acquired); a frame whose producer is gone is handed on
// as it is rather than hold the events behind it forever.
TEST(OutputTee, HoldsFramesWithAcquirePointsForConsumersThatReadAtOnce) {
  struct Waits : HeadlessOutput {
    bool takes_acquire_fences() const override { return true; }
  } waits;
  struct Log : ScanoutOutput {
    void on_scanout(const ScanoutState& s) override { events.push_back("scanout " + std::to_string(s.scanout)); }
    void on_frame(std::shared_ptr<Frame> f) override {
      events.push_back("frame " + std::to_string(f->seq) + (f->acquired() ? "" : " incomplete"));
    }
    void on_cursor(const CursorUpdate&) override { events.push_back("cursor"); }
    std::vector<std::string> events;
  } reads;
  OutputTee tee;
  tee.add(&waits);
  tee.add(&reads);
  EXPECT_TRUE(tee.takes_acquire_fences());
  auto tl = buffers::Timeline::create_producer();
  ASSERT_TRUE(tl.ok());
  auto timeline = std::make_shared<buffers::Timeline>(std::move(*tl));
  int released = 0;
  auto frame = [&](uint64_t seq, uint64_t point) {
    auto f = std::make_shared<Frame>();
    f->seq = seq;
    f->acquire_timeline = point ? timeline : nullptr;
    f->acquire_point = point;
    f->release_token = seq;
    f->on_release = [&released](uint64_t) { ++released; };
    return f;
  };
  tee.on_frame(frame(1, 0));  // complete: straight through
  tee.on_frame(frame(2, 1));
  tee.on_cursor(CursorUpdate{});
  tee.on_frame(frame(3, 0));  // complete, but behind frame 2
  EXPECT_EQ(waits.stats(0).frames, 3u) << "the consumer that waits itself got every frame at once";
  EXPECT_EQ(reads.events, std::vector<std::string>{"frame 1"});
  EXPECT_EQ(tee.waiting(), 3u);
  tee.on_acquired();  // nothing signalled yet: nothing moves
  EXPECT_EQ(tee.waiting(), 3u);
  ASSERT_TRUE(timeline->signal(1).ok());
  tee.on_acquired();
  EXPECT_EQ(reads.events, (std::vector<std::string>{"frame 1", "frame 2", "cursor", "frame 3"}));
  EXPECT_EQ(tee.waiting(), 0u);
  // The producer goes away with a point outstanding: the frame is handed on, incomplete, with what follows.
  tee.on_frame(frame(4, 2));
  tee.on_scanout(ScanoutState{});
  timeline->detach();
  tee.on_acquired();
  EXPECT_EQ(reads.events.back(), "scanout 0");
  EXPECT_EQ(reads.events[reads.events.size() - 2], "frame 4 incomplete");
  EXPECT_EQ(released, 4) << "each device frame released once both consumers let go";
  // A GPU that never finishes and a guest that keeps moving its cursor: the queue stays bounded, and
  // what waited goes on as it is once it is full.
  auto tl2 = buffers::Timeline::create_producer();
  ASSERT_TRUE(tl2.ok());
  timeline = std::make_shared<buffers::Timeline>(std::move(*tl2));
  reads.events.clear();
  tee.on_frame(frame(5, 1));
  for (size_t i = 0; i < 10 * OutputTee::kMaxWaiting; ++i) {
    tee.on_cursor(CursorUpdate{});
    ASSERT_LE(tee.waiting(), OutputTee::kMaxWaiting);
  }
  ASSERT_FALSE(reads.events.empty());
  EXPECT_EQ(reads.events.front(), "frame 5 incomplete");
}

}  // namespace
}  // namespace canopy::gpu
