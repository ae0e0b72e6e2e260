// canopy-vhost-rng: a virtio-rng (virtio 1.2 §5.4) vhost-user back-end. The smallest real device on
// the back-end library; the QEMU conformance test drives it with the upstream Linux virtio_rng driver.
//   --pattern   fill requests with the repeated text "canopy-rng:" (tests check it reaches the guest)
#include <sys/random.h>

#include <cstring>
#include <memory>
#include <string>

#include "canopy/base/log.h"
#include "canopy/transport/backend_main.h"
#include "canopy/transport/virtio_ring.h"

namespace {

using namespace canopy;
using namespace canopy::transport;
using namespace canopy::transport::vhost_user;

// Cap on bytes served per request: a guest asking for a huge buffer gets a bounded amount.
constexpr uint32_t kMaxRequestBytes = 64 * 1024;

class RngDevice : public Device {
 public:
  explicit RngDevice(bool pattern) : pattern_(pattern) {}
  uint64_t features() const override { return kVirtioFVersion1 | kVirtioFIndirectDesc | kVirtioFEventIdx; }
  uint16_t num_queues() const override { return 1; }
  void on_kick(QueueHandle& q) override {
    auto served = q.process([&](const DescriptorChain&, DescriptorReader&, DescriptorWriter& wr) -> Result<uint32_t> {
      size_t want = wr.remaining() < kMaxRequestBytes ? wr.remaining() : kMaxRequestBytes;
      uint8_t buf[4096];
      while (want > 0) {
        size_t n = want < sizeof buf ? want : sizeof buf;
        CANOPY_TRY(fill(buf, n));
        CANOPY_TRY(wr.write(buf, n));
        want -= n;
      }
      bytes_ += wr.bytes_written();
      return wr.bytes_written();
    });
    if (served.ok() && *served)
      CANOPY_DEBUG("served %u request(s), %llu bytes in all", *served, (unsigned long long)bytes_);
  }
  void on_queue_stopped(QueueHandle&) override {
    CANOPY_INFO("queue stopped; %llu random bytes served", (unsigned long long)bytes_);
  }

 private:
  Status fill(uint8_t* buf, size_t n) {
    if (pattern_) {
      static constexpr char kText[] = "canopy-rng:";
      for (size_t i = 0; i < n; ++i) buf[i] = uint8_t(kText[(pattern_pos_++) % (sizeof kText - 1)]);
      return {};
    }
    size_t got = 0;
    while (got < n) {
      ssize_t r = getrandom(buf + got, n - got, 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        return make_error(Errc::kIo, "getrandom failed", errno);
      }
      got += size_t(r);
    }
    return {};
  }
  bool pattern_;
  uint64_t pattern_pos_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  BackendProgram program{
      "canopy-vhost-rng", "rng", {}, "  --pattern             serve the repeated text \"canopy-rng:\"\n"};
  program.confine = true;
  return backend_main(argc, argv, program, [](const std::vector<std::string>& args) -> Result<std::unique_ptr<Device>> {
    bool pattern = false;
    for (const auto& a : args) {
      if (a == "--pattern") pattern = true;
      else return make_error(Errc::kInvalidArgument, "unknown option");
    }
    return std::unique_ptr<Device>(std::make_unique<RngDevice>(pattern));
  });
}
