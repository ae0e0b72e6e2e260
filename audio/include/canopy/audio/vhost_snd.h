// canopy-snd's vhost-user device: the SndDevice model behind QEMU's vhost-user-snd(-pci) front-end or
// canopy-vmm's device bridge. Offers VERSION_1, INDIRECT_DESC, EVENT_IDX and (with controls) CTLS itself,
// since QEMU passes the back-end's features through; protocol features CONFIG and MQ; a config space of
// exactly the size asked for (12 bytes without CTLS, 16 with). A front-end that reads its whole config
// space as 12 bytes while CTLS is offered (QEMU without controls=on) is told, once, in the log: its guest
// reads no controls field and will not probe.
#pragma once

#include <array>
#include <memory>
#include <string>

#include "canopy/audio/device.h"
#include "canopy/audio/host.h"
#include "canopy/audio/policy.h"
#include "canopy/transport/vhost_user_backend.h"

namespace canopy::audio {

class VhostSnd final : public transport::vhost_user::Device {
 public:
  // Takes the host backend and (optionally) the policy board; both live as long as the device.
  static Result<std::unique_ptr<VhostSnd>> create(SndOptions options, std::unique_ptr<HostBackend> host,
                                                  std::unique_ptr<PolicyBoard> board);
  ~VhostSnd() override;

  uint64_t features() const override;
  uint64_t protocol_features() const override;
  uint16_t num_queues() const override { return proto::kNumQueues; }
  uint16_t max_queue_size() const override { return 1024; }
  Result<std::vector<uint8_t>> read_config(uint32_t offset, uint32_t size) override;
  void set_acked_features(uint64_t features) override;
  void on_kick(transport::vhost_user::QueueHandle& q) override;
  void on_queue_started(transport::vhost_user::QueueHandle& q) override;
  void on_queue_stopped(transport::vhost_user::QueueHandle& q) override;
  void on_reset() override;
  std::vector<Watch> watches() override;

  SndDevice& device() { return *dev_; }
  // One line per stream: state, buffers, frames, xruns, ducking, latency (also written at exit to the
  // --stats file).
  std::string summary() const;
  void set_stats_path(std::string path) { stats_path_ = std::move(path); }

 private:
  VhostSnd() = default;
  void complete(uint16_t queue, uint16_t head, uint32_t used);
  std::unique_ptr<HostBackend> host_;
  std::unique_ptr<PolicyBoard> board_;
  std::unique_ptr<SndDevice> dev_;
  std::array<transport::vhost_user::QueueHandle*, proto::kNumQueues> queues_{};
  std::string stats_path_;
  std::string vm_;
  bool told_no_controls_field_ = false;
};

}  // namespace canopy::audio
