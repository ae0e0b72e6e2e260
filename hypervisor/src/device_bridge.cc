// A partition's virtio device bridged to a vhost-user back-end (device_bridge.h).
#include "device_bridge.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "canopy/base/checked.h"
#include "canopy/base/log.h"
#include "canopy/transport/vhost_user_proto.h"

extern char** environ;

namespace canopy::hypervisor {

namespace msg = transport::msg;
namespace vu = transport::vhost_user;
using msg::Code;
using msg::Type;

namespace {

constexpr uint64_t kWantedProtocol = vu::proto_bit(vu::kProtoReplyAck) | vu::proto_bit(vu::kProtoMq) |
                                     vu::proto_bit(vu::kProtoConfig) | vu::proto_bit(vu::kProtoResetDevice) |
                                     vu::proto_bit(vu::kProtoStatus) | vu::proto_bit(vu::kProtoBackendReq);
// Messages taken from the back-end request channel per wake-up (the rest wait for the next one).
constexpr int kBackendRequestBudget = 16;
constexpr int kBackendRequestPartMs = 100;

DeviceBridge::Reply code(Code c) { return DeviceBridge::Reply{c, {}}; }

template <typename T>
DeviceBridge::Reply ok(const T& v) {
  auto b = msg::bytes_of(v);
  return DeviceBridge::Reply{Code::kOk, std::vector<uint8_t>(b.begin(), b.end())};
}

bool is_eventfd(int fd) {
  char path[64], target[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, target, sizeof target - 1);
  if (n <= 0) return false;
  target[n] = '\0';
  return std::strcmp(target, "anon_inode:[eventfd]") == 0;
}

// [gpa, gpa+len) inside RAM of `ram` bytes.
bool in_ram(uint64_t gpa, uint64_t len, uint64_t ram) {
  auto end = checked_add(gpa, len);
  return end && *end <= ram;
}

}  // namespace

uint32_t virtio_config_size(uint32_t id) {
  switch (id) {
    case 3: return 12;    // console: cols, rows, max_nr_ports, emerg_wr
    case 16: return 16;   // gpu: events_read, events_clear, num_scanouts, num_capsets
    case 18: return 136;  // input: select, subsel, size, reserved, union
    case 19: return 8;    // vsock: guest_cid
    case 25: return 16;   // snd: jacks, streams, chmaps, controls
    case 41: return 8;    // gpio: ngpio, padding, gpio_names_size
    default: return 0;    // rng, i2c, scmi, can: none
  }
}

uint16_t virtio_default_queues(uint32_t id) {
  switch (id) {
    case 3: return 2;
    case 16: return 2;
    case 18: return 2;
    case 19: return 3;
    case 25: return 4;
    case 32: return 2;
    case 41: return 2;
    default: return 1;
  }
}

msg::DeviceInfo DeviceBridge::info() const {
  msg::DeviceInfo i{};
  i.device_id = spec_.virtio_id;
  i.vendor_id = 0x4e4f4143;  // "CANO"
  i.num_queues = num_queues_;
  i.max_queue_size = kPartitionQueueSize;
  i.config_size = config_size_;
  return i;
}

Status DeviceBridge::start_backend(const RamInfo& ram) {
  ram_ = ram;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return make_error(Errc::kIo, "socketpair failed", errno);
  UniqueFd ours(sv[0]), theirs(sv[1]);
  SpawnOptions o;
  o.path = spec_.program;
  o.argv = {spec_.program, "--fd=3"};
  o.argv.insert(o.argv.end(), spec_.args.begin(), spec_.args.end());
  for (char** e = environ; *e != nullptr; ++e) o.env.emplace_back(*e);
  o.fds = {{theirs.get(), 3}};
  o.fds.insert(o.fds.end(), spec_.inherit.begin(), spec_.inherit.end());
  UniqueFd link;
  if (spec_.display_link) {
    CANOPY_ASSIGN_OR_RETURN(link, open_display_link());
    o.argv.push_back("--display-fd=" + std::to_string(kDisplayLinkFd));
    o.fds.emplace_back(link.get(), kDisplayLinkFd);
  }
  std::vector<UniqueFd> given;
  apply_identity(spec_.identity, o, given);
  CANOPY_ASSIGN_OR_RETURN(backend_, spawn(o));
  theirs.reset();
  link.reset();
  given.clear();
  ++backend_starts_;
  vu::Frontend fe(std::move(ours), kBackendReplyTimeoutMs);

  auto handshake = [&]() -> Status {
    CANOPY_ASSIGN_OR_RETURN(backend_features_, fe.get_features());
    protocol_ = 0;
    if (backend_features_ & transport::kVhostUserFProtocolFeatures) {
      CANOPY_ASSIGN_OR_RETURN(uint64_t pf, fe.get_protocol_features());
      protocol_ = pf & kWantedProtocol;
      CANOPY_TRY(fe.set_protocol_features(protocol_));
    }
    uint16_t queues = virtio_default_queues(spec_.virtio_id);
    if (protocol_ & vu::proto_bit(vu::kProtoMq)) {
      CANOPY_ASSIGN_OR_RETURN(uint64_t n, fe.get_queue_num());
      if (n == 0 || n > 64) return make_error(Errc::kProtocol, "back-end reports an odd queue count");
      queues = uint16_t(n);
    }
    CANOPY_TRY(fe.set_owner());
    if (protocol_ & vu::proto_bit(vu::kProtoBackendReq)) {
      int rq[2];
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, rq) != 0)
        return make_error(Errc::kIo, "socketpair for the back-end request channel failed", errno);
      UniqueFd mine(rq[0]), given(rq[1]);
      CANOPY_TRY(fe.set_backend_req_fd(given.get()));
      backend_req_ = vu::Channel(std::move(mine));
    }
    vu::FrontendRegion region{transport::RegionInfo{0, ram_.size, kRamUserAddr, 0}, ram_.fd};
    CANOPY_TRY(fe.set_mem_table(std::span<const vu::FrontendRegion>(&region, 1)));
    num_queues_ = queues;
    return {};
  };
  if (Status s = handshake(); !s.ok()) {
    CANOPY_WARN("device %s: back-end handshake failed: %s", spec_.name.c_str(), s.error().what);
    backend_req_.close();
    backend_.terminate(0);
    return s.error();
  }
  offered_ = backend_features_ & ~transport::kVhostUserFProtocolFeatures;
  config_size_ = virtio_config_size(spec_.virtio_id);
  if (!(protocol_ & vu::proto_bit(vu::kProtoConfig))) config_size_ = 0;
  queues_.resize(num_queues_);
  frontend_.emplace(std::move(fe));
  CANOPY_INFO("device %s: back-end %s up (pid %d, %u queue(s), features %#llx)", spec_.name.c_str(),
              spec_.program.c_str(), int(backend_.pid()), num_queues_, (unsigned long long)offered_);
  return {};
}

void DeviceBridge::configure_offline(const RamInfo& ram, uint16_t queues, uint64_t features, uint32_t config_size) {
  ram_ = ram;
  num_queues_ = queues;
  offered_ = features;
  backend_features_ = features;
  config_size_ = config_size;
  queues_.clear();
  queues_.resize(queues);
}

Result<UniqueFd> DeviceBridge::open_display_link() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return make_error(Errc::kIo, "socketpair for the broker's device link failed", errno);
  // Ours never blocks the loop; the back-end's end blocks: it waits for the broker's answer.
  display_link_.reset(sv[0]);
  UniqueFd theirs(sv[1]);
  CANOPY_TRY(set_nonblocking(display_link_.get()));
  return theirs;
}

void DeviceBridge::stop_backend() {
  frontend_.reset();  // closing the socket makes a back-end exit on its own
  backend_req_.close();
  display_link_.reset();
  if (backend_.running()) {
    if (!backend_.wait(500).ok()) backend_.terminate(500);
  }
  active_ = false;
}

bool DeviceBridge::backend_lost(const std::string& why) {
  CANOPY_WARN("device %s: back-end lost: %s", spec_.name.c_str(), why.c_str());
  frontend_.reset();
  backend_req_.close();
  display_link_.reset();
  if (backend_.running()) backend_.terminate(0);
  active_ = false;
  if (status_ != 0 && !(status_ & transport::kStatusDeviceNeedsReset)) {
    status_ |= transport::kStatusDeviceNeedsReset;
    ++generation_;
    return true;
  }
  return false;
}

Status DeviceBridge::fail_backend(const Error& e, const char* step) {
  CANOPY_WARN("device %s: %s failed (%s); restarting the back-end", spec_.name.c_str(), step, e.what);
  if (backend_lost(step)) pending_event_ = true;
  backend_failed_ = true;
  return e;
}

void DeviceBridge::on_backend_request() {
  for (int i = 0; i < kBackendRequestBudget && backend_req_.valid(); ++i) {
    pollfd p{backend_req_.fd(), POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return;  // nothing (more) waiting
    // A message is sent whole: once its first byte is here, the rest follows at once; a back-end
    // stuck mid-message is failed rather than waited for.
    auto m = backend_req_.recv(kBackendRequestPartMs);
    if (!m.ok()) {
      if (m.code() == Errc::kClosed) {  // the back-end closed it (or exited: the pidfd tells)
        backend_req_.close();
        return;
      }
      (void)fail_backend(m.error(), "reading the back-end request channel");
      return;
    }
    const uint32_t req = m->header.request.get();
    bool ok = false;
    if (req == uint32_t(vu::BackendRequest::kConfigChangeMsg)) {
      ok = true;
      ++config_changes_;
      // The guest re-reads the config space; only a driver that has the device hears of it.
      if (status_ & transport::kStatusDriverOk) {
        ++generation_;
        pending_event_ = true;
      }
    } else {
      CANOPY_WARN_RL("device %s: back-end request %u refused (not supported)", spec_.name.c_str(), req);
    }
    if (m->need_reply()) {
      auto r = vu::Message::make_u64(static_cast<vu::Request>(req), ok ? 0 : 1, vu::kVersion | vu::kFlagReply);
      if (Status s = backend_req_.send(r); !s.ok()) {
        (void)fail_backend(s.error(), "answering the back-end request channel");
        return;
      }
    }
  }
}

void DeviceBridge::quiesce() {
  if (!active_ || !frontend_) {
    active_ = false;
    return;
  }
  Status s;
  if (protocol_ & vu::proto_bit(vu::kProtoResetDevice)) {
    s = frontend_->reset_device();
  } else {
    for (uint32_t i = 0; i < queues_.size() && s.ok(); ++i) {
      if (queues_[i].set) {
        auto r = frontend_->get_vring_base(i);
        if (!r.ok()) s = r.error();
      }
    }
  }
  active_ = false;
  if (!s.ok()) (void)fail_backend(s.error(), "stopping the rings");
}

void DeviceBridge::reset(bool by_driver) {
  quiesce();
  if (by_driver && status_ != 0) ++driver_resets_;
  status_ = 0;
  driver_features_ = 0;
  for (auto& q : queues_) q = Queue{};
}

Status DeviceBridge::activate() {
  if (!frontend_) return make_error(Errc::kState, "no back-end");
  auto& fe = *frontend_;
  const uint64_t vu_bit = backend_features_ & transport::kVhostUserFProtocolFeatures;
  CANOPY_TRY(fe.set_features(driver_features_ | vu_bit));
  for (uint32_t i = 0; i < queues_.size(); ++i) {
    const Queue& q = queues_[i];
    if (!q.set) continue;
    CANOPY_TRY(fe.set_vring_num(i, q.size));
    CANOPY_TRY(
        fe.set_vring_addr(i, kRamUserAddr + q.addrs.desc, kRamUserAddr + q.addrs.avail, kRamUserAddr + q.addrs.used));
    CANOPY_TRY(fe.set_vring_base(i, 0));
    CANOPY_TRY(fe.set_vring_call(i, q.call.get()));
    CANOPY_TRY(fe.set_vring_kick(i, q.kick.get()));
    if (vu_bit) CANOPY_TRY(fe.set_vring_enable(i, true));
  }
  if (protocol_ & vu::proto_bit(vu::kProtoStatus)) CANOPY_TRY(fe.set_status(status_));
  active_ = true;
  return {};
}

DeviceBridge::Reply DeviceBridge::set_status(uint32_t value) {
  using namespace transport;
  if (value > 0xff) return code(Code::kInvalid);
  msg::StatusMsg out{};
  if (value == 0) {
    reset(true);
    return ok(out);
  }
  if (status_ & kStatusDeviceNeedsReset) {  // only a reset helps now
    out.status = status_;
    return ok(out);
  }
  // Only the bits of §2.1 a driver may write; DEVICE_NEEDS_RESET is the device's.
  constexpr uint32_t kDriverBits =
      kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk | kStatusFailed;
  if (value & ~kDriverBits) return code(Code::kInvalid);
  if ((value & status_) != status_) return code(Code::kState);  // bits are cleared only by a reset
  if (value & kStatusFailed) {  // the driver gave up: record it, take nothing else of this write
    status_ |= kStatusFailed;
    out.status = status_;
    return ok(out);
  }
  const uint8_t added = uint8_t(value & ~status_);
  if ((added & kStatusDriver) && !(value & kStatusAcknowledge)) return code(Code::kState);
  if ((added & kStatusFeaturesOk) && !(value & kStatusDriver)) return code(Code::kState);
  uint8_t next = uint8_t(value);
  if ((added & kStatusFeaturesOk)) {
    const bool fine = (driver_features_ & ~offered_) == 0 && (driver_features_ & kVirtioFVersion1);
    if (!fine) next &= uint8_t(~kStatusFeaturesOk);  // §3.1.1: FEATURES_OK does not stick
  }
  if (added & kStatusDriverOk) {
    if (!(next & kStatusFeaturesOk)) return code(Code::kState);
    status_ = next;
    if (!frontend_) {
      status_ |= kStatusDeviceNeedsReset;
    } else if (Status s = activate(); !s.ok()) {
      (void)fail_backend(s.error(), "programming the back-end at DRIVER_OK");
      status_ |= kStatusDeviceNeedsReset;
      pending_event_ = false;  // the reply carries the news
    }
    out.status = status_;
    return ok(out);
  }
  status_ = next;
  out.status = status_;
  return ok(out);
}

DeviceBridge::Reply DeviceBridge::set_vqueue(msg::Message& req) {
  using namespace transport;
  if (!(status_ & kStatusFeaturesOk) || (status_ & kStatusDriverOk)) return code(Code::kState);
  const auto v = req.as<msg::SetVqueue>();
  const uint16_t idx = v.index, size = v.size;
  if (idx >= queues_.size()) return code(Code::kInvalid);
  if (!is_power_of_two(size) || size > kPartitionQueueSize) return code(Code::kInvalid);
  const uint64_t desc = v.desc, avail = v.avail, used = v.used;
  if (desc % 16 || avail % 2 || used % 4) return code(Code::kInvalid);
  if (!in_ram(desc, desc_table_bytes(size), ram_.size) || !in_ram(avail, avail_ring_bytes(size), ram_.size) ||
      !in_ram(used, used_ring_bytes(size), ram_.size))
    return code(Code::kOutOfRange);
  if (!is_eventfd(req.fds[0].get()) || !is_eventfd(req.fds[1].get())) return code(Code::kInvalid);
  Queue& q = queues_[idx];
  q.set = true;
  q.size = size;
  q.addrs = VringAddrs{desc, avail, used};
  q.kick = std::move(req.fds[0]);
  q.call = std::move(req.fds[1]);
  return code(Code::kOk);
}

DeviceBridge::Reply DeviceBridge::handle(msg::Message& req) {
  using namespace transport;
  switch (req.type()) {
    case Type::kGetDeviceInfo: return ok(info());
    case Type::kGetFeatures: {
      msg::Features f{};
      f.bits = offered_;
      return ok(f);
    }
    case Type::kSetFeatures: {
      if (!(status_ & kStatusDriver) || (status_ & kStatusFeaturesOk)) return code(Code::kState);
      driver_features_ = req.as<msg::Features>().bits;
      return code(Code::kOk);
    }
    case Type::kGetStatus: {
      msg::StatusMsg s{};
      s.status = status_;
      return ok(s);
    }
    case Type::kSetStatus: return set_status(req.as<msg::StatusMsg>().status);
    case Type::kGetConfig: {
      const auto c = req.as<msg::ConfigReq>();
      msg::ConfigResp head{};
      head.generation = generation_;
      if (c.size.get() == 0) return ok(head);
      if (!in_ram(c.offset, c.size, config_size_)) return code(Code::kOutOfRange);
      if (!frontend_) return code(Code::kDeviceError);
      auto data = frontend_->get_config(c.offset, c.size);
      if (!data.ok()) {
        (void)fail_backend(data.error(), "GET_CONFIG");
        return code(Code::kDeviceError);
      }
      if (data->size() != c.size.get()) return code(Code::kDeviceError);
      head.size = c.size;
      Reply r = ok(head);
      r.payload.insert(r.payload.end(), data->begin(), data->end());
      return r;
    }
    case Type::kSetConfig: {
      const auto c = req.as<msg::SetConfigReq>();
      if (!in_ram(c.offset, c.size, config_size_)) return code(Code::kOutOfRange);
      if (!frontend_) return code(Code::kDeviceError);
      if (Status s = frontend_->set_config(c.offset, req.tail(sizeof c)); !s.ok()) {
        if (s.error().code != Errc::kInvalidArgument) (void)fail_backend(s.error(), "SET_CONFIG");
        return code(Code::kDeviceError);
      }
      return code(Code::kOk);
    }
    case Type::kSetVqueue: return set_vqueue(req);
    case Type::kResetVqueue: {
      const uint16_t idx = req.as<msg::ResetVqueue>().index;
      if (idx >= queues_.size()) return code(Code::kInvalid);
      if (status_ & kStatusDriverOk) return code(Code::kState);  // no VIRTIO_F_RING_RESET
      queues_[idx] = Queue{};
      return code(Code::kOk);
    }
    default: return code(Code::kInvalid);
  }
}

}  // namespace canopy::hypervisor
