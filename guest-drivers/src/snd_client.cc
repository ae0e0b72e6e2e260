#include "canopy/guest/snd_client.h"

#include <time.h>

#include <chrono>
#include <cstring>

namespace canopy::guest {

using sndp::Code;

namespace {
constexpr uint64_t kCtlToken = 1, kEventTokenBase = 0x100, kIoTokenBase = 0x1000;
constexpr uint32_t kEventBytes = 8;

uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}
}  // namespace

Result<std::unique_ptr<SndClient>> SndClient::create(VirtioTransport& t, transport::GuestMemory& mem,
                                                     const Options& o) {
  if (o.area.len < kAreaBytes) return make_error(Errc::kInvalidArgument, "snd client: area below kAreaBytes");
  std::unique_ptr<SndClient> c(new SndClient(t, mem));
  c->opt_ = o;
  c->ctl_gpa_ = o.area.gpa + kRingBytes;
  c->io_gpa_ = c->ctl_gpa_ + kCtlBytes;
  c->ev_gpa_ = c->io_gpa_ + kIoSlots * kIoSlotBytes;
  c->io_.resize(kIoSlots);
  DriverOptions d;
  d.device_id = sndp::kDeviceId;
  d.num_queues = sndp::kNumQueues;
  d.max_queue_size = 64;
  d.ring_area = {o.area.gpa, kRingBytes};
  d.wanted_features = (o.controls ? sndp::kFCtls : 0) | transport::kVirtioFEventIdx;
  SndClient* self = c.get();
  // The event queue is filled before DRIVER_OK (§5.14.3.1).
  d.device_setup = [self](VirtioDriver&) -> Status {
    for (uint32_t i = 0; i < kEventSlots; ++i) CANOPY_TRY(self->post_event(i));
    return self->driver_.kick(sndp::kEventQ).ok() ? Status{} : make_error(Errc::kIo, "snd client: eventq kick failed");
  };
  CANOPY_TRY(c->driver_.init(d));
  return c;
}

Status SndClient::post_event(uint32_t slot) {
  auto r = driver_.queue(sndp::kEventQ)
               .add({}, {{ev_gpa_ + uint64_t(slot) * kEventBytes, kEventBytes}}, kEventTokenBase + slot);
  return r.ok() ? Status{} : Status(r.error());
}

Result<sndp::Config> SndClient::config() {
  sndp::Config c{};
  const uint32_t n = has_feature(sndp::kFCtls) ? sizeof c : sndp::kConfigBytesNoCtls;
  CANOPY_TRY(driver_.read_config(0, &c, n));
  return c;
}

Status SndClient::pump(int timeout_ms) {
  bool any = false;
  for (int pass = 0; pass < 2 && !any; ++pass) {
    for (uint16_t q = 0; q < sndp::kNumQueues; ++q) {
      for (;;) {
        CANOPY_ASSIGN_OR_RETURN(auto used, driver_.queue(q).get_used());
        if (!used) break;
        any = true;
        const uint64_t tok = used->token;
        if (tok == kCtlToken) {
          ctl_used_ = used->len;
        } else if (tok >= kEventTokenBase && tok < kEventTokenBase + kEventSlots) {
          const uint32_t slot = uint32_t(tok - kEventTokenBase);
          if (used->len >= kEventBytes) {
            sndp::Event e{};
            CANOPY_TRY(mem_.read(ev_gpa_ + uint64_t(slot) * kEventBytes, &e, sizeof e));
            events_.push_back(e);
          }
          CANOPY_TRY(post_event(slot));
          (void)driver_.kick(sndp::kEventQ);
        } else if (tok >= kIoTokenBase && tok < kIoTokenBase + kIoSlots) {
          const uint32_t slot = uint32_t(tok - kIoTokenBase);
          Io& io = io_[slot];
          Completion c;
          c.stream = io.stream;
          c.submitted_ns = io.submitted_ns;
          c.completed_ns = now_ns();
          const uint64_t base = io_gpa_ + slot * kIoSlotBytes;
          sndp::PcmStatus st{};
          if (io.tx) {
            CANOPY_TRY(mem_.read(base + 4 + io.bytes, &st, sizeof st));
            c.bytes = io.bytes;
            for (uint32_t k = 0; k < kIoSlots; ++k)
              if (k != slot && io_[k].busy && io_[k].tx && io_[k].stream == io.stream &&
                  io_[k].submitted_ns >= io.submitted_ns)
                c.queued_after += io_[k].bytes;
            tx_done_.push_back(std::move(c));
          } else {
            // The status is the last 8 bytes the device wrote: used_len = 8 + data.
            const uint32_t data = used->len >= sizeof st ? std::min(used->len - uint32_t(sizeof st), io.bytes) : 0;
            CANOPY_TRY(mem_.read(base + 4 + io.bytes, &st, sizeof st));
            c.bytes = data;
            c.data.resize(data);
            if (data) CANOPY_TRY(mem_.read(base + 4, c.data.data(), data));
            rx_done_.push_back(std::move(c));
          }
          auto& back = io.tx ? tx_done_.back() : rx_done_.back();
          back.status = st.status;
          back.latency_bytes = st.latency_bytes;
          io.busy = false;
        }
      }
    }
    if (!any && pass == 0 && timeout_ms > 0) {
      auto irq = driver_.wait_interrupt(timeout_ms);
      if (!irq.ok() && irq.code() != Errc::kTimeout) return irq.error();
      if (driver_.needs_reset()) return make_error(Errc::kState, "snd: device needs reset");
    }
  }
  return {};
}

Result<uint32_t> SndClient::call(std::span<const uint8_t> request, uint32_t payload, std::vector<uint8_t>* out) {
  if (request.size() + 4 + payload > kCtlBytes)
    return make_error(Errc::kInvalidArgument, "snd client: request too large");
  const uint64_t req = ctl_gpa_, resp = ctl_gpa_ + ((request.size() + 63) & ~size_t(63));
  CANOPY_TRY(mem_.write(req, request.data(), request.size()));
  const uint32_t zero = 0;
  CANOPY_TRY(mem_.write(resp, &zero, 4));
  std::vector<transport::Segment> wr{{resp, 4}};
  if (payload) wr.push_back({resp + 4, payload});
  std::vector<transport::Segment> rd{{req, uint32_t(request.size())}};
  ctl_used_.reset();
  auto added = driver_.queue(sndp::kControlQ).add(rd, wr, kCtlToken);
  if (!added.ok()) return added.error();
  auto k = driver_.kick(sndp::kControlQ);
  if (!k.ok()) return k.error();
  CANOPY_TRY(wait(opt_.timeout_ms, [&] { return ctl_used_.has_value(); }, "snd: no response"));
  le32 status;
  CANOPY_TRY(mem_.read(resp, &status, 4));
  last_status_ = status;
  if (out) {
    out->assign(payload, 0);
    if (payload) CANOPY_TRY(mem_.read(resp + 4, out->data(), payload));
  }
  return last_status_;
}

template <typename T>
Result<std::vector<T>> SndClient::query(Code code, uint32_t count) {
  std::vector<T> items(count);
  if (!count) return items;
  sndp::QueryInfo q{};
  q.hdr.code = uint32_t(code);
  q.start_id = 0;
  q.count = count;
  q.size = sizeof(T);
  std::vector<uint8_t> out;
  CANOPY_ASSIGN_OR_RETURN(uint32_t st, call_obj(q, uint32_t(count * sizeof(T)), &out));
  if (st != uint32_t(Code::kOk)) return make_error(Errc::kProtocol, "snd: query refused (see last_status)");
  std::memcpy(items.data(), out.data(), out.size());
  return items;
}

Result<std::vector<sndp::PcmInfo>> SndClient::pcm_info() {
  CANOPY_ASSIGN_OR_RETURN(auto c, config());
  return query<sndp::PcmInfo>(Code::kPcmInfo, c.streams);
}
Result<std::vector<sndp::JackInfo>> SndClient::jack_info() {
  CANOPY_ASSIGN_OR_RETURN(auto c, config());
  return query<sndp::JackInfo>(Code::kJackInfo, c.jacks);
}
Result<std::vector<sndp::ChmapInfo>> SndClient::chmap_info() {
  CANOPY_ASSIGN_OR_RETURN(auto c, config());
  return query<sndp::ChmapInfo>(Code::kChmapInfo, c.chmaps);
}
Result<std::vector<sndp::CtlInfo>> SndClient::ctl_info() {
  CANOPY_ASSIGN_OR_RETURN(auto c, config());
  return query<sndp::CtlInfo>(Code::kCtlInfo, c.controls);
}

Status SndClient::set_params(uint32_t stream, uint32_t buffer_bytes, uint32_t period_bytes, uint8_t channels,
                             sndp::Format f, uint32_t rate_hz, uint32_t features) {
  const int bit = sndp::rate_bit(rate_hz);
  if (bit < 0) return make_error(Errc::kInvalidArgument, "snd client: not a virtio-snd rate");
  sndp::PcmSetParams p{};
  p.hdr.hdr.code = uint32_t(Code::kPcmSetParams);
  p.hdr.stream_id = stream;
  p.buffer_bytes = buffer_bytes;
  p.period_bytes = period_bytes;
  p.features = features;
  p.channels = channels;
  p.format = uint8_t(f);
  p.rate = uint8_t(bit);
  CANOPY_ASSIGN_OR_RETURN(uint32_t st, call_obj(p));
  if (st != uint32_t(Code::kOk)) return make_error(Errc::kProtocol, "snd: SET_PARAMS refused (see last_status)");
  return {};
}

Status SndClient::pcm(Code code, uint32_t stream) {
  sndp::PcmHdr h{};
  h.hdr.code = uint32_t(code);
  h.stream_id = stream;
  CANOPY_ASSIGN_OR_RETURN(uint32_t st, call_obj(h));
  if (st != uint32_t(Code::kOk)) return make_error(Errc::kProtocol, "snd: PCM command refused (see last_status)");
  return {};
}

Result<uint32_t> SndClient::ctl_read(uint32_t control) {
  sndp::CtlHdr h{};
  h.hdr.code = uint32_t(Code::kCtlRead);
  h.control_id = control;
  std::vector<uint8_t> out;
  CANOPY_ASSIGN_OR_RETURN(uint32_t st, call_obj(h, sizeof(sndp::CtlValue), &out));
  if (st != uint32_t(Code::kOk)) return make_error(Errc::kProtocol, "snd: CTL_READ refused (see last_status)");
  le32 v;
  std::memcpy(&v, out.data(), 4);
  return v.get();
}

Status SndClient::ctl_write(uint32_t control, uint32_t value) {
  struct {
    sndp::CtlHdr h;
    sndp::CtlValue v;
  } w{};
  w.h.hdr.code = uint32_t(Code::kCtlWrite);
  w.h.control_id = control;
  w.v.integer[0] = value;
  CANOPY_ASSIGN_OR_RETURN(uint32_t st, call_obj(w));
  if (st != uint32_t(Code::kOk)) return make_error(Errc::kProtocol, "snd: CTL_WRITE refused (see last_status)");
  return {};
}

Result<uint32_t> SndClient::take_io_slot(int timeout_ms) {
  auto free_slot = [&]() -> int {
    for (uint32_t i = 0; i < kIoSlots; ++i)
      if (!io_[i].busy) return int(i);
    return -1;
  };
  CANOPY_TRY(wait(timeout_ms, [&] { return free_slot() >= 0; }, "snd client: no free buffer"));
  return uint32_t(free_slot());
}

Status SndClient::write(uint32_t stream, std::span<const uint8_t> data) {
  if (data.size() + 4 + sizeof(sndp::PcmStatus) > kIoSlotBytes)
    return make_error(Errc::kInvalidArgument, "snd client: buffer above kIoSlotBytes - 12");
  CANOPY_ASSIGN_OR_RETURN(uint32_t slot, take_io_slot(opt_.timeout_ms));
  const uint64_t base = io_gpa_ + slot * kIoSlotBytes;
  sndp::PcmXfer x{};
  x.stream_id = stream;
  CANOPY_TRY(mem_.write_obj(base, x));
  if (!data.empty()) CANOPY_TRY(mem_.write(base + 4, data.data(), data.size()));
  const sndp::PcmStatus blank{};
  CANOPY_TRY(mem_.write_obj(base + 4 + data.size(), blank));
  auto added = driver_.queue(sndp::kTxQ)
                   .add({{base, uint32_t(4 + data.size())}}, {{base + 4 + data.size(), 8}}, kIoTokenBase + slot);
  if (!added.ok()) return added.error();
  io_[slot] = {true, true, stream, uint32_t(data.size()), now_ns()};
  auto k = driver_.kick(sndp::kTxQ);
  return k.ok() ? Status{} : Status(k.error());
}

Status SndClient::queue_reads(uint32_t stream, uint32_t bytes, uint32_t count) {
  if (bytes + 4 + sizeof(sndp::PcmStatus) > kIoSlotBytes)
    return make_error(Errc::kInvalidArgument, "snd client: buffer above kIoSlotBytes - 12");
  for (uint32_t i = 0; i < count; ++i) {
    CANOPY_ASSIGN_OR_RETURN(uint32_t slot, take_io_slot(opt_.timeout_ms));
    const uint64_t base = io_gpa_ + slot * kIoSlotBytes;
    sndp::PcmXfer x{};
    x.stream_id = stream;
    CANOPY_TRY(mem_.write_obj(base, x));
    auto added = driver_.queue(sndp::kRxQ).add({{base, 4}}, {{base + 4, bytes + 8}}, kIoTokenBase + slot);
    if (!added.ok()) return added.error();
    io_[slot] = {true, false, stream, bytes, now_ns()};
  }
  auto k = driver_.kick(sndp::kRxQ);
  return k.ok() ? Status{} : Status(k.error());
}

Status SndClient::wait(int timeout_ms, const std::function<bool()>& done, const char* what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return make_error(Errc::kTimeout, what);
    CANOPY_TRY(pump(10));
  }
  return {};
}

Result<SndClient::Completion> SndClient::next_tx(int timeout_ms) {
  CANOPY_TRY(wait(timeout_ms, [&] { return !tx_done_.empty(); }, "snd: no tx completion"));
  Completion c = std::move(tx_done_.front());
  tx_done_.pop_front();
  return c;
}

Result<SndClient::Completion> SndClient::next_rx(int timeout_ms) {
  CANOPY_TRY(wait(timeout_ms, [&] { return !rx_done_.empty(); }, "snd: no rx completion"));
  Completion c = std::move(rx_done_.front());
  rx_done_.pop_front();
  return c;
}

Status SndClient::drain_tx(int timeout_ms) {
  return wait(timeout_ms, [&] { return tx_in_flight() == 0; }, "snd: tx not drained");
}

uint32_t SndClient::tx_in_flight() const {
  uint32_t n = 0;
  for (const Io& io : io_) n += io.busy && io.tx;
  return n;
}

uint32_t SndClient::rx_in_flight() const {
  uint32_t n = 0;
  for (const Io& io : io_) n += io.busy && !io.tx;
  return n;
}

std::vector<sndp::Event> SndClient::take_events(int wait_ms) {
  (void)pump(0);
  (void)wait(wait_ms, [&] { return !events_.empty(); }, "snd: no event");
  std::vector<sndp::Event> out(events_.begin(), events_.end());
  events_.clear();
  return out;
}

}  // namespace canopy::guest
