// canopy-partition-gpu-check: a guest partition that drives its virtio-gpu device (canopy-gpu behind
// canopy-vmm) through the guest-drivers GpuClient and checks every command and error code it can reach
// from a guest. Prints "gpu-check: ok NAME" / "gpu-check: FAIL NAME: ..." and finally
// "gpu-check: done OK FAILED"; exits 0 only when nothing failed. canopy_partition_test runs it with
// canopy-gpu --frame-log --release-after-ms=1000 --max-resources=16 and two scanouts (640x480, 320x240)
// and checks the frame log (pixels, zero-copy blob frame, cursor). At the end it waits for two display
// changes the test makes through canopy-gpu --control (scanout 1 to 400x300, then off).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "canopy/guest/gpu_client.h"
#include "canopy/guest/partition.h"

using namespace canopy;
using namespace canopy::guest;
using proto::Cmd;
using proto::Resp;

namespace {

int ok_count = 0, fail_count = 0;

// Hang guards: every wait below ends on an event (a reply, a fence, a config change) in milliseconds on
// an idle machine; these limits only stop a partition that would otherwise hang.
constexpr int kGuardMs = 30000;

void report(bool ok, const char* name, const std::string& detail = "") {
  if (ok) {
    ++ok_count;
    std::fprintf(stderr, "gpu-check: ok %s\n", name);
  } else {
    ++fail_count;
    std::fprintf(stderr, "gpu-check: FAIL %s: %s\n", name, detail.c_str());
  }
}

// The device's answer to a typed helper: OK_NODATA on success, else the error response.
uint32_t code(const Status& s, GpuClient& g) { return s.ok() ? uint32_t(Resp::kOkNodata) : g.last_response(); }
template <typename T>
uint32_t code(const Result<T>& r, GpuClient& g) {
  return r.ok() ? uint32_t(Resp::kOkNodata) : g.last_response();
}

void expect_code(const char* name, uint32_t got, Resp want) {
  report(got == uint32_t(want), name,
         std::string("got ") + proto::resp_name(got) + ", want " + proto::resp_name(uint32_t(want)));
}

}  // namespace

int main() {
  auto p = Partition::attach(kGuardMs);
  if (!p.ok()) {
    std::fprintf(stderr, "gpu-check: attach failed: %s\n", p.error().what);
    return 2;
  }
  Partition& part = **p;
  auto dev = part.find_device(16);
  if (!dev.ok()) {
    std::fprintf(stderr, "gpu-check: no virtio-gpu device\n");
    return 2;
  }
  auto t = part.transport(*dev);
  GpuClient::Options o;
  o.timeout_ms = kGuardMs;
  auto area = part.alloc(GpuClient::kAreaBytes);
  if (!area.ok()) return 2;
  o.area = *area;
  auto gc = GpuClient::create(*t, part.memory(), o);
  if (!gc.ok()) {
    std::fprintf(stderr, "gpu-check: device init failed: %s\n", gc.error().what);
    return 2;
  }
  GpuClient& g = **gc;
  auto& mem = part.memory();
  (void)part.heartbeat(1);

  // --- features and config ---
  report(g.has_feature(proto::kFEdid) && g.has_feature(proto::kFResourceBlob) && g.has_feature(proto::kFResourceUuid) &&
             g.has_feature(proto::kFContextInit),
         "features EDID, RESOURCE_BLOB, RESOURCE_UUID, CONTEXT_INIT negotiated");
  auto cfg = g.config();
  report(cfg.ok() && cfg->num_scanouts.get() == 2 && cfg->num_capsets.get() == 0, "config: 2 scanouts, 0 capsets");

  // --- display info and EDID ---
  auto di = g.display_info();
  report(di.ok() && (*di)[0].r.width.get() == 640 && (*di)[0].r.height.get() == 480 && (*di)[1].r.width.get() == 320 &&
             (*di)[0].enabled.get() == 1 && (*di)[1].enabled.get() == 1 && (*di)[2].enabled.get() == 0,
         "GET_DISPLAY_INFO lists the manifest's scanouts");
  auto edid = g.edid(1);
  report(edid.ok() && edid->size() == 128 && (*edid)[0] == 0 && (*edid)[1] == 0xff &&
             ((*edid)[56] | ((*edid)[58] >> 4) << 8) == 320,
         "GET_EDID: scanout 1's EDID prefers 320x240");
  expect_code("GET_EDID scanout 2", code(g.edid(2), g), Resp::kErrInvalidParameter);

  // --- 2D resource, backing, transfer, scanout, flush ---
  constexpr uint32_t W = 64, H = 64;
  auto fb = part.alloc(W * H * 4);
  std::vector<uint32_t> px(W * H, 0xff204080);
  (void)mem.write(fb->gpa, px.data(), px.size() * 4);
  auto res = g.create_2d(proto::Format::kB8G8R8X8, W, H);
  report(res.ok(), "RESOURCE_CREATE_2D");
  const uint32_t r2d = res.ok() ? *res : 0;
  transport::Segment whole{fb->gpa, W * H * 4};
  report(g.attach_backing(r2d, {&whole, 1}).ok(), "RESOURCE_ATTACH_BACKING");
  report(g.set_scanout(0, r2d, {0, 0, W, H}).ok(), "SET_SCANOUT 0");
  report(g.transfer_to_host_2d(r2d, {0, 0, W, H}, 0).ok(), "TRANSFER_TO_HOST_2D");
  report(g.flush(r2d, {0, 0, W, H}).ok(), "RESOURCE_FLUSH (2D)");

  // --- error codes a guest can cause ---
  expect_code("SET_SCANOUT scanout 2", code(g.set_scanout(2, r2d, {0, 0, W, H}), g), Resp::kErrInvalidScanoutId);
  expect_code("SET_SCANOUT rect outside", code(g.set_scanout(0, r2d, {1, 0, W, H}), g), Resp::kErrInvalidParameter);
  expect_code("SET_SCANOUT unknown resource", code(g.set_scanout(0, 999, {0, 0, W, H}), g),
              Resp::kErrInvalidResourceId);
  expect_code("TRANSFER outside the resource", code(g.transfer_to_host_2d(r2d, {0, 0, W + 1, 1}, 0), g),
              Resp::kErrInvalidParameter);
  expect_code("TRANSFER past the backing", code(g.transfer_to_host_2d(r2d, {0, 0, W, H}, 4), g),
              Resp::kErrInvalidParameter);
  expect_code("FLUSH unknown resource", code(g.flush(999, {0, 0, 1, 1}), g), Resp::kErrInvalidResourceId);
  auto r2 = g.create_2d(proto::Format::kB8G8R8X8, 16, 16);
  transport::Segment outside{part.ram_size() - 4096, 8192};
  expect_code("ATTACH outside guest RAM", code(g.attach_backing(*r2, {&outside, 1}), g), Resp::kErrInvalidParameter);
  transport::Segment overlap[2] = {{fb->gpa, 8192}, {fb->gpa + 4096, 4096}};
  expect_code("ATTACH overlapping entries", code(g.attach_backing(*r2, overlap), g), Resp::kErrInvalidParameter);
  expect_code("ATTACH twice", code(g.attach_backing(r2d, {&whole, 1}), g), Resp::kErrUnspec);
  expect_code("DETACH without backing", code(g.detach_backing(*r2), g), Resp::kErrUnspec);
  expect_code("UNREF unknown", code(g.unref(999), g), Resp::kErrInvalidResourceId);
  expect_code("CREATE_2D bad format", code(g.create_2d(proto::Format(7), 4, 4), g), Resp::kErrInvalidParameter);
  proto::GetCapsetInfo ci{};
  ci.hdr = proto::make_hdr(Cmd::kGetCapsetInfo);
  ci.capset_index = 0xffffffff;
  auto cir = g.call(ci, {}, sizeof(proto::RespCapsetInfo));
  expect_code("GET_CAPSET_INFO index 0xffffffff", cir.ok() ? cir->type() : 0, Resp::kErrInvalidParameter);
  proto::CtxDestroy cd{};
  cd.hdr = proto::make_hdr(Cmd::kCtxDestroy, 0, 0, 77);
  auto cdr = g.call(cd);
  expect_code("CTX_DESTROY unknown context", cdr.ok() ? cdr->type() : 0, Resp::kErrInvalidContextId);
  auto bad = g.call(proto::make_hdr(Cmd(0x1ff)));
  expect_code("unknown command", bad.ok() ? bad->type() : 0, Resp::kErrUnspec);

  // --- caps: --max-resources=16; unref releases (no leak) ---
  std::vector<uint32_t> many;
  Status last;
  for (int i = 0; i < 20; ++i) {
    auto r = g.create_2d(proto::Format::kB8G8R8X8, 8, 8);
    if (!r.ok()) {
      last = r.error();
      break;
    }
    many.push_back(*r);
  }
  expect_code("resource cap -> ERR_OUT_OF_MEMORY", code(last, g), Resp::kErrOutOfMemory);
  bool freed = true;
  for (uint32_t id : many) freed &= g.unref(id).ok();
  for (int i = 0; i < 100 && freed; ++i) {
    auto r = g.create_2d(proto::Format::kB8G8R8X8, 8, 8);
    freed = r.ok() && g.attach_backing(*r, {&whole, 1}).ok() && g.unref(*r).ok();
  }
  report(freed, "100 create/attach/unref rounds after the cap: nothing leaks");
  (void)part.heartbeat(2);

  // --- blob from scattered pages, zero copy ---
  std::vector<transport::Segment> pages;
  for (int i = 0; i < 4; ++i) {
    auto pg = part.alloc(4096);
    (void)part.alloc(4096 * (i + 1));  // gaps: the pages are not adjacent
    pages.push_back({pg->gpa, 4096});
  }
  std::swap(pages[0], pages[2]);  // and not in address order
  std::vector<uint32_t> green(1024, 0xff00ff00);
  for (auto& s : pages) (void)mem.write(s.gpa, green.data(), 4096);
  auto blob = g.create_blob(pages, 4 * 4096);
  report(blob.ok(), "RESOURCE_CREATE_BLOB from 4 scattered pages");
  report(g.set_scanout_blob(1, *blob, proto::Format::kB8G8R8X8, 32, 32, 128, 0, {0, 0, 32, 32}).ok() &&
             g.set_scanout_blob(1, *blob, proto::Format::kB8G8R8X8, 64, 64, 256, 0, {0, 0, 64, 64}).ok(),
         "SET_SCANOUT_BLOB 1");
  report(g.flush(*blob, {0, 0, 64, 64}).ok(), "RESOURCE_FLUSH (blob)");
  expect_code("SET_SCANOUT_BLOB past the blob",
              code(g.set_scanout_blob(1, *blob, proto::Format::kB8G8R8X8, 64, 65, 256, 0, {0, 0, 64, 64}), g),
              Resp::kErrInvalidParameter);
  expect_code("SET_SCANOUT on a blob", code(g.set_scanout(1, *blob, {0, 0, 64, 64}), g), Resp::kErrInvalidParameter);
  auto uuid = g.assign_uuid(*blob);
  auto uuid2 = g.assign_uuid(*blob);
  report(uuid.ok() && uuid2.ok() && *uuid == *uuid2 && ((*uuid)[6] >> 4) == 4, "RESOURCE_ASSIGN_UUID stable, v4");

  // --- fences: rings of a context are independent; a ring retires in order ---
  report(g.ctx_create(1).ok(), "CTX_CREATE");
  const uint32_t fr = proto::kFlagFence | proto::kFlagInfoRingIdx;
  proto::ResourceFlush f{};
  f.hdr = proto::make_hdr(Cmd::kResourceFlush, fr, g.next_fence_id(), 1, 0);
  f.resource_id = r2d;
  f.r = {0, 0, W, H};
  proto::CmdSubmit s1{}, s0{};
  s1.hdr = proto::make_hdr(Cmd::kSubmit3d, fr, g.next_fence_id(), 1, 1);
  s0.hdr = proto::make_hdr(Cmd::kSubmit3d, fr, g.next_fence_id(), 1, 0);
  // One batch: canopy-gpu finds the three in one pass of its queue, so ring 1's fence is handled right
  // after the flush went to the output (which holds it --release-after-ms = 1 s), whatever the load on
  // this partition or canopy-vmm. Only canopy-gpu's own thread stalling for a second between two
  // commands could let the hold end first.
  const std::vector<std::vector<uint8_t>> batch = {GpuClient::bytes_of(f), GpuClient::bytes_of(s1),
                                                   GpuClient::bytes_of(s0)};
  auto tickets = g.submit_batch(batch);
  const bool sent = tickets.ok() && tickets->size() == 3;
  const uint64_t t_flush = sent ? (*tickets)[0] : 0, t_ring1 = sent ? (*tickets)[1] : 0,
                 t_ring0 = sent ? (*tickets)[2] : 0;
  std::vector<uint64_t> order;
  for (int i = 0; i < 3 && sent; ++i) {
    auto c = g.next_completion(kGuardMs);
    if (!c.ok()) break;
    order.push_back(c->ticket);
  }
  report(sent && order == std::vector<uint64_t>{t_ring1, t_flush, t_ring0},
         "fences: ring 1 retires first; ring 0 retires in submission order after the display released the flush");
  f.hdr = proto::make_hdr(Cmd::kResourceFlush, proto::kFlagFence, g.next_fence_id());
  auto t_global = g.submit(f);
  auto t_info = g.submit(proto::make_hdr(Cmd::kGetDisplayInfo, proto::kFlagFence, g.next_fence_id()));
  order.clear();
  for (int i = 0; i < 2; ++i) {
    auto c = g.next_completion(kGuardMs);
    if (!c.ok()) break;
    order.push_back(c->ticket);
  }
  report(t_global.ok() && t_info.ok() && order == std::vector<uint64_t>{*t_global, *t_info},
         "fences: the global timeline retires in order");
  report(g.ctx_destroy(1).ok(), "CTX_DESTROY");

  // --- cursor ---
  auto cur = g.create_2d(proto::Format::kB8G8R8A8, 64, 64);
  auto cpx = part.alloc(64 * 64 * 4);
  std::vector<uint32_t> white(64 * 64, 0xffffffff);
  (void)mem.write(cpx->gpa, white.data(), white.size() * 4);
  transport::Segment cseg{cpx->gpa, 64 * 64 * 4};
  report(cur.ok() && g.attach_backing(*cur, {&cseg, 1}).ok() && g.transfer_to_host_2d(*cur, {0, 0, 64, 64}, 0).ok() &&
             g.update_cursor(0, *cur, 10, 20, 1, 1).ok() && g.move_cursor(0, 30, 40).ok(),
         "UPDATE_CURSOR / MOVE_CURSOR sent");
  // The cursor queue has no responses to wait for; a synchronous request after it is served after it.
  (void)g.display_info();

  // --- display changes from the host side (canopy_partition_test sends them over canopy-gpu's control
  // socket once it reads "waiting for ..."): config-change notification, EVENT_DISPLAY, new modes ---
  auto wait_change = [&](const char* what) {
    std::fprintf(stderr, "gpu-check: waiting for %s\n", what);
    // The test sends it once it reads the line above: a hang guard of 120 s.
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < end) {
      if (g.take_config_changed()) return true;
      (void)part.heartbeat(4);
      usleep(10000);
    }
    return g.take_config_changed();
  };
  report(wait_change("a display change"), "config change notification for the host's display change");
  cfg = g.config();
  report(cfg.ok() && (cfg->events_read.get() & proto::kEventDisplay), "config: events_read has EVENT_DISPLAY");
  di = g.display_info();
  report(di.ok() && (*di)[1].r.width.get() == 400 && (*di)[1].r.height.get() == 300 && (*di)[1].enabled.get() == 1 &&
             (*di)[0].r.width.get() == 640,
         "GET_DISPLAY_INFO: scanout 1 is now 400x300, scanout 0 unchanged");
  edid = g.edid(1);
  report(edid.ok() && edid->size() >= 128 && ((*edid)[56] | ((*edid)[58] >> 4) << 8) == 400,
         "GET_EDID: scanout 1's EDID now prefers 400x300");
  report(g.clear_events(proto::kEventDisplay).ok() && (cfg = g.config()).ok() && cfg->events_read.get() == 0,
         "events_clear acknowledges EVENT_DISPLAY");
  report(wait_change("a disconnect"), "config change notification for the disconnect");
  di = g.display_info();
  report(di.ok() && (*di)[1].enabled.get() == 0 && (*di)[0].enabled.get() == 1,
         "GET_DISPLAY_INFO: scanout 1 disconnected, scanout 0 still enabled");

  (void)part.heartbeat(3);
  std::fprintf(stderr, "gpu-check: done %d %d\n", ok_count, fail_count);
  return fail_count == 0 ? 0 : 1;
}
