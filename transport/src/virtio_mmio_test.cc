// The virtio-mmio register model at register level: what a guest kernel's reads and writes do, and
// that every bad access is ignored with the exact value left in place. (The full init sequence driven
// by the guest-drivers kit is in guest-drivers/src/virtio_driver_test.cc.)
#include "canopy/transport/virtio_mmio.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace canopy::transport {
namespace {

constexpr uint64_t kDeviceFeatureBit0 = 1ull << 0;
constexpr uint64_t kOffered = kVirtioFVersion1 | kVirtioFEventIdx | kDeviceFeatureBit0 | kVirtioFRingReset;

class FakeDevice : public MmioDevice {
 public:
  FakeDevice() {
    for (uint32_t i = 0; i < sizeof config; ++i) config[i] = uint8_t(0x10 + i);
  }
  uint32_t device_id() const override { return 25; }  // virtio-snd
  uint32_t vendor_id() const override { return 0x43414e4f; }
  uint64_t device_features() const override { return features; }
  uint32_t config_size() const override { return sizeof config; }
  void read_config(uint32_t offset, void* dst, uint32_t len) override { std::memcpy(dst, config + offset, len); }
  void write_config(uint32_t offset, const void* src, uint32_t len) override {
    std::memcpy(config + offset, src, len);
    ++config_writes;
  }
  uint16_t num_queues() const override { return 3; }
  uint16_t queue_max_size(uint16_t q) const override { return q == 0 ? 256 : q == 1 ? 64 : 0; }
  std::optional<ShmRegion> shm_region(uint32_t id) const override {
    if (id == 1) return ShmRegion{0x1'2345'6000ull, 0x2'0000'0000ull};
    return std::nullopt;
  }
  bool on_features_ok(uint64_t f) override {
    accepted_features = f;
    return accept_features;
  }
  Status on_queue_ready(uint16_t q, const MmioQueueConfig& cfg) override {
    ready_calls.push_back({q, cfg});
    if (refuse_queue) return make_error(Errc::kOutOfRange, "ring outside guest memory");
    return {};
  }
  void on_queue_notify(uint16_t q, uint32_t data) override { notifies.push_back({q, data}); }
  void on_status(uint8_t s) override { statuses.push_back(s); }
  void on_reset() override { ++resets; }

  uint64_t features = kOffered;
  uint8_t config[16];
  bool accept_features = true;
  bool refuse_queue = false;
  uint64_t accepted_features = 0;
  int config_writes = 0;
  int resets = 0;
  std::vector<std::pair<uint16_t, MmioQueueConfig>> ready_calls;
  std::vector<std::pair<uint16_t, uint32_t>> notifies;
  std::vector<uint8_t> statuses;
};

class VirtioMmioTest : public ::testing::Test {
 protected:
  VirtioMmioTest() : mmio(dev, [this](bool a) { line.push_back(a); }) {}
  uint32_t rd(uint32_t off) { return uint32_t(mmio.read(off, 4)); }
  void wr(uint32_t off, uint32_t v) { mmio.write(off, 4, v); }
  void set_features(uint64_t f) {
    wr(mmio::kDriverFeaturesSel, 0);
    wr(mmio::kDriverFeatures, uint32_t(f));
    wr(mmio::kDriverFeaturesSel, 1);
    wr(mmio::kDriverFeatures, uint32_t(f >> 32));
  }
  // ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
  void to_features_ok(uint64_t f = kVirtioFVersion1) {
    wr(mmio::kStatus, kStatusAcknowledge);
    wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver);
    set_features(f);
    wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    ASSERT_EQ(rd(mmio::kStatus), 0x0bu);
  }
  void setup_queue(uint32_t q, uint32_t num, uint64_t desc, uint64_t avail, uint64_t used) {
    wr(mmio::kQueueSel, q);
    wr(mmio::kQueueNum, num);
    wr(mmio::kQueueDescLow, uint32_t(desc));
    wr(mmio::kQueueDescHigh, uint32_t(desc >> 32));
    wr(mmio::kQueueDriverLow, uint32_t(avail));
    wr(mmio::kQueueDriverHigh, uint32_t(avail >> 32));
    wr(mmio::kQueueDeviceLow, uint32_t(used));
    wr(mmio::kQueueDeviceHigh, uint32_t(used >> 32));
  }
  void driver_ok() {
    wr(mmio::kStatus, 0x0f);
    ASSERT_EQ(rd(mmio::kStatus), 0x0fu);
  }
  FakeDevice dev;
  std::vector<bool> line;
  VirtioMmio mmio;
};

// ---------------------------------------------------------------------------------------------
// Identity and features

TEST_F(VirtioMmioTest, IdentityRegisters) {
  EXPECT_EQ(rd(mmio::kMagicValue), 0x74726976u);
  EXPECT_EQ(rd(mmio::kVersion), 2u);
  EXPECT_EQ(rd(mmio::kDeviceId), 25u);
  EXPECT_EQ(rd(mmio::kVendorId), 0x43414e4fu);
  EXPECT_EQ(mmio.bad_accesses(), 0u);
}

TEST_F(VirtioMmioTest, SixteenBitReadOfMagicValueReadsZero) {
  EXPECT_EQ(mmio.read(mmio::kMagicValue, 2), 0u);
  EXPECT_EQ(mmio.read(mmio::kMagicValue, 1), 0u);
  EXPECT_EQ(mmio.read(mmio::kMagicValue, 8), 0u);
  EXPECT_EQ(mmio.read(mmio::kMagicValue + 1, 4), 0u);  // unaligned
  EXPECT_EQ(mmio.read(mmio::kMagicValue, 3), 0u);
  EXPECT_EQ(mmio.bad_accesses(), 5u);
}

TEST_F(VirtioMmioTest, NarrowStatusWriteIsIgnored) {
  mmio.write(mmio::kStatus, 1, kStatusAcknowledge);
  mmio.write(mmio::kStatus, 2, kStatusAcknowledge);
  EXPECT_EQ(rd(mmio::kStatus), 0u);
  EXPECT_EQ(mmio.bad_accesses(), 2u);
}

TEST_F(VirtioMmioTest, DeviceFeaturesBySelector) {
  wr(mmio::kDeviceFeaturesSel, 0);
  EXPECT_EQ(rd(mmio::kDeviceFeatures), uint32_t(kOffered));
  wr(mmio::kDeviceFeaturesSel, 1);
  EXPECT_EQ(rd(mmio::kDeviceFeatures), uint32_t(kOffered >> 32));
  wr(mmio::kDeviceFeaturesSel, 2);
  EXPECT_EQ(rd(mmio::kDeviceFeatures), 0u);
  EXPECT_EQ(mmio.bad_accesses(), 0u);
}

TEST_F(VirtioMmioTest, DriverFeaturesBySelector) {
  set_features(kVirtioFVersion1 | kDeviceFeatureBit0);
  EXPECT_EQ(mmio.driver_features(), kVirtioFVersion1 | kDeviceFeatureBit0);
  wr(mmio::kDriverFeaturesSel, 2);
  wr(mmio::kDriverFeatures, 0);  // zero words beyond 64 bits are harmless
  EXPECT_EQ(mmio.bad_accesses(), 0u);
  wr(mmio::kDriverFeatures, 1);
  EXPECT_EQ(mmio.bad_accesses(), 1u);
  EXPECT_EQ(mmio.driver_features(), kVirtioFVersion1 | kDeviceFeatureBit0);
}

// ---------------------------------------------------------------------------------------------
// Status state machine (§2.1.2, §3.1.1)

TEST_F(VirtioMmioTest, StatusProgressesStepByStep) {
  to_features_ok(kVirtioFVersion1 | kDeviceFeatureBit0);
  EXPECT_EQ(dev.accepted_features, kVirtioFVersion1 | kDeviceFeatureBit0);
  driver_ok();
  EXPECT_EQ(dev.statuses, (std::vector<uint8_t>{0x01, 0x03, 0x0b, 0x0f}));
  EXPECT_EQ(mmio.bad_accesses(), 0u);
}

TEST_F(VirtioMmioTest, FeaturesOkWithFeaturesNotOfferedStaysClear) {
  wr(mmio::kStatus, 0x01);
  wr(mmio::kStatus, 0x03);
  set_features(kVirtioFVersion1 | (1ull << 5));  // bit 5 is not offered
  wr(mmio::kStatus, 0x0b);
  EXPECT_EQ(rd(mmio::kStatus), 0x03u);
  EXPECT_EQ(dev.accepted_features, 0u);  // the device was never asked
}

TEST_F(VirtioMmioTest, FeaturesOkWithoutVersion1StaysClear) {
  wr(mmio::kStatus, 0x01);
  wr(mmio::kStatus, 0x03);
  set_features(kDeviceFeatureBit0);
  wr(mmio::kStatus, 0x0b);
  EXPECT_EQ(rd(mmio::kStatus), 0x03u);
}

TEST_F(VirtioMmioTest, FeaturesOkRefusedByTheDeviceStaysClear) {
  dev.accept_features = false;
  wr(mmio::kStatus, 0x01);
  wr(mmio::kStatus, 0x03);
  set_features(kVirtioFVersion1);
  wr(mmio::kStatus, 0x0b);
  EXPECT_EQ(rd(mmio::kStatus), 0x03u);
  EXPECT_EQ(dev.accepted_features, kVirtioFVersion1);
  // DRIVER_OK in the same write cannot ride along.
  wr(mmio::kStatus, 0x0f);
  EXPECT_EQ(rd(mmio::kStatus), 0x03u);
}

TEST_F(VirtioMmioTest, OutOfOrderStatusBitsAreDropped) {
  wr(mmio::kStatus, kStatusDriver);  // DRIVER before ACKNOWLEDGE
  EXPECT_EQ(rd(mmio::kStatus), 0u);
  wr(mmio::kStatus, kStatusAcknowledge | kStatusDriverOk);  // DRIVER_OK before FEATURES_OK
  EXPECT_EQ(rd(mmio::kStatus), 0x01u);
  set_features(kVirtioFVersion1);
  wr(mmio::kStatus, kStatusAcknowledge | kStatusFeaturesOk);  // FEATURES_OK before DRIVER
  EXPECT_EQ(rd(mmio::kStatus), 0x01u);
  // All three at once, in the spec's order, is fine.
  wr(mmio::kStatus, 0x0f);
  EXPECT_EQ(rd(mmio::kStatus), 0x0fu);
}

TEST_F(VirtioMmioTest, StatusBitsCannotBeClearedWithoutReset) {
  to_features_ok();
  wr(mmio::kStatus, 0x03);
  EXPECT_EQ(rd(mmio::kStatus), 0x0bu);
  wr(mmio::kStatus, 0x1b);  // bit 4 is undefined
  EXPECT_EQ(rd(mmio::kStatus), 0x0bu);
  wr(mmio::kStatus, 0x10b);  // wider than 8 bits
  EXPECT_EQ(rd(mmio::kStatus), 0x0bu);
  EXPECT_EQ(mmio.bad_accesses(), 3u);
}

TEST_F(VirtioMmioTest, FailedStopsProgressUntilReset) {
  wr(mmio::kStatus, 0x01);
  wr(mmio::kStatus, 0x81);
  EXPECT_EQ(rd(mmio::kStatus), 0x81u);
  wr(mmio::kStatus, 0x83);
  EXPECT_EQ(rd(mmio::kStatus), 0x81u);
  wr(mmio::kStatus, 0);
  EXPECT_EQ(rd(mmio::kStatus), 0u);
  wr(mmio::kStatus, 0x01);
  EXPECT_EQ(rd(mmio::kStatus), 0x01u);
}

TEST_F(VirtioMmioTest, DriverFeaturesAreFrozenAfterFeaturesOk) {
  to_features_ok(kVirtioFVersion1);
  set_features(kVirtioFVersion1 | kDeviceFeatureBit0);
  EXPECT_EQ(mmio.driver_features(), kVirtioFVersion1);
}

TEST_F(VirtioMmioTest, WritingZeroResetsEverything) {
  to_features_ok(kVirtioFVersion1 | kDeviceFeatureBit0);
  setup_queue(0, 128, 0x10000, 0x11000, 0x12000);
  wr(mmio::kQueueReady, 1);
  driver_ok();
  mmio.raise_interrupt(InterruptKind::kUsedBuffer);
  ASSERT_EQ(rd(mmio::kInterruptStatus), 1u);
  wr(mmio::kStatus, 0);
  EXPECT_EQ(dev.resets, 1);
  EXPECT_EQ(rd(mmio::kStatus), 0u);
  EXPECT_EQ(rd(mmio::kInterruptStatus), 0u);
  EXPECT_EQ(line.back(), false);
  EXPECT_EQ(mmio.driver_features(), 0u);
  wr(mmio::kQueueSel, 0);
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
  EXPECT_EQ(mmio.queue(0).size, 0);
  EXPECT_EQ(mmio.queue(0).addrs.desc, 0u);
}

// ---------------------------------------------------------------------------------------------
// Queues

TEST_F(VirtioMmioTest, QueueNumMaxPerQueueAndZeroForMissingQueues) {
  wr(mmio::kQueueSel, 0);
  EXPECT_EQ(rd(mmio::kQueueNumMax), 256u);
  wr(mmio::kQueueSel, 1);
  EXPECT_EQ(rd(mmio::kQueueNumMax), 64u);
  wr(mmio::kQueueSel, 2);  // the device reports max 0: not available
  EXPECT_EQ(rd(mmio::kQueueNumMax), 0u);
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
  wr(mmio::kQueueSel, 0xffffffff);
  EXPECT_EQ(rd(mmio::kQueueNumMax), 0u);
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
  EXPECT_EQ(mmio.bad_accesses(), 0u);  // probing is not an error
}

TEST_F(VirtioMmioTest, QueueNumMustBeAPowerOfTwoWithinMax) {
  to_features_ok();
  wr(mmio::kQueueSel, 0);
  wr(mmio::kQueueNum, 3);
  EXPECT_EQ(mmio.queue(0).size, 0);
  wr(mmio::kQueueNum, 512);  // > QueueNumMax 256
  EXPECT_EQ(mmio.queue(0).size, 0);
  wr(mmio::kQueueNum, 0);
  EXPECT_EQ(mmio.queue(0).size, 0);
  EXPECT_EQ(mmio.bad_accesses(), 3u);
  wr(mmio::kQueueNum, 128);
  EXPECT_EQ(mmio.queue(0).size, 128);
  wr(mmio::kQueueNum, 256);
  EXPECT_EQ(mmio.queue(0).size, 256);
}

TEST_F(VirtioMmioTest, QueueRegistersWithUnavailableQueueSelectedAreIgnored) {
  to_features_ok();
  wr(mmio::kQueueSel, 7);
  wr(mmio::kQueueNum, 16);
  wr(mmio::kQueueDescLow, 0x1000);
  wr(mmio::kQueueReady, 1);
  wr(mmio::kQueueSel, 2);
  wr(mmio::kQueueNum, 16);
  EXPECT_EQ(mmio.bad_accesses(), 4u);
  EXPECT_TRUE(dev.ready_calls.empty());
}

TEST_F(VirtioMmioTest, QueueReadyPassesTheConfigToTheDevice) {
  to_features_ok();
  setup_queue(1, 32, 0x1'0000'2000ull, 0x1'0000'3000ull, 0x1'0000'4000ull);
  wr(mmio::kQueueReady, 1);
  EXPECT_EQ(rd(mmio::kQueueReady), 1u);
  ASSERT_EQ(dev.ready_calls.size(), 1u);
  EXPECT_EQ(dev.ready_calls[0].first, 1);
  const MmioQueueConfig& c = dev.ready_calls[0].second;
  EXPECT_TRUE(c.ready);
  EXPECT_EQ(c.size, 32);
  EXPECT_EQ(c.addrs.desc, 0x1'0000'2000ull);
  EXPECT_EQ(c.addrs.avail, 0x1'0000'3000ull);
  EXPECT_EQ(c.addrs.used, 0x1'0000'4000ull);
  // Writing 1 again is a no-op; 0 stops the queue.
  wr(mmio::kQueueReady, 1);
  EXPECT_EQ(dev.ready_calls.size(), 1u);
  wr(mmio::kQueueReady, 0);
  ASSERT_EQ(dev.ready_calls.size(), 2u);
  EXPECT_FALSE(dev.ready_calls[1].second.ready);
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
}

TEST_F(VirtioMmioTest, QueueReadyRejectedBeforeFeaturesOk) {
  wr(mmio::kStatus, 0x03);
  setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
  wr(mmio::kQueueReady, 1);
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
  EXPECT_TRUE(dev.ready_calls.empty());
}

TEST_F(VirtioMmioTest, QueueReadyRejectedWithoutSizeOrWithMisalignedRings) {
  to_features_ok();
  wr(mmio::kQueueSel, 0);
  wr(mmio::kQueueReady, 1);  // QueueNum never written
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
  setup_queue(0, 16, 0x1008, 0x2000, 0x3000);  // descriptor table not 16-aligned
  wr(mmio::kQueueReady, 1);
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
  setup_queue(0, 16, 0x1000, 0x2001, 0x3000);  // avail not 2-aligned
  wr(mmio::kQueueReady, 1);
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
  setup_queue(0, 16, 0x1000, 0x2000, 0x3002);  // used not 4-aligned
  wr(mmio::kQueueReady, 1);
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
  wr(mmio::kQueueReady, 2);  // not 0 or 1
  EXPECT_EQ(mmio.bad_accesses(), 5u);
  EXPECT_TRUE(dev.ready_calls.empty());
}

TEST_F(VirtioMmioTest, QueueRefusedByTheDeviceStaysNotReady) {
  dev.refuse_queue = true;
  to_features_ok();
  setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
  wr(mmio::kQueueReady, 1);
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
  EXPECT_EQ(dev.ready_calls.size(), 1u);
}

TEST_F(VirtioMmioTest, QueueSetupWritesWhileReadyAreIgnored) {
  to_features_ok();
  setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
  wr(mmio::kQueueReady, 1);
  const uint64_t before = mmio.bad_accesses();
  wr(mmio::kQueueNum, 32);
  wr(mmio::kQueueDescLow, 0x5000);
  wr(mmio::kQueueDriverHigh, 1);
  wr(mmio::kQueueDeviceLow, 0x7000);
  EXPECT_EQ(mmio.bad_accesses(), before + 4);
  MmioQueueConfig q = mmio.queue(0);
  EXPECT_EQ(q.size, 16);
  EXPECT_EQ(q.addrs.desc, 0x1000u);
  EXPECT_EQ(q.addrs.avail, 0x2000u);
  EXPECT_EQ(q.addrs.used, 0x3000u);
}

TEST_F(VirtioMmioTest, NotifyReachesReadyQueuesOnly) {
  to_features_ok();
  setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
  wr(mmio::kQueueReady, 1);
  driver_ok();
  wr(mmio::kQueueNotify, 0);
  wr(mmio::kQueueNotify, 1);  // queue 1 exists but is not ready
  wr(mmio::kQueueNotify, 2);  // queue 2 is not available
  wr(mmio::kQueueNotify, 0x10000);
  ASSERT_EQ(dev.notifies.size(), 1u);
  EXPECT_EQ(dev.notifies[0], (std::pair<uint16_t, uint32_t>{0, 0}));
  EXPECT_EQ(mmio.bad_accesses(), 3u);
}

TEST_F(VirtioMmioTest, NotifyBeforeDriverOkIsDeliveredAtDriverOk) {
  to_features_ok();
  setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
  wr(mmio::kQueueReady, 1);
  wr(mmio::kQueueNotify, 0);
  wr(mmio::kQueueNotify, 0);
  EXPECT_TRUE(dev.notifies.empty());
  driver_ok();
  ASSERT_EQ(dev.notifies.size(), 1u);  // coalesced
  EXPECT_EQ(dev.notifies[0].first, 0);
}

TEST_F(VirtioMmioTest, QueueResetNeedsTheFeatureAndResetsOneQueue) {
  to_features_ok();  // RING_RESET not negotiated
  setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
  wr(mmio::kQueueReady, 1);
  wr(mmio::kQueueReset, 1);
  EXPECT_EQ(rd(mmio::kQueueReset), 0u);
  EXPECT_EQ(rd(mmio::kQueueReady), 1u);
  EXPECT_EQ(mmio.bad_accesses(), 2u);

  wr(mmio::kStatus, 0);
  to_features_ok(kVirtioFVersion1 | kVirtioFRingReset);
  setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
  wr(mmio::kQueueReady, 1);
  dev.ready_calls.clear();
  wr(mmio::kQueueReset, 1);
  EXPECT_EQ(rd(mmio::kQueueReady), 0u);
  EXPECT_EQ(rd(mmio::kQueueReset), 1u);
  ASSERT_EQ(dev.ready_calls.size(), 1u);
  EXPECT_FALSE(dev.ready_calls[0].second.ready);
  EXPECT_EQ(mmio.queue(0).size, 0);
  setup_queue(0, 32, 0x1000, 0x2000, 0x3000);
  wr(mmio::kQueueReady, 1);
  EXPECT_EQ(rd(mmio::kQueueReset), 0u);
  EXPECT_EQ(mmio.queue(0).size, 32);
}

// ---------------------------------------------------------------------------------------------
// Register access rules

TEST_F(VirtioMmioTest, WritesToReadOnlyRegistersAreIgnored) {
  for (uint32_t off :
       {mmio::kMagicValue, mmio::kVersion, mmio::kDeviceId, mmio::kVendorId, mmio::kDeviceFeatures, mmio::kQueueNumMax,
        mmio::kInterruptStatus, mmio::kShmLenLow, mmio::kShmBaseHigh, mmio::kConfigGeneration})
    wr(off, 0x12345678);
  EXPECT_EQ(mmio.bad_accesses(), 10u);
  EXPECT_EQ(rd(mmio::kMagicValue), mmio::kMagic);
  EXPECT_EQ(rd(mmio::kDeviceId), 25u);
  EXPECT_EQ(rd(mmio::kConfigGeneration), 0u);
}

TEST_F(VirtioMmioTest, ReadsOfWriteOnlyRegistersReadZero) {
  wr(mmio::kQueueSel, 1);
  wr(mmio::kDeviceFeaturesSel, 1);
  for (uint32_t off :
       {mmio::kDeviceFeaturesSel, mmio::kDriverFeatures, mmio::kDriverFeaturesSel, mmio::kQueueSel, mmio::kQueueNum,
        mmio::kQueueNotify, mmio::kInterruptAck, mmio::kQueueDescLow, mmio::kQueueDeviceHigh, mmio::kShmSel})
    EXPECT_EQ(rd(off), 0u) << off;
  EXPECT_EQ(mmio.bad_accesses(), 10u);
}

TEST_F(VirtioMmioTest, UndefinedOffsetsReadZero) {
  EXPECT_EQ(rd(0x018), 0u);
  EXPECT_EQ(rd(0x0f8), 0u);
  wr(0x040, 1);
  EXPECT_EQ(mmio.bad_accesses(), 3u);
}

TEST_F(VirtioMmioTest, OffsetsFarOutsideTheWindowAreHarmless) {
  EXPECT_EQ(mmio.read(0x1'0000'0100ull, 4), 0u);
  mmio.write(UINT64_MAX, 4, 1);
  mmio.write(UINT64_MAX - 3, 4, 1);
  EXPECT_EQ(mmio.read(UINT64_MAX - 7, 8), 0u);
  EXPECT_EQ(dev.config_writes, 0);
  EXPECT_EQ(mmio.bad_accesses(), 4u);
}

// ---------------------------------------------------------------------------------------------
// Config space and shared memory

TEST_F(VirtioMmioTest, ConfigReadsAreLittleEndianAtAnyNaturalWidth) {
  EXPECT_EQ(mmio.read(mmio::kConfig + 0, 1), 0x10u);
  EXPECT_EQ(mmio.read(mmio::kConfig + 3, 1), 0x13u);
  EXPECT_EQ(mmio.read(mmio::kConfig + 2, 2), 0x1312u);
  EXPECT_EQ(mmio.read(mmio::kConfig + 4, 4), 0x17161514u);
  EXPECT_EQ(mmio.read(mmio::kConfig + 8, 8), 0x1f1e1d1c1b1a1918ull);
  EXPECT_EQ(mmio.bad_accesses(), 0u);
}

TEST_F(VirtioMmioTest, BadConfigAccessesReadZero) {
  EXPECT_EQ(mmio.read(mmio::kConfig + 1, 2), 0u);   // unaligned
  EXPECT_EQ(mmio.read(mmio::kConfig + 2, 4), 0u);   // unaligned
  EXPECT_EQ(mmio.read(mmio::kConfig + 16, 1), 0u);  // past config_size 16
  EXPECT_EQ(mmio.read(mmio::kConfig + 12, 8), 0u);  // unaligned for 8
  EXPECT_EQ(mmio.read(mmio::kConfig + 0, 3), 0u);   // bad width
  mmio.write(mmio::kConfig + 16, 4, 0xffffffff);
  mmio.write(mmio::kConfig + 1, 2, 0xffff);
  EXPECT_EQ(dev.config_writes, 0);
  EXPECT_EQ(mmio.bad_accesses(), 7u);
}

TEST_F(VirtioMmioTest, ConfigWritesReachTheDevice) {
  mmio.write(mmio::kConfig + 4, 2, 0xbeef);
  EXPECT_EQ(dev.config[4], 0xef);
  EXPECT_EQ(dev.config[5], 0xbe);
  EXPECT_EQ(dev.config[6], 0x16);
}

TEST_F(VirtioMmioTest, ShmRegionsAndMinusOneLengthForMissingOnes) {
  wr(mmio::kShmSel, 0);
  EXPECT_EQ(rd(mmio::kShmLenLow), 0xffffffffu);
  EXPECT_EQ(rd(mmio::kShmLenHigh), 0xffffffffu);
  wr(mmio::kShmSel, 1);
  EXPECT_EQ(rd(mmio::kShmLenLow), 0u);
  EXPECT_EQ(rd(mmio::kShmLenHigh), 2u);
  EXPECT_EQ(rd(mmio::kShmBaseLow), 0x23456000u);
  EXPECT_EQ(rd(mmio::kShmBaseHigh), 1u);
}

// ---------------------------------------------------------------------------------------------
// Interrupts

TEST_F(VirtioMmioTest, InterruptsLatchBeforeDriverOkAndAssertAfter) {
  mmio.raise_interrupt(InterruptKind::kConfigChange);
  EXPECT_EQ(rd(mmio::kInterruptStatus), 2u);
  EXPECT_TRUE(line.empty());
  to_features_ok();
  driver_ok();
  EXPECT_EQ(line, (std::vector<bool>{true}));
  mmio.raise_interrupt(InterruptKind::kUsedBuffer);
  EXPECT_EQ(rd(mmio::kInterruptStatus), 3u);
  EXPECT_EQ(line, (std::vector<bool>{true, true}));
  wr(mmio::kInterruptAck, 1);
  EXPECT_EQ(rd(mmio::kInterruptStatus), 2u);
  EXPECT_EQ(line.size(), 2u);  // still pending: the line stays up
  wr(mmio::kInterruptAck, 2);
  EXPECT_EQ(rd(mmio::kInterruptStatus), 0u);
  EXPECT_EQ(line, (std::vector<bool>{true, true, false}));
}

// canopy-vmm's KVM devices: the back-end's call eventfd is a KVM irqfd, so used-buffer notifications
// never pass through the model; InterruptStatus must show the used-buffer bit for them.
TEST_F(VirtioMmioTest, ExternalUsedBufferNotificationsReadAsSetFromDriverOk) {
  mmio.set_used_buffer_notifications_external(true);
  to_features_ok();
  EXPECT_EQ(rd(mmio::kInterruptStatus), 0u);  // not before DRIVER_OK
  driver_ok();
  EXPECT_EQ(rd(mmio::kInterruptStatus), 1u);
  wr(mmio::kInterruptAck, 1);
  EXPECT_EQ(rd(mmio::kInterruptStatus), 1u);  // an ACK cannot clear what the model does not own
  EXPECT_TRUE(line.empty());
  mmio.config_changed();  // config changes still go through the model and its line
  EXPECT_EQ(rd(mmio::kInterruptStatus), 3u);
  EXPECT_EQ(line, (std::vector<bool>{true}));
  wr(mmio::kInterruptAck, 3);
  EXPECT_EQ(rd(mmio::kInterruptStatus), 1u);
  EXPECT_EQ(line, (std::vector<bool>{true, false}));
  wr(mmio::kStatus, 0);  // reset: nothing until the next DRIVER_OK
  EXPECT_EQ(rd(mmio::kInterruptStatus), 0u);
  mmio.set_used_buffer_notifications_external(false);
  to_features_ok();
  driver_ok();
  EXPECT_EQ(rd(mmio::kInterruptStatus), 0u);
}

TEST_F(VirtioMmioTest, ConfigChangedBumpsGeneration) {
  to_features_ok();
  driver_ok();
  EXPECT_EQ(rd(mmio::kConfigGeneration), 0u);
  mmio.config_changed();
  EXPECT_EQ(rd(mmio::kConfigGeneration), 1u);
  EXPECT_EQ(rd(mmio::kInterruptStatus), 2u);
}

TEST_F(VirtioMmioTest, NeedsResetIsDeviceOwned) {
  to_features_ok();
  driver_ok();
  mmio.set_needs_reset();
  EXPECT_EQ(rd(mmio::kStatus), 0x4fu);
  EXPECT_EQ(rd(mmio::kInterruptStatus), 2u);
  // The driver writing its status back with FAILED keeps the device's bit; writing it without the bit
  // does not clear it.
  wr(mmio::kStatus, 0x8f);
  EXPECT_EQ(rd(mmio::kStatus), 0xcfu);
  wr(mmio::kStatus, 0);
  EXPECT_EQ(rd(mmio::kStatus), 0u);
  // A driver cannot set it either.
  wr(mmio::kStatus, 0x41);
  EXPECT_EQ(rd(mmio::kStatus), 0x01u);
}

TEST_F(VirtioMmioTest, NotificationDataCarriesTheQueueInTheLowHalf) {
  dev.features |= kVirtioFNotificationData;
  wr(mmio::kStatus, 0);  // features are re-read at reset
  to_features_ok(kVirtioFVersion1 | kVirtioFNotificationData);
  setup_queue(1, 16, 0x1000, 0x2000, 0x3000);
  wr(mmio::kQueueReady, 1);
  driver_ok();
  wr(mmio::kQueueNotify, 0x00050001);
  ASSERT_EQ(dev.notifies.size(), 1u);
  EXPECT_EQ(dev.notifies[0], (std::pair<uint16_t, uint32_t>{1, 0x00050001}));
}

}  // namespace
}  // namespace canopy::transport
