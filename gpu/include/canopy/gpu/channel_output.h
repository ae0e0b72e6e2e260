// ChannelOutput: the scanout output that hands a canopy-gpu device's frames to the compositor
// (canopy-display) over the scanout channel (canopy/protocol/scanout_channel.h, docs/display.md), zero copy.
//
// A frame's pieces (guest RAM memfd for blobs and aliased 2D resources, the device's sealed host storage
// for 2D resources) are sent once per resource backing as a BUFFER with their descriptors; every frame
// of it is then one small FRAME packet. The frame is held until the compositor sends RELEASE for its
// (scanout, seq); that is when a fenced flush retires. When a backing is gone and its last frame was
// released, BUFFER_GONE lets the compositor unmap it.
//
// Robustness: the compositor is another process and may be late, slow or gone.
//   - Connecting is retried (at most every retry_ms) when a frame arrives while disconnected; frames
//     that cannot be sent are released at once (the guest is never blocked by a missing compositor).
//   - Sends never block: the socket is non-blocking with a large send buffer; a send that would block
//     drops the connection (every held frame released) and it is made again later, resending state.
//   - At most max_held frames per scanout wait for RELEASE; past that the oldest is released (a
//     compositor that never answers cannot stall the guest's fences).
//   - A RELEASE for an unknown frame is ignored; a malformed packet closes the connection.
// DISPLAY packets from the compositor (an output changed) go to on_display.
//
// Pieces that map_scattered() cannot map (not page aligned) are read into this process (Frame::map) and
// copied once into a memfd; both copies are added to the FRAME's bytes_copied (with the device's own)
// and to Stats::bytes_copied. Cursor images always go as a memfd copy and are not counted there.
//
// Threading: the device thread calls everything (ScanoutOutput calls, on_readable()).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "canopy/base/unique_fd.h"
#include "canopy/gpu/scanout_output.h"

namespace canopy::gpu {

class ChannelOutput : public ScanoutOutput {
 public:
  struct Options {
    std::string socket_path;  // the compositor's listening SOCK_SEQPACKET socket
    std::string vm_name;      // a-z 0-9 -, at most 31 bytes
    uint32_t num_scanouts = 1;
    int retry_ms = 500;
    size_t max_held = 8;
    uint32_t first_buffer_id = 1;  // where buffer ids start (tests start near the wrap); 0 is never used
  };
  struct Stats {
    uint64_t frames_sent = 0;
    uint64_t frames_released_by_compositor = 0;
    uint64_t frames_released_unsent = 0;  // disconnected, or the send would have blocked
    uint64_t frames_released_over_cap = 0;
    uint64_t buffers_sent = 0;
    uint64_t connects = 0;
    uint64_t disconnects = 0;
    uint64_t bytes_copied = 0;  // unaligned pieces read into this process (Frame::map) and copied into a memfd
  };

  explicit ChannelOutput(Options o);
  ~ChannelOutput() override;

  void on_scanout(const ScanoutState& s) override;
  void on_frame(std::shared_ptr<Frame> frame) override;
  void on_cursor(const CursorUpdate& c) override;

  // The connected socket (-1 when disconnected), to watch for readability; on_readable() takes what
  // arrived. `on_change` runs when the descriptor to watch changes (connect / disconnect).
  int fd() const { return sock_.get(); }
  void on_readable();
  std::function<void()> on_change;
  // DISPLAY: the output behind `scanout` changed (connected, mode).
  std::function<void(uint32_t scanout, bool connected, uint32_t width, uint32_t height, uint32_t hz)> on_display;

  bool connected() const { return sock_.valid(); }
  const Stats& stats() const { return stats_; }
  // Frames waiting for the compositor's RELEASE.
  size_t held() const;

 private:
  struct BufferRef {
    std::weak_ptr<Frame::ViewCache> cache;
    uint32_t id = 0;
    UniqueFd copy;  // the memfd copy of unaligned pieces (kept while the buffer is defined)
  };
  bool ensure_connected();
  void disconnect(const char* why);
  bool send(const std::vector<uint8_t>& packet, std::span<const int> fds = {});
  // The buffer id of the frame's backing, defining it first when new (0: could not be sent).
  uint32_t buffer_for(const Frame& f, uint64_t& copied);
  void collect_gone();
  // The next buffer id: never 0 (the wire's "none"), never one a defined buffer still has (after a wrap).
  uint32_t take_buffer_id();
  void hold(std::shared_ptr<Frame> f);

  Options opt_;
  UniqueFd sock_;
  int64_t next_try_ms_ = 0;
  uint32_t next_buffer_id_ = 1;
  std::unordered_map<const Frame::ViewCache*, BufferRef> buffers_;
  // Per scanout: seq -> frame, oldest first.
  std::vector<std::map<uint64_t, std::shared_ptr<Frame>>> held_;
  std::vector<ScanoutState> scanouts_;  // resent after a reconnect
  Stats stats_;
};

}  // namespace canopy::gpu
