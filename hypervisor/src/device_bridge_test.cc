// The VMM's device model for partitions (DeviceBridge) without a back-end process: the status order of
// virtio 1.2 §3.1.1 and the queue checks, with the exact values that broke it (fuzz_partition_device).
#include "device_bridge.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
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

// The back-end request channel: config changes become guest events once the driver has the device;
// replies when asked; anything else refused; garbage fails the back-end, not the VMM.
class BackendRequestTest : public DeviceBridgeTest {
 protected:
  void SetUp() override {
    DeviceBridgeTest::SetUp();
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    d_.adopt_backend_request_channel(UniqueFd(sv[0]));
    backend_ = vhost_user::Channel(UniqueFd(sv[1]));
  }
  void send_request(uint32_t request, uint32_t flags = vhost_user::kVersion) {
    auto m = vhost_user::Message::make(static_cast<vhost_user::Request>(request), flags);
    ASSERT_TRUE(backend_.send(m).ok());
    d_.on_backend_request();
  }
  // The bridge's reply to a NEED_REPLY request: its u64 (0: done).
  uint64_t reply() {
    auto r = backend_.recv(1000);
    EXPECT_TRUE(r.ok());
    if (!r.ok()) return ~0ull;
    EXPECT_TRUE(r->flags() & vhost_user::kFlagReply);
    auto v = r->exact<le64>();
    return v.ok() ? v->get() : ~0ull;
  }
  void driver_ok() {
    to_features_ok();
    ASSERT_EQ(vqueue(0x1000), msg::Code::kOk);
    ASSERT_EQ(status(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk), msg::Code::kOk);
    (void)d_.take_pending_event();
  }
  static constexpr uint32_t kConfigChange = uint32_t(vhost_user::BackendRequest::kConfigChangeMsg);
  vhost_user::Channel backend_;
};

TEST_F(BackendRequestTest, ConfigChangeBecomesAnEventOnlyForADriverThatHasTheDevice) {
  ASSERT_GE(d_.backend_request_fd(), 0);
  send_request(kConfigChange);
  EXPECT_EQ(d_.config_changes(), 1u);
  EXPECT_FALSE(d_.take_pending_event()) << "no driver yet: nobody to tell";
  EXPECT_EQ(d_.config_generation(), 0u);
  driver_ok();
  const uint32_t gen = d_.config_generation();
  send_request(kConfigChange);
  EXPECT_TRUE(d_.take_pending_event());
  EXPECT_EQ(d_.config_generation(), gen + 1);
  EXPECT_EQ(d_.config_changes(), 2u);
}

TEST_F(BackendRequestTest, AnswersWhenAskedAndRefusesOtherRequests) {
  send_request(kConfigChange, vhost_user::kVersion | vhost_user::kFlagNeedReply);
  EXPECT_EQ(reply(), 0u);
  send_request(uint32_t(vhost_user::BackendRequest::kIotlbMsg), vhost_user::kVersion | vhost_user::kFlagNeedReply);
  EXPECT_NE(reply(), 0u);
  send_request(uint32_t(vhost_user::BackendRequest::kVringHostNotifierMsg));  // no reply wanted: none sent
  pollfd p{backend_.fd(), POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 50), 0);
  EXPECT_EQ(d_.config_changes(), 1u);
  EXPECT_FALSE(d_.take_backend_failed());
}

TEST_F(BackendRequestTest, GarbageFailsTheBackEndAndTheDeviceAsksForAReset) {
  driver_ok();
  const char junk[12] = {1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0};  // flags: version 3
  ASSERT_EQ(::send(backend_.fd(), junk, sizeof junk, MSG_NOSIGNAL), ssize_t(sizeof junk));
  d_.on_backend_request();
  EXPECT_TRUE(d_.take_backend_failed());
  EXPECT_EQ(d_.backend_request_fd(), -1);
  EXPECT_TRUE(d_.status() & kStatusDeviceNeedsReset);
  // The device keeps answering the partition.
  msg::ConfigReq c{};
  EXPECT_EQ(send(msg::Type::kGetConfig, c).code, msg::Code::kOk);
}

TEST_F(BackendRequestTest, ClosedChannelIsForgottenQuietly) {
  backend_.close();
  d_.on_backend_request();
  EXPECT_EQ(d_.backend_request_fd(), -1);
  EXPECT_FALSE(d_.take_backend_failed());
  d_.on_backend_request();  // nothing left to read
}

}  // namespace
}  // namespace canopy::hypervisor
