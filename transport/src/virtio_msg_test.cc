// The partition message transport: packet rules with exact values, and SEQPACKET I/O with descriptors.
#include "canopy/transport/virtio_msg.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

namespace canopy::transport::msg {
namespace {

std::vector<uint8_t> packet(Type t, uint8_t flags, uint32_t id, Code st, std::vector<uint8_t> payload) {
  return encode(t, flags, 0, id, st, payload);
}
template <typename T>
std::vector<uint8_t> raw(const T& v) {
  auto b = bytes_of(v);
  return {b.begin(), b.end()};
}
std::string why(const std::vector<uint8_t>& p, size_t fds, Direction d) {
  Status s = check(p, fds, d);
  return s.ok() ? "ok" : s.error().what;
}

TEST(VirtioMsg, AcceptsEachRequestWithItsPayload) {
  SetVqueue v{};
  v.size = 64;
  EXPECT_EQ(why(packet(Type::kSetVqueue, 0, 1, Code::kOk, raw(v)), 2, Direction::kToVmm), "ok");
  EXPECT_EQ(why(packet(Type::kGetFeatures, 0, 1, Code::kOk, {}), 0, Direction::kToVmm), "ok");
  Heartbeat h{};
  EXPECT_EQ(why(packet(Type::kHeartbeat, 0, 0, Code::kOk, raw(h)), 0, Direction::kToVmm), "ok");
}

TEST(VirtioMsg, RejectsShortAndOversizedPackets) {
  std::vector<uint8_t> p(15, 0);
  EXPECT_EQ(why(p, 0, Direction::kToVmm), std::string("packet shorter than the 16-byte header"));
  p = packet(Type::kGetFeatures, 0, 1, Code::kOk, {});
  p.push_back(0);  // one byte more than the header says
  EXPECT_EQ(why(p, 0, Direction::kToVmm), std::string("header size does not match the packet"));
  std::vector<uint8_t> big(kMaxPacket + 1, 0);
  EXPECT_EQ(why(big, 0, Direction::kToVmm), std::string("packet larger than 512 bytes"));
}

TEST(VirtioMsg, RejectsWrongPayloadSizeAndDescriptorCount) {
  EXPECT_EQ(why(packet(Type::kSetStatus, 0, 1, Code::kOk, {1, 0}), 0, Direction::kToVmm),
            std::string("payload size wrong for the message type"));
  SetVqueue v{};
  EXPECT_EQ(why(packet(Type::kSetVqueue, 0, 1, Code::kOk, raw(v)), 1, Direction::kToVmm),
            std::string("wrong number of descriptors for the message type"));
  EXPECT_EQ(why(packet(Type::kGetStatus, 0, 1, Code::kOk, {}), 1, Direction::kToVmm),
            std::string("wrong number of descriptors for the message type"));
}

TEST(VirtioMsg, ConfigDataIsCappedAndMustMatchItsSizeField) {
  SetConfigReq c{};
  c.offset = 0;
  c.size = 4;
  auto p = raw(c);
  p.insert(p.end(), {1, 2, 3, 4});
  EXPECT_EQ(why(packet(Type::kSetConfig, 0, 1, Code::kOk, p), 0, Direction::kToVmm), "ok");
  p.pop_back();
  EXPECT_EQ(why(packet(Type::kSetConfig, 0, 1, Code::kOk, p), 0, Direction::kToVmm),
            std::string("config data size does not match the packet"));
  c.size = 257;
  EXPECT_EQ(why(packet(Type::kSetConfig, 0, 1, Code::kOk, raw(c)), 0, Direction::kToVmm),
            std::string("config data over 256 bytes"));
}

TEST(VirtioMsg, DirectionRulesHold) {
  EXPECT_EQ(why(packet(Type::kGetStatus, kFlagResponse, 1, Code::kOk, {0, 0, 0, 0}), 0, Direction::kToVmm),
            std::string("a response sent to the VMM"));
  EXPECT_EQ(why(packet(Type::kEventStop, 0, 0, Code::kOk, {}), 0, Direction::kToVmm),
            std::string("an event sent to the VMM"));
  EXPECT_EQ(why(packet(Type::kGetStatus, 0, 1, Code::kOk, {}), 0, Direction::kToPartition),
            std::string("a request sent to the partition"));
  EXPECT_EQ(why(packet(Type::kHeartbeat, kFlagResponse, 1, Code::kOk, {}), 0, Direction::kToPartition),
            std::string("a response to a message that has none"));
  EXPECT_EQ(why(packet(Type::kEventStop, 0, 5, Code::kOk, {}), 0, Direction::kToPartition),
            std::string("an event with a non-zero id"));
  EXPECT_EQ(why(packet(Type::kGetStatus, 0, 1, Code::kState, {}), 0, Direction::kToVmm),
            std::string("non-zero status in a request"));
}

TEST(VirtioMsg, ErrorResponsesCarryNothingAndKnownCodesOnly) {
  EXPECT_EQ(why(packet(Type::kGetFeatures, kFlagResponse, 1, Code::kDeviceError, {}), 0, Direction::kToPartition),
            "ok");
  EXPECT_EQ(why(packet(Type::kGetFeatures, kFlagResponse, 1, Code::kDeviceError, std::vector<uint8_t>(8)), 0,
                Direction::kToPartition),
            std::string("payload size wrong for the message type"));
  EXPECT_EQ(why(packet(Type::kGetFeatures, kFlagResponse, 1, Code(7), {}), 0, Direction::kToPartition),
            std::string("unknown response status"));
  // HELLO's reply carries the RAM descriptor only when it succeeds.
  HelloResp r{};
  EXPECT_EQ(why(packet(Type::kHello, kFlagResponse, 1, Code::kOk, raw(r)), 1, Direction::kToPartition), "ok");
  EXPECT_EQ(why(packet(Type::kHello, kFlagResponse, 1, Code::kUnsupported, {}), 1, Direction::kToPartition),
            std::string("wrong number of descriptors for the message type"));
}

TEST(VirtioMsg, RejectsUnknownTypesAndFlags) {
  auto p = packet(Type::kGetStatus, 0, 1, Code::kOk, {});
  p[0] = 0x0b;
  EXPECT_EQ(why(p, 0, Direction::kToVmm), std::string("unknown message type"));
  p = packet(Type::kGetStatus, 0x80, 1, Code::kOk, {});
  EXPECT_EQ(why(p, 0, Direction::kToVmm), std::string("unknown flag bits"));
}

TEST(VirtioMsg, SocketRoundTripCarriesDescriptors) {
  auto pair = socket_pair();
  ASSERT_TRUE(pair.ok());
  UniqueFd a(eventfd(0, EFD_CLOEXEC)), b(eventfd(0, EFD_CLOEXEC));
  SetVqueue v{};
  v.index = 0;
  v.size = 8;
  v.desc = 0x1000;
  auto p = encode(Type::kSetVqueue, 0, 3, 77, Code::kOk, bytes_of(v));
  const int fds[2] = {a.get(), b.get()};
  ASSERT_TRUE(send_packet(pair->first.get(), p, fds).ok());
  auto m = receive(pair->second.get(), Direction::kToVmm, 1000);
  ASSERT_TRUE(m.ok()) << m.error().what;
  EXPECT_EQ(m->type(), Type::kSetVqueue);
  EXPECT_EQ(m->header.device.get(), 3);
  EXPECT_EQ(m->header.id.get(), 77u);
  EXPECT_EQ(m->as<SetVqueue>().desc.get(), 0x1000u);
  ASSERT_EQ(m->fds.size(), 2u);
  // The received kick descriptor is the same eventfd.
  uint64_t one = 1, got = 0;
  ASSERT_EQ(write(m->fds[0].get(), &one, 8), 8);
  ASSERT_EQ(read(a.get(), &got, 8), 8);
  EXPECT_EQ(got, 1u);
}

TEST(VirtioMsg, ReceiveRefusesABadPacketAndClosesItsDescriptors) {
  auto pair = socket_pair();
  ASSERT_TRUE(pair.ok());
  UniqueFd a(eventfd(0, EFD_CLOEXEC));
  auto p = encode(Type::kGetStatus, 0, 0, 1, Code::kOk, {});
  const int fd = a.get();
  ASSERT_TRUE(send_packet(pair->first.get(), p, std::span<const int>(&fd, 1)).ok());
  auto m = receive(pair->second.get(), Direction::kToVmm, 1000);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.code(), Errc::kProtocol);
  EXPECT_STREQ(m.error().what, "wrong number of descriptors for the message type");
  // Only our own reference is left: the count of eventfds open in this process did not grow.
  EXPECT_EQ(receive(pair->second.get(), Direction::kToVmm, 0).code(), Errc::kTimeout);
}

TEST(VirtioMsg, ReceiveReportsClosedPeerAndTimeout) {
  auto pair = socket_pair();
  ASSERT_TRUE(pair.ok());
  EXPECT_EQ(receive(pair->second.get(), Direction::kToVmm, 10).code(), Errc::kTimeout);
  pair->first.reset();
  EXPECT_EQ(receive(pair->second.get(), Direction::kToVmm, 10).code(), Errc::kClosed);
}

}  // namespace
}  // namespace canopy::transport::msg
