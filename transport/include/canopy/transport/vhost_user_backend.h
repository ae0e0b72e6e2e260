// vhost-user back-end library: the protocol state machine (QEMU docs/interop/vhost-user.rst) and an
// epoll event loop around a VhostUserDevice, the narrow interface a device model implements.
//
// Threading: everything (messages, kicks, device callbacks) runs on the thread that calls run().
// request_stop() may be called from any thread or a signal handler.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/transport/guest_memory.h"
#include "canopy/transport/vhost_user_channel.h"
#include "canopy/transport/virtqueue.h"

namespace canopy::transport::vhost_user {

class Backend;

// One virtqueue as a device model sees it.
class QueueHandle {
 public:
  uint16_t index() const { return index_; }
  DeviceQueue& queue() { return queue_; }
  GuestMemory& memory() { return *mem_; }

  // Serves available chains with fn(chain, reader, writer) -> bytes written (or an error: the chain
  // is then returned with 0 bytes). Handles notification suppression and the re-check race, and
  // signals the call eventfd when the driver wants it. Serves at most 2 x queue size chains per call;
  // when more are pending it re-arms its own kick so the event loop comes back to it after other work.
  // Returns the number of chains served.
  using ChainFn = std::function<Result<uint32_t>(const DescriptorChain&, DescriptorReader&, DescriptorWriter&)>;
  Result<uint32_t> process(const ChainFn& fn);
  // A ChainFn returns kDeferred to keep the chain in flight (e.g. a fenced command): the device copies
  // the chain and later writes its response and calls complete(head, written). Chains still deferred
  // when the queue stops are lost to the driver, so a device completes them in on_queue_stopped.
  static constexpr uint32_t kDeferred = 0xffffffffu;
  Status complete(uint16_t head, uint32_t written);
  // Signals the driver (call eventfd) if should_notify() says it wants it.
  void notify_if_needed();
  // Signals the driver unconditionally.
  void notify();
  // Makes the event loop call on_kick for this queue again (a device that stops early with work left).
  void yield_to_event_loop();
  // True inside on_queue_stopped when the stop is a device reset: the driver may already have freed
  // the rings, so deferred chains are dropped, not completed.
  bool resetting() const { return resetting_; }

 private:
  friend class Backend;
  uint16_t index_ = 0;
  GuestMemory* mem_ = nullptr;
  DeviceQueue queue_;
  DescriptorChain chain_;
  UniqueFd kick_;
  UniqueFd call_;
  UniqueFd err_;
  uint32_t num_ = 0;
  uint16_t base_ = 0;
  uint64_t desc_uva_ = 0, avail_uva_ = 0, used_uva_ = 0;
  bool addr_set_ = false;
  bool started_ = false;  // has a kick fd and a configured ring (§ "Starting and stopping rings")
  bool enabled_ = false;
  bool resetting_ = false;
};

// What a device model implements. All callbacks run on the backend thread.
class Device {
 public:
  virtual ~Device() = default;
  // Virtio feature bits offered (VERSION_1 and transport bits included). The library adds
  // VHOST_USER_F_PROTOCOL_FEATURES.
  virtual uint64_t features() const = 0;
  // Extra protocol features the device supports (CONFIG, MQ, BACKEND_REQ ...). The library always
  // offers REPLY_ACK, CONFIGURE_MEM_SLOTS, RESET_DEVICE and STATUS.
  virtual uint64_t protocol_features() const { return 0; }
  virtual uint16_t num_queues() const = 0;
  virtual uint16_t max_queue_size() const { return 1024; }
  // Config space (needs protocol feature CONFIG).
  virtual Result<std::vector<uint8_t>> read_config(uint32_t offset, uint32_t size) {
    (void)offset;
    (void)size;
    return make_error(Errc::kUnsupported, "device has no config space");
  }
  virtual Status write_config(uint32_t offset, std::span<const uint8_t> data) {
    (void)offset;
    (void)data;
    return make_error(Errc::kUnsupported, "device config is read-only");
  }
  virtual void set_acked_features(uint64_t features) { (void)features; }
  virtual void set_acked_protocol_features(uint64_t features) { (void)features; }
  // The driver kicked (or a ring just started with work pending).
  virtual void on_kick(QueueHandle& q) = 0;
  virtual void on_queue_started(QueueHandle& q) { (void)q; }
  virtual void on_queue_stopped(QueueHandle& q) { (void)q; }
  virtual void on_status(uint8_t status) { (void)status; }
  // The guest memory's region table was set or changed (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG; its
  // layout() says whether anything moved). Regions that went are still mapped while this runs and are
  // unmapped when it returns: a device that handed host ranges of guest memory to a library
  // (virglrenderer's iovecs, read by its own threads too) re-hands or takes them back here, not later.
  virtual void on_memory_changed(GuestMemory& memory) { (void)memory; }
  virtual void on_reset() {}
  // VIRTIO shared memory regions (protocol feature SHMEM): each one's size, indexed by shmid (0: none).
  virtual std::vector<uint64_t> shmem_sizes() const { return {}; }
  // The front-end sent its back-end request channel (protocol feature BACKEND_REQ).
  virtual void on_backend_channel(Channel* channel) { (void)channel; }
  // VHOST_USER_GPU_SET_SOCKET (QEMU's vhost-user-gpu front-end): the display protocol socket of
  // docs/interop/vhost-user-gpu.rst. Devices other than a GPU refuse it.
  virtual Status on_gpu_socket(UniqueFd fd) {
    (void)fd;
    return make_error(Errc::kUnsupported, "GPU_SET_SOCKET: not a GPU device");
  }
  // Extra fds the device wants polled on the backend thread: fn is called when fd is readable.
  struct Watch {
    int fd;
    std::function<void()> fn;
  };
  virtual std::vector<Watch> watches() { return {}; }

 protected:
  // Tells the event loop that watches() changed (it re-reads them before waiting again).
  void rewatch() {
    if (rewatch_) rewatch_();
  }

 private:
  friend class Backend;
  std::function<void()> rewatch_;
};

struct BackendStats {
  uint64_t messages = 0;
  uint64_t bad_messages = 0;
  uint64_t kicks = 0;
};

class Backend {
 public:
  explicit Backend(Device& device);
  ~Backend();
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  // Serves one connected front-end until it disconnects or request_stop(). Returns ok on a clean
  // end (disconnect or stop), an error when the connection failed or the guest memory was lost (a
  // front-end truncated a region's file under the mapping: fault_guard.h; the device is not run on).
  Status run(UniqueFd connection);
  // Handles one message (used by run() and directly by the fuzz target). The reply, if any, is sent
  // on the channel given to run(); without a channel replies are dropped.
  Status handle(Message& msg);
  void request_stop();

  const BackendStats& stats() const { return stats_; }
  uint64_t acked_features() const { return acked_features_; }
  uint64_t acked_protocol_features() const { return acked_protocol_; }
  GuestMemory& memory() { return mem_; }
  QueueHandle* queue(uint16_t index) { return index < queues_.size() ? queues_[index].get() : nullptr; }

 private:
  Status dispatch(Message& msg, Message& reply, bool& has_reply);
  Status set_mem_table(Message& msg);
  Status add_mem_reg(Message& msg);
  Status rem_mem_reg(Message& msg);
  Result<QueueHandle*> vring_from_state(const Message& msg, VringState* out);
  Result<QueueHandle*> vring_from_u64(const Message& msg, uint64_t* out);
  Status start_queue(QueueHandle& q);
  void stop_queue(QueueHandle& q);
  Status refresh_running_queues();
  Status memory_changed();  // rings re-resolved, then the device told
  void reset_device();
  void kick(QueueHandle& q);
  Status rebuild_epoll();
  bool has_protocol(ProtocolFeature f) const { return acked_protocol_ & proto_bit(f); }

  Device& device_;
  GuestMemory mem_;
  std::vector<std::unique_ptr<QueueHandle>> queues_;
  Channel channel_;
  std::unique_ptr<Channel> backend_req_;
  UniqueFd epoll_;
  UniqueFd stop_fd_;
  uint64_t acked_features_ = 0;
  uint64_t acked_protocol_ = 0;
  bool features_set_ = false;
  bool owner_set_ = false;
  uint8_t status_ = 0;
  bool epoll_dirty_ = true;
  uint64_t seen_lost_ = 0;  // fault_guard::lost_count() last looked at
  BackendStats stats_;
};

// The features every backend offers (protocol feature bits).
uint64_t base_protocol_features();

}  // namespace canopy::transport::vhost_user
