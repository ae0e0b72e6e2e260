#include "control.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "canopy/transport/vhost_user_channel.h"

namespace canopy::gpu {
namespace {

TEST(ControlParse, Commands) {
  auto c = parse_control_line("display 1 1280x720@50");
  ASSERT_TRUE(c.ok()) << c.error().what;
  EXPECT_EQ(c->kind, ControlCommand::Kind::kDisplay);
  EXPECT_EQ(c->scanout, 1u);
  EXPECT_TRUE(c->connected);
  EXPECT_EQ(c->mode.width, 1280u);
  EXPECT_EQ(c->mode.height, 720u);
  EXPECT_EQ(c->mode.refresh_hz, 50u);

  c = parse_control_line("  display\t0 800x600\r");
  ASSERT_TRUE(c.ok()) << c.error().what;
  EXPECT_EQ(c->mode.refresh_hz, 60u);

  c = parse_control_line("display 15 off");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->connected);
  EXPECT_EQ(c->scanout, 15u);

  c = parse_control_line("displays");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->kind, ControlCommand::Kind::kList);
}

TEST(ControlParse, BadLinesSayWhatWasExpected) {
  struct Case {
    const char* line;
    const char* error;
  } cases[] = {
      {"", "empty command"},
      {"resize 0 10x10", "unknown command"},
      {"display 0", "expected: display I WxH[@HZ] | display I off"},
      {"display 0 800x600 extra", "expected: display I WxH[@HZ] | display I off"},
      {"display 16 800x600", "scanout must be a number 0..15"},
      {"display -1 800x600", "scanout must be a number 0..15"},
      {"display 0 800", "mode must be WxH or WxH@HZ"},
      {"display 0 800x", "mode must be WxH or WxH@HZ"},
      {"display 0 x600", "mode must be WxH or WxH@HZ"},
      {"display 0 99999999999x600", "mode must be WxH or WxH@HZ"},
      {"display 0 800x600@", "refresh must be a number of Hz"},
      {"display 0 800x600@60Hz", "refresh must be a number of Hz"},
      {"displays now", "displays takes no arguments"},
  };
  for (const auto& c : cases) {
    auto r = parse_control_line(c.line);
    ASSERT_FALSE(r.ok()) << c.line;
    EXPECT_EQ(r.code(), Errc::kInvalidArgument) << c.line;
    EXPECT_NE(std::string(r.error().what).find(c.error), std::string::npos) << c.line << ": " << r.error().what;
  }
  // Modes the EDID cannot describe are refused by the timing check.
  EXPECT_FALSE(parse_control_line("display 0 0x600").ok());
  EXPECT_FALSE(parse_control_line("display 0 4096x600").ok());
}

// A server on a temporary path, its watches polled by hand as the back-end's loop would.
struct ServerRig {
  std::string dir, path;
  std::unique_ptr<ControlServer> server;
  std::vector<ControlCommand> seen;
  int changes = 0;
  ServerRig() {
    char tmpl[] = "/tmp/canopy-control-XXXXXX";
    dir = mkdtemp(tmpl);
    path = dir + "/control.sock";
    auto s = ControlServer::listen(
        path,
        [this](const ControlCommand& c) -> Result<std::string> {
          seen.push_back(c);
          if (c.kind == ControlCommand::Kind::kList) return std::string("0 1024x768@60 on\n");
          if (c.scanout > 1) return make_error(Errc::kInvalidArgument, "no such scanout");
          return std::string();
        },
        [this] { ++changes; });
    EXPECT_TRUE(s.ok());
    server = std::move(*s);
  }
  ~ServerRig() {
    server.reset();
    rmdir(dir.c_str());
  }
  // Runs every readable watch once.
  void pump() {
    for (auto& w : server->watches()) {
      pollfd p{w.fd, POLLIN, 0};
      if (poll(&p, 1, 0) > 0) w.fn();
    }
  }
  UniqueFd connect() {
    auto fd = transport::vhost_user::connect_unix(path.c_str(), 1000);
    EXPECT_TRUE(fd.ok());
    pump();  // accept
    return fd.ok() ? std::move(*fd) : UniqueFd();
  }
  std::string exchange(int fd, const std::string& text) {
    EXPECT_EQ(::send(fd, text.data(), text.size(), MSG_NOSIGNAL), ssize_t(text.size()));
    pump();
    std::string out;
    char buf[512];
    pollfd p{fd, POLLIN, 0};
    while (poll(&p, 1, 100) > 0) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, size_t(n));
    }
    return out;
  }
};

TEST(ControlServer, AnswersEachLineAndKeepsGoingAfterErrors) {
  ServerRig rig;
  UniqueFd c = rig.connect();
  EXPECT_EQ(rig.changes, 1);
  EXPECT_EQ(rig.exchange(c.get(), "display 1 640x480\n"), "ok\n");
  ASSERT_EQ(rig.seen.size(), 1u);
  EXPECT_EQ(rig.seen[0].mode.width, 640u);
  EXPECT_EQ(rig.exchange(c.get(), "bogus\ndisplay 3 640x480\ndispl"),
            "error: unknown command (try: displays, display I WxH[@HZ], display I off)\n"
            "error: no such scanout\n");
  // The partial line waits for its end.
  EXPECT_EQ(rig.exchange(c.get(), "ays\n"), "0 1024x768@60 on\nok\n");
  EXPECT_EQ(rig.seen.size(), 3u);
}

TEST(ControlServer, OverlongLineClosesTheConnectionOnly) {
  ServerRig rig;
  UniqueFd a = rig.connect();
  UniqueFd b = rig.connect();
  EXPECT_EQ(rig.exchange(a.get(), std::string(300, 'x')), "error: line longer than 256 bytes\n");
  EXPECT_EQ(rig.changes, 3);  // two accepts, one drop
  char byte;
  EXPECT_EQ(::recv(a.get(), &byte, 1, MSG_DONTWAIT), 0) << "closed after the error";
  EXPECT_EQ(rig.exchange(b.get(), "display 0 off\n"), "ok\n");
  EXPECT_FALSE(rig.seen.back().connected);
}

TEST(ControlServer, RefusesClientsOverTheLimit) {
  ServerRig rig;
  std::vector<UniqueFd> clients;
  for (size_t i = 0; i < ControlServer::kMaxClients; ++i) clients.push_back(rig.connect());
  UniqueFd extra = rig.connect();
  char buf[128] = {};
  pollfd p{extra.get(), POLLIN, 0};
  ASSERT_GT(poll(&p, 1, 1000), 0);
  ssize_t n = ::recv(extra.get(), buf, sizeof buf - 1, 0);
  ASSERT_GT(n, 0);
  EXPECT_STREQ(buf, "error: too many control connections\n");
  EXPECT_EQ(rig.exchange(clients[0].get(), "displays\n"), "0 1024x768@60 on\nok\n");
}

}  // namespace
}  // namespace canopy::gpu
