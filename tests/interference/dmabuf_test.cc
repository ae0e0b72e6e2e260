// Least privilege for guest memory (docs/security.md): where /dev/udmabuf exists, canopy-gpu's channel
// output sends the compositor one dma-buf of just a frame's pages, and the compositor shows the frame
// from it with one mapping; the VM's other memory (here a "secret" page between the frame's two pieces)
// is out of the compositor's reach. Control: with the dma-buf off, the compositor gets the whole file
// (read-only) and reads the secret through it.
//
// No host here has /dev/udmabuf: conformance_udmabuf_qemu runs this inside a Linux 6.12 guest whose
// kernel has it (tests/conformance/udmabuf_qemu.sh), with CANOPY_NO_SKIP=1.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/udmabuf.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "canopy/base/clock.h"
#include "canopy/buffers/shared_memory.h"
#include "canopy/buffers/udmabuf.h"
#include "canopy/display/compositor.h"
#include "canopy/gpu/channel_output.h"
#include "canopy/gpu/testing/frames.h"
#include "canopy/protocol/scanout_channel.h"
#include "canopy/transport/backend_sandbox.h"

namespace canopy {
namespace {

namespace ch = canopy::protocol::scanout;

constexpr uint64_t kPage = 4096;
constexpr uint32_t kColour = 0x00c0ffee;
constexpr uint8_t kSecret = 0x5e;

bool have_udmabuf() { return ::access("/dev/udmabuf", R_OK | W_OK) == 0; }

class Dmabuf : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_udmabuf()) {
      if (std::getenv("CANOPY_NO_SKIP")) FAIL() << "no /dev/udmabuf here (CANOPY_NO_SKIP=1)";
      GTEST_SKIP() << "no /dev/udmabuf here";
    }
    // The VM's RAM: the frame in pages 2 and 0 (in that order), a secret in page 1.
    auto ram = buffers::SharedMemory::create("ram", 3 * kPage);  // sealed against shrinking
    ASSERT_TRUE(ram.ok());
    auto map = ram->map(buffers::Access::kReadWrite);
    ASSERT_TRUE(map.ok());
    for (uint64_t i = 0; i < 3 * kPage / 4; ++i) std::memcpy(map->data() + i * 4, &kColour, 4);
    std::memset(map->data() + kPage, kSecret, kPage);
    auto dup = ram->dup_fd();
    ASSERT_TRUE(dup.ok());
    ram_ = std::make_shared<UniqueFd>(std::move(*dup));
    const char* tmp = std::getenv("TMPDIR");
    path_ = std::string(tmp && *tmp ? tmp : "/tmp") + "/canopy-dmabuf-test." + std::to_string(::getpid());
  }
  void TearDown() override { ::unlink(path_.c_str()); }

  std::shared_ptr<gpu::Frame> frame(uint64_t seq) {
    return gpu::testing::blob_frame(seq, 1,
                                    std::make_shared<std::vector<gpu::FramePiece>>(
                                        std::vector<gpu::FramePiece>{{ram_, 2 * kPage, kPage}, {ram_, 0, kPage}}),
                                    std::make_shared<gpu::Frame::ViewCache>());
  }
  UniqueFd listen() {
    UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path_.c_str(), path_.size());
    ::unlink(path_.c_str());
    EXPECT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(s.get(), 4), 0);
    return s;
  }
  // The BUFFER packet the compositor would get from a channel output, dma-buf on or off.
  ch::Message buffer(bool dmabuf, uint64_t* sent_as_dmabuf) {
    UniqueFd l = listen();
    gpu::ChannelOutput::Options o{path_, "cluster", 1};
    o.dmabuf = dmabuf;
    gpu::ChannelOutput out(o);
    out.on_frame(frame(1));
    UniqueFd comp(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
    EXPECT_TRUE(comp.valid());
    for (int i = 0; i < 4; ++i) {
      auto m = ch::receive(comp.get(), ch::Direction::kToCompositor, 2000);
      if (!m.ok()) break;
      if (m->type == ch::Type::kBuffer) {
        *sent_as_dmabuf = out.stats().buffers_dmabuf;
        return std::move(*m);
      }
    }
    ADD_FAILURE() << "no BUFFER packet";
    return {};
  }

  std::string path_;
  gpu::SharedFd ram_;
};

// What the compositor can read of the VM's memory through what it was given.
TEST_F(Dmabuf, TheCompositorGetsOnlyTheFramesPages) {
  uint64_t as_dmabuf = 0;
  auto m = buffer(true, &as_dmabuf);
  ASSERT_EQ(m.fds.size(), 1u);
  EXPECT_EQ(as_dmabuf, 1u);
  const int fd = m.fds[0].get();
  EXPECT_TRUE(buffers::is_udmabuf(fd));
  ASSERT_EQ(m.pieces().size(), 1u);  // one piece, one mapping on the compositor's side
  struct stat st{};
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(uint64_t(st.st_size), 2 * kPage) << "just the frame's two pages";
  void* p = ::mmap(nullptr, 2 * kPage, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  const auto* b = static_cast<const uint8_t*>(p);
  size_t colour = 0, secret = 0;
  for (uint64_t i = 0; i < 2 * kPage; i += 4) {
    uint32_t v;
    std::memcpy(&v, b + i, 4);
    colour += v == kColour;
    secret += b[i] == kSecret;
  }
  ::munmap(p, 2 * kPage);
  EXPECT_EQ(colour, 2 * kPage / 4);
  EXPECT_EQ(secret, 0u);
  EXPECT_EQ(::mmap(nullptr, 3 * kPage, PROT_READ, MAP_SHARED, fd, 0), MAP_FAILED) << "nothing past the frame";

  // Control: the files behind the pieces, read-only, reach the secret page.
  uint64_t unused = 0;
  auto whole = buffer(false, &unused);
  ASSERT_EQ(whole.fds.size(), 1u);
  EXPECT_FALSE(buffers::is_udmabuf(whole.fds[0].get()));
  uint8_t got[8] = {};
  ASSERT_EQ(::pread(whole.fds[0].get(), got, sizeof got, kPage), ssize_t(sizeof got));
  EXPECT_EQ(got[0], kSecret) << "control: without the dma-buf the compositor reads the VM's other pages";
}

// The compositor takes the dma-buf and shows the frame from it.
TEST_F(Dmabuf, TheCompositorShowsAFrameFromTheDmaBuf) {
  display::OutputSpec o;
  o.name = "cluster";
  o.width = 32;
  o.height = 64;
  display::LayerSpec c;
  c.vm = "cluster";
  c.dst = {0, 0, 32, 64};
  o.layers = {c};
  display::Layout layout;
  layout.outputs.push_back(o);
  display::CompositorOptions co;
  co.listen_path = path_;
  co.renderer = "pixman";
  co.background = 0x000000;
  FakeClock clock;
  auto comp = display::Compositor::create(layout, co, clock);
  ASSERT_TRUE(comp.ok()) << comp.error().what;
  gpu::ChannelOutput out({path_, "cluster", 1});
  out.on_frame(frame(1));
  EXPECT_EQ(out.stats().buffers_dmabuf, 1u);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE((*comp)->poll_input(1).ok());
  clock.set(std::max(clock.now(), (*comp)->next_latch()));
  ASSERT_TRUE((*comp)->compose_due().ok());
  const display::Canvas& cv = (*comp)->canvas(0);
  for (uint32_t y : {0u, 31u, 63u}) {
    uint32_t v;
    std::memcpy(&v, cv.data + size_t(y) * cv.stride + 16 * 4, 4);
    EXPECT_EQ(v & 0x00ffffff, kColour) << "row " << y;
  }
}

// A taken-over compositor holding a read-only descriptor of guest memory (what it gets where a frame's
// pieces cannot go as a dma-buf) cannot make it a writable dma-buf: canopy-display's confinement keeps
// it from opening /dev/udmabuf for writing (Landlock: restrict_writes with "udmabuf" refused) and from
// the udmabuf ioctls however the device was opened (seccomp: SyscallPolicy::no_udmabuf; udmabuf looks
// at neither the device's open mode nor the memfd descriptor's), while other device files stay open
// to it. Controls: with the Landlock view alone, the device opened read-only still makes the dma-buf;
// with neither, so does make_udmabuf; either way the VM's memory is written through it.
TEST_F(Dmabuf, TheCompositorsConfinementCannotTurnReadOnlyMemoryIntoAWritableDmaBuf) {
  enum class Confined { kAsCanopyDisplay, kLandlockOnly, kNot };
  for (Confined how : {Confined::kAsCanopyDisplay, Confined::kLandlockOnly, Confined::kNot}) {
    SCOPED_TRACE(how == Confined::kAsCanopyDisplay ? "as canopy-display"
                 : how == Confined::kLandlockOnly  ? "control: the Landlock view alone"
                                                   : "control: unconfined");
    ASSERT_EQ(::pwrite(ram_->get(), "\0", 1, 0), 1);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // Exit status: 0 refused both ways, 1 a dma-buf was made and written through, 2 something else.
      auto ro = reopen_read_only(ram_->get());
      if (!ro.ok()) _exit(2);
      const std::vector<std::string> udmabuf = {"udmabuf"};
      if (how != Confined::kNot && !transport::restrict_writes({}, udmabuf).ok()) _exit(2);
      transport::SyscallPolicy policy;
      policy.no_udmabuf = true;
      if (how == Confined::kAsCanopyDisplay && !transport::confine_syscalls(policy).ok()) _exit(2);
      const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);  // other devices stay open to it
      if (null < 0) _exit(2);
      ::close(null);
      int dmabuf = -1;
      const buffers::FilePiece page{ro->get(), 0, kPage};
      if (auto d = buffers::make_udmabuf({&page, 1}); d.ok()) {
        dmabuf = d->release();  // the device opened read-write
      } else if (const int dev = ::open("/dev/udmabuf", O_RDONLY | O_CLOEXEC); dev >= 0) {
        udmabuf_create c{};
        c.memfd = uint32_t(ro->get());
        c.size = kPage;
        dmabuf = ::ioctl(dev, UDMABUF_CREATE, &c);  // the device opened read-only
        if (dmabuf < 0 && errno != EPERM) _exit(2);
      }
      if (dmabuf < 0) _exit(0);
      void* p = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, dmabuf, 0);
      if (p == MAP_FAILED) _exit(2);
      static_cast<uint8_t*>(p)[0] = 0x5a;
      _exit(1);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st));
    const bool refused = how == Confined::kAsCanopyDisplay;
    EXPECT_EQ(WEXITSTATUS(st), refused ? 0 : 1);
    uint8_t b = 0;
    ASSERT_EQ(::pread(ram_->get(), &b, 1, 0), 1);
    EXPECT_EQ(b, refused ? 0 : 0x5a) << "whether guest memory was written through a dma-buf";
  }
}

}  // namespace
}  // namespace canopy
