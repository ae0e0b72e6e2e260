// A virtio-mmio device of a KVM guest bridged to a vhost-user back-end process (the same back-ends
// partitions and QEMU use): canopy-vmm starts PROGRAM --fd=3 ARGS, does the vhost-user handshake with
// the guest's RAM memfd, answers the register file (transport/virtio_mmio.h) from the back-end's
// features and config, and when the driver enables a queue gives the back-end its ring addresses, a
// kick eventfd that KVM signals on QueueNotify (ioeventfd) and a call eventfd that KVM turns into an
// edge on the device's GSI (irqfd): the data path never goes through canopy-vmm. InterruptStatus then
// reads with the used-buffer bit set from DRIVER_OK on (VirtioMmio::set_used_buffer_notifications_external);
// config-change interrupts still come from the register model.
//
// Threading: register accesses come from vCPU threads (serialised by the register model's mutex).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
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
};

class VhostMmioDevice final : public transport::MmioDevice {
 public:
  // Starts the back-end, does the handshake, maps the window [base, base + window) at `gsi` into `vm`.
  static Result<std::unique_ptr<VhostMmioDevice>> start(const KvmDeviceSpec& spec, KvmVm& vm, uint64_t base,
                                                        uint32_t gsi);
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

  uint64_t window() const { return window_; }

 private:
  VhostMmioDevice() = default;
  void stop_queue(uint16_t q);
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
  uint32_t config_size_ = 0;
  std::vector<Queue> queues_;
};

}  // namespace canopy::hypervisor::kvm
