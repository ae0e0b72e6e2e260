#include "kvm/vhost_mmio.h"

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "canopy/base/log.h"
#include "canopy/transport/virtio_ring.h"
#include "device_bridge.h"
#include "kvm/boot.h"

namespace canopy::hypervisor::kvm {

namespace vu = transport::vhost_user;

namespace {
constexpr int kBackendStartMs = 60000;
}  // namespace

// ---------------------------------------------------------------------------------------------------
// VhostMmioDevice

Result<std::unique_ptr<VhostMmioDevice>> VhostMmioDevice::launch(const KvmDeviceSpec& spec) {
  std::unique_ptr<VhostMmioDevice> d(new VhostMmioDevice());
  d->spec_ = spec;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return make_error(Errc::kIo, "socketpair failed", errno);
  UniqueFd ours(sv[0]), theirs(sv[1]);
  SpawnOptions o;
  o.path = spec.program;
  o.argv = {spec.program, "--fd=3"};
  o.argv.insert(o.argv.end(), spec.args.begin(), spec.args.end());
  for (char** e = environ; *e != nullptr; ++e) o.env.emplace_back(*e);
  o.fds = {{theirs.get(), 3}};
  o.fds.insert(o.fds.end(), spec.inherit.begin(), spec.inherit.end());
  std::vector<UniqueFd> given;
  apply_identity(spec.identity, o, given);
  CANOPY_ASSIGN_OR_RETURN(d->backend_, spawn(o));
  theirs.reset();
  given.clear();
  d->spec_.inherit.clear();  // handed over: the caller closes them
  // The back-end answers its first message once it has set itself up, which can take long (canopy-gpu's
  // virglrenderer compiles its shaders at start: seconds on a slow CPU); after that, 5 s a reply.
  d->fe_ = vu::Frontend(std::move(ours), kBackendStartMs);
  return d;
}

Status VhostMmioDevice::attach(KvmVm& vm, uint64_t base, uint32_t gsi) {
  if (vm_ != nullptr) return make_error(Errc::kInvalidArgument, "the device is attached already");
  vm_ = &vm;
  base_ = base;
  gsi_ = gsi;
  const KvmDeviceSpec& spec = spec_;
  vu::Frontend& fe = fe_;
  CANOPY_ASSIGN_OR_RETURN(backend_features_, fe.get_features());
  fe.set_reply_timeout(5000);
  uint64_t proto = 0;
  if (backend_features_ & transport::kVhostUserFProtocolFeatures) {
    CANOPY_ASSIGN_OR_RETURN(uint64_t pf, fe.get_protocol_features());
    proto = pf & (vu::proto_bit(vu::kProtoConfig) | vu::proto_bit(vu::kProtoMq) | vu::proto_bit(vu::kProtoReplyAck) |
                  vu::proto_bit(vu::kProtoResetDevice) | vu::proto_bit(vu::kProtoBackendReq) |
                  vu::proto_bit(vu::kProtoShmem));
    if (!(proto & vu::proto_bit(vu::kProtoBackendReq))) proto &= ~vu::proto_bit(vu::kProtoShmem);
    CANOPY_TRY(fe.set_protocol_features(proto));
  }
  uint16_t queues = virtio_default_queues(spec.virtio_id);
  if (proto & vu::proto_bit(vu::kProtoMq)) {
    CANOPY_ASSIGN_OR_RETURN(uint64_t n, fe.get_queue_num());
    if (n == 0 || n > 64) return make_error(Errc::kProtocol, "back-end reports an odd queue count");
    queues = uint16_t(n);
  }
  CANOPY_TRY(fe.set_owner());
  // Guest RAM as the back-end maps it: the low part at GPA 0, the rest at 4 GiB, user addresses those of
  // canopy-vmm's own mapping (ring addresses are given in them).
  const uint64_t low = std::min(vm.ram_bytes(), kMmioGapStart);
  std::vector<vu::FrontendRegion> regions;
  regions.push_back({transport::RegionInfo{0, low, reinterpret_cast<uint64_t>(vm.host_address(0)), 0}, vm.ram_fd()});
  if (vm.ram_bytes() > low)
    regions.push_back({transport::RegionInfo{kHighRamStart, vm.ram_bytes() - low,
                                             reinterpret_cast<uint64_t>(vm.host_address(kHighRamStart)), low},
                       vm.ram_fd()});
  CANOPY_TRY(fe.set_mem_table(regions));
  config_size_ = (proto & vu::proto_bit(vu::kProtoConfig)) ? virtio_config_size(spec.virtio_id) : 0;
  proto_ = proto;
  if (proto & vu::proto_bit(vu::kProtoShmem)) {
    CANOPY_ASSIGN_OR_RETURN(auto sizes, fe.get_shmem_config());
    // Guest-physical space is finite (and each region a KVM slot): 64 GiB per device at most.
    uint64_t total = 0;
    for (uint64_t sz : sizes) total += std::min<uint64_t>(sz, uint64_t{1} << 40);
    if (total > (uint64_t{64} << 30))
      return make_error(Errc::kLimit, "back-end asks for more than 64 GiB of shared memory regions");
    for (uint32_t id = 0; id < sizes.size(); ++id) {
      if (sizes[id] == 0) continue;
      Shm s;
      s.shmid = id;
      s.size = sizes[id];
      auto region = vm.add_shm_region(s.size, &s.gpa);
      if (!region.ok())
        return make_error(region.code(), "back-end's shared memory region refused", region.error().sys_errno);
      s.region = *region;
      CANOPY_INFO("kvm: device %s: shared memory region %u, %llu MiB at guest-physical 0x%llx", spec.name.c_str(), id,
                  (unsigned long long)(s.size >> 20), (unsigned long long)s.gpa);
      shm_.push_back(s);
    }
  }
  queues_.resize(queues);
  VhostMmioDevice* self = this;
  mmio_ = std::make_unique<transport::VirtioMmio>(*this, [self](bool asserted) {
    if (asserted) self->vm_->pulse_irq(self->gsi_);
  });
  mmio_->set_used_buffer_notifications_external(true);
  window_ = transport::mmio::window_size(config_size_);
  CANOPY_TRY(
      vm.add_mmio(base, window_,
                  MmioHandler{[self](uint64_t off, uint32_t len) { return self->mmio_->read(off, len); },
                              [self](uint64_t off, uint32_t len, uint64_t v) { self->mmio_->write(off, len, v); }}));
  vm.describe_virtio(base, uint32_t(window_), gsi);
  if (proto & vu::proto_bit(vu::kProtoBackendReq)) CANOPY_TRY(start_backend_requests());
  CANOPY_INFO("kvm: device %s (virtio %u): back-end %s up (pid %d), %u queue(s), MMIO 0x%llx, GSI %u",
              spec.name.c_str(), spec.virtio_id, spec.program.c_str(), int(backend_.pid()), queues,
              (unsigned long long)base, gsi);
  return {};
}

Status VhostMmioDevice::start_backend_requests() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return make_error(Errc::kIo, "socketpair failed", errno);
  backend_req_ = UniqueFd(sv[0]);
  UniqueFd theirs(sv[1]);
  CANOPY_TRY(fe_.set_backend_req_fd(theirs.get()));
  config_thread_ = std::thread([this] {
    std::unique_lock<std::mutex> l(config_mu_);
    for (;;) {
      config_cv_.wait(l, [this] { return config_pending_ || config_stop_; });
      if (config_stop_) return;
      config_pending_ = false;
      l.unlock();
      mmio_->config_changed();
      l.lock();
    }
  });
  backend_req_thread_ = std::thread([this] { serve_backend_requests(); });
  return {};
}

void VhostMmioDevice::serve_backend_requests() {
  const int fd = dup(backend_req_.get());
  if (fd < 0) {
    CANOPY_ERROR("kvm: device %s: cannot serve the back-end's requests (dup failed)", spec_.name.c_str());
    ::shutdown(backend_req_.get(), SHUT_RDWR);  // the back-end sees the channel gone at once
    return;
  }
  vu::Channel ch{UniqueFd(fd)};
  vu::BackendRequestHandlers h;
  h.config_changed = [this] {
    std::lock_guard<std::mutex> l(config_mu_);
    config_pending_ = true;
    config_cv_.notify_one();
  };
  auto find = [this](uint8_t shmid) -> const Shm* {
    for (const auto& s : shm_)
      if (s.shmid == shmid) return &s;
    return nullptr;
  };
  h.shmem_map = [this, find](const vu::ShmemMap& m, int fd) -> Status {
    const Shm* s = find(m.shmid);
    if (!s) return make_error(Errc::kInvalidArgument, "SHMEM_MAP: no such region");
    // The region's memory slot is writable for the guest: a read-only file there would stop the VM at
    // the guest's first write. Read-only mappings are refused until slots of their own carry them.
    if (!(m.flags.get() & vu::kShmemMapWritable))
      return make_error(Errc::kUnsupported, "SHMEM_MAP: read-only mappings are not served");
    return vm_->map_shm(s->region, m.shm_offset, fd, m.fd_offset, m.len, m.flags.get() & vu::kShmemMapWritable);
  };
  h.shmem_unmap = [this, find](const vu::ShmemMap& m) -> Status {
    const Shm* s = find(m.shmid);
    if (!s) return make_error(Errc::kInvalidArgument, "SHMEM_UNMAP: no such region");
    return vm_->unmap_shm(s->region, m.shm_offset, m.len);
  };
  for (;;) {
    Status outcome;
    Status st = vu::serve_backend_request(ch, h, -1, &outcome);
    if (!st.ok()) {
      // The back-end went away, or the channel is out of step: the back-end must see it closed now
      // (not wait for acknowledgements that never come).
      if (st.code() != Errc::kClosed)
        CANOPY_WARN("kvm: device %s: back-end request channel broken: %s", spec_.name.c_str(), st.error().what);
      ::shutdown(backend_req_.get(), SHUT_RDWR);
      break;
    }
    if (!outcome.ok())
      CANOPY_WARN_RL("kvm: device %s: back-end request refused: %s", spec_.name.c_str(), outcome.error().what);
  }
}

std::optional<transport::ShmRegion> VhostMmioDevice::shm_region(uint32_t id) const {
  for (const auto& s : shm_)
    if (s.shmid == id) return transport::ShmRegion{s.gpa, s.size};
  return std::nullopt;
}

VhostMmioDevice::~VhostMmioDevice() {
  for (size_t q = 0; q < queues_.size(); ++q)
    if (queues_[q].call.valid()) (void)vm_->remove_irqfd(gsi_, queues_[q].call.get());
  fe_ = vu::Frontend();  // closing the socket makes the back-end exit on its own
  if (backend_req_.valid()) ::shutdown(backend_req_.get(), SHUT_RDWR);  // ends the request thread
  if (backend_req_thread_.joinable()) backend_req_thread_.join();
  if (config_thread_.joinable()) {
    {
      std::lock_guard<std::mutex> l(config_mu_);
      config_stop_ = true;
    }
    config_cv_.notify_one();
    config_thread_.join();
  }
  if (backend_.running() && !backend_.wait(500).ok()) backend_.terminate(500);
}

uint64_t VhostMmioDevice::device_features() const {
  return (backend_features_ & ~transport::kVhostUserFProtocolFeatures & ~transport::kVirtioFRingPacked &
          ~transport::kVirtioFNotificationData) |
         transport::kVirtioFVersion1;
}

void VhostMmioDevice::read_config(uint32_t offset, void* dst, uint32_t len) {
  auto c = fe_.get_config(offset, len);
  if (c.ok() && c->size() == len) std::memcpy(dst, c->data(), len);
  else std::memset(dst, 0, len);
}

void VhostMmioDevice::write_config(uint32_t offset, const void* src, uint32_t len) {
  (void)fe_.set_config(offset, std::span(static_cast<const uint8_t*>(src), len));
}

bool VhostMmioDevice::on_features_ok(uint64_t features) {
  const uint64_t f = features | (backend_features_ & transport::kVhostUserFProtocolFeatures);
  if (Status s = fe_.set_features(f); !s.ok()) {
    CANOPY_WARN("kvm: device %s: SET_FEATURES failed: %s", spec_.name.c_str(), s.error().what);
    return false;
  }
  return true;
}

Status VhostMmioDevice::on_queue_ready(uint16_t q, const transport::MmioQueueConfig& cfg) {
  if (!cfg.ready) {
    stop_queue(q);
    return {};
  }
  Queue& qu = queues_[q];
  const uint64_t desc_bytes = 16ull * cfg.size, avail_bytes = 6 + 2ull * cfg.size, used_bytes = 6 + 8ull * cfg.size;
  uint8_t* desc = vm_->host_address(cfg.addrs.desc);
  uint8_t* avail = vm_->host_address(cfg.addrs.avail);
  uint8_t* used = vm_->host_address(cfg.addrs.used);
  if (!desc || !avail || !used || !vm_->host_address(cfg.addrs.desc + desc_bytes - 1) ||
      !vm_->host_address(cfg.addrs.avail + avail_bytes - 1) || !vm_->host_address(cfg.addrs.used + used_bytes - 1))
    return make_error(Errc::kOutOfRange, "queue rings outside guest RAM");
  qu.kick = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  qu.call = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!qu.kick.valid() || !qu.call.valid()) return make_error(Errc::kIo, "eventfd failed", errno);
  CANOPY_TRY(fe_.set_vring_num(q, cfg.size));
  CANOPY_TRY(fe_.set_vring_addr(q, reinterpret_cast<uint64_t>(desc), reinterpret_cast<uint64_t>(avail),
                                reinterpret_cast<uint64_t>(used)));
  CANOPY_TRY(fe_.set_vring_base(q, 0));
  CANOPY_TRY(fe_.set_vring_kick(q, qu.kick.get()));
  CANOPY_TRY(fe_.set_vring_call(q, qu.call.get()));
  CANOPY_TRY(fe_.set_vring_enable(q, true));
  CANOPY_TRY(vm_->add_ioeventfd(base_ + transport::mmio::kQueueNotify, q, qu.kick.get()));
  CANOPY_TRY(vm_->add_irqfd(gsi_, qu.call.get()));
  qu.running = true;
  return {};
}

void VhostMmioDevice::on_queue_notify(uint16_t q, uint32_t) {
  // Only kicks KVM did not catch (e.g. one the register model held back until DRIVER_OK) get here.
  if (q < queues_.size() && queues_[q].kick.valid()) {
    uint64_t one = 1;
    ssize_t w = ::write(queues_[q].kick.get(), &one, sizeof one);
    (void)w;
  }
}

void VhostMmioDevice::stop_queue(uint16_t q) {
  Queue& qu = queues_[q];
  if (!qu.running) return;
  (void)fe_.get_vring_base(q);  // stops the ring in the back-end
  (void)vm_->remove_ioeventfd(base_ + transport::mmio::kQueueNotify, q, qu.kick.get());
  (void)vm_->remove_irqfd(gsi_, qu.call.get());
  qu = Queue();
}

void VhostMmioDevice::on_reset() {
  for (size_t q = 0; q < queues_.size(); ++q) stop_queue(uint16_t(q));
  if (proto_ & vu::proto_bit(vu::kProtoResetDevice)) {
    if (Status s = fe_.reset_device(); !s.ok())
      CANOPY_WARN("kvm: device %s: RESET_DEVICE failed: %s", spec_.name.c_str(), s.error().what);
  }
  // The back-end forgets its mappings with the reset; the regions are emptied to match.
  for (const auto& s : shm_) vm_->clear_shm(s.region);
}

}  // namespace canopy::hypervisor::kvm
