// libFuzzer target: vhost-user messages into the back-end state machine. The input is a sequence of
// records: [u8 fd_count(0..3) | u8 fd_kind][12-byte header][payload of header.size bytes]. fd_kind 0
// attaches memfds of 256 KiB (guest memory), 1 attaches eventfds (kick/call). A ring set up by the
// input is served by an echo device, so descriptor chains from guest memory are exercised too.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "canopy/transport/vhost_user_backend.h"

using namespace canopy;
using namespace canopy::transport;
using namespace canopy::transport::vhost_user;

namespace {

class EchoDevice : public Device {
 public:
  uint64_t features() const override { return kVirtioFVersion1 | kVirtioFEventIdx | kVirtioFIndirectDesc; }
  uint64_t protocol_features() const override { return proto_bit(kProtoConfig); }
  uint16_t num_queues() const override { return 2; }
  Result<std::vector<uint8_t>> read_config(uint32_t offset, uint32_t size) override {
    if (offset > 16 || size > 16 - offset) return make_error(Errc::kOutOfRange, "config");
    return std::vector<uint8_t>(size, 0x11);
  }
  void on_kick(QueueHandle& q) override {
    (void)q.process([](const DescriptorChain&, DescriptorReader& rd, DescriptorWriter& wr) -> Result<uint32_t> {
      uint8_t buf[64];
      while (rd.remaining() && wr.remaining()) {
        size_t n = std::min({rd.remaining(), wr.remaining(), sizeof buf});
        CANOPY_TRY(rd.read(buf, n));
        CANOPY_TRY(wr.write(buf, n));
      }
      return wr.bytes_written();
    });
  }
};

UniqueFd make_fd(uint8_t kind) {
  if (kind & 1) return UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  int fd = memfd_create("fuzz-guest", MFD_CLOEXEC);
  if (ftruncate(fd, 0x40000) != 0) __builtin_trap();
  return UniqueFd(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  EchoDevice device;
  Backend backend(device);
  size_t pos = 0;
  int budget = 64;  // messages per input
  while (pos + 1 + sizeof(Header) <= size && budget-- > 0) {
    const uint8_t fd_spec = data[pos++];
    Message m;
    std::memcpy(&m.header, data + pos, sizeof(Header));
    pos += sizeof(Header);
    size_t len = std::min<size_t>(m.header.size.get(), size - pos);
    len = std::min<size_t>(len, kMaxPayload);
    m.payload.assign(data + pos, data + pos + len);
    pos += len;
    for (int i = 0; i < (fd_spec & 3); ++i) m.fds.push_back(make_fd(uint8_t(fd_spec >> 2)));
    (void)backend.handle(m);
  }
  return 0;
}
