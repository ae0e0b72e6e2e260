// A virtio-mmio device of a KVM guest bridged to a vhost-user back-end process (the same back-ends
// partitions and QEMU use): canopy-vmm starts PROGRAM --fd=3 ARGS, does the vhost-user handshake with
// the guest's RAM memfd, answers the register file (transport/virtio_mmio.h) from the back-end's
// features and config, and when the driver enables a queue gives the back-end its ring addresses, a
// kick eventfd that KVM signals on QueueNotify (ioeventfd) and a call eventfd that KVM turns into an
// edge on the device's GSI (irqfd): the data path never goes through canopy-vmm. InterruptStatus then
// reads with the used-buffer bit set from DRIVER_OK on (VirtioMmio::set_used_buffer_notifications_external);
// config-change interrupts still come from the register model.
//
// Back-ends that offer BACKEND_REQ get a back-end request channel, served on a thread of its own
// (never blocked by a vCPU): CONFIG_CHANGE_MSG becomes a config-change interrupt, and with SHMEM the
// back-end's shared memory regions (GET_SHMEM_CONFIG) become guest-physical regions the driver finds
// through SHMSel (KvmVm::add_shm_region) into which SHMEM_MAP / SHMEM_UNMAP put the back-end's files
// (virtio-gpu's host-visible memory: the guest maps GPU buffers without a copy). A driver reset
// reaches the back-end (RESET_DEVICE) and takes every mapping back.
//
// Threading: register accesses come from vCPU threads (serialised by the register model's mutex).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/hypervisor/process.h"
#include "canopy/transport/vhost_user_frontend.h"
#include "canopy/transport/virtio_mmio.h"
#include "kvm/kvm_vm.h"

namespace canopy::hypervisor::kvm {

struct KvmDeviceSpec {
  std::string name;  // "rng", "snd", ... (logs)
  uint32_t virtio_id = 0;
  std::string program;
  std::vector<std::string> args;
  std::vector<std::pair<int, int>> inherit;  // (ours, its number): what it inherits besides its socket
  BackendIdentity identity;                  // its VM's back-end uid when canopy-vmm is root
};

class VhostMmioDevice final : public transport::MmioDevice {
 public:
  // Starts the back-end (under its identity: as root, the only step that needs root's powers).
  static Result<std::unique_ptr<VhostMmioDevice>> launch(const KvmDeviceSpec& spec);
  // Then, once: the handshake, and the window [base, base + window) at `gsi` mapped into `vm`.
  Status attach(KvmVm& vm, uint64_t base, uint32_t gsi);
  ~VhostMmioDevice() override;

  uint32_t device_id() const override { return spec_.virtio_id; }
  uint32_t vendor_id() const override { return 0x4e4f4143; }  // "CANO"
  uint64_t device_features() const override;
  uint32_t config_size() const override { return config_size_; }
  void read_config(uint32_t offset, void* dst, uint32_t len) override;
  void write_config(uint32_t offset, const void* src, uint32_t len) override;
  uint16_t num_queues() const override { return uint16_t(queues_.size()); }
  uint16_t queue_max_size(uint16_t) const override { return 256; }
  bool on_features_ok(uint64_t features) override;
  Status on_queue_ready(uint16_t q, const transport::MmioQueueConfig& cfg) override;
  void on_queue_notify(uint16_t q, uint32_t data) override;
  void on_reset() override;
  std::optional<transport::ShmRegion> shm_region(uint32_t id) const override;

  uint64_t window() const { return window_; }

 private:
  VhostMmioDevice() = default;
  void stop_queue(uint16_t q);
  Status start_backend_requests();
  void serve_backend_requests();
  struct Queue {
    bool running = false;
    UniqueFd kick, call;
  };
  KvmDeviceSpec spec_;
  KvmVm* vm_ = nullptr;
  Child backend_;
  transport::vhost_user::Frontend fe_;
  std::unique_ptr<transport::VirtioMmio> mmio_;
  uint64_t base_ = 0, window_ = 0;
  uint32_t gsi_ = 0;
  uint64_t backend_features_ = 0;
  uint64_t proto_ = 0;  // negotiated protocol features
  uint32_t config_size_ = 0;
  std::vector<Queue> queues_;
  struct Shm {
    uint32_t shmid = 0, region = 0;
    uint64_t gpa = 0, size = 0;
  };
  std::vector<Shm> shm_;
  UniqueFd backend_req_;  // our end of the back-end request channel
  std::thread backend_req_thread_;
  // Config-change notices are raised from a thread of their own: the register model's lock may be held
  // by a vCPU waiting for the back-end, which may be waiting for the request thread (SHMEM_UNMAP).
  std::thread config_thread_;
  std::mutex config_mu_;
  std::condition_variable config_cv_;
  bool config_pending_ = false, config_stop_ = false;
};

}  // namespace canopy::hypervisor::kvm
