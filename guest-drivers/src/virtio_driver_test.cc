// VirtioDriver through MmioDriverTransport against a small fake device behind the virtio-mmio register
// model: the §3.1.1 sequence, feature negotiation failures, queues and interrupts end to end.
#include "canopy/guest/virtio_driver.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "canopy/guest/mmio_driver_transport.h"
#include "canopy/transport/virtio_mmio.h"
#include "canopy/transport/virtqueue.h"

namespace canopy::guest {
namespace {

using namespace canopy::transport;

constexpr uint64_t kBase = 0x4000'0000;
constexpr uint64_t kMemSize = 0x100000;
constexpr uint64_t kRingArea = kBase;
constexpr uint64_t kRingAreaLen = 0x40000;
constexpr uint64_t kData = kBase + 0x80000;
constexpr uint32_t kDeviceId = 0x1042;  // any non-zero id
constexpr uint64_t kFeatA = 1ull << 0;
constexpr uint64_t kFeatB = 1ull << 1;

// "x17" (appending, not `"x" + std::to_string(i)`, which trips GCC 12's -Wrestrict false positive).
std::string tag(char c, int i) {
  std::string s(1, c);
  s += std::to_string(i);
  return s;
}

GuestMemory make_memory() {
  int fd = memfd_create("virtio-driver-test", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, off_t(kMemSize)) != 0) std::abort();
  GuestMemory mem;
  if (!mem.add_region(RegionInfo{kBase, kMemSize, 0, 0}, UniqueFd(fd)).ok()) std::abort();
  return mem;
}

struct EchoConfig {
  le32 max_len;
  le32 generation_probe;
};

// A device that upper-cases what it reads into the writable part, on each of its queues.
class EchoDevice : public MmioDevice {
 public:
  explicit EchoDevice(GuestMemory& mem) : mem_(mem) { config_.max_len = 4096; }
  void attach(VirtioMmio* m) { mmio_ = m; }

  uint32_t device_id() const override { return id; }
  uint64_t device_features() const override { return features; }
  uint32_t config_size() const override { return sizeof config_; }
  void read_config(uint32_t offset, void* dst, uint32_t len) override {
    std::memcpy(dst, reinterpret_cast<const uint8_t*>(&config_) + offset, len);
    // Simulate a config change racing the driver's first multi-access read.
    if (change_config_during_read && offset == 4) {
      change_config_during_read = false;
      config_.max_len = 8192;
      mmio_->config_changed();
    }
  }
  void write_config(uint32_t, const void*, uint32_t) override {}
  uint16_t num_queues() const override { return uint16_t(queue_max.size()); }
  uint16_t queue_max_size(uint16_t q) const override { return queue_max[q]; }
  bool on_features_ok(uint64_t f) override {
    negotiated = f;
    return accept_features;
  }
  Status on_queue_ready(uint16_t q, const MmioQueueConfig& cfg) override {
    if (!cfg.ready) {
      queues_[q].reset();
      return {};
    }
    seen_configs.push_back(cfg);
    return queues_[q].configure(&mem_, cfg.size, cfg.addrs, negotiated);
  }
  void on_queue_notify(uint16_t q, uint32_t) override {
    ++kicks;
    if (threaded) {
      {
        std::lock_guard lock(mu_);
        pending_.push_back(q);
      }
      cv_.notify_one();
      return;
    }
    serve(q);
  }
  void on_status(uint8_t s) override {
    status_at_callbacks.push_back(s);
    if ((s & kStatusDriverOk) && fail_at_driver_ok) mmio_->set_needs_reset();
  }
  void on_reset() override {
    ++resets;
    for (auto& q : queues_) q.reset();
  }

  // The usual device loop: serve everything, re-enable kicks, re-check (a chain published before the
  // re-enable was seen would otherwise wait forever), then interrupt if the driver wants one.
  void serve(uint16_t q) {
    DescriptorChain c;
    for (;;) {
      for (;;) {
        auto r = queues_[q].pop(c);
        if (!r.ok() || !*r) break;
        std::string in(c.readable_bytes(), '\0');
        (void)DescriptorReader(mem_, c).read(in.data(), in.size());
        for (auto& ch : in) ch = char(std::toupper(static_cast<unsigned char>(ch)));
        DescriptorWriter w(mem_, c);
        (void)w.write(in.data(), std::min<size_t>(in.size(), w.remaining()));
        (void)queues_[q].push_used(c.head(), w.bytes_written());
      }
      (void)queues_[q].enable_notification(true);
      auto more = queues_[q].has_available();
      if (!more.ok() || !*more) break;
    }
    if (queues_[q].should_notify()) mmio_->raise_interrupt(InterruptKind::kUsedBuffer);
  }

  // Threaded mode: kicks are queued and served on a device thread.
  void run_thread(std::atomic<bool>& stop) {
    std::unique_lock lock(mu_);
    while (!stop) {
      cv_.wait_for(lock, std::chrono::milliseconds(5), [&] { return !pending_.empty(); });
      while (!pending_.empty()) {
        uint16_t q = pending_.back();
        pending_.pop_back();
        lock.unlock();
        serve(q);
        lock.lock();
      }
    }
  }

  uint32_t id = kDeviceId;
  uint64_t features = kVirtioFVersion1 | kVirtioFEventIdx | kVirtioFIndirectDesc | kVirtioFRingPacked | kFeatA | kFeatB;
  std::vector<uint16_t> queue_max{100, 16};
  bool accept_features = true;
  bool fail_at_driver_ok = false;
  bool change_config_during_read = false;
  bool threaded = false;
  uint64_t negotiated = 0;
  int kicks = 0;
  int resets = 0;
  std::vector<MmioQueueConfig> seen_configs;
  std::vector<uint8_t> status_at_callbacks;

 private:
  GuestMemory& mem_;
  VirtioMmio* mmio_ = nullptr;
  DeviceQueue queues_[4];
  EchoConfig config_{};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<uint16_t> pending_;
};

class VirtioDriverTest : public ::testing::Test {
 protected:
  VirtioDriverTest() : mem(make_memory()), dev(mem), mmio(dev), transport(mmio), driver(transport, mem) {
    dev.attach(&mmio);
    opts.device_id = kDeviceId;
    opts.wanted_features = kFeatA | kVirtioFEventIdx | kVirtioFRingPacked;
    opts.num_queues = 2;
    opts.ring_area = {kRingArea, kRingAreaLen};
  }
  // Sends `text` on queue q and returns the device's reply, waiting for the interrupt.
  std::string echo(uint16_t q, const std::string& text, uint64_t token) {
    EXPECT_TRUE(mem.write(kData, text.data(), text.size()).ok());
    EXPECT_TRUE(driver.queue(q).add({{kData, uint32_t(text.size())}}, {{kData + 0x1000, 256}}, token).ok());
    EXPECT_TRUE(driver.kick(q).ok());
    auto irq = driver.wait_interrupt(5000);
    EXPECT_TRUE(irq.ok());
    if (irq.ok()) {
      EXPECT_TRUE(*irq & kInterruptUsedBuffer);
    }
    auto u = driver.queue(q).get_used();
    EXPECT_TRUE(u.ok() && u->has_value());
    if (!u.ok() || !u->has_value()) return {};
    EXPECT_EQ((*u)->token, token);
    std::string out((*u)->len, '\0');
    EXPECT_TRUE(mem.read(kData + 0x1000, out.data(), out.size()).ok());
    return out;
  }

  GuestMemory mem;
  EchoDevice dev;
  VirtioMmio mmio;
  MmioDriverTransport transport;
  VirtioDriver driver;
  DriverOptions opts;
};

TEST_F(VirtioDriverTest, InitSequenceReachesDriverOk) {
  Status s = driver.init(opts);
  ASSERT_TRUE(s.ok()) << s.error().what;
  EXPECT_TRUE(driver.initialised());
  EXPECT_EQ(mmio.status(), 0x0f);
  // The device saw every step in order: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK.
  EXPECT_EQ(dev.status_at_callbacks, (std::vector<uint8_t>{0x01, 0x03, 0x0b, 0x0f}));
  // Negotiated: offered & (wanted | VERSION_1), never RING_PACKED.
  EXPECT_EQ(driver.features(), kVirtioFVersion1 | kVirtioFEventIdx | kFeatA);
  EXPECT_EQ(dev.negotiated, driver.features());
  EXPECT_TRUE(driver.has_feature(kFeatA));
  EXPECT_FALSE(driver.has_feature(kFeatB));
  ASSERT_EQ(driver.num_queues(), 2);
  // Queue 0: QueueNumMax 100 -> 64; queue 1: 16.
  ASSERT_EQ(dev.seen_configs.size(), 2u);
  EXPECT_EQ(dev.seen_configs[0].size, 64);
  EXPECT_EQ(dev.seen_configs[1].size, 16);
  for (uint16_t q = 0; q < 2; ++q) {
    EXPECT_EQ(dev.seen_configs[q].addrs.desc, driver.queue(q).addrs().desc);
    EXPECT_EQ(dev.seen_configs[q].addrs.avail, driver.queue(q).addrs().avail);
    EXPECT_EQ(dev.seen_configs[q].addrs.used, driver.queue(q).addrs().used);
    EXPECT_TRUE(mmio.queue(q).ready);
  }
  EXPECT_EQ(driver.queue(0).addrs().desc, kRingArea);
  EXPECT_EQ(driver.queue(1).addrs().desc, (kRingArea + split_ring_bytes(64) + 15) & ~15ull);
  EXPECT_EQ(driver.ring_area_used(), driver.queue(1).addrs().used + used_ring_bytes(16) - kRingArea);
  EXPECT_EQ(mmio.bad_accesses(), 0u);  // the driver never makes a bad access
}

TEST_F(VirtioDriverTest, EchoRoundTripWithInterrupts) {
  ASSERT_TRUE(driver.init(opts).ok());
  EXPECT_EQ(echo(0, "hello cockpit", 1), "HELLO COCKPIT");
  EXPECT_EQ(echo(1, "queue one", 2), "QUEUE ONE");
  EXPECT_EQ(echo(0, "again", 3), "AGAIN");
  EXPECT_EQ(dev.kicks, 3);
  EXPECT_EQ(mmio.interrupt_status(), 0u);  // acknowledged
}

TEST_F(VirtioDriverTest, EchoWithoutEventIdx) {
  opts.wanted_features = kFeatA;
  ASSERT_TRUE(driver.init(opts).ok());
  EXPECT_FALSE(driver.has_feature(kVirtioFEventIdx));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(echo(0, tag('x', i), uint64_t(i)), tag('X', i));
}

TEST_F(VirtioDriverTest, IndirectDescriptorsEndToEnd) {
  opts.wanted_features = kVirtioFIndirectDesc;
  opts.indirect_entries = 8;
  ASSERT_TRUE(driver.init(opts).ok());
  ASSERT_TRUE(driver.has_feature(kVirtioFIndirectDesc));
  EXPECT_EQ(driver.queue(0).indirect_slot_entries(), 8u);
  ASSERT_TRUE(mem.write(kData, "abcdefgh", 8).ok());
  ASSERT_TRUE(driver.queue(0)
                  .add({{kData, 2}, {kData + 2, 2}, {kData + 4, 4}}, {{kData + 0x100, 4}, {kData + 0x104, 4}}, 9)
                  .ok());
  EXPECT_EQ(driver.queue(0).num_free(), 63);
  ASSERT_TRUE(driver.kick(0).ok());
  ASSERT_TRUE(driver.wait_interrupt(5000).ok());
  auto u = driver.queue(0).get_used();
  ASSERT_TRUE(u.ok() && u->has_value());
  EXPECT_EQ((*u)->len, 8u);
  char out[9] = {};
  ASSERT_TRUE(mem.read(kData + 0x100, out, 8).ok());
  EXPECT_STREQ(out, "ABCDEFGH");
  // Rings plus one 8-entry table per head for both queues.
  EXPECT_GE(driver.ring_area_used(), split_ring_bytes(64) + 64 * 8 * 16 + split_ring_bytes(16) + 16 * 8 * 16);
}

TEST_F(VirtioDriverTest, ThreadedDeviceWakesTheDriver) {
  dev.threaded = true;
  std::atomic<bool> stop{false};
  std::thread t([&] { dev.run_thread(stop); });
  ASSERT_TRUE(driver.init(opts).ok());
  for (int i = 0; i < 200; ++i) EXPECT_EQ(echo(uint16_t(i % 2), tag('t', i), uint64_t(i)), tag('T', i));
  stop = true;
  t.join();
  EXPECT_GE(transport.interrupts_raised(), 200u);
}

TEST_F(VirtioDriverTest, DeviceWithoutVersion1IsRejected) {
  dev.features = kFeatA;  // a legacy-only device
  Status s = driver.init(opts);
  EXPECT_EQ(s.code(), Errc::kUnsupported);
  EXPECT_FALSE(driver.initialised());
  EXPECT_EQ(mmio.status(), kStatusAcknowledge | kStatusDriver | kStatusFailed);
}

TEST_F(VirtioDriverTest, FeaturesRefusedByTheDeviceFailInit) {
  dev.accept_features = false;
  Status s = driver.init(opts);
  EXPECT_EQ(s.code(), Errc::kUnsupported);
  EXPECT_EQ(mmio.status(), kStatusAcknowledge | kStatusDriver | kStatusFailed);  // FEATURES_OK did not stick
  EXPECT_TRUE(dev.seen_configs.empty());
}

TEST_F(VirtioDriverTest, FewerQueuesThanAskedFailsInit) {
  opts.num_queues = 3;
  Status s = driver.init(opts);
  EXPECT_EQ(s.code(), Errc::kUnsupported);
  EXPECT_TRUE(mmio.status() & kStatusFailed);
  EXPECT_FALSE(mmio.status() & kStatusDriverOk);
  EXPECT_EQ(driver.num_queues(), 0);
}

TEST_F(VirtioDriverTest, RingAreaTooSmallFailsInit) {
  opts.ring_area.len = split_ring_bytes(64) + 16;  // room for queue 0 only
  Status s = driver.init(opts);
  EXPECT_EQ(s.code(), Errc::kOutOfRange);
  EXPECT_TRUE(mmio.status() & kStatusFailed);
}

TEST_F(VirtioDriverTest, RingAreaOutsideGuestMemoryFailsInit) {
  opts.ring_area = {kBase + kMemSize - 0x1000, 0x10000};
  EXPECT_EQ(driver.init(opts).code(), Errc::kOutOfRange);
}

TEST_F(VirtioDriverTest, UnexpectedDeviceIdIsRejectedBeforeTouchingStatus) {
  opts.device_id = 25;
  EXPECT_EQ(driver.init(opts).code(), Errc::kUnsupported);
  EXPECT_EQ(mmio.status(), 0);
  EXPECT_TRUE(dev.status_at_callbacks.empty());
}

TEST_F(VirtioDriverTest, PlaceholderDeviceIdZeroFailsProbe) {
  dev.id = 0;
  opts.device_id = 0;
  EXPECT_EQ(driver.init(opts).code(), Errc::kUnsupported);
}

TEST_F(VirtioDriverTest, DeviceSetupRunsBetweenFeaturesOkAndDriverOk) {
  uint8_t status_seen = 0;
  uint32_t max_len = 0;
  opts.device_setup = [&](VirtioDriver& d) -> Status {
    status_seen = d.transport().read_status();
    CANOPY_ASSIGN_OR_RETURN(EchoConfig c, d.read_config_obj<EchoConfig>(0));
    max_len = c.max_len;
    return {};
  };
  ASSERT_TRUE(driver.init(opts).ok());
  EXPECT_EQ(status_seen, 0x0b);
  EXPECT_EQ(max_len, 4096u);
}

TEST_F(VirtioDriverTest, DeviceSetupErrorSetsFailed) {
  opts.device_setup = [](VirtioDriver&) -> Status { return make_error(Errc::kInvalidArgument, "bad config"); };
  EXPECT_EQ(driver.init(opts).code(), Errc::kInvalidArgument);
  EXPECT_EQ(mmio.status(), 0x8b);
}

TEST_F(VirtioDriverTest, NeedsResetAtDriverOkFailsInit) {
  dev.fail_at_driver_ok = true;
  EXPECT_EQ(driver.init(opts).code(), Errc::kState);
  EXPECT_TRUE(mmio.status() & kStatusFailed);
  EXPECT_TRUE(driver.needs_reset());
}

TEST_F(VirtioDriverTest, ConfigReadRetriesWhenGenerationChanges) {
  ASSERT_TRUE(driver.init(opts).ok());
  dev.change_config_during_read = true;
  auto c = driver.read_config_obj<EchoConfig>(0);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->max_len.get(), 8192u);  // the re-read sees the new value
  EXPECT_EQ(mmio.config_generation(), 1u);
  EXPECT_EQ(driver.poll_interrupt(), kInterruptConfigChange);
  EXPECT_EQ(driver.poll_interrupt(), 0u);
}

TEST_F(VirtioDriverTest, WaitInterruptTimesOut) {
  ASSERT_TRUE(driver.init(opts).ok());
  EXPECT_EQ(driver.wait_interrupt(10).code(), Errc::kTimeout);
}

TEST_F(VirtioDriverTest, ResetAndReinit) {
  ASSERT_TRUE(driver.init(opts).ok());
  ASSERT_TRUE(driver.queue(0).add({{kData, 4}}, {}, 77).ok());
  auto tokens = driver.queue(0).detach_unused();
  EXPECT_EQ(tokens, std::vector<uint64_t>{77});
  ASSERT_TRUE(driver.reset().ok());
  EXPECT_EQ(mmio.status(), 0);
  EXPECT_FALSE(driver.initialised());
  EXPECT_EQ(driver.num_queues(), 0);
  const int resets = dev.resets;
  ASSERT_TRUE(driver.init(opts).ok());
  EXPECT_EQ(dev.resets, resets + 1);
  EXPECT_EQ(echo(0, "after reset", 5), "AFTER RESET");
}

TEST_F(VirtioDriverTest, KickOnUnknownQueueIsAnError) {
  ASSERT_TRUE(driver.init(opts).ok());
  EXPECT_EQ(driver.kick(5).code(), Errc::kInvalidArgument);
}

TEST(MmioDriverTransport, ConfigAccessesUseNaturalWidths) {
  GuestMemory mem = make_memory();
  EchoDevice dev(mem);
  VirtioMmio mmio(dev);
  dev.attach(&mmio);
  MmioDriverTransport t(mmio);
  uint8_t buf[7];
  ASSERT_TRUE(t.read_config(1, buf, 7).ok());  // 1 + 2 + 4 bytes: no bad access
  EXPECT_EQ(mmio.bad_accesses(), 0u);
  EXPECT_EQ(buf[0], 0x10);  // max_len 4096 = 00 10 00 00, from byte 1
  EXPECT_EQ(t.read_config(UINT32_MAX, buf, 2).code(), Errc::kOverflow);
}

}  // namespace
}  // namespace canopy::guest
