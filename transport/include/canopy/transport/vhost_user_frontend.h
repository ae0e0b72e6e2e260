// vhost-user front-end library: the VMM side of the protocol. Used by tests now and by canopy-vmm.
// Each call sends one request and, where the protocol has one (or REPLY_ACK was negotiated), waits
// for its reply with a timeout, so a dead or stuck back-end gives an error value, not a hang.
//
// Threading: one thread uses a Frontend at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/transport/guest_memory.h"
#include "canopy/transport/vhost_user_channel.h"

namespace canopy::transport::vhost_user {

// What a front-end does with the back-end's requests on the back-end request channel.
struct BackendRequestHandlers {
  std::function<void()> config_changed;                        // CONFIG_CHANGE_MSG
  std::function<Status(const ShmemMap& m, int fd)> shmem_map;  // SHMEM_MAP (fd borrowed)
  std::function<Status(const ShmemMap& m)> shmem_unmap;        // SHMEM_UNMAP
};
// Reads and serves one back-end request from `ch` (waiting at most timeout_ms, -1: forever), replying
// where the back-end asked (NEED_REPLY): 0 when done, 1 when refused. A request refused (by a handler,
// or malformed but read whole) is not an error of the channel: *outcome, when given, says why. Errors
// only when the channel itself failed (kClosed: the back-end went away; kProtocol / kIo / kTimeout: it
// is out of step or broken): close it.
Status serve_backend_request(Channel& ch, const BackendRequestHandlers& h, int timeout_ms = -1,
                             Status* outcome = nullptr);

struct FrontendRegion {
  RegionInfo info;  // user_addr: the address this front-end gives the region in its own space
  int fd = -1;      // borrowed
};

class Frontend {
 public:
  Frontend() = default;
  explicit Frontend(UniqueFd sock, int reply_timeout_ms = 5000)
      : channel_(std::move(sock)), timeout_ms_(reply_timeout_ms) {}
  static Result<Frontend> connect(const char* path, int connect_timeout_ms = 5000);
  // How long each reply may take from now on.
  void set_reply_timeout(int ms) { timeout_ms_ = ms; }

  Result<uint64_t> get_features();
  Status set_features(uint64_t features);
  Result<uint64_t> get_protocol_features();
  // Also enables REPLY_ACK use when the set includes it.
  Status set_protocol_features(uint64_t features);
  Status set_owner();
  Status reset_device();
  Result<uint64_t> get_queue_num();
  Result<uint64_t> get_max_mem_slots();
  Status set_mem_table(std::span<const FrontendRegion> regions);
  Status add_mem_reg(const FrontendRegion& region);
  Status rem_mem_reg(const RegionInfo& region);
  Status set_vring_num(uint32_t index, uint32_t num);
  Status set_vring_addr(uint32_t index, uint64_t desc_uva, uint64_t avail_uva, uint64_t used_uva);
  Status set_vring_base(uint32_t index, uint32_t base);
  Result<uint32_t> get_vring_base(uint32_t index);
  Status set_vring_kick(uint32_t index, int fd);  // fd < 0: no fd
  Status set_vring_call(uint32_t index, int fd);
  Status set_vring_err(uint32_t index, int fd);
  Status set_vring_enable(uint32_t index, bool enable);
  Result<std::vector<uint8_t>> get_config(uint32_t offset, uint32_t size);
  Status set_config(uint32_t offset, std::span<const uint8_t> data);
  Status set_status(uint8_t status);
  Result<uint8_t> get_status();
  Status set_backend_req_fd(int fd);
  // Protocol feature SHMEM: the back-end's shared memory regions' sizes by shmid (trailing zeros cut).
  Result<std::vector<uint64_t>> get_shmem_config();

  // Sends an arbitrary message (tests use this to send malformed input) and, if expect_reply, returns the reply.
  Result<Message> transact(const Message& m, std::span<const int> fds, bool expect_reply);

  Channel& channel() { return channel_; }

 private:
  Result<uint64_t> get_u64(Request r);
  Status send_set(const Message& m, std::span<const int> fds = {});
  Status vring_fd(Request r, uint32_t index, int fd);

  Channel channel_;
  int timeout_ms_ = 5000;
  bool reply_ack_ = false;
};

}  // namespace canopy::transport::vhost_user
