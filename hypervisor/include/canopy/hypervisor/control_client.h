// The client side of Canopy's control sockets (canopy-vmm's and canopy-display's): one request per
// SOCK_SEQPACKET connection, one reply datagram. canopyctl is its command-line front; tests use it too.
#pragma once

#include <string>
#include <string_view>

#include "canopy/base/result.h"

namespace canopy::hypervisor {

// Sends `request` to the control socket at `path` and returns the reply. Errors: kInvalidArgument (path
// too long), kIo (cannot reach the socket or send; sys_errno set), kTimeout (no reply in timeout_ms),
// kClosed (the server closed the connection without a reply).
// After the reply it half-closes the connection and waits (within what is left of timeout_ms) until the
// server has closed its end too: unless that wait ran out (a server that keeps the connection, the
// reply is still returned), the server holds no descriptor for the request when this returns, so a
// caller counting the server's descriptors needs no sleep.
Result<std::string> control_request(const std::string& path, std::string_view request, int timeout_ms);

}  // namespace canopy::hypervisor
