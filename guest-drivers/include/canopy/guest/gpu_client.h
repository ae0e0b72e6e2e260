// The guest side of virtio-gpu (virtio 1.2 §5.7) for partition apps: 2D and blob resources in guest
// RAM, backing, transfers, flushes, scanouts, fences (per context and ring), cursor.
//
//   GpuClient::Options o;  o.area = *part.alloc(GpuClient::kAreaBytes);
//   auto gpu = GpuClient::create(*part.transport(dev), part.memory(), o);
//   uint32_t res = *gpu->create_2d(proto::Format::kB8G8R8X8, 640, 480);
//   gpu->attach_backing(res, {{fb.gpa, 640 * 480 * 4}});  gpu->set_scanout(0, res, {0, 0, 640, 480});
//   ... draw into fb ...;  gpu->transfer_to_host_2d(res, rect);  gpu->flush(res, rect);
//
// Every call is one request on the control queue. Synchronous calls wait for the response; a device
// error becomes an error value whose GpuClient::last_response() is the virtio-gpu response type.
// submit() sends a (usually fenced) request without waiting; completions are taken in the order the
// device answers with next_completion().
//
// Threading: one thread uses a GpuClient. Memory: `area` holds the rings and 16 request slots of
// kSlotBytes (commands up to kSlotBytes - 2 KiB, e.g. ~3900 backing entries).
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/guest/virtio_driver.h"
#include "canopy/protocol/virtio_gpu.h"

namespace canopy::guest {

namespace proto = canopy::protocol::virtio_gpu;

struct GpuRect {
  uint32_t x = 0, y = 0, width = 0, height = 0;
};

class GpuClient {
 public:
  static constexpr uint64_t kSlotBytes = 64 << 10;
  static constexpr uint32_t kSlots = 16;
  static constexpr uint64_t kRingBytes = 64 << 10;
  static constexpr uint64_t kAreaBytes = kRingBytes + kSlots * kSlotBytes;

  struct Options {
    GuestArea area;  // at least kAreaBytes
    uint64_t wanted_features = proto::kFEdid | proto::kFResourceUuid | proto::kFResourceBlob | proto::kFContextInit;
    int timeout_ms = 5000;
  };
  struct Reply {
    uint64_t ticket = 0;
    proto::CtrlHdr hdr{};
    std::vector<uint8_t> body;  // the bytes after the header
    uint32_t type() const { return hdr.type.get(); }
    bool ok() const { return type() < uint32_t(proto::Resp::kErrUnspec); }
  };

  // Initialises the device (id 16) with a control and a cursor queue.
  static Result<std::unique_ptr<GpuClient>> create(VirtioTransport& transport, transport::GuestMemory& mem,
                                                   const Options& options);

  bool has_feature(uint64_t f) const { return driver_.has_feature(f); }
  Result<proto::Config> config();
  // Whether the device signalled a config change (a display event, §5.7.4) since the last call: from
  // interrupts seen while waiting for replies, or pending now. Read config().events_read for what.
  bool take_config_changed();
  // Acknowledges events (writes events_clear); the device clears them from events_read.
  Status clear_events(uint32_t events);

  // Raw requests: the command bytes (header first) and the response size expected.
  Result<Reply> call(std::span<const uint8_t> command, uint32_t response_bytes = sizeof(proto::CtrlHdr));
  template <typename T>
  Result<Reply> call(const T& cmd, std::span<const uint8_t> tail = {},
                     uint32_t response_bytes = sizeof(proto::CtrlHdr)) {
    const auto b = bytes_of(cmd, tail);
    return call(std::span<const uint8_t>(b), response_bytes);
  }
  Result<uint64_t> submit(std::span<const uint8_t> command, uint32_t response_bytes = sizeof(proto::CtrlHdr));
  template <typename T>
  Result<uint64_t> submit(const T& cmd, std::span<const uint8_t> tail = {}) {
    const auto b = bytes_of(cmd, tail);
    return submit(std::span<const uint8_t>(b), uint32_t(sizeof(proto::CtrlHdr)));
  }
  // Several requests published together (one avail-index update, at most one notification): the device
  // finds them all at once, in this order, however late this thread runs between them. Tickets in the
  // same order. On an error the requests before it were still sent.
  Result<std::vector<uint64_t>> submit_batch(std::span<const std::vector<uint8_t>> commands,
                                             uint32_t response_bytes = sizeof(proto::CtrlHdr));
  // The next answered submit(), waiting up to timeout_ms (kTimeout).
  Result<Reply> next_completion(int timeout_ms);
  // Cursor queue (no response is read back).
  Status cursor(const proto::UpdateCursor& cmd);

  // Typed helpers: errors carry the device's response in last_response().
  Result<std::vector<proto::DisplayOne>> display_info();
  Result<std::vector<uint8_t>> edid(uint32_t scanout);
  Result<uint32_t> create_2d(proto::Format format, uint32_t width, uint32_t height);
  Status attach_backing(uint32_t resource, std::span<const transport::Segment> pages);
  Status detach_backing(uint32_t resource);
  Status unref(uint32_t resource);
  Status set_scanout(uint32_t scanout, uint32_t resource, GpuRect r);
  Status transfer_to_host_2d(uint32_t resource, GpuRect r, uint64_t offset);
  Status flush(uint32_t resource, GpuRect r);
  Result<uint32_t> create_blob(std::span<const transport::Segment> pages, uint64_t size,
                               uint32_t flags = proto::kBlobFlagShareable);
  Status set_scanout_blob(uint32_t scanout, uint32_t resource, proto::Format format, uint32_t width, uint32_t height,
                          uint32_t stride, uint32_t offset, GpuRect r);
  Result<std::array<uint8_t, 16>> assign_uuid(uint32_t resource);
  Status ctx_create(uint32_t ctx, uint32_t capset = 0, const char* name = "canopy");
  Status ctx_destroy(uint32_t ctx);
  Status move_cursor(uint32_t scanout, uint32_t x, uint32_t y);
  Status update_cursor(uint32_t scanout, uint32_t resource, uint32_t x, uint32_t y, uint32_t hot_x, uint32_t hot_y);

  uint32_t last_response() const { return last_response_; }
  uint64_t next_fence_id() { return ++fence_id_; }
  VirtioDriver& driver() { return driver_; }

  template <typename T>
  static std::vector<uint8_t> bytes_of(const T& cmd, std::span<const uint8_t> tail = {}) {
    std::vector<uint8_t> b(sizeof(T) + tail.size());
    std::memcpy(b.data(), &cmd, sizeof(T));
    if (!tail.empty()) std::memcpy(b.data() + sizeof(T), tail.data(), tail.size());
    return b;
  }

 private:
  GpuClient(VirtioTransport& t, transport::GuestMemory& mem) : driver_(t, mem), mem_(mem) {}
  Status expect_ok(const Result<Reply>& r);
  Result<uint64_t> add_request(std::span<const uint8_t> command, uint32_t response_bytes);  // not published yet
  Result<uint32_t> take_slot();
  Status pump(int timeout_ms);  // reaps used buffers into done_
  bool config_changed_ = false;

  struct InFlight {
    uint32_t slot = 0;
    uint32_t resp_bytes = 0;
    bool sync = false;
  };
  VirtioDriver driver_;
  transport::GuestMemory& mem_;
  Options opt_;
  uint64_t slots_gpa_ = 0;
  std::vector<bool> slot_used_;
  std::vector<uint32_t> cursor_slots_;
  uint64_t cursor_gpa_ = 0;
  uint64_t next_ticket_ = 1;
  std::vector<std::pair<uint64_t, InFlight>> in_flight_;
  std::deque<Reply> done_;  // answered submit()s, in answer order
  std::optional<Reply> sync_reply_;
  uint32_t next_resource_ = 1;
  uint64_t fence_id_ = 0;
  uint32_t last_response_ = 0;
};

}  // namespace canopy::guest
