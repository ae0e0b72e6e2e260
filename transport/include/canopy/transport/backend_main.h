// The shared main() of every vhost-user back-end program (QEMU docs/interop/vhost-user.rst,
// "Back-end program conventions"):
//   --socket-path=PATH    listen on PATH and serve the front-end that connects (one connection)
//   --fd=N                serve an already connected socket inherited as fd N
//   --print-capabilities  print {"type": ..., "features": [...]} as JSON and exit
// Runs in the foreground (no daemonizing), exits 0 when the front-end disconnects or on SIGTERM/SIGINT.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/transport/vhost_user_backend.h"

namespace canopy::transport::vhost_user {

struct BackendProgram {
  const char* name;                   // program name, for logs and --help
  const char* type;                   // vhost-user type in --print-capabilities ("gpu", "sound", "rng")
  std::vector<std::string> features;  // capability names in --print-capabilities
  const char* extra_usage = "";       // help text for device options
  // Device options that take a value: "--name value" is accepted as well as "--name=value".
  std::vector<std::string> valued_options = {};
  // Confine the process (backend_sandbox.h) once the device is up and the front-end connected, unless
  // --no-sandbox is given.
  bool confine = false;
  // With confine: what it may write (restrict_writes, applied before the device is made): the
  // values of these options (a folder, or a file's folder) and of --socket-path (its folder), these
  // paths, and $CANOPY_SCRATCH_DIR (its VM's scratch folder, from canopy-vmm --scratch-dir).
  std::vector<std::string> writable_options = {};
  std::vector<std::string> writable_paths = {};
  // With confine: what it may read beyond the system's files and what it writes (restrict_files:
  // reading is restricted too), e.g. a library's configuration in the user's folders.
  std::vector<std::string> readable_paths = {};
  // With confine: system calls the program needs beyond the shared allowlist (backend_sandbox.h).
  std::vector<std::string> syscalls = {};
};

// Creates the device from the options main() did not consume (each "--name" or "--name=value").
using DeviceFactory = std::function<Result<std::unique_ptr<Device>>(const std::vector<std::string>& args)>;

int backend_main(int argc, char** argv, const BackendProgram& program, const DeviceFactory& factory);

}  // namespace canopy::transport::vhost_user
