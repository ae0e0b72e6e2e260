#include "canopy/buffers/fd_passing.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "canopy/buffers/shared_memory.h"
#include "test_util.h"

namespace canopy::buffers {
namespace {

using testing::count_open_fds;
using testing::make_socketpair;

UniqueFd memfd_with(const char* text) {
  auto shm = SharedMemory::create("fdpass", 4096);
  if (!shm.ok()) return {};
  auto m = shm->map();
  if (!m.ok()) return {};
  std::memcpy(m->data(), text, std::strlen(text) + 1);
  return shm->dup_fd().value();
}

std::string text_of(int fd) {
  auto m = Mapping::map(fd, 0, 4096, Access::kRead);
  if (!m.ok()) return "<unmappable>";
  return std::string(reinterpret_cast<const char*>(m->data()));
}

TEST(FdPassing, SendsPayloadAndDescriptorsOverStreamSocket) {
  auto sp = make_socketpair(SOCK_STREAM);
  UniqueFd a = memfd_with("first"), b = memfd_with("second");
  const int fds[2] = {a.get(), b.get()};
  const char msg[] = "payload";
  ASSERT_TRUE(send_fds(sp.a.get(), msg, sizeof(msg), fds).ok());
  char buf[sizeof(msg)] = {};
  auto got = recv_fds(sp.b.get(), buf, sizeof(buf), 4);
  ASSERT_TRUE(got.ok());
  EXPECT_STREQ(buf, "payload");
  ASSERT_EQ(got->size(), 2u);
  EXPECT_EQ(text_of((*got)[0].get()), "first");
  EXPECT_EQ(text_of((*got)[1].get()), "second");
  EXPECT_NE(::fcntl((*got)[0].get(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST(FdPassing, WorksOnSeqpacketSockets) {
  auto sp = make_socketpair(SOCK_SEQPACKET);
  UniqueFd a = memfd_with("seq");
  const int fd = a.get();
  uint32_t v = 0xabcdef01;
  ASSERT_TRUE(send_fds(sp.a.get(), &v, sizeof(v), std::span<const int>(&fd, 1)).ok());
  uint32_t r = 0;
  auto got = recv_fds(sp.b.get(), &r, sizeof(r), 1);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(r, v);
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ(text_of((*got)[0].get()), "seq");
}

TEST(FdPassing, MessageWithoutDescriptorsYieldsNone) {
  auto sp = make_socketpair();
  ASSERT_TRUE(send_fds(sp.a.get(), "x", 1, {}).ok());
  char c = 0;
  auto got = recv_fds(sp.b.get(), &c, 1, 2);
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->empty());
  EXPECT_EQ(c, 'x');
}

TEST(FdPassing, MoreDescriptorsThanExpectedIsAnErrorAndLeaksNothing) {
  auto sp = make_socketpair();
  UniqueFd a = memfd_with("a"), b = memfd_with("b"), c = memfd_with("c");
  const int fds[3] = {a.get(), b.get(), c.get()};
  ASSERT_TRUE(send_fds(sp.a.get(), "m", 1, fds).ok());
  const int before = count_open_fds();
  char m = 0;
  auto got = recv_fds(sp.b.get(), &m, 1, 1);
  EXPECT_EQ(got.code(), Errc::kProtocol);
  EXPECT_EQ(count_open_fds(), before);
}

TEST(FdPassing, DescriptorsWhenNoneExpectedAreTruncatedAndLeakNothing) {
  auto sp = make_socketpair();
  UniqueFd a = memfd_with("a");
  const int fd = a.get();
  ASSERT_TRUE(send_fds(sp.a.get(), "m", 1, std::span<const int>(&fd, 1)).ok());
  const int before = count_open_fds();
  char m = 0;
  auto got = recv_fds(sp.b.get(), &m, 1, 0);
  EXPECT_EQ(got.code(), Errc::kProtocol);
  EXPECT_EQ(count_open_fds(), before);
}

TEST(FdPassing, EndOfStreamBeforeMessageIsClosed) {
  auto sp = make_socketpair();
  sp.a.reset();
  char buf[4];
  EXPECT_EQ(recv_fds(sp.b.get(), buf, sizeof(buf), 1).code(), Errc::kClosed);
}

TEST(FdPassing, EndOfStreamInsideMessageIsProtocolErrorAndLeaksNothing) {
  auto sp = make_socketpair();
  UniqueFd a = memfd_with("a");
  const int fd = a.get();
  ASSERT_TRUE(send_fds(sp.a.get(), "abcd", 4, std::span<const int>(&fd, 1)).ok());
  sp.a.reset();
  const int before = count_open_fds();
  char buf[8];
  EXPECT_EQ(recv_fds(sp.b.get(), buf, sizeof(buf), 1).code(), Errc::kProtocol);
  EXPECT_EQ(count_open_fds(), before);
}

TEST(FdPassing, ShortStreamReadsAreAssembled) {
  auto sp = make_socketpair();
  // Two separate writes form one 8-byte message; the descriptor comes with the first part.
  UniqueFd a = memfd_with("parts");
  const int fd = a.get();
  ASSERT_TRUE(send_fds(sp.a.get(), "abcd", 4, std::span<const int>(&fd, 1)).ok());
  ASSERT_TRUE(send_fds(sp.a.get(), "efgh", 4, {}).ok());
  char buf[9] = {};
  auto got = recv_fds(sp.b.get(), buf, 8, 1);
  ASSERT_TRUE(got.ok());
  EXPECT_STREQ(buf, "abcdefgh");
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ(text_of((*got)[0].get()), "parts");
}

TEST(FdPassing, DatagramLargerThanBufferIsProtocolError) {
  auto sp = make_socketpair(SOCK_SEQPACKET);
  char big[16] = "0123456789abcde";
  ASSERT_TRUE(send_fds(sp.a.get(), big, sizeof(big), {}).ok());
  char small[8];
  EXPECT_EQ(recv_fds(sp.b.get(), small, sizeof(small), 1).code(), Errc::kProtocol);
}

TEST(RecvPacket, OneDatagramWithItsDescriptorsAndTheErrorsLeakNothing) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  char buf[8];
  EXPECT_EQ(recv_packet(b.get(), buf, sizeof buf, 2, 10).code(), Errc::kTimeout);
  UniqueFd x = memfd_with("x"), y = memfd_with("y"), z = memfd_with("z");
  const int two[2] = {x.get(), y.get()};
  ASSERT_TRUE(send_fds(a.get(), "hello", 5, two).ok());
  auto p = recv_packet(b.get(), buf, sizeof buf, 2, 1000);
  ASSERT_TRUE(p.ok()) << p.error().what;
  EXPECT_EQ(p->size, 5u);
  ASSERT_EQ(p->fds.size(), 2u);
  EXPECT_EQ(text_of(p->fds[1].get()), "y");
  const int before = count_open_fds();
  const int three[3] = {x.get(), y.get(), z.get()};
  ASSERT_TRUE(send_fds(a.get(), "m", 1, three).ok());
  EXPECT_EQ(recv_packet(b.get(), buf, sizeof buf, 2, 1000).code(), Errc::kProtocol) << "one descriptor too many";
  ASSERT_TRUE(send_fds(a.get(), "123456789", 9, two).ok());
  EXPECT_EQ(recv_packet(b.get(), buf, sizeof buf, 2, 1000).code(), Errc::kProtocol) << "larger than the buffer";
  EXPECT_EQ(count_open_fds(), before);
  a.reset();
  EXPECT_EQ(recv_packet(b.get(), buf, sizeof buf, 2, 1000).code(), Errc::kClosed);
  EXPECT_EQ(recv_packet(b.get(), buf, sizeof buf, kMaxFdsPerMessage + 1, 0).code(), Errc::kInvalidArgument);
}

TEST(FdPassing, RejectsEmptyPayloadTooManyAndNegativeDescriptors) {
  auto sp = make_socketpair();
  EXPECT_EQ(send_fds(sp.a.get(), "x", 0, {}).code(), Errc::kInvalidArgument);
  int many[kMaxFdsPerMessage + 1];
  for (auto& f : many) f = sp.a.get();
  EXPECT_EQ(send_fds(sp.a.get(), "x", 1, many).code(), Errc::kInvalidArgument);
  const int neg = -1;
  EXPECT_EQ(send_fds(sp.a.get(), "x", 1, std::span<const int>(&neg, 1)).code(), Errc::kInvalidArgument);
  char c;
  EXPECT_EQ(recv_fds(sp.b.get(), &c, 0, 1).code(), Errc::kInvalidArgument);
  EXPECT_EQ(recv_fds(sp.b.get(), &c, 1, kMaxFdsPerMessage + 1).code(), Errc::kInvalidArgument);
}

TEST(FdPassing, SendToClosedPeerIsClosedWithoutSigpipe) {
  auto sp = make_socketpair();
  sp.b.reset();
  EXPECT_EQ(send_fds(sp.a.get(), "x", 1, {}).code(), Errc::kClosed);
}

TEST(FdPassing, ReceiveSurvivesSignalsWhileBlocked) {
  struct sigaction sa{};
  sa.sa_handler = [](int) {};
  sa.sa_flags = 0;  // no SA_RESTART: a blocked recvmsg fails with EINTR
  struct sigaction old{};
  ASSERT_EQ(::sigaction(SIGUSR1, &sa, &old), 0);
  auto sp = make_socketpair();
  std::atomic<bool> receiving{false};
  const pthread_t receiver = ::pthread_self();
  std::thread sender([&] {
    while (!receiving.load()) std::this_thread::yield();
    for (int i = 0; i < 20; ++i) {
      ::pthread_kill(receiver, SIGUSR1);
      std::this_thread::yield();
    }
    UniqueFd a = memfd_with("eintr");
    const int fd = a.get();
    EXPECT_TRUE(send_fds(sp.a.get(), "sig", 3, std::span<const int>(&fd, 1)).ok());
  });
  receiving.store(true);
  char buf[3];
  auto got = recv_fds(sp.b.get(), buf, sizeof(buf), 1);
  sender.join();
  ::sigaction(SIGUSR1, &old, nullptr);
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ(text_of((*got)[0].get()), "eintr");
}

}  // namespace
}  // namespace canopy::buffers
