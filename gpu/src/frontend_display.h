// The vhost-user-gpu display protocol towards QEMU (docs/interop/vhost-user-gpu.rst): QEMU gives the
// back-end a socket with VHOST_USER_GPU_SET_SOCKET; the back-end is the client of a tiny display
// server. Messages: u32 request, u32 flags (0x4 = reply), u32 size, then size bytes of payload.
// We negotiate no protocol features and mirror scanouts, damaged rectangles (XRGB8888 pixels) and the
// cursor. Sends use a short timeout: a stuck QEMU UI disables the mirror instead of stalling the GPU.
#pragma once

#include <cstdint>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/gpu/scanout_output.h"

namespace canopy::gpu {

namespace vugpu {
enum Request : uint32_t {
  kGetProtocolFeatures = 1,
  kSetProtocolFeatures = 2,
  kGetDisplayInfo = 3,
  kCursorPos = 4,
  kCursorPosHide = 5,
  kCursorUpdate = 6,
  kScanout = 7,
  kUpdate = 8,
  kDmabufScanout = 9,
  kDmabufUpdate = 10,
  kGetEdid = 11,
  kDmabufScanout2 = 12,
};
inline constexpr uint32_t kFlagReply = 0x4;
inline constexpr uint32_t kMaxReplyPayload = 4096;
struct Header {
  uint32_t request, flags, size;
};
static_assert(sizeof(Header) == 12);
}  // namespace vugpu

class FrontendDisplay : public ScanoutOutput {
 public:
  FrontendDisplay(UniqueFd sock, bool mirror) : sock_(std::move(sock)), mirror_(mirror) {}
  // Sends GET_PROTOCOL_FEATURES. The reply is taken by on_readable() (QEMU answers from its main
  // loop, which is busy with this very vhost-user request: waiting here would deadlock), which then
  // sends SET_PROTOCOL_FEATURES(0) and starts mirroring (scanouts set meanwhile are re-sent).
  Status handshake();
  bool ready() const { return ready_; }
  int fd() const { return sock_.get(); }
  bool alive() const { return sock_.valid(); }
  // The socket is readable: replies we did not ask for are read and dropped; EOF closes it.
  void on_readable();
  uint64_t peer_features() const { return peer_features_; }

  void on_scanout(const ScanoutState& s) override;
  void on_frame(std::shared_ptr<Frame> frame) override;
  void on_cursor(const CursorUpdate& c) override;

 private:
  bool send(uint32_t request, const void* payload, uint32_t size);
  void close_socket(const char* why);
  UniqueFd sock_;
  bool mirror_;
  uint64_t peer_features_ = 0;
  bool ready_ = false;
  bool warned_format_ = false;
  std::vector<ScanoutState> scanouts_;  // last state per scanout, re-sent when the handshake ends
};

}  // namespace canopy::gpu
