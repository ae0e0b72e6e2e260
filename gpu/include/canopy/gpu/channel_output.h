// ChannelOutput: the scanout output that hands a canopy-gpu device's frames to the compositor
// (canopy-display) over the scanout channel (canopy/protocol/scanout_channel.h, docs/display.md), zero copy.
//
// A frame's pieces (guest RAM memfd for blobs and aliased 2D resources, the device's sealed host storage
// for 2D resources) are sent once per resource backing as a BUFFER with their descriptors, named by the
// frame's (resource_id, generation); every frame of it is then one small FRAME packet. The frame is held
// until the compositor sends RELEASE for its (scanout, seq); that is when a fenced flush retires. When the
// device says a backing is gone (on_backing_gone), BUFFER_GONE lets the compositor unmap it once the
// frames it still shows are replaced.
//
// Frames with an acquire point (3D scanouts): the scanout's timeline goes out once per connection as a
// TIMELINE, and the FRAME carries the point; the compositor shows the frame only once it is signalled,
// and keeps the previous one until then.
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
// What the compositor gets of guest memory (docs/security.md, "Least privilege for guest memory"):
// where /dev/udmabuf exists and the pieces are page aligned, one dma-buf of just the frame's pages (one
// descriptor, one mapping on the other side; a taken-over compositor reaches nothing else of the VM);
// elsewhere the files behind the pieces, each opened again read-only (it can read the whole file, a
// VM's RAM, but write none of it). A dma-buf cannot be opened again read-only: its pages, which the
// compositor shows anyway, stay writable to it.
//
// Pieces that map_scattered() cannot map (not page aligned) are read into this process (Frame::map) and
// copied once into a memfd; both copies are added to the FRAME's bytes_copied (with the device's own)
// and to Stats::bytes_copied. Cursor images go as a memfd copy with their CURSOR packet and are not
// counted there.
//
// Threading: the device thread calls everything (ScanoutOutput calls, on_readable()).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "canopy/base/unique_fd.h"
#include "canopy/gpu/scanout_output.h"

namespace canopy::gpu {

class ChannelOutput : public ScanoutOutput {
 public:
  struct Options {
    // Where connections come from: the compositor's listening SOCK_SEQPACKET socket, where the compositor
    // believes the name HELLO gives; or, when broker_fd is set, canopy-vmm's broker (the device link,
    // canopy/protocol/broker.h; borrowed, it must outlive the output), which binds each to this VM.
    std::string socket_path;
    std::string vm_name;  // a-z 0-9 -, at most 31 bytes
    uint32_t num_scanouts = 1;
    int retry_ms = 500;
    size_t max_held = 8;
    int broker_fd = -1;
    int broker_wait_ms = 1000;  // how long a connection request waits for the broker's answer
    bool dmabuf = true;         // frames' pages as one dma-buf where /dev/udmabuf exists
  };
  struct Stats {
    uint64_t frames_sent = 0;
    uint64_t frames_released_by_compositor = 0;
    uint64_t frames_released_unsent = 0;  // disconnected, or the send would have blocked
    uint64_t frames_released_over_cap = 0;
    uint64_t buffers_sent = 0;
    uint64_t buffers_dmabuf = 0;  // of them, sent as a dma-buf of the frame's pages
    uint64_t buffers_gone = 0;    // BUFFER_GONE sent
    uint64_t fenced_frames = 0;   // FRAMEs sent with an acquire point
    uint64_t connects = 0;
    uint64_t broker_refusals = 0;  // connection requests the broker refused
    uint64_t disconnects = 0;
    uint64_t bytes_copied = 0;  // unaligned pieces read into this process (Frame::map) and copied into a memfd
  };

  explicit ChannelOutput(Options o);
  ~ChannelOutput() override;

  void on_scanout(const ScanoutState& s) override;
  void on_frame(std::shared_ptr<Frame> frame) override;
  void on_cursor(const CursorUpdate& c) override;
  void on_backing_gone(uint32_t resource_id, uint64_t generation) override;
  bool takes_acquire_fences() const override { return true; }

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
  // (resource id, backing generation): a buffer's name on the wire and here.
  using Key = std::pair<uint32_t, uint64_t>;
  struct BufferRef {
    UniqueFd copy;  // the memfd copy of unaligned pieces, or the dma-buf (kept while the buffer is defined)
  };
  bool ensure_connected();
  UniqueFd connect_socket();      // to Options::socket_path
  UniqueFd request_connection();  // from the broker
  void disconnect(const char* why);
  bool send(const std::vector<uint8_t>& packet, std::span<const int> fds = {});
  // Defines the frame's buffer on this connection when it is new; false: it could not be sent.
  bool define_buffer(const Frame& f, uint64_t& copied);
  // Sends the frame's acquire timeline when this connection does not have it yet; false: it could not.
  bool send_timeline(const Frame& f);
  void hold(std::shared_ptr<Frame> f);

  Options opt_;
  UniqueFd sock_;
  int64_t next_try_ms_ = 0;
  bool broker_gone_ = false;
  std::map<Key, BufferRef> buffers_;
  bool dmabuf_usable_ = true;  // false once /dev/udmabuf turned out missing
  // Per scanout: the acquire timeline this connection has (TIMELINE sent), or null.
  std::vector<std::shared_ptr<const buffers::Timeline>> timelines_sent_;
  // Per scanout: seq -> frame, oldest first.
  std::vector<std::map<uint64_t, std::shared_ptr<Frame>>> held_;
  std::vector<ScanoutState> scanouts_;  // resent after a reconnect
  Stats stats_;
};

}  // namespace canopy::gpu
