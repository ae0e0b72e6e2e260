// The partition side of the message transport (partition.h).
#include "canopy/guest/partition.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"

namespace canopy::guest {

namespace msg = transport::msg;
using msg::Type;

namespace {

Errc errc_from(msg::Code c) {
  switch (c) {
    case msg::Code::kOk: return Errc::kOk;
    case msg::Code::kInvalid: return Errc::kInvalidArgument;
    case msg::Code::kNoDevice:
    case msg::Code::kUnsupported: return Errc::kUnsupported;
    case msg::Code::kOutOfRange: return Errc::kOutOfRange;
    case msg::Code::kState: return Errc::kState;
    case msg::Code::kDeviceError: return Errc::kIo;
  }
  return Errc::kProtocol;
}

// VirtioTransport over the message socket: one device of a Partition.
class MsgDriverTransport final : public VirtioTransport {
 public:
  MsgDriverTransport(Partition& p, uint16_t dev) : p_(p), dev_(dev), queues_(p.device_info(dev).num_queues) {}

  Status probe() override {
    if (p_.device_info(dev_).device_id.get() == 0) return make_error(Errc::kUnsupported, "device id 0");
    return {};
  }
  uint32_t device_id() override { return p_.device_info(dev_).device_id; }

  uint8_t read_status() override {
    auto r = p_.request(Type::kGetStatus, dev_, {});
    // Without an answer the device is unusable: report it as needing a reset.
    if (!r.ok()) return transport::kStatusDeviceNeedsReset;
    return uint8_t(r->as<msg::StatusMsg>().status.get());
  }
  void write_status(uint8_t status) override {
    msg::StatusMsg s{};
    s.status = status;
    auto r = p_.request(Type::kSetStatus, dev_, msg::bytes_of(s));
    if (!r.ok()) CANOPY_WARN("device %u: SET_STATUS %#x failed: %s", dev_, status, r.error().what);
    if (status == 0) {
      for (auto& q : queues_) q = Queue{};  // the VMM forgot the queues; so do we
    }
  }
  uint64_t read_device_features() override {
    auto r = p_.request(Type::kGetFeatures, dev_, {});
    return r.ok() ? r->as<msg::Features>().bits.get() : 0;
  }
  void write_driver_features(uint64_t features) override {
    msg::Features f{};
    f.bits = features;
    auto r = p_.request(Type::kSetFeatures, dev_, msg::bytes_of(f));
    if (!r.ok()) CANOPY_WARN("device %u: SET_FEATURES failed: %s", dev_, r.error().what);
  }
  uint32_t config_generation() override {
    msg::ConfigReq c{};
    auto r = p_.request(Type::kGetConfig, dev_, msg::bytes_of(c));
    return r.ok() ? r->as<msg::ConfigResp>().generation.get() : 0;
  }
  Status read_config(uint32_t offset, void* dst, uint32_t len) override {
    if (len > msg::kMaxConfigBytes) return make_error(Errc::kOutOfRange, "config read over 256 bytes");
    msg::ConfigReq c{};
    c.offset = offset;
    c.size = len;
    CANOPY_ASSIGN_OR_RETURN(msg::Message m, p_.request(Type::kGetConfig, dev_, msg::bytes_of(c)));
    auto data = m.tail(sizeof(msg::ConfigResp));
    if (data.size() != len) return make_error(Errc::kProtocol, "GET_CONFIG reply has the wrong size");
    if (len) std::memcpy(dst, data.data(), len);
    return {};
  }
  Status write_config(uint32_t offset, const void* src, uint32_t len) override {
    if (len > msg::kMaxConfigBytes) return make_error(Errc::kOutOfRange, "config write over 256 bytes");
    std::vector<uint8_t> payload(sizeof(msg::SetConfigReq) + len);
    msg::SetConfigReq c{};
    c.offset = offset;
    c.size = len;
    std::memcpy(payload.data(), &c, sizeof c);
    if (len) std::memcpy(payload.data() + sizeof c, src, len);
    CANOPY_TRY(p_.request(Type::kSetConfig, dev_, payload));
    return {};
  }

  uint16_t queue_max_size(uint16_t q) override {
    return q < queues_.size() ? p_.device_info(dev_).max_queue_size.get() : 0;
  }
  Status set_queue(uint16_t q, uint16_t size, const transport::VringAddrs& addrs) override {
    if (q >= queues_.size()) return make_error(Errc::kInvalidArgument, "no such queue");
    queues_[q].size = size;
    queues_[q].addrs = addrs;
    return {};
  }
  Status set_queue_ready(uint16_t q, bool ready) override {
    if (q >= queues_.size()) return make_error(Errc::kInvalidArgument, "no such queue");
    Queue& qu = queues_[q];
    if (!ready) {
      msg::ResetVqueue r{};
      r.index = q;
      qu = Queue{};
      CANOPY_TRY(p_.request(Type::kResetVqueue, dev_, msg::bytes_of(r)));
      return {};
    }
    UniqueFd kick(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    UniqueFd call(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!kick || !call) return make_error(Errc::kIo, "eventfd failed", errno);
    msg::SetVqueue v{};
    v.index = q;
    v.size = qu.size;
    v.desc = qu.addrs.desc;
    v.avail = qu.addrs.avail;
    v.used = qu.addrs.used;
    const int fds[2] = {kick.get(), call.get()};
    CANOPY_TRY(p_.request(Type::kSetVqueue, dev_, msg::bytes_of(v), fds));
    qu.kick = std::move(kick);
    qu.call = std::move(call);
    qu.ready = true;
    return {};
  }
  bool queue_ready(uint16_t q) override { return q < queues_.size() && queues_[q].ready; }
  void notify_queue(uint16_t q) override {
    if (q >= queues_.size() || !queues_[q].kick) return;
    uint64_t one = 1;
    ssize_t n;
    do {
      n = write(queues_[q].kick.get(), &one, sizeof one);
    } while (n < 0 && errno == EINTR);
  }

  uint32_t poll_interrupt() override {
    (void)p_.poll_events();
    uint32_t causes = 0;
    for (auto& q : queues_) {
      uint64_t v;
      if (q.call && read(q.call.get(), &v, sizeof v) == sizeof v) causes |= kInterruptUsedBuffer;
    }
    auto& ev = p_.events(dev_);
    if (ev.config_changed) {
      ev.config_changed = false;
      causes |= kInterruptConfigChange;
    }
    return causes;
  }
  Result<uint32_t> wait_interrupt(int timeout_ms) override {
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms < 0 ? 0 : timeout_ms);
    for (;;) {
      if (uint32_t c = poll_interrupt()) return c;
      std::vector<pollfd> pfds;
      pfds.push_back({p_.socket_fd(), POLLIN, 0});
      for (auto& q : queues_) {
        if (q.call) pfds.push_back({q.call.get(), POLLIN, 0});
      }
      int wait = -1;
      if (timeout_ms >= 0) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return make_error(Errc::kTimeout, "no interrupt within the timeout");
        wait = int(left);
      }
      int r = poll(pfds.data(), pfds.size(), wait);
      if (r < 0 && errno != EINTR) return make_error(Errc::kIo, "poll failed", errno);
      if (pfds[0].revents & (POLLHUP | POLLERR)) return make_error(Errc::kClosed, "the VMM closed the socket");
    }
  }

 private:
  struct Queue {
    uint16_t size = 0;
    transport::VringAddrs addrs{};
    bool ready = false;
    UniqueFd kick;
    UniqueFd call;
  };
  Partition& p_;
  uint16_t dev_;
  std::vector<Queue> queues_;
};

}  // namespace

Result<std::unique_ptr<Partition>> Partition::attach(int reply_timeout_ms) {
  const char* v = std::getenv(kPartitionFdEnv);
  if (v == nullptr || *v == '\0') return make_error(Errc::kInvalidArgument, "CANOPY_PARTITION_FD is not set");
  char* end = nullptr;
  long fd = std::strtol(v, &end, 10);
  if (*end != '\0' || fd < 0 || fd > 1 << 20)
    return make_error(Errc::kInvalidArgument, "CANOPY_PARTITION_FD is not an fd");
  return connect(UniqueFd(int(fd)), reply_timeout_ms);
}

Result<std::unique_ptr<Partition>> Partition::connect(UniqueFd sock, int reply_timeout_ms) {
  std::unique_ptr<Partition> p(new Partition(std::move(sock), reply_timeout_ms));
  CANOPY_TRY(p->hello());
  return p;
}

Partition::~Partition() = default;

Status Partition::hello() {
  msg::HelloReq h{};
  h.version = msg::kVersion;
  CANOPY_ASSIGN_OR_RETURN(msg::Message m, request(Type::kHello, 0, msg::bytes_of(h)));
  const auto r = m.as<msg::HelloResp>();
  if (r.version.get() != msg::kVersion) return make_error(Errc::kUnsupported, "VMM speaks another transport version");
  if (r.num_devices.get() > msg::kMaxDevices) return make_error(Errc::kProtocol, "VMM announced too many devices");
  struct stat st;
  if (fstat(m.fds[0].get(), &st) != 0) return make_error(Errc::kIo, "fstat of the RAM fd failed", errno);
  if (r.ram_size.get() == 0 || uint64_t(st.st_size) < r.ram_size.get())
    return make_error(Errc::kProtocol, "RAM fd smaller than the announced RAM size");
  ram_size_ = r.ram_size;
  CANOPY_TRY(mem_.add_region(transport::RegionInfo{0, ram_size_, 0, 0}, std::move(m.fds[0])));
  devices_.clear();
  for (uint16_t d = 0; d < r.num_devices.get(); ++d) {
    CANOPY_ASSIGN_OR_RETURN(msg::Message info, request(Type::kGetDeviceInfo, d, {}));
    devices_.push_back(info.as<msg::DeviceInfo>());
  }
  events_.assign(devices_.size(), DeviceEvents{});
  return {};
}

Result<uint16_t> Partition::find_device(uint32_t virtio_id) const {
  for (size_t d = 0; d < devices_.size(); ++d) {
    if (devices_[d].device_id.get() == virtio_id) return uint16_t(d);
  }
  return make_error(Errc::kUnsupported, "no device of that type");
}

std::unique_ptr<VirtioTransport> Partition::transport(uint16_t dev) {
  return std::make_unique<MsgDriverTransport>(*this, dev);
}

Result<GuestArea> Partition::alloc(uint64_t len, uint64_t align) {
  if (align == 0 || (align & (align - 1))) return make_error(Errc::kInvalidArgument, "alignment not a power of two");
  auto start = checked_add(alloc_next_, align - 1);
  if (!start) return make_error(Errc::kOverflow, "alloc overflow");
  *start &= ~(align - 1);
  auto end = checked_add(*start, len);
  if (len == 0 || !end || *end > ram_size_) return make_error(Errc::kOutOfRange, "partition RAM used up");
  CANOPY_TRY(mem_.fill(*start, 0, len));
  alloc_next_ = *end;
  return GuestArea{*start, len};
}

Status Partition::heartbeat(uint64_t progress) {
  msg::Heartbeat h{};
  h.sequence = ++heartbeat_seq_;
  h.progress = progress;
  auto pkt = msg::encode(Type::kHeartbeat, 0, 0, 0, msg::Code::kOk, msg::bytes_of(h));
  CANOPY_TRY(msg::send_packet(sock_.get(), pkt));
  return poll_events();
}

Status Partition::poll_events() {
  for (;;) {
    auto m = msg::receive(sock_.get(), msg::Direction::kToPartition, 0);
    if (!m.ok()) {
      if (m.code() == Errc::kTimeout) return {};
      return m.error();
    }
    if (m->is_response()) {
      CANOPY_WARN_RL("unexpected response id %u dropped", m->header.id.get());
      continue;
    }
    take_event(*m);
  }
}

void Partition::take_event(const msg::Message& m) {
  if (m.type() == Type::kEventStop) {
    stop_requested_ = true;
    return;
  }
  const uint16_t dev = m.header.device;
  if (dev >= events_.size()) return;  // an event for no device we know: ignore
  const auto e = m.as<msg::EventConfig>();
  events_[dev].config_changed = true;
  events_[dev].status = uint8_t(e.status.get());
}

Result<msg::Message> Partition::request(Type type, uint16_t device, std::span<const uint8_t> payload,
                                        std::span<const int> fds) {
  const uint32_t id = next_id_++;
  if (next_id_ == 0) next_id_ = 1;
  auto pkt = msg::encode(type, 0, device, id, msg::Code::kOk, payload);
  CANOPY_TRY(msg::send_packet(sock_.get(), pkt, fds));
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left < 0) left = 0;
    CANOPY_ASSIGN_OR_RETURN(msg::Message m, msg::receive(sock_.get(), msg::Direction::kToPartition, int(left)));
    if (!m.is_response()) {
      take_event(m);
      continue;
    }
    if (m.header.id.get() != id || m.type() != type) {
      CANOPY_WARN_RL("response id %u type %#x does not match request %u; dropped", m.header.id.get(),
                     unsigned(m.header.type), id);
      continue;
    }
    const auto code = msg::Code(m.header.status.get());
    if (code != msg::Code::kOk) return make_error(errc_from(code), msg::code_name(code));
    return m;
  }
}

}  // namespace canopy::guest
