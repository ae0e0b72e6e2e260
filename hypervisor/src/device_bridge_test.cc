// The VMM's device model for partitions (DeviceBridge) without a back-end process: the status order of
// virtio 1.2 §3.1.1 and the queue checks, with the exact values that broke it (fuzz_partition_device).
#include "device_bridge.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

namespace canopy::hypervisor {
namespace {

namespace msg = transport::msg;
using namespace transport;

constexpr uint64_t kRam = 1 << 20;

class DeviceBridgeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ram_ = UniqueFd(memfd_create("ram", MFD_CLOEXEC));
    ASSERT_EQ(ftruncate(ram_.get(), kRam), 0);
    d_.configure_offline(RamInfo{ram_.get(), kRam}, 1, kVirtioFVersion1 | kVirtioFEventIdx, 0);
  }
  template <typename T>
  DeviceBridge::Reply send(msg::Type t, const T& payload, std::vector<UniqueFd> fds = {}) {
    auto p = msg::encode(t, 0, 0, 1, msg::Code::kOk, msg::bytes_of(payload));
    auto m = msg::parse(p, std::move(fds), msg::Direction::kToVmm);
    EXPECT_TRUE(m.ok());
    return d_.handle(*m);
  }
  msg::Code status(uint32_t v) {
    msg::StatusMsg s{};
    s.status = v;
    return send(msg::Type::kSetStatus, s).code;
  }
  msg::Code features(uint64_t f) {
    msg::Features x{};
    x.bits = f;
    return send(msg::Type::kSetFeatures, x).code;
  }
  msg::Code vqueue(uint64_t desc, uint16_t size = 64, bool eventfds = true) {
    msg::SetVqueue v{};
    v.size = size;
    v.desc = desc;
    v.avail = 0x8000;
    v.used = 0x9000;
    std::vector<UniqueFd> fds;
    for (int i = 0; i < 2; ++i) {
      if (eventfds) {
        fds.emplace_back(eventfd(0, EFD_CLOEXEC));
      } else {
        int p[2];
        EXPECT_EQ(pipe2(p, O_CLOEXEC), 0);
        close(p[1]);
        fds.emplace_back(p[0]);
      }
    }
    return send(msg::Type::kSetVqueue, v, std::move(fds)).code;
  }
  void to_features_ok() {
    ASSERT_EQ(status(kStatusAcknowledge), msg::Code::kOk);
    ASSERT_EQ(status(kStatusAcknowledge | kStatusDriver), msg::Code::kOk);
    ASSERT_EQ(features(kVirtioFVersion1), msg::Code::kOk);
    ASSERT_EQ(status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk), msg::Code::kOk);
    ASSERT_EQ(d_.status(), kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  }

  UniqueFd ram_;
  DeviceBridge d_{BackendSpec{"rng", 4, "", {}}, 0};
};

TEST_F(DeviceBridgeTest, DriverOkTogetherWithFailedDoesNotSkipFeaturesOk) {
  // fuzz_partition_device: SET_STATUS 0xb4 (FAILED | DRIVER_OK | two reserved bits) from status 0 left
  // DRIVER_OK set without FEATURES_OK.
  EXPECT_EQ(status(0xb4), msg::Code::kInvalid);
  EXPECT_EQ(d_.status(), 0);
  EXPECT_EQ(status(kStatusFailed | kStatusDriverOk), msg::Code::kOk);
  EXPECT_EQ(d_.status(), kStatusFailed) << "FAILED is recorded, DRIVER_OK is not";
}

TEST_F(DeviceBridgeTest, RefusesStatusBitsOutOfOrderOrNotTheDrivers) {
  EXPECT_EQ(status(kStatusDriver), msg::Code::kState);  // DRIVER before ACKNOWLEDGE
  EXPECT_EQ(status(kStatusAcknowledge | kStatusFeaturesOk), msg::Code::kState);
  EXPECT_EQ(status(kStatusDeviceNeedsReset), msg::Code::kInvalid);
  EXPECT_EQ(status(0x10), msg::Code::kInvalid);
  EXPECT_EQ(status(0x100), msg::Code::kInvalid);
  ASSERT_EQ(status(kStatusAcknowledge | kStatusDriver), msg::Code::kOk);
  EXPECT_EQ(status(kStatusAcknowledge), msg::Code::kState) << "bits are cleared only by a reset";
  EXPECT_EQ(status(kStatusAcknowledge | kStatusDriver | kStatusDriverOk), msg::Code::kState);
}

TEST_F(DeviceBridgeTest, FeaturesOkDoesNotStickForFeaturesNotOfferedOrWithoutVersion1) {
  ASSERT_EQ(status(kStatusAcknowledge | kStatusDriver), msg::Code::kOk);
  ASSERT_EQ(features(kVirtioFVersion1 | kVirtioFRingPacked), msg::Code::kOk);
  EXPECT_EQ(status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk), msg::Code::kOk);
  EXPECT_EQ(d_.status(), kStatusAcknowledge | kStatusDriver);
  ASSERT_EQ(features(kVirtioFEventIdx), msg::Code::kOk);
  EXPECT_EQ(status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk), msg::Code::kOk);
  EXPECT_EQ(d_.status(), kStatusAcknowledge | kStatusDriver);
}

TEST_F(DeviceBridgeTest, QueuesOnlyBetweenFeaturesOkAndDriverOkInsideRamWithEventfds) {
  EXPECT_EQ(vqueue(0x1000), msg::Code::kState);
  to_features_ok();
  EXPECT_EQ(vqueue(kRam - 512), msg::Code::kOutOfRange) << "64 descriptors need 1024 bytes";
  EXPECT_EQ(vqueue(0xffffffffffffff00ull), msg::Code::kOutOfRange) << "overflow, not wrap-around";
  EXPECT_EQ(vqueue(0x1008), msg::Code::kInvalid) << "descriptor table not 16-aligned";
  EXPECT_EQ(vqueue(0x1000, 48), msg::Code::kInvalid) << "size not a power of two";
  EXPECT_EQ(vqueue(0x1000, 512), msg::Code::kInvalid) << "size over the device maximum (256)";
  EXPECT_EQ(vqueue(0x1000, 64, false), msg::Code::kInvalid) << "kick/call must be eventfds";
  EXPECT_EQ(vqueue(0x1000), msg::Code::kOk);
}

TEST_F(DeviceBridgeTest, DriverOkWithoutABackEndAsksForAReset) {
  to_features_ok();
  ASSERT_EQ(vqueue(0x1000), msg::Code::kOk);
  EXPECT_EQ(status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk), msg::Code::kOk);
  EXPECT_TRUE(d_.status() & kStatusDeviceNeedsReset);
  EXPECT_EQ(status(0), msg::Code::kOk);
  EXPECT_EQ(d_.status(), 0);
  EXPECT_EQ(d_.driver_resets(), 1u);
}

TEST_F(DeviceBridgeTest, ConfigAccessPastTheEndIsOutOfRange) {
  msg::ConfigReq c{};
  c.offset = 0xfffffff0;
  c.size = 64;
  EXPECT_EQ(send(msg::Type::kGetConfig, c).code, msg::Code::kOutOfRange);
  c.offset = 0;
  c.size = 0;
  auto r = send(msg::Type::kGetConfig, c);
  EXPECT_EQ(r.code, msg::Code::kOk) << "size 0 reads the generation";
  EXPECT_EQ(r.payload.size(), sizeof(msg::ConfigResp));
}

}  // namespace
}  // namespace canopy::hypervisor
