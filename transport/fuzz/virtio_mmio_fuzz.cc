// libFuzzer target: the virtio-mmio register model. The input is a sequence of 8-byte records
//   op (u8) | offset (u16 LE) | size (u8) | value (u32 LE)
// applied to a VirtioMmio in front of a fake device that runs a real DeviceQueue on guest memory:
//   op % 8 == 0..3  MMIO read   (size % 9 bytes at offset)
//   op % 8 == 4..5  MMIO write  (an 8-byte write repeats value in both halves)
//   op % 8 == 6     device side: raise_interrupt / config_changed / set_needs_reset (by value % 3);
//                   with size 0xee: used-buffer notifications external (irqfd) on or off (value & 1)
//   op % 8 == 7     guest memory: store value at (offset * 4) so the fuzzer can build rings and chains
// After every record the model's invariants are checked; a violation traps.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#include "canopy/base/log.h"
#include "canopy/transport/guest_memory.h"
#include "canopy/transport/virtio_mmio.h"
#include "canopy/transport/virtqueue.h"

using namespace canopy;
using namespace canopy::transport;

namespace {

constexpr uint64_t kMem = 0x40000;  // guest memory [0, 256 KiB): every u16 offset * 4 lands inside
constexpr uint16_t kQueues = 3;
constexpr uint64_t kOffered =
    kVirtioFVersion1 | kVirtioFEventIdx | kVirtioFIndirectDesc | kVirtioFRingReset | kVirtioFNotificationData | 1ull;

class FuzzDevice : public MmioDevice {
 public:
  explicit FuzzDevice(GuestMemory& mem) : mem_(mem) { std::memset(config_, 0x5a, sizeof config_); }
  void attach(VirtioMmio* mmio) { mmio_ = mmio; }
  uint32_t device_id() const override { return 16; }  // virtio-gpu
  uint64_t device_features() const override { return kOffered; }
  uint32_t config_size() const override { return sizeof config_; }
  void read_config(uint32_t offset, void* dst, uint32_t len) override {
    if (offset + uint64_t(len) > sizeof config_) __builtin_trap();
    std::memcpy(dst, config_ + offset, len);
  }
  void write_config(uint32_t offset, const void* src, uint32_t len) override {
    if (offset + uint64_t(len) > sizeof config_) __builtin_trap();
    std::memcpy(config_ + offset, src, len);
  }
  uint16_t num_queues() const override { return kQueues; }
  uint16_t queue_max_size(uint16_t q) const override { return q == 0 ? 64 : q == 1 ? 0 : 0xffff; }
  std::optional<ShmRegion> shm_region(uint32_t id) const override {
    if (id == 0) return ShmRegion{0x1'0000'0000ull, 0x100000};
    return std::nullopt;
  }
  bool on_features_ok(uint64_t f) override {
    if ((f & ~kOffered) || !(f & kVirtioFVersion1)) __builtin_trap();  // the model must have checked
    features_ = f;
    return !(f & 1ull) || (f & kVirtioFEventIdx);  // refuse one combination, as a device may
  }
  Status on_queue_ready(uint16_t q, const MmioQueueConfig& cfg) override {
    if (q >= kQueues || q == 1) __builtin_trap();
    if (!cfg.ready) {
      queues_[q].reset();
      return {};
    }
    if (!is_power_of_two(cfg.size) || cfg.size > kMaxQueueSize) __builtin_trap();
    return queues_[q].configure(&mem_, cfg.size, cfg.addrs, features_);
  }
  void on_queue_notify(uint16_t q, uint32_t) override {
    if (q >= kQueues || !queues_[q].ready()) __builtin_trap();  // only ready queues get kicks
    DescriptorChain chain;
    // A budget of chains per input keeps one input's run time bounded (a chain may be 32768 long).
    for (; pop_budget_ > 0; --pop_budget_) {
      auto r = queues_[q].pop(chain);
      if (!r.ok()) {
        if (queues_[q].broken()) break;
        continue;
      }
      if (!*r) break;
      DescriptorWriter w(mem_, chain);
      (void)w.fill(0xcd, w.remaining() < 64 ? w.remaining() : 64);
      (void)queues_[q].push_used(chain.head(), w.bytes_written());
    }
    if (queues_[q].should_notify()) mmio_->raise_interrupt(InterruptKind::kUsedBuffer);
  }
  void on_reset() override {
    for (auto& q : queues_) q.reset();
    features_ = 0;
  }

 private:
  GuestMemory& mem_;
  VirtioMmio* mmio_ = nullptr;
  DeviceQueue queues_[kQueues];
  uint64_t features_ = 0;
  int pop_budget_ = 128;
  uint8_t config_[40];
};

struct Record {
  uint8_t op;
  uint16_t offset;
  uint8_t size;
  uint32_t value;
};

void check_invariants(VirtioMmio& mmio, bool line) {
  const uint8_t s = mmio.status();
  if ((s & kStatusDriverOk) && !(s & kStatusFeaturesOk)) __builtin_trap();
  if ((s & kStatusFeaturesOk) && !(s & kStatusDriver)) __builtin_trap();
  if ((s & kStatusDriver) && !(s & kStatusAcknowledge)) __builtin_trap();
  if (s & kStatusFeaturesOk) {
    const uint64_t f = mmio.driver_features();
    if ((f & ~kOffered) || !(f & kVirtioFVersion1)) __builtin_trap();
  }
  if (mmio.interrupt_status() & ~3u) __builtin_trap();
  if (line && mmio.interrupt_status() == 0) __builtin_trap();  // a level line never stays up for nothing
  for (uint16_t q = 0; q < kQueues; ++q) {
    MmioQueueConfig c = mmio.queue(q);
    if (!c.ready) continue;
    if (q == 1 || !is_power_of_two(c.size) || (c.addrs.desc & 15) || (c.addrs.avail & 1) || (c.addrs.used & 3))
      __builtin_trap();
    if (q == 0 && c.size > 64) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int fd = [] {
    set_log_level(LogLevel::kError);  // bad accesses are expected here; keep the run quiet
    int f = memfd_create("fuzz-mmio-guest", MFD_CLOEXEC);
    if (f < 0 || ftruncate(f, kMem) != 0) __builtin_trap();
    return f;
  }();
  GuestMemory mem;
  if (!mem.add_region({0, kMem, 0, 0}, UniqueFd(dup(fd))).ok()) __builtin_trap();  // set-up, not input
  (void)mem.fill(0, 0, kMem);

  FuzzDevice dev(mem);
  bool line = false;
  VirtioMmio mmio(dev, [&](bool asserted) { line = asserted; });
  dev.attach(&mmio);

  for (size_t pos = 0; pos + 8 <= size && pos < 8 * 4096; pos += 8) {
    Record r;
    r.op = data[pos];
    r.offset = uint16_t(data[pos + 1] | (data[pos + 2] << 8));
    r.size = data[pos + 3];
    std::memcpy(&r.value, data + pos + 4, 4);
    switch (r.op % 8) {
      case 0:
      case 1:
      case 2:
      case 3: {
        const uint32_t n = r.size % 9;
        const uint64_t v = mmio.read(r.offset, n);
        // Reads never return more bits than the access width.
        if (n < 8 && n > 0 && (v >> (8 * n)) != 0) __builtin_trap();
        break;
      }
      case 4:
      case 5: mmio.write(r.offset, r.size % 9, uint64_t(r.value) | (uint64_t(r.value) << 32)); break;
      case 6:
        if (r.size == 0xee)  // canopy-vmm's irqfd mode on or off
          mmio.set_used_buffer_notifications_external(r.value & 1);
        else if (r.value % 3 == 0) mmio.raise_interrupt(InterruptKind::kUsedBuffer);
        else if (r.value % 3 == 1) mmio.config_changed();
        else mmio.set_needs_reset();
        break;
      case 7: (void)mem.write_obj<uint32_t>(uint64_t(r.offset) * 4, r.value); break;
    }
    check_invariants(mmio, line && (mmio.status() & kStatusDriverOk));
  }
  return 0;
}
