#include "canopy/transport/vhost_user_frontend.h"

#include <cstring>

namespace canopy::transport::vhost_user {

Result<Frontend> Frontend::connect(const char* path, int connect_timeout_ms) {
  CANOPY_ASSIGN_OR_RETURN(UniqueFd fd, connect_unix(path, connect_timeout_ms));
  return Frontend(std::move(fd));
}

Result<Message> Frontend::transact(const Message& m, std::span<const int> fds, bool expect_reply) {
  CANOPY_TRY(channel_.send(m, fds));
  if (!expect_reply) return Message{};
  CANOPY_ASSIGN_OR_RETURN(Message reply, channel_.recv(timeout_ms_));
  if (!(reply.flags() & kFlagReply) || reply.header.request.get() != m.header.request.get())
    return make_error(Errc::kProtocol, "vhost-user: reply does not match the request");
  if (!reply.fds.empty()) return make_error(Errc::kProtocol, "vhost-user: unexpected fds in reply");
  return reply;
}

Result<uint64_t> Frontend::get_u64(Request r) {
  CANOPY_ASSIGN_OR_RETURN(Message reply, transact(Message::make(r), {}, true));
  CANOPY_ASSIGN_OR_RETURN(le64 v, reply.exact<le64>());
  return v.get();
}

Status Frontend::send_set(const Message& m, std::span<const int> fds) {
  if (!reply_ack_) return channel_.send(m, fds);
  Message req;
  req.header = m.header;
  req.payload = m.payload;
  req.header.flags = req.header.flags.get() | kFlagNeedReply;
  CANOPY_ASSIGN_OR_RETURN(Message reply, transact(req, fds, true));
  CANOPY_ASSIGN_OR_RETURN(le64 ack, reply.exact<le64>());
  if (ack.get() != 0) return make_error(Errc::kProtocol, "vhost-user: back-end rejected the request");
  return {};
}

Result<uint64_t> Frontend::get_features() { return get_u64(Request::kGetFeatures); }
Status Frontend::set_features(uint64_t f) { return send_set(Message::make_u64(Request::kSetFeatures, f)); }
Result<uint64_t> Frontend::get_protocol_features() { return get_u64(Request::kGetProtocolFeatures); }

Status Frontend::set_protocol_features(uint64_t f) {
  CANOPY_TRY(send_set(Message::make_u64(Request::kSetProtocolFeatures, f)));
  reply_ack_ = f & proto_bit(kProtoReplyAck);
  return {};
}

Status Frontend::set_owner() { return send_set(Message::make(Request::kSetOwner)); }
Status Frontend::reset_device() { return send_set(Message::make(Request::kResetDevice)); }
Result<uint64_t> Frontend::get_queue_num() { return get_u64(Request::kGetQueueNum); }
Result<uint64_t> Frontend::get_max_mem_slots() { return get_u64(Request::kGetMaxMemSlots); }

namespace {
MemoryRegion to_wire(const RegionInfo& i) {
  MemoryRegion r;
  r.guest_phys_addr = i.guest_phys_addr;
  r.memory_size = i.size;
  r.userspace_addr = i.user_addr;
  r.mmap_offset = i.mmap_offset;
  return r;
}
}  // namespace

Status Frontend::set_mem_table(std::span<const FrontendRegion> regions) {
  if (regions.size() > kMemoryBaselineRegions) return make_error(Errc::kLimit, "SET_MEM_TABLE: more than 8 regions");
  Message m = Message::make(Request::kSetMemTable);
  m.payload.resize(kMemoryTableHeaderSize + regions.size() * sizeof(MemoryRegion));
  le32 n = uint32_t(regions.size());
  std::memcpy(m.payload.data(), &n, sizeof n);
  std::vector<int> fds;
  for (size_t i = 0; i < regions.size(); ++i) {
    MemoryRegion r = to_wire(regions[i].info);
    std::memcpy(m.payload.data() + kMemoryTableHeaderSize + i * sizeof r, &r, sizeof r);
    fds.push_back(regions[i].fd);
  }
  return send_set(m, fds);
}

Status Frontend::add_mem_reg(const FrontendRegion& region) {
  SingleMemoryRegion s;
  s.region = to_wire(region.info);
  int fd = region.fd;
  return send_set(Message::make(Request::kAddMemReg, s), std::span<const int>(&fd, 1));
}

Status Frontend::rem_mem_reg(const RegionInfo& region) {
  SingleMemoryRegion s;
  s.region = to_wire(region);
  return send_set(Message::make(Request::kRemMemReg, s));
}

Status Frontend::set_vring_num(uint32_t index, uint32_t num) {
  VringState st;
  st.index = index;
  st.num = num;
  return send_set(Message::make(Request::kSetVringNum, st));
}

Status Frontend::set_vring_addr(uint32_t index, uint64_t desc_uva, uint64_t avail_uva, uint64_t used_uva) {
  VringAddr a;
  a.index = index;
  a.flags = 0;
  a.desc_user_addr = desc_uva;
  a.avail_user_addr = avail_uva;
  a.used_user_addr = used_uva;
  a.log_guest_addr = 0;
  return send_set(Message::make(Request::kSetVringAddr, a));
}

Status Frontend::set_vring_base(uint32_t index, uint32_t base) {
  VringState st;
  st.index = index;
  st.num = base;
  return send_set(Message::make(Request::kSetVringBase, st));
}

Result<uint32_t> Frontend::get_vring_base(uint32_t index) {
  VringState st;
  st.index = index;
  st.num = 0;
  CANOPY_ASSIGN_OR_RETURN(Message reply, transact(Message::make(Request::kGetVringBase, st), {}, true));
  CANOPY_ASSIGN_OR_RETURN(VringState out, reply.exact<VringState>());
  if (out.index.get() != index) return make_error(Errc::kProtocol, "GET_VRING_BASE: reply for another ring");
  return out.num.get();
}

Status Frontend::vring_fd(Request r, uint32_t index, int fd) {
  uint64_t v = index & kVringIndexMask;
  if (fd < 0) v |= kVringNoFdMask;
  Message m = Message::make_u64(r, v);
  if (fd < 0) return send_set(m);
  return send_set(m, std::span<const int>(&fd, 1));
}

Status Frontend::set_vring_kick(uint32_t index, int fd) { return vring_fd(Request::kSetVringKick, index, fd); }
Status Frontend::set_vring_call(uint32_t index, int fd) { return vring_fd(Request::kSetVringCall, index, fd); }
Status Frontend::set_vring_err(uint32_t index, int fd) { return vring_fd(Request::kSetVringErr, index, fd); }

Status Frontend::set_vring_enable(uint32_t index, bool enable) {
  VringState st;
  st.index = index;
  st.num = enable ? 1 : 0;
  return send_set(Message::make(Request::kSetVringEnable, st));
}

Result<std::vector<uint8_t>> Frontend::get_config(uint32_t offset, uint32_t size) {
  if (size > kMaxConfigSize) return make_error(Errc::kLimit, "GET_CONFIG: size over 256");
  Message m = Message::make(Request::kGetConfig);
  ConfigHeader h;
  h.offset = offset;
  h.size = size;
  h.flags = 0;
  m.payload.resize(sizeof h + size);
  std::memcpy(m.payload.data(), &h, sizeof h);
  CANOPY_ASSIGN_OR_RETURN(Message reply, transact(m, {}, true));
  if (reply.payload.size() != sizeof h + size) return make_error(Errc::kProtocol, "GET_CONFIG: back-end failed");
  return std::vector<uint8_t>(reply.payload.begin() + sizeof h, reply.payload.end());
}

Status Frontend::set_config(uint32_t offset, std::span<const uint8_t> data) {
  if (data.size() > kMaxConfigSize) return make_error(Errc::kLimit, "SET_CONFIG: size over 256");
  Message m = Message::make(Request::kSetConfig);
  ConfigHeader h;
  h.offset = offset;
  h.size = uint32_t(data.size());
  h.flags = 0;
  m.payload.resize(sizeof h + data.size());
  std::memcpy(m.payload.data(), &h, sizeof h);
  if (!data.empty()) std::memcpy(m.payload.data() + sizeof h, data.data(), data.size());
  return send_set(m);
}

Status Frontend::set_status(uint8_t status) { return send_set(Message::make_u64(Request::kSetStatus, status)); }

Result<uint8_t> Frontend::get_status() {
  CANOPY_ASSIGN_OR_RETURN(uint64_t v, get_u64(Request::kGetStatus));
  return uint8_t(v);
}

Result<std::vector<uint64_t>> Frontend::get_shmem_config() {
  CANOPY_ASSIGN_OR_RETURN(Message reply, transact(Message::make(Request::kGetShmemConfig), {}, true));
  CANOPY_ASSIGN_OR_RETURN(ShmemConfig c, reply.exact<ShmemConfig>());
  std::vector<uint64_t> sizes(kMaxShmemRegions);
  uint32_t n = 0;
  for (uint32_t i = 0; i < kMaxShmemRegions; ++i) {
    sizes[i] = c.memory_sizes[i];
    n += sizes[i] != 0;
  }
  if (n != c.nregions.get())
    return make_error(Errc::kProtocol, "GET_SHMEM_CONFIG: region count does not match the sizes");
  while (!sizes.empty() && sizes.back() == 0) sizes.pop_back();
  return sizes;
}

Status Frontend::set_backend_req_fd(int fd) {
  return send_set(Message::make(Request::kSetBackendReqFd), std::span<const int>(&fd, 1));
}

Status serve_backend_request(Channel& ch, const BackendRequestHandlers& h, int timeout_ms, Status* outcome) {
  // recv has taken the whole message (or failed): from here on the channel stays in step, and a request
  // that cannot be served is refused with a reply, not by dropping the channel.
  CANOPY_ASSIGN_OR_RETURN(Message m, ch.recv(timeout_ms));
  const auto req = static_cast<BackendRequest>(m.header.request.get());
  Status result;
  switch (req) {
    case BackendRequest::kConfigChangeMsg:
      if (!m.fds.empty() || !m.payload.empty()) {
        result = make_error(Errc::kInvalidArgument, "CONFIG_CHANGE_MSG: unexpected payload or fds");
        break;
      }
      if (h.config_changed) h.config_changed();
      break;
    case BackendRequest::kShmemMap:
    case BackendRequest::kShmemUnmap: {
      const bool map = req == BackendRequest::kShmemMap;
      auto body = m.exact<ShmemMap>();
      if (!body.ok()) {
        result = make_error(Errc::kInvalidArgument, "SHMEM_MAP/UNMAP: payload of the wrong size");
        break;
      }
      if (m.fds.size() != (map ? 1u : 0u)) {
        result = make_error(Errc::kInvalidArgument, map ? "SHMEM_MAP: needs one fd" : "SHMEM_UNMAP: unexpected fds");
        break;
      }
      if (map ? !h.shmem_map : !h.shmem_unmap) {
        result = make_error(Errc::kUnsupported, "shared memory regions not served");
        break;
      }
      result = map ? h.shmem_map(*body, m.fds[0].get()) : h.shmem_unmap(*body);
      break;
    }
    default: result = make_error(Errc::kUnsupported, "back-end request not supported");
  }
  if (m.need_reply()) {
    Message r =
        Message::make_u64(static_cast<Request>(m.header.request.get()), result.ok() ? 0 : 1, kVersion | kFlagReply);
    CANOPY_TRY(ch.send(r));
  }
  if (outcome) *outcome = result;
  return {};
}

}  // namespace canopy::transport::vhost_user
