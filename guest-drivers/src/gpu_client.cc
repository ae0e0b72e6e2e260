#include "canopy/guest/gpu_client.h"

#include <chrono>
#include <cstddef>
#include <cstring>
#include <utility>

#include "canopy/transport/driver_queue.h"

namespace canopy::guest {

using proto::Cmd;
using proto::Resp;

namespace {
constexpr uint64_t kRespOffset = GpuClient::kSlotBytes - 2048;
constexpr uint64_t kCursorBufBytes = 256;
constexpr uint32_t kCursorBufs = 16;
constexpr uint64_t kCursorArea = kCursorBufBytes * kCursorBufs;
constexpr uint64_t kCursorTokenBase = 1ull << 62;

std::span<const uint8_t> as_bytes(std::span<const transport::Segment> pages, std::vector<proto::MemEntry>& out) {
  out.resize(pages.size());
  for (size_t i = 0; i < pages.size(); ++i) {
    out[i] = proto::MemEntry{};
    out[i].addr = pages[i].gpa;
    out[i].length = pages[i].len;
  }
  return {reinterpret_cast<const uint8_t*>(out.data()), out.size() * sizeof(proto::MemEntry)};
}
}  // namespace

Result<std::unique_ptr<GpuClient>> GpuClient::create(VirtioTransport& t, transport::GuestMemory& mem,
                                                     const Options& o) {
  if (o.area.len < kAreaBytes) return make_error(Errc::kInvalidArgument, "gpu client: area below kAreaBytes");
  std::unique_ptr<GpuClient> c(new GpuClient(t, mem));
  c->opt_ = o;
  c->slots_gpa_ = o.area.gpa + kRingBytes;
  c->cursor_gpa_ = o.area.gpa + kRingBytes - kCursorArea;
  c->slot_used_.assign(kSlots, false);
  for (uint32_t i = 0; i < kCursorBufs; ++i) c->cursor_slots_.push_back(i);
  DriverOptions d;
  d.device_id = 16;
  d.num_queues = 2;
  d.max_queue_size = 64;
  d.ring_area = {o.area.gpa, kRingBytes - kCursorArea};
  d.wanted_features = o.wanted_features | transport::kVirtioFEventIdx;
  CANOPY_TRY(c->driver_.init(d));
  return c;
}

Result<proto::Config> GpuClient::config() { return driver_.read_config_obj<proto::Config>(0); }

bool GpuClient::take_config_changed() {
  if (driver_.poll_interrupt() & kInterruptConfigChange) config_changed_ = true;
  return std::exchange(config_changed_, false);
}

Status GpuClient::clear_events(uint32_t events) {
  const le32 v = events;
  return driver_.write_config(offsetof(proto::Config, events_clear), &v, sizeof v);
}

Result<uint32_t> GpuClient::take_slot() {
  for (int round = 0; round < 2; ++round) {
    for (uint32_t i = 0; i < kSlots; ++i)
      if (!slot_used_[i]) {
        slot_used_[i] = true;
        return i;
      }
    CANOPY_TRY(pump(opt_.timeout_ms));
  }
  return make_error(Errc::kLimit, "gpu client: all request slots in flight");
}

Result<uint64_t> GpuClient::submit(std::span<const uint8_t> cmd, uint32_t resp_bytes) {
  CANOPY_ASSIGN_OR_RETURN(uint64_t ticket, add_request(cmd, resp_bytes));
  CANOPY_TRY(driver_.kick(0));
  return ticket;
}

Result<std::vector<uint64_t>> GpuClient::submit_batch(std::span<const std::vector<uint8_t>> commands,
                                                      uint32_t resp_bytes) {
  std::vector<uint64_t> tickets;
  Status failed;
  for (const auto& c : commands) {
    auto t = add_request(c, resp_bytes);
    if (!t.ok()) {
      failed = t.error();
      break;
    }
    tickets.push_back(*t);
  }
  CANOPY_TRY(driver_.kick(0));  // the ones added go out either way (their tickets still complete)
  if (!failed.ok()) return failed.error();
  return tickets;
}

Result<uint64_t> GpuClient::add_request(std::span<const uint8_t> cmd, uint32_t resp_bytes) {
  if (cmd.size() < sizeof(proto::CtrlHdr) || cmd.size() > kRespOffset || resp_bytes > 2048 || resp_bytes == 0)
    return make_error(Errc::kInvalidArgument, "gpu client: command or response size");
  CANOPY_ASSIGN_OR_RETURN(uint32_t slot, take_slot());
  const uint64_t gpa = slots_gpa_ + slot * kSlotBytes;
  CANOPY_TRY(mem_.write(gpa, cmd.data(), cmd.size()));
  CANOPY_TRY(mem_.fill(gpa + kRespOffset, 0, resp_bytes));
  const uint64_t ticket = next_ticket_++;
  auto& q = driver_.queue(0);
  auto added = q.add({{gpa, uint32_t(cmd.size())}}, {{gpa + kRespOffset, resp_bytes}}, ticket);
  if (!added.ok()) {
    slot_used_[slot] = false;
    return added.error();
  }
  in_flight_.push_back({ticket, InFlight{slot, resp_bytes, false}});
  return ticket;
}

Status GpuClient::pump(int timeout_ms) {
  bool any = false;
  for (int pass = 0; pass < 2 && !any; ++pass) {
    for (;;) {
      CANOPY_ASSIGN_OR_RETURN(auto used, driver_.queue(0).get_used());
      if (!used) break;
      any = true;
      for (size_t i = 0; i < in_flight_.size(); ++i) {
        if (in_flight_[i].first != used->token) continue;
        const InFlight f = in_flight_[i].second;
        Reply r;
        r.ticket = used->token;
        const uint64_t gpa = slots_gpa_ + f.slot * kSlotBytes + kRespOffset;
        const uint32_t len = std::min(used->len, f.resp_bytes);
        if (len >= sizeof r.hdr) {
          CANOPY_TRY(mem_.read(gpa, &r.hdr, sizeof r.hdr));
          r.body.resize(len - sizeof r.hdr);
          if (!r.body.empty()) CANOPY_TRY(mem_.read(gpa + sizeof r.hdr, r.body.data(), r.body.size()));
        }
        slot_used_[f.slot] = false;
        in_flight_.erase(in_flight_.begin() + long(i));
        if (f.sync) sync_reply_ = std::move(r);
        else done_.push_back(std::move(r));
        break;
      }
    }
    for (;;) {
      CANOPY_ASSIGN_OR_RETURN(auto used, driver_.queue(1).get_used());
      if (!used) break;
      cursor_slots_.push_back(uint32_t(used->token - kCursorTokenBase));
    }
    if (!any && pass == 0) {
      auto irq = driver_.wait_interrupt(timeout_ms);
      if (!irq.ok() && irq.code() != Errc::kTimeout) return irq.error();
      if (irq.ok() && (*irq & kInterruptConfigChange)) config_changed_ = true;
      if (driver_.needs_reset()) return make_error(Errc::kState, "gpu: device needs reset");
    }
  }
  return {};
}

Result<GpuClient::Reply> GpuClient::call(std::span<const uint8_t> cmd, uint32_t resp_bytes) {
  CANOPY_ASSIGN_OR_RETURN(uint64_t ticket, submit(cmd, resp_bytes));
  for (auto& f : in_flight_)
    if (f.first == ticket) f.second.sync = true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(opt_.timeout_ms);
  while (!(sync_reply_ && sync_reply_->ticket == ticket)) {
    if (std::chrono::steady_clock::now() > deadline) return make_error(Errc::kTimeout, "gpu: no response");
    CANOPY_TRY(pump(50));
  }
  Reply r = std::move(*sync_reply_);
  sync_reply_.reset();
  last_response_ = r.type();
  return r;
}

Result<GpuClient::Reply> GpuClient::next_completion(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (done_.empty()) {
    if (std::chrono::steady_clock::now() >= deadline) return make_error(Errc::kTimeout, "gpu: no completion");
    CANOPY_TRY(pump(10));
  }
  Reply r = std::move(done_.front());
  done_.pop_front();
  return r;
}

Status GpuClient::cursor(const proto::UpdateCursor& cmd) {
  if (cursor_slots_.empty()) CANOPY_TRY(pump(opt_.timeout_ms));
  if (cursor_slots_.empty()) return make_error(Errc::kLimit, "gpu client: cursor queue full");
  const uint32_t slot = cursor_slots_.back();
  cursor_slots_.pop_back();
  const uint64_t gpa = cursor_gpa_ + slot * kCursorBufBytes;
  CANOPY_TRY(mem_.write_obj(gpa, cmd));
  auto added = driver_.queue(1).add({{gpa, uint32_t(sizeof cmd)}}, {}, kCursorTokenBase + slot);
  if (!added.ok()) {
    cursor_slots_.push_back(slot);
    return added.error();
  }
  auto kicked = driver_.kick(1);
  if (!kicked.ok()) return kicked.error();
  return {};
}

Status GpuClient::expect_ok(const Result<Reply>& r) {
  if (!r.ok()) return r.error();
  last_response_ = r->type();
  switch (static_cast<Resp>(r->type())) {
    case Resp::kOkNodata:
    case Resp::kOkDisplayInfo:
    case Resp::kOkEdid:
    case Resp::kOkResourceUuid:
    case Resp::kOkCapset:
    case Resp::kOkCapsetInfo:
    case Resp::kOkMapInfo: return {};
    case Resp::kErrOutOfMemory: return make_error(Errc::kLimit, "gpu: ERR_OUT_OF_MEMORY");
    case Resp::kErrInvalidScanoutId: return make_error(Errc::kInvalidArgument, "gpu: ERR_INVALID_SCANOUT_ID");
    case Resp::kErrInvalidResourceId: return make_error(Errc::kInvalidArgument, "gpu: ERR_INVALID_RESOURCE_ID");
    case Resp::kErrInvalidContextId: return make_error(Errc::kInvalidArgument, "gpu: ERR_INVALID_CONTEXT_ID");
    case Resp::kErrInvalidParameter: return make_error(Errc::kInvalidArgument, "gpu: ERR_INVALID_PARAMETER");
    default: return make_error(Errc::kIo, "gpu: ERR_UNSPEC or an unknown response");
  }
}

Result<std::vector<proto::DisplayOne>> GpuClient::display_info() {
  auto r = call(proto::make_hdr(Cmd::kGetDisplayInfo), {}, sizeof(proto::RespDisplayInfo));
  CANOPY_TRY(expect_ok(r));
  if (r->body.size() != sizeof(proto::DisplayOne) * proto::kMaxScanouts)
    return make_error(Errc::kProtocol, "gpu: short display info");
  std::vector<proto::DisplayOne> out(proto::kMaxScanouts);
  std::memcpy(out.data(), r->body.data(), r->body.size());
  return out;
}

Result<std::vector<uint8_t>> GpuClient::edid(uint32_t scanout) {
  proto::GetEdid g{};
  g.hdr = proto::make_hdr(Cmd::kGetEdid);
  g.scanout = scanout;
  auto r = call(g, {}, sizeof(proto::RespEdid));
  CANOPY_TRY(expect_ok(r));
  if (r->body.size() < 8) return make_error(Errc::kProtocol, "gpu: short EDID response");
  uint32_t size;
  std::memcpy(&size, r->body.data(), 4);
  if (size > r->body.size() - 8) return make_error(Errc::kProtocol, "gpu: EDID size");
  return std::vector<uint8_t>(r->body.begin() + 8, r->body.begin() + 8 + size);
}

Result<uint32_t> GpuClient::create_2d(proto::Format format, uint32_t width, uint32_t height) {
  proto::ResourceCreate2d c{};
  c.hdr = proto::make_hdr(Cmd::kResourceCreate2d);
  c.resource_id = next_resource_;
  c.format = uint32_t(format);
  c.width = width;
  c.height = height;
  CANOPY_TRY(expect_ok(call(c)));
  return next_resource_++;
}

Status GpuClient::attach_backing(uint32_t resource, std::span<const transport::Segment> pages) {
  proto::ResourceAttachBacking a{};
  a.hdr = proto::make_hdr(Cmd::kResourceAttachBacking);
  a.resource_id = resource;
  a.nr_entries = uint32_t(pages.size());
  std::vector<proto::MemEntry> e;
  return expect_ok(call(a, as_bytes(pages, e)));
}

Status GpuClient::detach_backing(uint32_t resource) {
  proto::ResourceDetachBacking d{};
  d.hdr = proto::make_hdr(Cmd::kResourceDetachBacking);
  d.resource_id = resource;
  return expect_ok(call(d));
}

Status GpuClient::unref(uint32_t resource) {
  proto::ResourceUnref u{};
  u.hdr = proto::make_hdr(Cmd::kResourceUnref);
  u.resource_id = resource;
  return expect_ok(call(u));
}

Status GpuClient::set_scanout(uint32_t scanout, uint32_t resource, GpuRect r) {
  proto::SetScanout s{};
  s.hdr = proto::make_hdr(Cmd::kSetScanout);
  s.scanout_id = scanout;
  s.resource_id = resource;
  s.r = {r.x, r.y, r.width, r.height};
  return expect_ok(call(s));
}

Status GpuClient::transfer_to_host_2d(uint32_t resource, GpuRect r, uint64_t offset) {
  proto::TransferToHost2d t{};
  t.hdr = proto::make_hdr(Cmd::kTransferToHost2d);
  t.resource_id = resource;
  t.r = {r.x, r.y, r.width, r.height};
  t.offset = offset;
  return expect_ok(call(t));
}

Status GpuClient::flush(uint32_t resource, GpuRect r) {
  proto::ResourceFlush f{};
  f.hdr = proto::make_hdr(Cmd::kResourceFlush);
  f.resource_id = resource;
  f.r = {r.x, r.y, r.width, r.height};
  return expect_ok(call(f));
}

Result<uint32_t> GpuClient::create_blob(std::span<const transport::Segment> pages, uint64_t size, uint32_t flags) {
  proto::ResourceCreateBlob b{};
  b.hdr = proto::make_hdr(Cmd::kResourceCreateBlob);
  b.resource_id = next_resource_;
  b.blob_mem = uint32_t(proto::BlobMem::kGuest);
  b.blob_flags = flags;
  b.nr_entries = uint32_t(pages.size());
  b.size = size;
  std::vector<proto::MemEntry> e;
  CANOPY_TRY(expect_ok(call(b, as_bytes(pages, e))));
  return next_resource_++;
}

Status GpuClient::set_scanout_blob(uint32_t scanout, uint32_t resource, proto::Format format, uint32_t width,
                                   uint32_t height, uint32_t stride, uint32_t offset, GpuRect r) {
  proto::SetScanoutBlob s{};
  s.hdr = proto::make_hdr(Cmd::kSetScanoutBlob);
  s.scanout_id = scanout;
  s.resource_id = resource;
  s.width = width;
  s.height = height;
  s.format = uint32_t(format);
  s.strides[0] = stride;
  s.offsets[0] = offset;
  s.r = {r.x, r.y, r.width, r.height};
  return expect_ok(call(s));
}

Result<std::array<uint8_t, 16>> GpuClient::assign_uuid(uint32_t resource) {
  proto::ResourceAssignUuid a{};
  a.hdr = proto::make_hdr(Cmd::kResourceAssignUuid);
  a.resource_id = resource;
  auto r = call(a, {}, sizeof(proto::RespResourceUuid));
  CANOPY_TRY(expect_ok(r));
  if (r->body.size() != 16) return make_error(Errc::kProtocol, "gpu: short UUID response");
  std::array<uint8_t, 16> u;
  std::memcpy(u.data(), r->body.data(), 16);
  return u;
}

Status GpuClient::ctx_create(uint32_t ctx, uint32_t capset, const char* name) {
  proto::CtxCreate c{};
  c.hdr = proto::make_hdr(Cmd::kCtxCreate, 0, 0, ctx);
  c.nlen = uint32_t(std::min<size_t>(std::strlen(name), sizeof c.debug_name));
  c.context_init = capset;
  std::memcpy(c.debug_name, name, c.nlen);
  return expect_ok(call(c));
}

Status GpuClient::ctx_destroy(uint32_t ctx) {
  proto::CtxDestroy d{};
  d.hdr = proto::make_hdr(Cmd::kCtxDestroy, 0, 0, ctx);
  return expect_ok(call(d));
}

Status GpuClient::move_cursor(uint32_t scanout, uint32_t x, uint32_t y) {
  proto::UpdateCursor u{};
  u.hdr = proto::make_hdr(Cmd::kMoveCursor);
  u.pos.scanout_id = scanout;
  u.pos.x = x;
  u.pos.y = y;
  return cursor(u);
}

Status GpuClient::update_cursor(uint32_t scanout, uint32_t resource, uint32_t x, uint32_t y, uint32_t hot_x,
                                uint32_t hot_y) {
  proto::UpdateCursor u{};
  u.hdr = proto::make_hdr(Cmd::kUpdateCursor);
  u.pos.scanout_id = scanout;
  u.pos.x = x;
  u.pos.y = y;
  u.resource_id = resource;
  u.hot_x = hot_x;
  u.hot_y = hot_y;
  return cursor(u);
}

}  // namespace canopy::guest
