// Cross-process vhost-user round trip: this process is the VMM + guest driver (Frontend + DriverQueue),
// a forked child is the back-end (Backend + a transform device). They share memfd guest memory and talk
// over a real unix socket with eventfd kicks and calls. Over a million descriptors move, each chain's
// content checked.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "canopy/transport/driver_queue.h"
#include "canopy/transport/vhost_user_backend.h"
#include "canopy/transport/vhost_user_frontend.h"

namespace canopy::transport::vhost_user {
namespace {

constexpr uint64_t kMemSize = 16ull << 20;
constexpr uint64_t kUva = 0x7e0000000000;  // the front-end's own address for guest memory
constexpr uint64_t kRingBase = 0x1000;
constexpr uint64_t kData = 0x100000;
constexpr uint16_t kQueueSize = 256;
constexpr uint32_t kPart = 64;  // bytes per descriptor
constexpr uint32_t kSlotBytes = 4 * kPart;

// Writes every readable byte XOR 0xa5 to the writable part.
class XorDevice : public Device {
 public:
  uint64_t features() const override { return kVirtioFVersion1 | kVirtioFEventIdx | kVirtioFIndirectDesc; }
  uint16_t num_queues() const override { return 1; }
  void on_kick(QueueHandle& q) override {
    (void)q.process([](const DescriptorChain&, DescriptorReader& rd, DescriptorWriter& wr) -> Result<uint32_t> {
      uint8_t buf[256];
      while (rd.remaining()) {
        size_t n = std::min(rd.remaining(), sizeof buf);
        CANOPY_TRY(rd.read(buf, n));
        for (size_t i = 0; i < n; ++i) buf[i] ^= 0xa5;
        CANOPY_TRY(wr.write(buf, n));
      }
      return wr.bytes_written();
    });
  }
};

pid_t spawn_backend(UniqueFd sock) {
  pid_t pid = fork();
  if (pid == 0) {
    alarm(240);  // a stuck child can never outlive the test
    XorDevice dev;
    Backend backend(dev);
    Status s = backend.run(std::move(sock));
    _exit(s.ok() ? 0 : 1);
  }
  return pid;
}

uint8_t pattern(uint64_t seq, uint32_t i) { return uint8_t((seq * 131 + i * 7) ^ (seq >> 8)); }

class RoundTrip : public ::testing::Test {
 protected:
  void SetUp() override {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    child = spawn_backend(UniqueFd(sv[1]));
    ASSERT_GT(child, 0);
    fe = Frontend(UniqueFd(sv[0]), 30000);  // reply hang guard
    int fd = memfd_create("guest-ram", MFD_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, kMemSize), 0);
    ram = UniqueFd(fd);
    ASSERT_TRUE(mem.add_region({0, kMemSize, kUva, 0}, ram.dup()).ok());
  }
  void TearDown() override {
    if (child > 0) {
      kill(child, SIGTERM);
      int st;
      waitpid(child, &st, 0);
    }
  }
  void setup_device(uint64_t features) {
    auto f = fe.get_features();
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(fe.set_features((*f & features) | kVhostUserFProtocolFeatures | kVirtioFVersion1).ok());
    auto pf = fe.get_protocol_features();
    ASSERT_TRUE(pf.ok());
    ASSERT_TRUE(fe.set_protocol_features(*pf).ok());
    ASSERT_TRUE(fe.set_owner().ok());
    FrontendRegion r{{0, kMemSize, kUva, 0}, ram.get()};
    ASSERT_TRUE(fe.set_mem_table(std::span<const FrontendRegion>(&r, 1)).ok());
    auto layout = layout_split_ring(kQueueSize, kRingBase, kData - kRingBase);
    ASSERT_TRUE(layout.ok());
    DriverQueue::Config cfg;
    cfg.size = kQueueSize;
    cfg.addrs = layout->addrs;
    cfg.features = features;
    ASSERT_TRUE(dq.init(&mem, cfg).ok());
    ASSERT_TRUE(fe.set_vring_num(0, kQueueSize).ok());
    ASSERT_TRUE(fe.set_vring_base(0, 0).ok());
    ASSERT_TRUE(fe.set_vring_addr(0, kUva + cfg.addrs.desc, kUva + cfg.addrs.avail, kUva + cfg.addrs.used).ok());
    ASSERT_TRUE(fe.set_vring_call(0, call.get()).ok());
    ASSERT_TRUE(fe.set_vring_kick(0, kick.get()).ok());
    ASSERT_TRUE(fe.set_vring_enable(0, true).ok());
  }
  bool wait_call() {
    pollfd p{call.get(), POLLIN, 0};
    if (poll(&p, 1, 30000) != 1) return false;  // hang guard: the back-end answers in microseconds
    uint64_t v;
    return read(call.get(), &v, sizeof v) == sizeof v;
  }

  pid_t child = -1;
  Frontend fe;
  UniqueFd ram;
  GuestMemory mem;
  DriverQueue dq;
  UniqueFd kick{eventfd(0, EFD_CLOEXEC)};
  UniqueFd call{eventfd(0, EFD_CLOEXEC)};
};

TEST_F(RoundTrip, MovesOverAMillionDescriptorsWithContentChecked) {
  setup_device(kVirtioFEventIdx);
  constexpr uint64_t kChains = (1u << 20) / 4;  // 4 descriptors per chain
  constexpr uint32_t kSlots = kQueueSize / 4;   // chains in flight at once
  std::vector<uint64_t> slot_seq(kSlots);
  std::vector<uint32_t> free_slots;
  for (uint32_t s = 0; s < kSlots; ++s) free_slots.push_back(s);
  uint64_t next_seq = 0, done = 0, descriptors = 0;
  uint8_t buf[2 * kPart];
  while (done < kChains) {
    // Fill every free slot with a new chain: 2 readable parts, 2 writable parts.
    while (!free_slots.empty() && next_seq < kChains) {
      uint32_t s = free_slots.back();
      free_slots.pop_back();
      uint64_t base = kData + uint64_t(s) * kSlotBytes;
      for (uint32_t i = 0; i < 2 * kPart; ++i) buf[i] = pattern(next_seq, i);
      ASSERT_TRUE(mem.write(base, buf, sizeof buf).ok());
      ASSERT_TRUE(mem.fill(base + 2 * kPart, 0, 2 * kPart).ok());
      auto head =
          dq.add({{base, kPart}, {base + kPart, kPart}}, {{base + 2 * kPart, kPart}, {base + 3 * kPart, kPart}}, s);
      ASSERT_TRUE(head.ok()) << head.error().what;
      slot_seq[s] = next_seq++;
      descriptors += 4;
    }
    ASSERT_TRUE(dq.publish().ok());
    if (dq.kick_needed()) {
      uint64_t one = 1;
      ASSERT_EQ(write(kick.get(), &one, sizeof one), 8);
    }
    // Collect what is used; wait for an interrupt only when nothing is ready.
    bool got_any = false;
    for (;;) {
      auto used = dq.get_used();
      ASSERT_TRUE(used.ok()) << used.error().what;
      if (!*used) break;
      got_any = true;
      uint32_t s = uint32_t((*used)->token);
      ASSERT_LT(s, kSlots);
      ASSERT_EQ((*used)->len, 2 * kPart);
      uint64_t base = kData + uint64_t(s) * kSlotBytes;
      ASSERT_TRUE(mem.read(base + 2 * kPart, buf, sizeof buf).ok());
      for (uint32_t i = 0; i < 2 * kPart; ++i)
        ASSERT_EQ(buf[i], uint8_t(pattern(slot_seq[s], i) ^ 0xa5)) << "chain " << slot_seq[s] << " byte " << i;
      free_slots.push_back(s);
      ++done;
    }
    if (!got_any) {
      auto pending = dq.enable_interrupts();  // re-arm, then re-check to avoid a lost wake-up
      ASSERT_TRUE(pending.ok());
      if (!*pending) {
        ASSERT_TRUE(wait_call()) << "back-end stopped answering after " << done << " chains";
      }
    }
  }
  EXPECT_GE(descriptors, 1u << 20);
  EXPECT_EQ(done, kChains);
  // The back-end reports where it stopped: every chain was consumed.
  auto base = fe.get_vring_base(0);
  ASSERT_TRUE(base.ok());
  EXPECT_EQ(*base, uint32_t(kChains & 0xffff));
}

TEST_F(RoundTrip, IndirectChainsRoundTrip) {
  setup_device(kVirtioFIndirectDesc);
  // Re-initialise the driver queue with an indirect area.
  auto layout = layout_split_ring(kQueueSize, kRingBase, kData - kRingBase);
  DriverQueue::Config cfg;
  cfg.size = kQueueSize;
  cfg.addrs = layout->addrs;
  cfg.features = kVirtioFIndirectDesc;
  cfg.indirect_gpa = kMemSize - (1 << 20);
  cfg.indirect_len = uint64_t(kQueueSize) * 64;
  dq.reset();
  ASSERT_TRUE(dq.init(&mem, cfg).ok());
  ASSERT_TRUE(dq.indirect());
  const char msg[] = "indirect";
  ASSERT_TRUE(mem.write(kData, msg, sizeof msg).ok());
  ASSERT_TRUE(dq.add({{kData, 4}, {kData + 4, sizeof msg - 4}}, {{kData + 0x100, 16}}, 7).ok());
  ASSERT_TRUE(dq.publish().ok());
  uint64_t one = 1;
  ASSERT_EQ(write(kick.get(), &one, sizeof one), 8);
  ASSERT_TRUE(wait_call());
  auto used = dq.get_used();
  ASSERT_TRUE(used.ok() && *used);
  EXPECT_EQ((*used)->token, 7u);
  EXPECT_EQ((*used)->len, sizeof msg);
  char out[sizeof msg];
  ASSERT_TRUE(mem.read(kData + 0x100, out, sizeof out).ok());
  for (size_t i = 0; i < sizeof msg; ++i) EXPECT_EQ(uint8_t(out[i]), uint8_t(msg[i] ^ 0xa5));
}

TEST_F(RoundTrip, DeadBackendGivesErrorsNotHangs) {
  setup_device(kVirtioFEventIdx);
  kill(child, SIGKILL);
  int st;
  waitpid(child, &st, 0);
  child = -1;
  auto f = fe.get_features();
  ASSERT_FALSE(f.ok());
  EXPECT_TRUE(f.code() == Errc::kClosed || f.code() == Errc::kIo) << f.error().what;
}

}  // namespace
}  // namespace canopy::transport::vhost_user
