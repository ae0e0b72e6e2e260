// canopy-test-display-flood: a GPU back-end taken over, for the broker's tests. It is a vhost-user
// back-end (a device that does nothing) that canopy-vmm starts as a VM's GPU back-end, so it holds that
// VM's device link to the broker (--display-fd). From the start it asks for compositor connections as
// fast as the answers come, 30 times, and on each connection it gets says HELLO as "cluster". It prints
//   flood: asked=30 connected=C refused=R closed=K elapsed_ms=T
// (K: connections the compositor closed after that HELLO) and goes on serving its device.
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "canopy/protocol/broker.h"
#include "canopy/protocol/scanout_channel.h"
#include "canopy/transport/backend_main.h"

namespace {

using namespace canopy;
using namespace canopy::transport;
using namespace canopy::transport::vhost_user;
namespace bk = protocol::broker;
namespace ch = protocol::scanout;

class IdleDevice : public Device {
 public:
  uint64_t features() const override { return kVirtioFVersion1; }
  uint16_t num_queues() const override { return 2; }
  void on_kick(QueueHandle&) override {}
};

void flood(int link) {
  const auto start = std::chrono::steady_clock::now();
  int connected = 0, refused = 0, closed = 0;
  constexpr int kAsks = 30;
  for (int i = 0; i < kAsks; ++i) {
    if (!bk::send(link, bk::encode_connect(bk::Service::kDisplay)).ok()) break;
    auto answer = bk::receive(link, bk::Link::kBrokerToDevice, 30000);  // a hang guard
    if (!answer.ok()) break;
    if (answer->type == bk::Type::kRefused) {
      ++refused;
      continue;
    }
    ++connected;
    (void)ch::send_packet(answer->fd.get(), ch::encode_hello("cluster", 1));
    pollfd p{answer->fd.get(), POLLIN, 0};
    char b[64];
    if (::poll(&p, 1, 30000) == 1 && ::recv(answer->fd.get(), b, sizeof b, 0) == 0) ++closed;
  }
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "flood: asked=%d connected=%d refused=%d closed=%d elapsed_ms=%lld\n", kAsks, connected, refused,
               closed, (long long)ms);
}

}  // namespace

int main(int argc, char** argv) {
  BackendProgram program{"canopy-test-display-flood", "gpu", {}, "  (a test back-end: see its source)\n"};
  return backend_main(argc, argv, program, [](const std::vector<std::string>& args) -> Result<std::unique_ptr<Device>> {
    int link = -1;
    for (const auto& a : args)  // canopy-gpu's other options are accepted and ignored
      if (a.rfind("--display-fd=", 0) == 0) link = std::atoi(a.c_str() + 13);
    if (link < 0) return make_error(Errc::kInvalidArgument, "--display-fd is needed");
    std::thread(flood, link).detach();
    return std::unique_ptr<Device>(std::make_unique<IdleDevice>());
  });
}
