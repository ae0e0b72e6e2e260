#include "canopy/protocol/broker.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace canopy::protocol::broker {
namespace {

std::vector<UniqueFd> memfds(size_t n) {
  std::vector<UniqueFd> v;
  for (size_t i = 0; i < n; ++i) v.emplace_back(memfd_create("t", MFD_CLOEXEC));
  return v;
}

// The error parse() gives ("" when the packet passes).
std::string why(const std::vector<uint8_t>& p, size_t nfds, Link link) {
  auto r = parse(p, memfds(nfds), link);
  return r.ok() ? "" : r.error().what;
}

std::vector<uint8_t> admit(const std::string& vm = "cluster", Criticality c = Criticality::kSafety,
                           uint64_t serial = 1) {
  auto a = encode_admit(vm, Service::kDisplay, c, serial);
  EXPECT_TRUE(a.ok());
  return a.ok() ? *a : std::vector<uint8_t>{};
}

TEST(Broker, RequestAnswerAndAdmitRoundTripOverSockets) {
  int dev[2], svc[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, dev), 0);
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, svc), 0);
  UniqueFd d0(dev[0]), d1(dev[1]), s0(svc[0]), s1(svc[1]);

  ASSERT_TRUE(send(d0.get(), encode_connect(Service::kDisplay)).ok());
  auto req = receive(d1.get(), Link::kDeviceToBroker, 1000);
  ASSERT_TRUE(req.ok()) << req.error().what;
  EXPECT_EQ(req->type, Type::kConnect);
  EXPECT_EQ(req->service, Service::kDisplay);

  UniqueFd probe(memfd_create("probe", MFD_CLOEXEC));
  ASSERT_EQ(write(probe.get(), "ab", 2), 2);
  ASSERT_TRUE(send(s0.get(), admit("ivi", Criticality::kNormal, 7), probe.get()).ok());
  auto a = receive(s1.get(), Link::kBrokerToService, 1000);
  ASSERT_TRUE(a.ok()) << a.error().what;
  EXPECT_EQ(a->vm, "ivi");
  EXPECT_EQ(a->criticality, Criticality::kNormal);
  EXPECT_EQ(a->serial, 7u);
  ASSERT_TRUE(a->fd.valid());
  struct stat st{};
  ASSERT_EQ(fstat(a->fd.get(), &st), 0);
  EXPECT_EQ(st.st_size, 2);  // the very file that was sent

  ASSERT_TRUE(send(d1.get(), encode_connected(Service::kDisplay), probe.get()).ok());
  auto c = receive(d0.get(), Link::kBrokerToDevice, 1000);
  ASSERT_TRUE(c.ok()) << c.error().what;
  EXPECT_EQ(c->type, Type::kConnected);
  EXPECT_TRUE(c->fd.valid());

  ASSERT_TRUE(send(d1.get(), encode_refused(Service::kDisplay, Refusal::kTooMany)).ok());
  auto r = receive(d0.get(), Link::kBrokerToDevice, 1000);
  ASSERT_TRUE(r.ok()) << r.error().what;
  EXPECT_EQ(r->reason, Refusal::kTooMany);

  EXPECT_EQ(receive(d0.get(), Link::kBrokerToDevice, 0).error().code, Errc::kTimeout);
  s0.reset();
  EXPECT_EQ(receive(s1.get(), Link::kBrokerToService, 1000).error().code, Errc::kClosed);
}

TEST(Broker, EachPacketIsAcceptedOnlyFromItsSender) {
  // A device cannot admit itself, and a device link carries no ADMIT in either direction.
  EXPECT_NE(why(admit(), 1, Link::kDeviceToBroker), "");
  EXPECT_NE(why(admit(), 1, Link::kBrokerToDevice), "");
  EXPECT_EQ(why(admit(), 1, Link::kBrokerToService), "");
  EXPECT_NE(why(encode_connect(Service::kDisplay), 0, Link::kBrokerToService), "");
  EXPECT_NE(why(encode_connect(Service::kDisplay), 0, Link::kBrokerToDevice), "");
  EXPECT_NE(why(encode_connected(Service::kDisplay), 1, Link::kDeviceToBroker), "");
  EXPECT_NE(why(encode_refused(Service::kDisplay, Refusal::kBroken), 0, Link::kBrokerToService), "");
}

TEST(Broker, MalformedPacketsAreRefusedWithAReason) {
  // Descriptor counts: none where one belongs, one where none does, two.
  EXPECT_NE(why(admit(), 0, Link::kBrokerToService), "");
  EXPECT_NE(why(admit(), 2, Link::kBrokerToService), "");
  EXPECT_NE(why(encode_connect(Service::kDisplay), 1, Link::kDeviceToBroker), "");
  EXPECT_NE(why(encode_connected(Service::kDisplay), 0, Link::kBrokerToDevice), "");

  auto edit = [](std::vector<uint8_t> p, size_t at, uint8_t v) {
    p.at(at) = v;
    return p;
  };
  const auto a = admit();
  EXPECT_NE(why(edit(a, 0, 0), 1, Link::kBrokerToService), "");                              // magic
  EXPECT_NE(why(edit(a, 4, 9), 1, Link::kBrokerToService), "");                              // version
  EXPECT_NE(why(edit(a, 12, 1), 1, Link::kBrokerToService), "");                             // reserved
  EXPECT_NE(why(edit(a, 16, 'C'), 1, Link::kBrokerToService), "");                           // name: upper case
  EXPECT_NE(why(edit(a, 16, 0), 1, Link::kBrokerToService), "");                             // name: empty, bytes after
  EXPECT_NE(why(edit(a, 16 + 20, 'x'), 1, Link::kBrokerToService), "");                      // bytes after the name
  EXPECT_NE(why(edit(a, 16 + 32, 9), 1, Link::kBrokerToService), "");                        // unknown service
  EXPECT_NE(why(edit(a, 16 + 36, 4), 1, Link::kBrokerToService), "");                        // unknown criticality
  EXPECT_NE(why(admit("cluster", Criticality::kSafety, 0), 1, Link::kBrokerToService), "");  // serial 0
  std::vector<uint8_t> full(a);
  std::memset(full.data() + 16, 'a', kMaxNameBytes);
  EXPECT_NE(why(full, 1, Link::kBrokerToService), "");  // name fills the field: no terminator
  std::vector<uint8_t> longer(a);
  longer.push_back(0);
  EXPECT_NE(why(longer, 1, Link::kBrokerToService), "");  // size field and packet disagree
  longer[8] = uint8_t(longer.size() - kHeaderSize);
  EXPECT_NE(why(longer, 1, Link::kBrokerToService), "");  // payload too long for ADMIT
  EXPECT_NE(why(std::vector<uint8_t>(a.begin(), a.begin() + 10), 1, Link::kBrokerToService), "");
  EXPECT_NE(why(edit(encode_refused(Service::kDisplay, Refusal::kBroken), 16 + 4, 0), 0, Link::kBrokerToDevice),
            "");                                                                                // unknown reason
  EXPECT_NE(why(edit(encode_connect(Service::kDisplay), 6, 9), 0, Link::kDeviceToBroker), "");  // unknown type

  EXPECT_FALSE(encode_admit("Cluster", Service::kDisplay, Criticality::kSafety, 1).ok());
  EXPECT_FALSE(encode_admit(std::string(32, 'a'), Service::kDisplay, Criticality::kSafety, 1).ok());
  EXPECT_TRUE(encode_admit(std::string(31, 'a'), Service::kDisplay, Criticality::kSafety, 1).ok());
}

// The fuzz corpus: [link and descriptor count] + a packet; the seeds are packets of this version that
// parse, so the fuzzer starts from the accepted shapes.
TEST(Broker, FuzzSeedsAreValidPacketsOfThisVersion) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(CANOPY_BROKER_CORPUS)) {
    std::ifstream f(e.path(), std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    ASSERT_FALSE(bytes.empty()) << e.path();
    const uint8_t ctl = bytes[0];
    const Link link = Link(ctl >> 4 > 2 ? 2 : ctl >> 4);
    EXPECT_EQ(why({bytes.begin() + 1, bytes.end()}, ctl & 0x0f, link), "") << e.path();
    ++n;
  }
  EXPECT_GE(n, 4u);
}

}  // namespace
}  // namespace canopy::protocol::broker
