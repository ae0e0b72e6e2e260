// canopy-gpu's control socket (--control PATH): the host side tells the device about display changes
// (an output plugged, unplugged or resized), which reach the guest driver as VIRTIO_GPU_EVENT_DISPLAY
// with a config-change notification. One text command per line, one answer per command:
//
//   display I WxH[@HZ]    scanout I connected with this mode (its EDID and display info follow)
//   display I off         scanout I disconnected
//   displays              one line "I WxH@HZ on|off" per scanout
//
// Answers end with "ok" or "error: REASON" on their own line. Lines are at most kMaxLine bytes; a
// longer one is answered with an error and the connection closed. At most kMaxClients at a time.
//
// Threading: the back-end thread (its fds are polled through VhostGpu::watches()).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/gpu/edid.h"
#include "canopy/transport/vhost_user_backend.h"

namespace canopy::gpu {

struct ControlCommand {
  enum class Kind { kDisplay, kList };
  Kind kind = Kind::kList;
  uint32_t scanout = 0;
  bool connected = true;
  DisplayMode mode;  // kDisplay with connected
};

// Parses one line (without its newline). Errors (kInvalidArgument) say what was expected.
Result<ControlCommand> parse_control_line(std::string_view line);

class ControlServer {
 public:
  static constexpr size_t kMaxLine = 256;
  static constexpr size_t kMaxClients = 4;
  // Runs a parsed command; returns the answer's text before the final "ok" (may be empty) or an error.
  using Handler = std::function<Result<std::string>(const ControlCommand&)>;

  // Listens on `path` (a stale socket there is replaced). `changed` is called when the set of fds to
  // watch changes (a client came or went).
  static Result<std::unique_ptr<ControlServer>> listen(const std::string& path, Handler handler,
                                                       std::function<void()> changed);
  ~ControlServer();

  std::vector<transport::vhost_user::Device::Watch> watches();

 private:
  ControlServer() = default;
  void on_accept();
  void on_client(int fd);
  void drop(int fd);

  std::string path_;
  UniqueFd listen_;
  Handler handler_;
  std::function<void()> changed_;
  struct Client {
    UniqueFd fd;
    std::string in;
  };
  std::map<int, Client> clients_;
};

}  // namespace canopy::gpu
