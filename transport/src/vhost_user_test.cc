// vhost-user back-end and front-end against each other over a real unix socketpair, with memfd guest
// memory and eventfd kicks; plus malformed messages with exact bad values.
#include <dirent.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "canopy/transport/testing/ring.h"
#include "canopy/transport/vhost_user_backend.h"
#include "canopy/transport/vhost_user_frontend.h"

namespace canopy::transport::vhost_user {
namespace {

using testing::make_memfd;
using testing::RawRing;

constexpr uint64_t kMemSize = 0x40000;
constexpr uint64_t kUvaBase = 0x7f0000000000;  // the front-end's "virtual address" of guest memory
constexpr uint64_t kData = 0x20000;

// Echo device: writes each readable byte XOR 0x5a into the writable part.
class EchoDevice : public Device {
 public:
  uint64_t features() const override { return kVirtioFVersion1 | kVirtioFEventIdx | kVirtioFIndirectDesc; }
  uint64_t protocol_features() const override {
    return proto_bit(kProtoConfig) | proto_bit(kProtoBackendReq) | proto_bit(kProtoBackendSendFd) |
           proto_bit(kProtoShmem);
  }
  std::vector<uint64_t> shmem_sizes() const override { return {0, 1 << 20}; }
  uint16_t num_queues() const override { return 2; }
  // Announces a config change on the back-end request channel as soon as it arrives.
  void on_backend_channel(Channel* ch) override {
    if (ch) (void)ch->send(Message::make(static_cast<Request>(BackendRequest::kConfigChangeMsg)));
  }
  Result<std::vector<uint8_t>> read_config(uint32_t offset, uint32_t size) override {
    if (offset > sizeof config_ || size > sizeof config_ - offset)
      return make_error(Errc::kOutOfRange, "config out of range");
    return std::vector<uint8_t>(config_ + offset, config_ + offset + size);
  }
  void on_kick(QueueHandle& q) override {
    ++kicks;
    (void)q.process([&](const DescriptorChain&, DescriptorReader& rd, DescriptorWriter& wr) -> Result<uint32_t> {
      if (on_served) on_served();
      uint8_t buf[512];
      while (rd.remaining()) {
        size_t n = std::min(rd.remaining(), sizeof buf);
        CANOPY_TRY(rd.read(buf, n));
        for (size_t i = 0; i < n; ++i) buf[i] ^= 0x5a;
        CANOPY_TRY(wr.write(buf, n));
      }
      return wr.bytes_written();
    });
  }
  void on_memory_changed(GuestMemory& memory) override {
    if (on_memory) on_memory(memory);
  }
  uint8_t config_[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  std::atomic<int> kicks{0};
  std::function<void(GuestMemory&)> on_memory;  // runs on the back-end thread
  std::function<void()> on_served;              // runs on the back-end thread for each chain
};

size_t open_fd_count() {
  size_t n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

class VhostUserTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    fe = Frontend(UniqueFd(sv[0]), 30000);  // reply hang guard
    backend_thread = std::thread([this, fd = sv[1]] { run_status = backend.run(UniqueFd(fd)); });
    guest_fd = make_memfd(kMemSize);
    ASSERT_TRUE(guest.add_region({0, kMemSize, 0, 0}, guest_fd.dup()).ok());
  }
  void TearDown() override {
    backend.request_stop();
    backend_thread.join();
  }
  void handshake() {
    auto f = fe.get_features();
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(fe.set_features(*f).ok());
    auto pf = fe.get_protocol_features();
    ASSERT_TRUE(pf.ok());
    ASSERT_TRUE(fe.set_protocol_features(*pf).ok());
    ASSERT_TRUE(fe.set_owner().ok());
    FrontendRegion r{{0, kMemSize, kUvaBase, 0}, guest_fd.get()};
    ASSERT_TRUE(fe.set_mem_table(std::span<const FrontendRegion>(&r, 1)).ok());
  }
  void start_ring(uint32_t index, RawRing& ring, uint16_t size) {
    ASSERT_TRUE(fe.set_vring_num(index, size).ok());
    ASSERT_TRUE(fe.set_vring_base(index, 0).ok());
    ASSERT_TRUE(fe.set_vring_addr(index, kUvaBase + ring.addrs().desc, kUvaBase + ring.addrs().avail,
                                  kUvaBase + ring.addrs().used)
                    .ok());
    ASSERT_TRUE(fe.set_vring_call(index, call.get()).ok());
    ASSERT_TRUE(fe.set_vring_kick(index, kick.get()).ok());
    ASSERT_TRUE(fe.set_vring_enable(index, true).ok());
  }
  void kick_and_wait() {
    uint64_t one = 1;
    ASSERT_EQ(write(kick.get(), &one, sizeof one), 8);
    pollfd p{call.get(), POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 30000), 1) << "no used-buffer notification within 30 s (hang guard)";
    uint64_t v;
    ASSERT_EQ(read(call.get(), &v, sizeof v), 8);
  }

  EchoDevice device;
  Backend backend{device};
  std::thread backend_thread;
  Status run_status;
  Frontend fe;
  UniqueFd guest_fd;
  GuestMemory guest;
  UniqueFd kick{eventfd(0, EFD_CLOEXEC)};
  UniqueFd call{eventfd(0, EFD_CLOEXEC)};
};

TEST_F(VhostUserTest, NegotiatesFeaturesAndLimits) {
  auto f = fe.get_features();
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(*f & kVirtioFVersion1);
  EXPECT_TRUE(*f & kVhostUserFProtocolFeatures);
  auto pf = fe.get_protocol_features();
  ASSERT_TRUE(pf.ok());
  for (auto bit : {kProtoReplyAck, kProtoConfig, kProtoConfigureMemSlots, kProtoResetDevice, kProtoStatus, kProtoMq})
    EXPECT_TRUE(*pf & proto_bit(bit)) << bit;
  ASSERT_TRUE(fe.set_protocol_features(*pf).ok());
  EXPECT_EQ(*fe.get_queue_num(), 2u);
  EXPECT_EQ(*fe.get_max_mem_slots(), kMaxMemoryRegions);
  // Bits the device never offered are dropped, not acted on (QEMU's vhost-user-gpu front-end adds
  // VIRTIO_F_RING_RESET, bit 40, of its own). REPLY_ACK orders the check after the back-end's handling.
  EXPECT_TRUE(fe.set_features(kVirtioFVersion1 | (1ull << 60) | (1ull << 40)).ok());
  EXPECT_EQ(backend.acked_features(), kVirtioFVersion1);
  EXPECT_TRUE(fe.set_features(*f).ok());
  EXPECT_EQ(backend.acked_features(), *f);
}

TEST_F(VhostUserTest, EchoesThroughRingWithContentChecked) {
  handshake();
  RawRing ring(guest, 0x1000, 16);
  start_ring(0, ring, 16);
  const char msg[] = "vhost-user round trip";
  ASSERT_TRUE(guest.write(kData, msg, sizeof msg).ok());
  ring.chain(0).out(kData, 10).out(kData + 10, sizeof msg - 10).in(kData + 0x1000, 64).publish();
  kick_and_wait();
  ASSERT_EQ(ring.used_idx(), 1);
  EXPECT_EQ(ring.used(0).id.get(), 0u);
  EXPECT_EQ(ring.used(0).len.get(), sizeof msg);
  char out[sizeof msg];
  ASSERT_TRUE(guest.read(kData + 0x1000, out, sizeof out).ok());
  for (size_t i = 0; i < sizeof msg; ++i) EXPECT_EQ(uint8_t(out[i]), uint8_t(msg[i] ^ 0x5a)) << i;
  // GET_VRING_BASE stops the ring and reports where it stopped.
  auto base = fe.get_vring_base(0);
  ASSERT_TRUE(base.ok());
  EXPECT_EQ(*base, 1u);
}

TEST_F(VhostUserTest, RingKeptFullIsServedInTurnsWithoutStarvingTheLoop) {
  handshake();
  RawRing ring(guest, 0x1000, 16);
  // A driver that republishes a chain for every one served: 1000 chains on a 16-entry ring.
  int published = 1;
  device.on_served = [&] {
    if (published < 1000) {
      ring.chain(uint16_t(published % 16)).in(kData + 0x1000, 8).publish();
      ++published;
    }
  };
  ring.chain(0).in(kData + 0x1000, 8).publish();
  start_ring(0, ring, 16);
  // Until all 1000 are used (looking on each used-buffer notification, at least every 2 ms), with a 60 s
  // hang guard: how fast the back-end thread gets through them depends on the machine's load and is no
  // part of the check; that the queue went back through the event loop (kicks) and that messages were
  // answered meanwhile are counts.
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (ring.used_idx() != uint16_t(1000) && std::chrono::steady_clock::now() < end) {
    EXPECT_EQ(*fe.get_queue_num(), 2u);  // messages keep being answered meanwhile
    pollfd p{call.get(), POLLIN, 0};
    if (poll(&p, 1, 2) == 1) {
      uint64_t v;
      ASSERT_EQ(read(call.get(), &v, sizeof v), 8);
    }
  }
  ASSERT_EQ(ring.used_idx(), uint16_t(1000)) << "not all chains served within 60 s (hang guard)";
  // 2 x 16 chains per turn at most: the queue came back through the event loop many times.
  EXPECT_GE(device.kicks.load(), 1000 / 32);
}

TEST_F(VhostUserTest, AddAndRemoveMemoryRegions) {
  handshake();
  auto extra = make_memfd(0x10000);
  FrontendRegion r{{0x100000, 0x10000, kUvaBase + 0x100000, 0}, extra.get()};
  EXPECT_TRUE(fe.add_mem_reg(r).ok());
  EXPECT_FALSE(fe.add_mem_reg(r).ok());  // overlaps itself
  EXPECT_TRUE(fe.rem_mem_reg(r.info).ok());
  EXPECT_FALSE(fe.rem_mem_reg(r.info).ok());  // already gone
}

// A memory-table change reaches the device while the regions that went are still mapped (a device that
// handed host ranges to a library re-hands them there), and they are unmapped after; a table naming the
// same file again (QEMU resends its table with fresh descriptors) keeps the mapping.
TEST_F(VhostUserTest, MemoryChangesReachTheDeviceBeforeTheOldMappingGoes) {
  std::atomic<int> told{0};
  std::atomic<uint8_t*> now{nullptr};
  std::atomic<uint8_t*> before{nullptr};
  std::atomic<bool> before_mapped{false};
  const auto page_of = [](uint8_t* p) {
    return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(4095));
  };
  device.on_memory = [&](GuestMemory& m) {
    auto r = m.host_ranges(kData, 16);
    now = r.ok() ? (*r)[0].base : nullptr;
    if (uint8_t* b = before.load()) before_mapped = ::msync(page_of(b), 4096, MS_ASYNC) == 0;
    ++told;
  };
  handshake();
  ASSERT_EQ(told.load(), 1);
  uint8_t* const first = now.load();
  ASSERT_NE(first, nullptr);
  before = first;
  FrontendRegion same{{0, kMemSize, kUvaBase, 0}, guest_fd.get()};
  ASSERT_TRUE(fe.set_mem_table(std::span<const FrontendRegion>(&same, 1)).ok());
  ASSERT_EQ(told.load(), 2);
  EXPECT_EQ(now.load(), first);  // the same mapping
  UniqueFd other = make_memfd(kMemSize);
  FrontendRegion moved{{0, kMemSize, kUvaBase, 0}, other.get()};
  ASSERT_TRUE(fe.set_mem_table(std::span<const FrontendRegion>(&moved, 1)).ok());
  ASSERT_EQ(told.load(), 3);
  EXPECT_NE(now.load(), first);
  EXPECT_TRUE(before_mapped.load()) << "the old mapping was gone before the device was told";
  // REPLY_ACK: SET_MEM_TABLE was handled whole, so the old mapping is gone now.
  errno = 0;
  EXPECT_EQ(::msync(page_of(first), 4096, MS_ASYNC), -1);
  EXPECT_EQ(errno, ENOMEM);
}

TEST_F(VhostUserTest, ReadsConfigSpace) {
  handshake();
  auto c = fe.get_config(2, 4);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, (std::vector<uint8_t>{3, 4, 5, 6}));
  EXPECT_FALSE(fe.get_config(6, 4).ok());    // past the end of config space
  EXPECT_FALSE(fe.get_config(0, 257).ok());  // over the 256-byte cap
}

// Regression (found by fuzz_vhost_user_message): GET_CONFIG with size 0 copied from a null pointer.
TEST_F(VhostUserTest, ZeroSizedConfigReadIsAnEmptySuccess) {
  handshake();
  auto c = fe.get_config(4, 0);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->empty());
  EXPECT_EQ(*fe.get_queue_num(), 2u);
}

TEST_F(VhostUserTest, BackendRequestChannelCarriesConfigChange) {
  handshake();
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Channel frontend_side{UniqueFd(sv[0])};
  ASSERT_TRUE(fe.set_backend_req_fd(sv[1]).ok());
  close(sv[1]);
  auto m = frontend_side.recv(5000);
  ASSERT_TRUE(m.ok()) << m.error().what;
  EXPECT_EQ(m->header.request.get(), uint32_t(BackendRequest::kConfigChangeMsg));
}

TEST_F(VhostUserTest, ShmemConfigGivesRegionSizesByShmid) {
  handshake();
  auto c = fe.get_shmem_config();
  ASSERT_TRUE(c.ok()) << c.error().what;
  EXPECT_EQ(*c, (std::vector<uint64_t>{0, 1 << 20}));
}

TEST_F(VhostUserTest, ShmemConfigRefusedWhenNotNegotiated) {
  auto pf = fe.get_protocol_features();
  ASSERT_TRUE(pf.ok());
  ASSERT_TRUE(fe.set_protocol_features(*pf & ~proto_bit(kProtoShmem)).ok());
  EXPECT_FALSE(fe.get_shmem_config().ok());
  EXPECT_EQ(*fe.get_queue_num(), 2u);  // the connection is still in step
}

// The back-end request channel on its own: a back-end's SHMEM_MAP / UNMAP with NEED_REPLY against the
// front-end's serve_backend_request, acknowledged or refused by the handlers.
TEST(VhostUserBackendRequests, ShmemMapAndUnmapAreServedAndAcknowledged) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Channel backend_side{UniqueFd(sv[0])}, frontend_side{UniqueFd(sv[1])};
  std::vector<std::string> seen;
  BackendRequestHandlers h;
  h.shmem_map = [&](const ShmemMap& m, int fd) -> Status {
    seen.push_back("map " + std::to_string(m.shmid) + " " + std::to_string(m.shm_offset.get()) + " " +
                   std::to_string(m.len.get()) + (fd >= 0 ? " fd" : ""));
    if (m.shm_offset.get() >= (1u << 20)) return make_error(Errc::kOutOfRange, "outside the region");
    return {};
  };
  h.shmem_unmap = [&](const ShmemMap& m) -> Status {
    seen.push_back("unmap " + std::to_string(m.shm_offset.get()));
    return {};
  };
  UniqueFd file = make_memfd(8192);
  std::thread fe_thread([&] {
    for (int i = 0; i < 3; ++i) (void)serve_backend_request(frontend_side, h, 5000);
  });
  ShmemMap m{};
  m.shmid = 1;
  m.shm_offset = 4096;
  m.len = 8192;
  m.flags = kShmemMapWritable;
  const int fd = file.get();
  EXPECT_TRUE(backend_side
                  .request_ack(Message::make(static_cast<Request>(BackendRequest::kShmemMap), m),
                               std::span<const int>(&fd, 1), 5000)
                  .ok());
  m.shm_offset = 1 << 20;
  EXPECT_FALSE(backend_side
                   .request_ack(Message::make(static_cast<Request>(BackendRequest::kShmemMap), m),
                                std::span<const int>(&fd, 1), 5000)
                   .ok());
  m.shm_offset = 4096;
  EXPECT_TRUE(
      backend_side.request_ack(Message::make(static_cast<Request>(BackendRequest::kShmemUnmap), m), {}, 5000).ok());
  fe_thread.join();
  EXPECT_EQ(seen, (std::vector<std::string>{"map 1 4096 8192 fd", "map 1 1048576 8192 fd", "unmap 4096"}));
}

TEST(VhostUserBackendRequests, MalformedShmemRequestsAreRefusedWithAReplyAndTheChannelStaysInStep) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Channel backend_side{UniqueFd(sv[0])}, frontend_side{UniqueFd(sv[1])};
  int maps = 0;
  BackendRequestHandlers h;
  h.shmem_map = [&](const ShmemMap&, int) -> Status {
    ++maps;
    return {};
  };
  // No fd, then a payload of the wrong size: each refused with a reply (the back-end does not wait out
  // its timeout), the handler never called, the channel still in step for a good request after them.
  Status outcomes[3];
  std::thread fe_thread([&] {
    for (auto& o : outcomes) EXPECT_TRUE(serve_backend_request(frontend_side, h, 5000, &o).ok());
  });
  EXPECT_FALSE(
      backend_side.request_ack(Message::make(static_cast<Request>(BackendRequest::kShmemMap), ShmemMap{}), {}, 5000)
          .ok());
  EXPECT_FALSE(
      backend_side.request_ack(Message::make_u64(static_cast<Request>(BackendRequest::kShmemMap), 7), {}, 5000).ok());
  UniqueFd file = make_memfd(4096);
  const int fd = file.get();
  EXPECT_TRUE(backend_side
                  .request_ack(Message::make(static_cast<Request>(BackendRequest::kShmemMap), ShmemMap{}),
                               std::span<const int>(&fd, 1), 5000)
                  .ok());
  fe_thread.join();
  EXPECT_EQ(outcomes[0].code(), Errc::kInvalidArgument);
  EXPECT_EQ(outcomes[1].code(), Errc::kInvalidArgument);
  EXPECT_TRUE(outcomes[2].ok());
  EXPECT_EQ(maps, 1);
  // The back-end gone: the channel's error, for the caller to stop on.
  backend_side.close();
  EXPECT_EQ(serve_backend_request(frontend_side, h, 5000).code(), Errc::kClosed);
}

TEST_F(VhostUserTest, BackendRequestFdRefusedWhenNotNegotiated) {
  auto pf = fe.get_protocol_features();
  ASSERT_TRUE(pf.ok());
  ASSERT_TRUE(fe.set_protocol_features(*pf & ~proto_bit(kProtoBackendReq)).ok());
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  EXPECT_FALSE(fe.set_backend_req_fd(sv[1]).ok());
  close(sv[0]);
  close(sv[1]);
}

TEST_F(VhostUserTest, StatusAndResetDevice) {
  handshake();
  ASSERT_TRUE(fe.set_status(kStatusAcknowledge | kStatusDriver).ok());
  EXPECT_EQ(*fe.get_status(), kStatusAcknowledge | kStatusDriver);
  ASSERT_TRUE(fe.reset_device().ok());
  EXPECT_EQ(*fe.get_status(), 0);
}

TEST_F(VhostUserTest, RejectsBadVringMessagesWithExactValues) {
  handshake();
  EXPECT_FALSE(fe.set_vring_num(0, 3).ok());     // not a power of two
  EXPECT_FALSE(fe.set_vring_num(0, 2048).ok());  // over the device maximum (1024)
  EXPECT_FALSE(fe.set_vring_num(2, 16).ok());    // queue 2 of 2
  EXPECT_FALSE(fe.set_vring_base(0, 0x10000).ok());
  EXPECT_FALSE(fe.set_vring_kick(0, -1).ok());  // polling mode unsupported
  // A ring whose addresses are outside the memory table cannot start.
  ASSERT_TRUE(fe.set_vring_num(1, 16).ok());
  ASSERT_TRUE(fe.set_vring_addr(1, 0x1000, 0x2000, 0x3000).ok());
  EXPECT_FALSE(fe.set_vring_kick(1, kick.get()).ok());
  // The connection is still healthy.
  EXPECT_EQ(*fe.get_queue_num(), 2u);
}

TEST_F(VhostUserTest, RejectsMemTableWithMismatchedFdsAndClosesThem) {
  handshake();
  size_t before = open_fd_count();
  // Two regions announced, one fd sent.
  Message m = Message::make(Request::kSetMemTable, kVersion | kFlagNeedReply);
  m.payload.resize(kMemoryTableHeaderSize + 2 * sizeof(MemoryRegion));
  le32 n = 2;
  std::memcpy(m.payload.data(), &n, 4);
  int fd = guest_fd.get();
  auto r = fe.transact(m, std::span<const int>(&fd, 1), true);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exact<le64>()->get(), 1u);
  // A region larger than its file would SIGBUS on access: refused.
  FrontendRegion big{{0, kMemSize * 2, kUvaBase, 0}, guest_fd.get()};
  EXPECT_FALSE(fe.set_mem_table(std::span<const FrontendRegion>(&big, 1)).ok());
  EXPECT_EQ(open_fd_count(), before);  // the back-end closed what it received
}

TEST_F(VhostUserTest, UnknownRequestGetsErrorAckAndConnectionSurvives) {
  handshake();
  Message m = Message::make(static_cast<Request>(999), kVersion | kFlagNeedReply);
  auto r = fe.transact(m, {}, true);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exact<le64>()->get(), 1u);
  // Unexpected fds on a message that takes none: refused, and the fd is not kept.
  int fd = kick.get();
  Message owner = Message::make(Request::kSetOwner, kVersion | kFlagNeedReply);
  auto r2 = fe.transact(owner, std::span<const int>(&fd, 1), true);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->exact<le64>()->get(), 1u);
  EXPECT_EQ(*fe.get_queue_num(), 2u);
}

TEST_F(VhostUserTest, OversizedPayloadEndsConnectionCleanly) {
  Header h;
  h.request = uint32_t(Request::kSetFeatures);
  h.flags = kVersion;
  h.size = 0x10000;  // over kMaxPayload
  ASSERT_EQ(send(fe.channel().fd(), &h, sizeof h, MSG_NOSIGNAL), ssize_t(sizeof h));
  backend_thread.join();
  backend_thread = std::thread([] {});
  EXPECT_TRUE(run_status.ok());
  EXPECT_EQ(backend.stats().bad_messages, 1u);
}

TEST_F(VhostUserTest, BadVersionEndsConnection) {
  Header h;
  h.request = uint32_t(Request::kGetFeatures);
  h.flags = 0x2;
  h.size = 0;
  ASSERT_EQ(send(fe.channel().fd(), &h, sizeof h, MSG_NOSIGNAL), ssize_t(sizeof h));
  backend_thread.join();
  backend_thread = std::thread([] {});
  EXPECT_EQ(backend.stats().bad_messages, 1u);
}

TEST_F(VhostUserTest, TruncatedMessageTimesOutInsteadOfHanging) {
  Header h;
  h.request = uint32_t(Request::kSetFeatures);
  h.flags = kVersion;
  h.size = 8;
  ASSERT_EQ(send(fe.channel().fd(), &h, sizeof h, MSG_NOSIGNAL), ssize_t(sizeof h));  // no payload follows
  backend_thread.join();  // the back-end gives up on the partial message (5 s) and ends
  backend_thread = std::thread([] {});
  EXPECT_EQ(backend.stats().bad_messages, 1u);
}

// A front-end that truncates guest memory's file after SET_MEM_TABLE (an unsealed memfd; hugetlbfs and
// /dev/shm files are handed unsealed too): the back-end's next access to it faults. The process lives
// (buffers::fault_guard), the device is not run on: run() ends with the error.
TEST_F(VhostUserTest, GuestMemoryTruncatedUnderTheBackendEndsTheSessionWithAnError) {
  handshake();
  RawRing ring(guest, 0x1000, 16);
  start_ring(0, ring, 16);
  ring.chain(0).out(kData, 16).in(kData + 0x1000, 16).publish();
  kick_and_wait();  // served while the memory was whole
  ASSERT_EQ(ring.used_idx(), 1);
  ASSERT_EQ(::ftruncate(guest_fd.get(), 0), 0);
  uint64_t one = 1;
  ASSERT_EQ(write(kick.get(), &one, sizeof one), 8);
  // The back-end closes the connection when it stops: wait for that (30 s hang guard).
  pollfd p{fe.channel().fd(), POLLIN | POLLHUP, 0};
  ASSERT_EQ(poll(&p, 1, 30000), 1) << "the back-end went on after its guest memory was lost";
  backend_thread.join();
  backend_thread = std::thread([] {});
  ASSERT_FALSE(run_status.ok());
  EXPECT_EQ(run_status.code(), Errc::kIo);
  EXPECT_NE(std::string(run_status.error().what).find("shrank"), std::string::npos) << run_status.error().what;
}

}  // namespace
}  // namespace canopy::transport::vhost_user
