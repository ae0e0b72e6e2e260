// Test harness for the virtio-snd device model: guest RAM in a memfd at GPA 0, chains built from
// explicit segments (so tests can split buffers anywhere and place canaries), a host end the test
// drives by hand, and the completions the device hands back.
#pragma once

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "canopy/audio/device.h"

namespace canopy::audio::testing {

struct ManualHost final : HostBackend {
  struct S final : HostStream {
    ManualHost* h;
    uint32_t idx;
    explicit S(ManualHost* host, uint32_t i) : h(host), idx(i) {}
    Status prepare(const PcmParams& p) override {
      h->log.push_back("prepare " + std::to_string(idx) + " " + std::to_string(p.rate));
      return h->refuse_prepare ? make_error(Errc::kIo, "refused") : Status{};
    }
    void start() override { h->log.push_back("start " + std::to_string(idx)); }
    void stop() override { h->log.push_back("stop " + std::to_string(idx)); }
    void release() override { h->log.push_back("release " + std::to_string(idx)); }
    uint32_t delay_frames() override { return h->delay; }
  };
  const char* name() const override { return "manual"; }
  Result<std::unique_ptr<HostStream>> open(uint32_t i, StreamIo&) override {
    return std::unique_ptr<HostStream>(std::make_unique<S>(this, i));
  }
  std::vector<std::string> log;
  bool refuse_prepare = false;
  uint32_t delay = 0;
};

struct Done {
  uint16_t queue, head;
  uint32_t used;
};

struct Harness {
  static constexpr uint64_t kRam = 4 << 20;
  transport::GuestMemory mem;
  ManualHost host;
  std::unique_ptr<SndDevice> dev;
  std::vector<Done> done;
  uint64_t next_gpa = 0x1000;
  uint16_t next_head = 0;

  static SndOptions default_options() {
    SndOptions o;
    StreamConfig out;
    out.name = "music";
    out.rates = 1u << 7;  // 48000
    StreamConfig in;
    in.name = "mic";
    in.direction = proto::Direction::kInput;
    in.channels_max = 1;
    in.rates = (1u << 3) | (1u << 7);  // 16000, 48000
    o.streams = {out, in};
    JackConfig j;
    j.name = "speaker";
    j.hda_device = proto::kHdaDevSpeaker;
    o.jacks = {j};
    o.vm = "test";
    o.controls = true;
    return o;
  }

  explicit Harness(SndOptions o = default_options(), PolicyBoard* board = nullptr, bool with_host = true) {
    UniqueFd fd(memfd_create("snd-test-ram", MFD_CLOEXEC));
    EXPECT_EQ(ftruncate(fd.get(), off_t(kRam)), 0);
    EXPECT_TRUE(mem.add_region({0, kRam, 0, 0}, std::move(fd)).ok());
    auto d = SndDevice::create(std::move(o), with_host ? &host : nullptr, board,
                               [this](uint16_t q, uint16_t h, uint32_t u) { done.push_back({q, h, u}); });
    EXPECT_TRUE(d.ok()) << (d.ok() ? "" : d.error().what);
    if (d.ok()) {
      dev = std::move(*d);
      dev->set_memory(&mem);
      dev->set_acked_features(dev->offered_features());
    }
  }

  uint64_t alloc(uint64_t n) {
    const uint64_t g = next_gpa;
    next_gpa += (n + 63) & ~uint64_t(63);
    return g;
  }
  uint64_t put(const void* p, size_t n) {
    const uint64_t g = alloc(n);
    EXPECT_TRUE(mem.write(g, p, n).ok());
    return g;
  }
  template <typename T>
  uint64_t put_obj(const T& v) {
    return put(&v, sizeof v);
  }
  std::vector<uint8_t> get(uint64_t gpa, size_t n) {
    std::vector<uint8_t> b(n);
    EXPECT_TRUE(mem.read(gpa, b.data(), n).ok());
    return b;
  }
  template <typename T>
  T get_obj(uint64_t gpa) {
    T v{};
    EXPECT_TRUE(mem.read(gpa, &v, sizeof v).ok());
    return v;
  }

  // A control request: the response's status code (0 when nothing was written).
  struct Reply {
    uint32_t used = 0;
    uint32_t code = 0;
    uint64_t payload_gpa = 0;
  };
  template <typename T>
  Reply control(const T& req, uint32_t payload = 0) {
    return control_bytes(&req, sizeof req, payload);
  }
  Reply control_bytes(const void* req, size_t n, uint32_t payload, uint32_t hdr_bytes = 4) {
    const uint64_t r = put(req, n);
    const uint64_t h = alloc(hdr_bytes + 64);
    const uint64_t p = alloc(payload + 64);
    EXPECT_TRUE(mem.write(h, std::vector<uint8_t>(4, 0).data(), 4).ok());
    std::vector<transport::Segment> rd{{r, uint32_t(n)}};
    std::vector<transport::Segment> wr{{h, hdr_bytes}};
    if (payload) wr.push_back({p, payload});
    Reply out;
    out.used = dev->control({next_head++, rd, wr});
    out.code = hdr_bytes >= 4 ? get_obj<le32>(h).get() : 0;
    out.payload_gpa = p;
    return out;
  }

  uint32_t query(proto::Code code, uint32_t start, uint32_t count, uint32_t size, uint32_t payload) {
    proto::QueryInfo q{};
    q.hdr.code = uint32_t(code);
    q.start_id = start;
    q.count = count;
    q.size = size;
    return control(q, payload).code;
  }
  uint32_t pcm(proto::Code code, uint32_t stream) {
    proto::PcmHdr h{};
    h.hdr.code = uint32_t(code);
    h.stream_id = stream;
    return control(h).code;
  }
  uint32_t set_params(uint32_t stream, uint32_t buffer, uint32_t period, uint8_t channels, proto::Format f,
                      uint8_t rate_bit, uint32_t features = 0) {
    proto::PcmSetParams p{};
    p.hdr.hdr.code = uint32_t(proto::Code::kPcmSetParams);
    p.hdr.stream_id = stream;
    p.buffer_bytes = buffer;
    p.period_bytes = period;
    p.features = features;
    p.channels = channels;
    p.format = uint8_t(f);
    p.rate = rate_bit;
    return control(p).code;
  }

  // A tx buffer: xfer header + payload (readable), 8-byte status (writable). Returns the status gpa.
  struct Io {
    uint16_t head;
    uint32_t result;  // SndDevice::io's return
    uint64_t status_gpa;
    uint64_t data_gpa;
  };
  Io tx(uint32_t stream, const std::vector<uint8_t>& payload) {
    proto::PcmXfer x{};
    x.stream_id = stream;
    std::vector<uint8_t> rd(sizeof x + payload.size());
    std::memcpy(rd.data(), &x, sizeof x);
    if (!payload.empty()) std::memcpy(rd.data() + sizeof x, payload.data(), payload.size());
    const uint64_t r = put(rd.data(), rd.size());
    const uint64_t s = alloc(8);
    std::vector<transport::Segment> rs{{r, uint32_t(rd.size())}}, ws{{s, 8}};
    const uint16_t head = next_head++;
    return {head, dev->io(proto::kTxQ, {head, rs, ws}), s, r + sizeof x};
  }
  // An rx buffer with the given writable segments (data + status at the end).
  Io rx_segs(uint32_t stream, const std::vector<transport::Segment>& ws) {
    proto::PcmXfer x{};
    x.stream_id = stream;
    const uint64_t r = put_obj(x);
    std::vector<transport::Segment> rs{{r, sizeof x}};
    const uint16_t head = next_head++;
    return {head, dev->io(proto::kRxQ, {head, rs, ws}), 0, ws.empty() ? 0 : ws[0].gpa};
  }
  uint16_t event_buffer() {
    const uint64_t e = alloc(8);
    std::vector<transport::Segment> ws{{e, 8}};
    const uint16_t head = next_head++;
    event_gpas.push_back({head, e});
    EXPECT_EQ(dev->io(proto::kEventQ, {head, {}, ws}), SndDevice::kHeld);
    return head;
  }
  std::vector<std::pair<uint16_t, uint64_t>> event_gpas;
  // Events delivered so far, in order.
  std::vector<proto::Event> events() {
    std::vector<proto::Event> out;
    for (const Done& d : done)
      if (d.queue == proto::kEventQ && d.used == 8)
        for (auto& [h, g] : event_gpas)
          if (h == d.head) out.push_back(get_obj<proto::Event>(g));
    return out;
  }
};

}  // namespace canopy::audio::testing
