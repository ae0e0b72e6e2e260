#include "canopy/transport/vhost_user_backend.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "canopy/base/log.h"
#include "canopy/buffers/fault_guard.h"

namespace canopy::transport::vhost_user {
namespace {

constexpr uint64_t kTagSocket = 0;
constexpr uint64_t kTagStop = 1;
constexpr uint64_t kTagFault = 2;
constexpr uint64_t kTagKickBase = 0x100;
constexpr uint64_t kTagWatchBase = 0x10000;
// A stalled partial message from the front-end ends the connection after this long.
constexpr int kMessagePartTimeoutMs = 5000;

void drain_eventfd(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof v) == sizeof v) {
  }
}

bool is_get(Request r) {
  switch (r) {
    case Request::kGetFeatures:
    case Request::kGetProtocolFeatures:
    case Request::kGetVringBase:
    case Request::kGetQueueNum:
    case Request::kGetConfig:
    case Request::kGetMaxMemSlots:
    case Request::kGetStatus:
    case Request::kGetInflightFd:
    case Request::kGetSharedObject:
    case Request::kCheckDeviceState:
    case Request::kSetDeviceStateFd:
    case Request::kGetShmemConfig: return true;
    default: return false;
  }
}

}  // namespace

const char* request_name(Request r) {
  static const char* const kNames[] = {"NONE",
                                       "GET_FEATURES",
                                       "SET_FEATURES",
                                       "SET_OWNER",
                                       "RESET_OWNER",
                                       "SET_MEM_TABLE",
                                       "SET_LOG_BASE",
                                       "SET_LOG_FD",
                                       "SET_VRING_NUM",
                                       "SET_VRING_ADDR",
                                       "SET_VRING_BASE",
                                       "GET_VRING_BASE",
                                       "SET_VRING_KICK",
                                       "SET_VRING_CALL",
                                       "SET_VRING_ERR",
                                       "GET_PROTOCOL_FEATURES",
                                       "SET_PROTOCOL_FEATURES",
                                       "GET_QUEUE_NUM",
                                       "SET_VRING_ENABLE",
                                       "SEND_RARP",
                                       "NET_SET_MTU",
                                       "SET_BACKEND_REQ_FD",
                                       "IOTLB_MSG",
                                       "SET_VRING_ENDIAN",
                                       "GET_CONFIG",
                                       "SET_CONFIG",
                                       "CREATE_CRYPTO_SESSION",
                                       "CLOSE_CRYPTO_SESSION",
                                       "POSTCOPY_ADVISE",
                                       "POSTCOPY_LISTEN",
                                       "POSTCOPY_END",
                                       "GET_INFLIGHT_FD",
                                       "SET_INFLIGHT_FD",
                                       "GPU_SET_SOCKET",
                                       "RESET_DEVICE",
                                       "VRING_KICK",
                                       "GET_MAX_MEM_SLOTS",
                                       "ADD_MEM_REG",
                                       "REM_MEM_REG",
                                       "SET_STATUS",
                                       "GET_STATUS",
                                       "GET_SHARED_OBJECT",
                                       "SET_DEVICE_STATE_FD",
                                       "CHECK_DEVICE_STATE",
                                       "GET_SHMEM_CONFIG"};
  auto i = static_cast<uint32_t>(r);
  return i < sizeof kNames / sizeof kNames[0] ? kNames[i] : "UNKNOWN";
}

uint64_t base_protocol_features() {
  return proto_bit(kProtoReplyAck) | proto_bit(kProtoConfigureMemSlots) | proto_bit(kProtoResetDevice) |
         proto_bit(kProtoStatus) | proto_bit(kProtoMq);
}

// ---------------------------------------------------------------------------------------------
// QueueHandle

Result<uint32_t> QueueHandle::process(const ChainFn& fn) {
  uint32_t served = 0;
  // At most this many chains per call; the rest is served after the event loop has had its turn, so a
  // guest that keeps the ring full (or writes into its own avail ring) cannot monopolise the thread.
  const uint32_t budget = 2u * queue_.size();
  uint32_t handled = 0;
  for (;;) {
    (void)queue_.enable_notification(false);
    for (;;) {
      if (++handled > budget) {
        yield_to_event_loop();
        notify_if_needed();
        return served;
      }
      auto r = queue_.pop(chain_);
      if (!r.ok()) {
        CANOPY_WARN_RL("queue %u: dropped a bad chain: %s", unsigned(index_), r.error().what);
        if (queue_.broken() || r.code() == Errc::kState) {
          if (err_) {
            uint64_t one = 1;
            ssize_t w = ::write(err_.get(), &one, sizeof one);
            (void)w;
          }
          notify_if_needed();
          return r.error();
        }
        continue;
      }
      if (!*r) break;
      DescriptorReader rd(*mem_, chain_);
      DescriptorWriter wr(*mem_, chain_);
      auto written = fn(chain_, rd, wr);
      if (!written.ok()) CANOPY_WARN_RL("queue %u: request failed: %s", unsigned(index_), written.error().what);
      ++served;
      if (written.ok() && *written == kDeferred) continue;
      CANOPY_TRY(queue_.push_used(chain_.head(), written.ok() ? *written : 0));
    }
    (void)queue_.enable_notification(true);
    // A chain published between the last pop and re-enabling notifications would get no kick.
    auto more = queue_.has_available();
    if (!more.ok() || !*more) break;
  }
  notify_if_needed();
  return served;
}

Status QueueHandle::complete(uint16_t head, uint32_t written) {
  if (!queue_.ready()) return make_error(Errc::kState, "queue not running");
  CANOPY_TRY(queue_.push_used(head, written));
  notify_if_needed();
  return {};
}

void QueueHandle::yield_to_event_loop() {
  // Re-arm ourselves: the kick eventfd becomes readable again and the loop calls on_kick later.
  if (!kick_) return;
  uint64_t one = 1;
  ssize_t w = ::write(kick_.get(), &one, sizeof one);
  (void)w;
}

void QueueHandle::notify_if_needed() {
  if (queue_.should_notify()) notify();
}

void QueueHandle::notify() {
  if (!call_) return;
  uint64_t one = 1;
  ssize_t w = ::write(call_.get(), &one, sizeof one);
  (void)w;
}

// ---------------------------------------------------------------------------------------------
// Backend

Backend::Backend(Device& device) : device_(device) {
  for (uint16_t i = 0; i < device_.num_queues(); ++i) {
    auto q = std::make_unique<QueueHandle>();
    q->index_ = i;
    q->mem_ = &mem_;
    queues_.push_back(std::move(q));
  }
  stop_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  device_.rewatch_ = [this] { epoll_dirty_ = true; };
}

Backend::~Backend() { device_.rewatch_ = nullptr; }

void Backend::request_stop() {
  uint64_t one = 1;
  ssize_t w = ::write(stop_fd_.get(), &one, sizeof one);
  (void)w;
}

Status Backend::rebuild_epoll() {
  epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) return make_error(Errc::kIo, "epoll_create1 failed", errno);
  auto add = [&](int fd, uint64_t tag) -> Status {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return make_error(Errc::kIo, "epoll_ctl failed", errno);
    return {};
  };
  CANOPY_TRY(add(channel_.fd(), kTagSocket));
  CANOPY_TRY(add(stop_fd_.get(), kTagStop));
  if (buffers::fault_guard::event_fd() >= 0) CANOPY_TRY(add(buffers::fault_guard::event_fd(), kTagFault));
  for (auto& q : queues_) {
    if (q->kick_) CANOPY_TRY(add(q->kick_.get(), kTagKickBase + q->index_));
  }
  auto watches = device_.watches();
  for (size_t i = 0; i < watches.size(); ++i) CANOPY_TRY(add(watches[i].fd, kTagWatchBase + i));
  epoll_dirty_ = false;
  return {};
}

Status Backend::run(UniqueFd connection) {
  channel_ = Channel(std::move(connection));
  epoll_dirty_ = true;
  Status result;
  bool done = false;
  while (!done) {
    if (epoll_dirty_) {
      result = rebuild_epoll();
      if (!result.ok()) break;
    }
    epoll_event events[16];
    int n = ::epoll_wait(epoll_.get(), events, 16, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      result = make_error(Errc::kIo, "epoll_wait failed", errno);
      break;
    }
    for (int i = 0; i < n && !done && !epoll_dirty_; ++i) {
      uint64_t tag = events[i].data.u64;
      if (tag == kTagStop) {
        done = true;
      } else if (tag == kTagFault) {
        drain_eventfd(buffers::fault_guard::event_fd());
      } else if (tag == kTagSocket) {
        auto msg = channel_.recv(kMessagePartTimeoutMs);
        if (!msg.ok()) {
          if (msg.code() != Errc::kClosed) {
            CANOPY_WARN_RL("vhost-user: dropping connection: %s", msg.error().what);
            ++stats_.bad_messages;
          }
          done = true;
          break;
        }
        (void)handle(*msg);
      } else if (tag >= kTagWatchBase) {
        auto watches = device_.watches();
        size_t k = size_t(tag - kTagWatchBase);
        if (k < watches.size() && watches[k].fn) watches[k].fn();
      } else if (tag >= kTagKickBase) {
        size_t k = size_t(tag - kTagKickBase);
        if (k < queues_.size() && queues_[k]->kick_) {
          drain_eventfd(queues_[k]->kick_.get());
          kick(*queues_[k]);
        }
      }
    }
    // A region of this device's guest memory lost (its file truncated): the device reads zeros there,
    // so it is not run on. Every back-end of the process looks when the count moves (one of them took
    // the wake-up).
    if (const uint64_t lost = buffers::fault_guard::lost_count(); lost != seen_lost_) {
      seen_lost_ = lost;
      if (Status m = mem_.check_lost(); !m.ok()) {
        CANOPY_ERROR("vhost-user: guest memory lost, the device stops: %s", m.error().what);
        result = m;
        done = true;
      }
    }
  }
  for (auto& q : queues_) stop_queue(*q);
  channel_.close();
  device_.on_backend_channel(nullptr);
  backend_req_.reset();
  return result;
}

Status Backend::handle(Message& msg) {
  ++stats_.messages;
  Message reply = Message::make(msg.request(), kVersion | kFlagReply);
  bool has_reply = false;
  Status s = dispatch(msg, reply, has_reply);
  if (!s.ok()) {
    ++stats_.bad_messages;
    CANOPY_WARN_RL("vhost-user: %s failed: %s", request_name(msg.request()), s.error().what);
  }
  if (!has_reply && msg.need_reply() && has_protocol(kProtoReplyAck)) {
    reply.payload.resize(sizeof(le64));
    le64 ack = s.ok() ? 0 : 1;
    std::memcpy(reply.payload.data(), &ack, sizeof ack);
    has_reply = true;
  }
  if (has_reply && channel_.valid()) {
    Status w = channel_.send(reply);
    if (!w.ok()) return w;
  }
  return s;
}

Result<QueueHandle*> Backend::vring_from_state(const Message& msg, VringState* out) {
  CANOPY_ASSIGN_OR_RETURN(VringState st, msg.exact<VringState>());
  if (st.index.get() >= queues_.size()) return make_error(Errc::kOutOfRange, "vring index out of range");
  *out = st;
  return queues_[st.index.get()].get();
}

Result<QueueHandle*> Backend::vring_from_u64(const Message& msg, uint64_t* out) {
  CANOPY_ASSIGN_OR_RETURN(le64 v, msg.exact<le64>());
  uint64_t raw = v;
  uint64_t index = raw & kVringIndexMask;
  if (raw & ~(kVringIndexMask | kVringNoFdMask))
    return make_error(Errc::kProtocol, "vring fd message: reserved bits set");
  if (index >= queues_.size()) return make_error(Errc::kOutOfRange, "vring index out of range");
  const bool nofd = raw & kVringNoFdMask;
  if (nofd ? !msg.fds.empty() : msg.fds.size() != 1)
    return make_error(Errc::kProtocol, "vring fd message: wrong number of fds");
  *out = raw;
  return queues_[index].get();
}

Status Backend::dispatch(Message& msg, Message& reply, bool& has_reply) {
  const Request req = msg.request();
  auto reply_u64 = [&](uint64_t v) {
    le64 x = v;
    reply.payload.resize(sizeof x);
    std::memcpy(reply.payload.data(), &x, sizeof x);
    has_reply = true;
  };
  // Messages that carry no fd must not bring any (they would leak or confuse accounting).
  switch (req) {
    case Request::kSetMemTable:
    case Request::kAddMemReg:
    case Request::kRemMemReg:
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
    case Request::kSetBackendReqFd:
    case Request::kGpuSetSocket:
    case Request::kSetLogFd:
    case Request::kSetLogBase:
    case Request::kSetInflightFd:
    case Request::kSetDeviceStateFd: break;
    default:
      if (!msg.fds.empty()) {
        has_reply = is_get(req);  // still answer, so the peer is not left waiting
        return make_error(Errc::kProtocol, "unexpected file descriptors");
      }
  }

  switch (req) {
    case Request::kGetFeatures: reply_u64(device_.features() | kVhostUserFProtocolFeatures); return {};
    case Request::kSetFeatures: {
      CANOPY_ASSIGN_OR_RETURN(le64 v, msg.exact<le64>());
      const uint64_t offered = device_.features() | kVhostUserFProtocolFeatures;
      // QEMU's front-ends may add transport bits of their own (e.g. VIRTIO_F_RING_RESET from
      // virtio-pci): bits we never offered are dropped, not acted on (libvhost-user does the same).
      if (v.get() & ~offered)
        CANOPY_WARN_RL("vhost-user: SET_FEATURES: ignoring bits %#llx that were not offered",
                       (unsigned long long)(v.get() & ~offered));
      acked_features_ = v.get() & offered;
      features_set_ = true;
      device_.set_acked_features(acked_features_ & ~kVhostUserFProtocolFeatures);
      return {};
    }
    case Request::kGetProtocolFeatures: reply_u64(base_protocol_features() | device_.protocol_features()); return {};
    case Request::kSetProtocolFeatures: {
      CANOPY_ASSIGN_OR_RETURN(le64 v, msg.exact<le64>());
      if (v.get() & ~(base_protocol_features() | device_.protocol_features()))
        return make_error(Errc::kProtocol, "SET_PROTOCOL_FEATURES: features not offered");
      acked_protocol_ = v;
      device_.set_acked_protocol_features(v);
      return {};
    }
    case Request::kSetOwner:
      if (!msg.payload.empty()) return make_error(Errc::kProtocol, "SET_OWNER: unexpected payload");
      owner_set_ = true;
      return {};
    case Request::kResetOwner:
      reset_device();
      owner_set_ = false;
      return {};
    case Request::kSetMemTable: return set_mem_table(msg);
    case Request::kGetMaxMemSlots: reply_u64(kMaxMemoryRegions); return {};
    case Request::kAddMemReg: return add_mem_reg(msg);
    case Request::kRemMemReg: return rem_mem_reg(msg);
    case Request::kGetQueueNum: reply_u64(queues_.size()); return {};
    case Request::kSetVringNum: {
      VringState st;
      CANOPY_ASSIGN_OR_RETURN(QueueHandle * q, vring_from_state(msg, &st));
      uint32_t num = st.num;
      if (num == 0 || num > device_.max_queue_size() || !is_power_of_two(num))
        return make_error(Errc::kInvalidArgument, "SET_VRING_NUM: size not a power of two within the maximum");
      if (q->started_) return make_error(Errc::kState, "SET_VRING_NUM: ring is running");
      q->num_ = num;
      return {};
    }
    case Request::kSetVringAddr: {
      CANOPY_ASSIGN_OR_RETURN(VringAddr a, msg.exact<VringAddr>());
      if (a.index.get() >= queues_.size()) return make_error(Errc::kOutOfRange, "vring index out of range");
      QueueHandle& q = *queues_[a.index.get()];
      q.desc_uva_ = a.desc_user_addr;
      q.avail_uva_ = a.avail_user_addr;
      q.used_uva_ = a.used_user_addr;
      q.addr_set_ = true;
      if (q.started_) {
        // Address change on a running ring (e.g. logging toggled): keep its position.
        q.base_ = q.queue_.last_avail_idx();
        return start_queue(q);
      }
      return {};
    }
    case Request::kSetVringBase: {
      VringState st;
      CANOPY_ASSIGN_OR_RETURN(QueueHandle * q, vring_from_state(msg, &st));
      if (st.num.get() > 0xffff) return make_error(Errc::kInvalidArgument, "SET_VRING_BASE: base over 16 bits");
      if (q->started_) return make_error(Errc::kState, "SET_VRING_BASE: ring is running");
      q->base_ = uint16_t(st.num.get());
      return {};
    }
    case Request::kGetVringBase: {
      VringState st;
      auto q = vring_from_state(msg, &st);
      VringState out;
      out.index = st.index;
      out.num = 0;
      if (q.ok()) {
        out.num = (*q)->started_ ? (*q)->queue_.last_avail_idx() : (*q)->base_;
        stop_queue(**q);
        (*q)->base_ = uint16_t(out.num.get());
      }
      reply.payload.resize(sizeof out);
      std::memcpy(reply.payload.data(), &out, sizeof out);
      has_reply = true;
      return q.ok() ? Status{} : Status(q.error());
    }
    case Request::kSetVringKick: {
      uint64_t raw;
      CANOPY_ASSIGN_OR_RETURN(QueueHandle * q, vring_from_u64(msg, &raw));
      if (raw & kVringNoFdMask) return make_error(Errc::kUnsupported, "SET_VRING_KICK: polling mode not supported");
      q->kick_ = std::move(msg.fds[0]);
      ::fcntl(q->kick_.get(), F_SETFL, ::fcntl(q->kick_.get(), F_GETFL) | O_NONBLOCK);
      epoll_dirty_ = true;
      // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled as soon as it starts.
      if (!(acked_features_ & kVhostUserFProtocolFeatures)) q->enabled_ = true;
      CANOPY_TRY(start_queue(*q));
      kick(*q);  // serve anything published before the kick fd arrived
      return {};
    }
    case Request::kSetVringCall:
    case Request::kSetVringErr: {
      uint64_t raw;
      CANOPY_ASSIGN_OR_RETURN(QueueHandle * q, vring_from_u64(msg, &raw));
      UniqueFd fd = (raw & kVringNoFdMask) ? UniqueFd() : std::move(msg.fds[0]);
      (req == Request::kSetVringCall ? q->call_ : q->err_) = std::move(fd);
      return {};
    }
    case Request::kSetVringEnable: {
      VringState st;
      CANOPY_ASSIGN_OR_RETURN(QueueHandle * q, vring_from_state(msg, &st));
      if (!(acked_features_ & kVhostUserFProtocolFeatures))
        return make_error(Errc::kProtocol, "SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES");
      if (st.num.get() > 1) return make_error(Errc::kInvalidArgument, "SET_VRING_ENABLE: value not 0 or 1");
      q->enabled_ = st.num.get() == 1;
      if (q->enabled_) kick(*q);
      return {};
    }
    case Request::kSetBackendReqFd: {
      if (msg.fds.size() != 1) return make_error(Errc::kProtocol, "SET_BACKEND_REQ_FD: needs one fd");
      if (!has_protocol(kProtoBackendReq)) return make_error(Errc::kProtocol, "SET_BACKEND_REQ_FD: not negotiated");
      device_.on_backend_channel(nullptr);  // the old channel (if any) goes now
      backend_req_ = std::make_unique<Channel>(std::move(msg.fds[0]));
      device_.on_backend_channel(backend_req_.get());
      return {};
    }
    case Request::kGpuSetSocket: {
      if (msg.fds.size() != 1) return make_error(Errc::kProtocol, "GPU_SET_SOCKET: needs one fd");
      epoll_dirty_ = true;  // the device may watch the new socket
      return device_.on_gpu_socket(std::move(msg.fds[0]));
    }
    case Request::kGetConfig: {
      has_reply = true;
      reply.payload = msg.payload;  // on error the reply carries the request's header and no data
      CANOPY_ASSIGN_OR_RETURN(ConfigHeader h, msg.prefix<ConfigHeader>());
      if (h.size.get() > kMaxConfigSize) return make_error(Errc::kLimit, "GET_CONFIG: size over 256");
      if (msg.payload.size() != sizeof(ConfigHeader) + h.size.get())
        return make_error(Errc::kProtocol, "GET_CONFIG: payload size mismatch");
      if (!has_protocol(kProtoConfig)) {
        reply.payload.clear();
        return make_error(Errc::kProtocol, "GET_CONFIG: CONFIG not negotiated");
      }
      auto data = device_.read_config(h.offset, h.size);
      if (!data.ok() || data->size() != h.size.get()) {
        reply.payload.clear();
        return data.ok() ? make_error(Errc::kInvalidArgument, "GET_CONFIG: device returned wrong size") : data.error();
      }
      if (!data->empty()) std::memcpy(reply.payload.data() + sizeof(ConfigHeader), data->data(), data->size());
      return {};
    }
    case Request::kSetConfig: {
      CANOPY_ASSIGN_OR_RETURN(ConfigHeader h, msg.prefix<ConfigHeader>());
      if (h.size.get() > kMaxConfigSize) return make_error(Errc::kLimit, "SET_CONFIG: size over 256");
      if (msg.payload.size() != sizeof(ConfigHeader) + h.size.get())
        return make_error(Errc::kProtocol, "SET_CONFIG: payload size mismatch");
      if (!has_protocol(kProtoConfig)) return make_error(Errc::kProtocol, "SET_CONFIG: CONFIG not negotiated");
      return device_.write_config(h.offset, std::span<const uint8_t>(msg.payload).subspan(sizeof(ConfigHeader)));
    }
    case Request::kSetStatus: {
      CANOPY_ASSIGN_OR_RETURN(le64 v, msg.exact<le64>());
      if (v.get() > 0xff) return make_error(Errc::kInvalidArgument, "SET_STATUS: status over 8 bits");
      status_ = uint8_t(v.get());
      if (status_ == 0) reset_device();
      device_.on_status(status_);
      return {};
    }
    case Request::kGetStatus: reply_u64(status_); return {};
    case Request::kResetDevice: reset_device(); return {};
    case Request::kGetShmemConfig: {
      has_reply = true;
      if (!has_protocol(kProtoShmem)) return make_error(Errc::kProtocol, "GET_SHMEM_CONFIG: SHMEM not negotiated");
      ShmemConfig c{};
      const auto sizes = device_.shmem_sizes();
      if (sizes.size() > kMaxShmemRegions) return make_error(Errc::kLimit, "GET_SHMEM_CONFIG: too many regions");
      uint32_t n = 0;
      for (size_t i = 0; i < sizes.size(); ++i) {
        c.memory_sizes[i] = sizes[i];
        n += sizes[i] != 0;
      }
      c.nregions = n;
      reply.payload.resize(sizeof c);
      std::memcpy(reply.payload.data(), &c, sizeof c);
      return {};
    }
    case Request::kVringKick: {
      VringState st;
      CANOPY_ASSIGN_OR_RETURN(QueueHandle * q, vring_from_state(msg, &st));
      kick(*q);
      return {};
    }
    default:
      if (is_get(req)) {
        // Something that expects a reply: answer with an empty payload rather than leave the peer waiting.
        has_reply = true;
      }
      return make_error(Errc::kUnsupported, "request not supported");
  }
}

Status Backend::set_mem_table(Message& msg) {
  CANOPY_ASSIGN_OR_RETURN(le32 n, msg.prefix<le32>());
  const uint32_t count = n;
  if (count > kMemoryBaselineRegions) return make_error(Errc::kLimit, "SET_MEM_TABLE: more than 8 regions");
  if (msg.payload.size() != kMemoryTableHeaderSize + count * sizeof(MemoryRegion) &&
      msg.payload.size() != sizeof(MemoryTable))
    return make_error(Errc::kProtocol, "SET_MEM_TABLE: payload size mismatch");
  if (msg.fds.size() != count) return make_error(Errc::kProtocol, "SET_MEM_TABLE: fd count != region count");
  std::vector<GuestMemory::TableEntry> table;
  for (uint32_t i = 0; i < count; ++i) {
    MemoryRegion r;
    std::memcpy(&r, msg.payload.data() + kMemoryTableHeaderSize + i * sizeof r, sizeof r);
    table.push_back(
        {RegionInfo{r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset}, std::move(msg.fds[i])});
  }
  GuestMemory retired;  // the regions that went, unmapped when this returns: after the device let go
  CANOPY_TRY(mem_.replace_table(std::move(table), retired));
  return memory_changed();
}

Status Backend::memory_changed() {
  Status s = refresh_running_queues();
  device_.on_memory_changed(mem_);
  return s;
}

Status Backend::add_mem_reg(Message& msg) {
  CANOPY_ASSIGN_OR_RETURN(SingleMemoryRegion s, msg.exact<SingleMemoryRegion>());
  if (msg.fds.size() != 1) return make_error(Errc::kProtocol, "ADD_MEM_REG: needs exactly one fd");
  const MemoryRegion& r = s.region;
  CANOPY_TRY(mem_.add_region(RegionInfo{r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset},
                             std::move(msg.fds[0])));
  return memory_changed();
}

Status Backend::rem_mem_reg(Message& msg) {
  CANOPY_ASSIGN_OR_RETURN(SingleMemoryRegion s, msg.exact<SingleMemoryRegion>());
  if (msg.fds.size() > 1) return make_error(Errc::kProtocol, "REM_MEM_REG: too many fds");
  msg.fds.clear();      // QEMU may attach the region's fd; it is not needed
  GuestMemory retired;  // unmapped when this returns: after the device let go
  CANOPY_TRY(mem_.remove_region(s.region.guest_phys_addr, s.region.memory_size, retired));
  return memory_changed();
}

Status Backend::start_queue(QueueHandle& q) {
  if (!q.num_ || !q.addr_set_) return make_error(Errc::kState, "ring started before its size and addresses were set");
  CANOPY_ASSIGN_OR_RETURN(uint64_t desc, mem_.uva_to_gpa(q.desc_uva_, desc_table_bytes(q.num_)));
  CANOPY_ASSIGN_OR_RETURN(uint64_t avail, mem_.uva_to_gpa(q.avail_uva_, avail_ring_bytes(q.num_)));
  CANOPY_ASSIGN_OR_RETURN(uint64_t used, mem_.uva_to_gpa(q.used_uva_, used_ring_bytes(q.num_)));
  CANOPY_TRY(q.queue_.configure(&mem_, uint16_t(q.num_), VringAddrs{desc, avail, used}, acked_features_));
  q.queue_.set_last_avail_idx(q.base_);
  CANOPY_TRY(q.queue_.sync_used_idx());
  const bool was_started = q.started_;
  q.started_ = true;
  if (!was_started) device_.on_queue_started(q);
  return {};
}

void Backend::stop_queue(QueueHandle& q) {
  if (q.started_) {
    q.started_ = false;
    device_.on_queue_stopped(q);
  }
  q.queue_.reset();
  if (q.kick_) {
    q.kick_.reset();
    epoll_dirty_ = true;
  }
  if (acked_features_ & kVhostUserFProtocolFeatures) {
    // Stays as set by SET_VRING_ENABLE.
  } else {
    q.enabled_ = false;
  }
}

Status Backend::refresh_running_queues() {
  Status first;
  for (auto& q : queues_) {
    if (!q->started_) continue;
    q->base_ = q->queue_.last_avail_idx();
    Status s = start_queue(*q);
    if (!s.ok()) {
      stop_queue(*q);
      if (first.ok()) first = s;
    }
  }
  return first;
}

void Backend::reset_device() {
  for (auto& q : queues_) {
    q->resetting_ = true;
    stop_queue(*q);
    q->resetting_ = false;
    q->call_.reset();
    q->err_.reset();
    q->num_ = 0;
    q->base_ = 0;
    q->addr_set_ = false;
    q->enabled_ = false;
  }
  status_ = 0;
  device_.on_reset();
}

void Backend::kick(QueueHandle& q) {
  ++stats_.kicks;
  if (!q.started_ || !q.enabled_) return;
  device_.on_kick(q);
}

}  // namespace canopy::transport::vhost_user
