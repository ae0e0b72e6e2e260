// The compositor's channel server: device connections and their packets (compositor_impl.h).
#include "canopy/buffers/udmabuf.h"
#include "compositor_impl.h"

namespace canopy::display {

void Compositor::Impl::send_release(uint64_t conn_id, uint32_t scanout, uint64_t seq) {
  auto it = conns.find(conn_id);
  if (it == conns.end() || !it->second.sock.valid()) return;
  ch::Release r{};
  r.scanout = scanout;
  r.seq = seq;
  auto st = ch::send_packet(it->second.sock.get(), ch::encode(ch::Type::kRelease, r));
  if (!st.ok()) drop(conn_id, st.error().what);
}

void Compositor::Impl::unref(uint64_t id) {
  auto it = frames.find(id);
  if (it == frames.end()) return;
  if (--it->second.refs > 0) return;
  const FrameRec f = std::move(it->second);
  frames.erase(it);
  if (f.acquire) release_point(f.conn, f.scanout, f.acquire, id);
  send_release(f.conn, f.scanout, f.seq);
}

auto Compositor::Impl::timeline_of(uint64_t conn_id, uint32_t scanout) -> ScanoutTimeline* {
  auto c = conns.find(conn_id);
  if (c == conns.end()) return nullptr;
  auto t = c->second.timelines.find(scanout);
  return t == c->second.timelines.end() ? nullptr : &t->second;
}

void Compositor::Impl::release_point(uint64_t conn_id, uint32_t scanout, uint64_t point, uint64_t id) {
  ScanoutTimeline* st = timeline_of(conn_id, scanout);
  if (!st) return;
  for (auto [a, b] = st->waiting.equal_range(point); a != b; ++a)
    if (a->second == id) {
      st->waiting.erase(a);
      break;
    }
  if (auto h = st->held.find(point); h != st->held.end() && --h->second == 0) st->held.erase(h);
  retire(*st, point);
}

void Compositor::Impl::retire(ScanoutTimeline& st, uint64_t released) {
  st.highest_released = std::max(st.highest_released, released);
  uint64_t to = st.highest_released;
  if (!st.held.empty()) to = std::min(to, st.held.begin()->first - 1);
  to = std::min(to, st.tl.signalled());
  if (to > st.tl.retired()) (void)st.tl.retire(to);
}

void Compositor::Impl::on_timeline_event(int fd, uint64_t conn_id, uint32_t scanout) {
  ScanoutTimeline* st = timeline_of(conn_id, scanout);
  if (!st) return;
  if (fd == st->tl.producer_pidfd()) {
    ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);  // readable for good once the producer exited
    timeline_by_fd.erase(fd);
    st->tl.check_producer();
  }
  st->tl.consume_event();
  const uint64_t v = st->tl.signalled();
  while (!st->waiting.empty() && st->waiting.begin()->first <= v) {
    const uint64_t id = st->waiting.begin()->second;
    st->waiting.erase(st->waiting.begin());
    auto f = frames.find(id);
    if (f == frames.end()) continue;
    for (auto [o, l] : f->second.targets) outputs[o].sched->signal(l, id);
    trace_event("acquire", clock.now(), clock.now(), 100, f->second.seq);
  }
  retire(*st);
  if (!st->lost && st->tl.producer_state() == buffers::ProducerState::kLost) {
    st->lost = true;
    auto c = conns.find(conn_id);
    CANOPY_WARN(
        "canopy-display: %s: scanout %u: the producer of its timeline is gone; %zu frame(s) will "
        "not complete",
        c != conns.end() ? c->second.stats.vm.c_str() : "?", scanout, st->waiting.size());
  }
}

void Compositor::Impl::unwatch_timelines(uint64_t conn_id) {
  std::erase_if(timeline_by_fd, [&](const auto& kv) {
    if (kv.second.first != conn_id) return false;
    ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, kv.first, nullptr);
    return true;
  });
}

Status Compositor::Impl::on_timeline(uint64_t conn_id, Conn& c, ch::Message& m) {
  const uint32_t scanout = m.fixed<ch::TimelineMsg>().scanout.get();
  if (scanout >= c.num_scanouts) return make_error(Errc::kProtocol, "TIMELINE for a scanout the device does not have");
  if (c.timelines.count(scanout)) return make_error(Errc::kProtocol, "a second TIMELINE for a scanout");
  if (descriptors_of(c) + 3 > opt.quotas.descriptors_per_connection)
    return make_error(Errc::kLimit, "descriptors above the connection's quota");
  buffers::TimelineFds fds;
  fds.memfd = std::move(m.fds[0]);
  fds.eventfd = std::move(m.fds[1]);
  if (m.fds.size() > 2) fds.producer_pidfd = std::move(m.fds[2]);
  auto tl = buffers::Timeline::import(std::move(fds));
  if (!tl.ok()) return make_error(Errc::kProtocol, "TIMELINE descriptors are not a timeline");
  ScanoutTimeline& st = c.timelines[scanout];
  st.tl = std::move(*tl);
  CANOPY_TRY(watch(st.tl.eventfd()));
  timeline_by_fd[st.tl.eventfd()] = {conn_id, scanout};
  if (st.tl.producer_pidfd() >= 0) {
    CANOPY_TRY(watch(st.tl.producer_pidfd()));
    timeline_by_fd[st.tl.producer_pidfd()] = {conn_id, scanout};
  }
  return {};
}

void Compositor::Impl::take_releases(Output& o) {
  for (auto [layer, id] : o.sched->take_releases()) unref(id);
}

void Compositor::Impl::drop(uint64_t conn_id, const char* why) {
  auto it = conns.find(conn_id);
  if (it == conns.end() || !it->second.sock.valid()) return;
  Conn& c = it->second;
  const std::string who = !c.stats.vm.empty()   ? c.stats.vm
                          : !c.bound_vm.empty() ? c.bound_vm + " (brokered, no HELLO)"
                                                : std::string("(no HELLO)");
  CANOPY_WARN("canopy-display: connection of %s closed: %s", who.c_str(), why);
  ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, c.sock.get(), nullptr);
  conn_by_fd.erase(c.sock.get());
  unwatch_timelines(conn_id);
  c.sock.reset();
  c.stats.connected = false;
  c.buffers.clear();  // frames on screen keep their own references
  c.partial.clear();
  c.partial_pieces = 0;
  c.timelines.clear();  // frames waiting on one will not complete; newer frames replace them
  c.cursors.clear();    // a gone VM's pointer is not drawn over its last frames
}

void Compositor::Impl::share_quotas() {
  uint64_t total = opt.quotas.mappings;
  if (total == 0) {
    uint64_t max_map_count = 65530;  // Linux's default
    if (FILE* f = std::fopen("/proc/sys/vm/max_map_count", "re")) {
      unsigned long long v = 0;
      if (std::fscanf(f, "%llu", &v) == 1 && v > 0) max_map_count = v;
      std::fclose(f);
    }
    total = max_map_count > 2 * kReservedMappings ? max_map_count - kReservedMappings : max_map_count / 2;
  }
  std::set<std::string> shown;
  for (const auto& out : layout.outputs)
    for (const auto& l : out.layers) shown.insert(l.vm);
  const uint64_t others = shown.empty() ? total : total / 4;
  for (const auto& vm : shown) {
    auto u = std::make_shared<VmUsage>();
    u->quota = (total - others) / shown.size();
    vm_usage[vm] = std::move(u);
  }
  unnamed_quota = others / kMaxConnections;
}

size_t Compositor::Impl::descriptors_of(const Conn& c) {
  size_t n = 0;
  for (const auto& [key, p] : c.partial) n += p.fds.size();
  for (const auto& [key, b] : c.buffers) n += b->fds.size();
  n += 3 * c.timelines.size();  // memfd, eventfd and (at most) pidfd of each
  return n;
}

void Compositor::Impl::expire_silent() {
  const TimePoint now = clock.now();
  std::vector<uint64_t> late;
  for (const auto& [id, c] : conns)
    if (!c.hello && c.sock.valid() && now - c.accepted > opt.quotas.hello_deadline) late.push_back(id);
  for (uint64_t id : late) drop(id, "no HELLO in time");
}

void Compositor::Impl::accept_all(int sock, const std::string& bound_vm) {
  for (;;) {
    UniqueFd s(::accept4(sock, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!s.valid()) {
      if ((errno != EMFILE && errno != ENFILE) || !spare.valid()) return;
      // No descriptor left for it: left in the backlog, the connection would keep the listening socket
      // readable and the loop spinning. It is taken with the spare descriptor and closed at once.
      spare.reset();
      const bool turned = UniqueFd(::accept4(sock, nullptr, nullptr, SOCK_CLOEXEC)).valid();
      spare = UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      CANOPY_WARN_RL("canopy-display: connection refused: the process has no descriptor left");
      if (!turned) return;
      continue;
    }
    adopt(std::move(s), bound_vm);
  }
}

auto Compositor::Impl::adopt(UniqueFd s, std::string bound_vm) -> Conn* {
  // Slots: a connection bound to a VM the layout shows takes one of that VM's own; any other (bound to
  // no VM, or to a VM the layout does not show, whose mapping quota is a share of the others') one of
  // the shared ones.
  auto pool = [this](const std::string& vm) { return vm_usage.count(vm) ? vm : std::string(); };
  const std::string mine = pool(bound_vm);
  size_t live = 0;
  for (auto& [id, c] : conns) live += c.sock.valid() && pool(c.bound_vm) == mine ? 1 : 0;
  if (live >= (mine.empty() ? kMaxConnections : kMaxConnectionsPerVm)) {
    CANOPY_WARN_RL("canopy-display: connection refused: %zu connections %s%s already", live,
                   mine.empty() ? "outside the VMs' own slots" : "of ", mine.c_str());
    return nullptr;
  }
  // Connections that closed before saying HELLO are not worth a record.
  std::erase_if(conns, [](const auto& kv) { return !kv.second.sock.valid() && !kv.second.hello; });
  const uint64_t id = next_conn++;
  Conn& c = conns[id];
  c.sock = std::move(s);
  c.accepted = clock.now();
  c.stats.connected = true;
  c.stats.brokered = !bound_vm.empty();
  c.bound_vm = std::move(bound_vm);
  conn_by_fd[c.sock.get()] = id;
  if (!watch(c.sock.get()).ok()) drop(id, "epoll");
  return &c;
}

void Compositor::Impl::on_broker() {
  for (size_t n = 0; n < kMaxPacketsPerTurn && broker.valid(); ++n) {
    auto m = protocol::broker::receive(broker.get(), protocol::broker::Link::kBrokerToService, 0);
    if (!m.ok()) {
      if (m.error().code == Errc::kTimeout) return;
      if (m.error().code == Errc::kClosed) {
        // canopy-vmm is gone: the connections it made keep working, no new ones come.
        CANOPY_WARN("canopy-display: the broker closed its link; no new device connections");
      } else if (m.error().code == Errc::kProtocol) {
        // The packet is gone (e.g. its descriptor did not fit a full table: MSG_CTRUNC); the device
        // asks again. The link stays.
        CANOPY_WARN_RL("canopy-display: a broker packet was dropped: %s", m.error().what);
        continue;
      } else {
        CANOPY_ERROR("canopy-display: broker link failed: %s", m.error().what);
      }
      ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, broker.get(), nullptr);
      broker.reset();
      return;
    }
    int type = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(m->fd.get(), SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_SEQPACKET) {
      CANOPY_ERROR("canopy-display: the broker admitted %s with a descriptor that is not a seqpacket socket",
                   m->vm.c_str());
      continue;
    }
    if (!set_nonblocking(m->fd.get()).ok()) continue;
    CANOPY_INFO("canopy-display: broker admits a connection of %s (criticality %s, #%llu)", m->vm.c_str(),
                protocol::broker::to_string(m->criticality), (unsigned long long)m->serial);
    brokered.insert(m->vm);
    if (Conn* c = adopt(std::move(m->fd), m->vm)) {
      c->stats.criticality = protocol::broker::to_string(m->criticality);
      c->stats.broker_serial = m->serial;
    }
  }
}

Status Compositor::Impl::on_hello(uint64_t id, Conn& c, const ch::Message& m) {
  if (c.hello) return make_error(Errc::kProtocol, "second HELLO");
  const std::string name = m.vm_name();
  // The name a connection goes by is the broker's where there is one; on the listening socket a VM
  // whose connections the broker makes cannot be claimed at all.
  if (!c.bound_vm.empty() && name != c.bound_vm)
    return make_error(Errc::kProtocol, "HELLO names another VM than the one the broker bound the connection to");
  if (c.bound_vm.empty() && brokered.count(name))
    return make_error(Errc::kProtocol, "HELLO claims a VM whose connections are bound (broker or its own socket)");
  c.hello = true;
  c.stats.vm = name;
  // The VM's mapping quota: its share when the layout shows it (all its connections together), else a
  // connection's share of what the others have.
  if (auto u = vm_usage.find(c.stats.vm); u != vm_usage.end()) {
    c.usage = u->second;
  } else {
    c.usage = std::make_shared<VmUsage>();
    c.usage->quota = unnamed_quota;
  }
  c.num_scanouts = m.fixed<ch::Hello>().num_scanouts.get();
  // A VM's device that reconnects (a restarted back-end) replaces its old connection; records of
  // closed connections are forgotten then (their frames on screen keep their own mappings).
  std::vector<uint64_t> old;
  for (auto& [other_id, o] : conns)
    if (other_id != id && o.stats.vm == c.stats.vm) old.push_back(other_id);
  for (uint64_t o : old) {
    drop(o, "replaced by a new connection of the same VM");
    conns.erase(o);
  }
  bool shown = false;
  for (const auto& out : layout.outputs)
    for (const auto& l : out.layers) shown |= l.vm == c.stats.vm;
  CANOPY_INFO("canopy-display: %s connected (%u scanouts)%s", c.stats.vm.c_str(), c.num_scanouts,
              shown ? "" : "; the layout shows none of them");
  return {};
}

Status Compositor::Impl::on_buffer(Conn& c, ch::Message& m) {
  const auto h = m.fixed<ch::BufferHdr>();
  const BufferKey id = ch::key_pair(h.key);
  if (c.buffers.count(id)) return make_error(Errc::kProtocol, "BUFFER redefines a live buffer");
  PartialBuffer& p = c.partial[id];
  if (h.first_piece.get() == 0 && p.total == 0) {
    if (c.buffers.size() + c.partial.size() > kMaxBuffersPerConnection)
      return make_error(Errc::kLimit, "too many buffers");
    p.total = h.total_pieces.get();
  }
  if (h.first_piece.get() != p.pieces.size() || h.total_pieces.get() != p.total)
    return make_error(Errc::kProtocol, "BUFFER packets out of order");
  const size_t fd_base = p.fds.size();
  for (auto& fd : m.fds) p.fds.push_back(std::move(fd));
  if (descriptors_of(c) > opt.quotas.descriptors_per_connection)
    return make_error(Errc::kLimit, "descriptors above the connection's quota");
  // Every piece will be a mapping (and the buffer's reservation one more): charged as the pieces come.
  const auto here = m.pieces();
  if (c.usage->mappings + c.partial_pieces + here.size() + 1 > c.usage->quota)
    return make_error(Errc::kLimit, "buffers above the VM's memory-mapping quota");
  c.partial_pieces += here.size();
  uint64_t bytes = 0;
  for (const auto& pc : p.pieces) bytes += pc.length;
  for (const auto& pc : here) {
    const uint64_t len = uint64_t(pc.pages.get()) * ch::kPageSize;
    bytes += len;
    if (c.stats.mapped_bytes + bytes > kMaxMappedBytesPerConnection)
      return make_error(Errc::kLimit, "buffers above the mapped-bytes cap");
    // The piece must lie inside its file, and the file must not be able to shrink under the mapping
    // (a read past its end would raise SIGBUS): memfds sealed with F_SEAL_SHRINK, or a udmabuf (its
    // size is fixed, its pages memfd pages) of just a frame's pages.
    const int fd = p.fds[fd_base + pc.fd_index.get()].get();
    struct stat sb{};
    const int seals = ::fcntl(fd, F_GET_SEALS);
    if ((seals < 0 || !(seals & F_SEAL_SHRINK)) && !buffers::is_udmabuf(fd))
      return make_error(Errc::kProtocol, "BUFFER file is not sealed against shrinking");
    if (::fstat(fd, &sb) != 0 || pc.offset.get() > uint64_t(sb.st_size) ||
        len > ((uint64_t(sb.st_size) + ch::kPageSize - 1) & ~(ch::kPageSize - 1)) - pc.offset.get())
      return make_error(Errc::kProtocol, "BUFFER piece outside its file");
    p.pieces.push_back({fd, pc.offset.get(), len});
  }
  if (p.pieces.size() < p.total) return {};
  c.partial_pieces -= p.pieces.size();
  auto map = buffers::map_scattered(p.pieces, buffers::Access::kRead);
  if (!map.ok()) {
    CANOPY_WARN("canopy-display: %s: buffer of resource %u (backing %llu): %s", c.stats.vm.c_str(), id.first,
                (unsigned long long)id.second, map.error().what);
    return make_error(Errc::kProtocol, "BUFFER cannot be mapped");
  }
  auto b = std::make_shared<MappedBuffer>();
  b->map = std::move(*map);
  b->forget = [this](const void* base) { forget_memory(base); };
  b->usage = c.usage;
  b->mappings = p.pieces.size() + 1;
  c.usage->mappings += b->mappings;
  if (plane_sinks) {
    b->fds = std::move(p.fds);
    b->pieces = std::move(p.pieces);
  }
  c.stats.mapped_bytes += b->map.size();
  c.buffers[id] = std::move(b);
  c.partial.erase(id);  // closes the descriptors: the mapping keeps the memory
  c.stats.buffers = c.buffers.size();
  return {};
}

Status Compositor::Impl::on_buffer_gone(Conn& c, const ch::Message& m) {
  const BufferKey id = ch::key_pair(m.fixed<ch::BufferGone>().key);
  auto it = c.buffers.find(id);
  if (it == c.buffers.end()) return make_error(Errc::kProtocol, "BUFFER_GONE for an unknown buffer");
  c.stats.mapped_bytes -= it->second->map.size();
  c.buffers.erase(it);  // frames still on screen hold the mapping
  c.stats.buffers = c.buffers.size();
  return {};
}

Status Compositor::Impl::on_cursor(Conn& c, const ch::Message& m) {
  const auto cm = m.fixed<ch::CursorMsg>();
  if (cm.scanout.get() >= c.num_scanouts)
    return make_error(Errc::kProtocol, "CURSOR for a scanout the device does not have");
  Cursor& cur = c.cursors[cm.scanout.get()];
  if (cm.image.get()) {
    // The image's memfd came with the packet (parse() checked there is exactly one): sealed against
    // shrinking, so that reading it can never fault, and large enough for 64x64 ARGB8888.
    const int fd = m.fds[0].get();
    constexpr uint64_t kImageBytes = uint64_t(kCursorSize) * kCursorSize * 4;
    struct stat sb{};
    const int seals = ::fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
      return make_error(Errc::kProtocol, "CURSOR image file is not sealed against shrinking");
    if (::fstat(fd, &sb) != 0 || uint64_t(sb.st_size) < kImageBytes)
      return make_error(Errc::kProtocol, "CURSOR image smaller than 64x64 ARGB8888");
    if (c.usage->mappings + c.partial_pieces + 2 > c.usage->quota)
      return make_error(Errc::kLimit, "cursor image above the VM's memory-mapping quota");
    const buffers::FilePiece piece{fd, 0, kImageBytes};
    auto map = buffers::map_scattered({&piece, 1}, buffers::Access::kRead);
    if (!map.ok()) return make_error(Errc::kProtocol, "CURSOR image cannot be mapped");
    auto b = std::make_shared<MappedBuffer>();
    b->map = std::move(*map);
    b->forget = [this](const void* base) { forget_memory(base); };
    b->usage = c.usage;
    b->mappings = 2;
    c.usage->mappings += b->mappings;
    cur.image = std::move(b);
  }
  cur.visible = cm.visible.get() != 0;
  // Positions are the guest's signed 32-bit values (a cursor may hang over the scanout's left edge).
  cur.x = int32_t(cm.x.get());
  cur.y = int32_t(cm.y.get());
  cur.hot_x = cm.hot_x.get();
  cur.hot_y = cm.hot_y.get();
  return {};
}

Status Compositor::Impl::on_frame(uint64_t conn_id, Conn& c, const ch::Message& m) {
  const auto f = m.fixed<ch::FrameMsg>();
  const uint32_t scanout = f.scanout.get();
  const uint64_t seq = f.seq.get();
  ++c.stats.frames;
  c.stats.bytes_copied += f.bytes_copied.get();
  if (f.flags.get() & ch::kFrameBlob) ++c.stats.blob_frames;
  const uint64_t acquire = f.acquire_point.get();  // nonzero iff kFrameAcquire (parse() checked)
  ScanoutTimeline* st = nullptr;
  if (acquire) {
    auto t = c.timelines.find(f.scanout.get());
    if (t == c.timelines.end())
      return make_error(Errc::kProtocol, "FRAME with an acquire point on a scanout without TIMELINE");
    st = &t->second;
    ++c.stats.fenced_frames;
  }
  auto hand_back = [&] {  // a frame never shown: released at once
    if (st) retire(*st, acquire);
    send_release(conn_id, scanout, seq);
  };
  auto refuse = [&](const char* why) -> Status {
    ++c.stats.frames_refused;
    CANOPY_WARN_RL("canopy-display: %s: frame %llu of scanout %u refused: %s", c.stats.vm.c_str(),
                   (unsigned long long)seq, scanout, why);
    hand_back();
    return {};
  };
  if (scanout >= c.num_scanouts) return make_error(Errc::kProtocol, "FRAME for a scanout the device does not have");
  auto bit = c.buffers.find(ch::key_pair(f.buffer));
  if (bit == c.buffers.end()) return make_error(Errc::kProtocol, "FRAME shows an unknown buffer");
  if (!drawable_format(f.fourcc.get())) return refuse("format not drawable");
  const Format fmt = Format(f.fourcc.get());
  const uint32_t w = f.width.get(), h = f.height.get(), stride = f.stride.get();
  // The frame must lie inside its buffer: offset + stride * (h - 1) + w * bpp <= size.
  if (w == 0 || h == 0) return refuse("frame has no pixels");
  const auto row = checked_mul<uint64_t>(w, bytes_per_pixel(fmt));
  const auto last = checked_mul<uint64_t>(stride, h - 1);
  const auto end = last && row ? checked_add<uint64_t>(*last, *row) : std::nullopt;
  const auto total = end ? checked_add<uint64_t>(*end, f.offset.get()) : std::nullopt;
  if (!row || stride < *row || !total || *total > bit->second->map.size())
    return refuse("frame does not fit its buffer");
  std::vector<std::pair<size_t, size_t>> targets;
  for (size_t o = 0; o < layout.outputs.size(); ++o)
    for (size_t l = 0; l < layout.outputs[o].layers.size(); ++l) {
      const auto& ls = layout.outputs[o].layers[l];
      if (ls.vm == c.stats.vm && ls.scanout == scanout) targets.emplace_back(o, l);
    }
  if (targets.empty()) {
    hand_back();
    return {};
  }
  const uint64_t id = next_frame++;
  FrameRec& r = frames[id];
  r.conn = conn_id;
  r.scanout = scanout;
  r.seq = seq;
  r.acquire = acquire;
  r.targets = targets;
  r.buf = bit->second;
  r.image =
      Image{reinterpret_cast<const uint8_t*>(r.buf->map.data()) + f.offset.get(), w, h, stride, fmt, r.buf->mapping()};
  r.refs = int(targets.size());
  const TimePoint now = clock.now();
  trace_event("frame", now, now, 100, seq);
  // The guest's present time from the device (CLOCK_MONOTONIC, the real clock's base) starts the
  // frame's latency when it is plausible: not ahead of now, at most 10 s back.
  std::optional<TimePoint> presented;
  // (Compared as unsigned nanoseconds: any 64-bit value may come from the device.)
  const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
  if (const uint64_t pns = f.present_ns.get();
      pns && now_ns > 0 && pns <= uint64_t(now_ns) && uint64_t(now_ns) - pns < 10'000'000'000ull)
    presented = TimePoint{std::chrono::nanoseconds(int64_t(pns))};
  // Frames without an acquire point (2D and blob scanouts) are complete when they arrive.
  bool signalled = true;
  if (st) {
    st->held[acquire]++;
    signalled = st->tl.signalled() >= acquire;
    if (!signalled) st->waiting.emplace(acquire, id);
  }
  for (auto [o, l] : targets) outputs[o].sched->submit(l, id, signalled, presented);
  for (auto [o, l] : targets) take_releases(outputs[o]);
  return {};
}

void Compositor::Impl::on_conn_readable(uint64_t id) {
  for (size_t n = 0; n < kMaxPacketsPerTurn; ++n) {
    auto it = conns.find(id);
    if (it == conns.end() || !it->second.sock.valid()) return;
    Conn& c = it->second;
    auto msg = ch::receive(c.sock.get(), ch::Direction::kToCompositor, 0);
    if (!msg.ok()) {
      if (msg.error().code == Errc::kTimeout) return;
      drop(id, msg.error().code == Errc::kClosed ? "closed by the device" : msg.error().what);
      return;
    }
    Status st;
    if (!c.hello && msg->type != ch::Type::kHello) st = make_error(Errc::kProtocol, "first packet is not HELLO");
    else switch (msg->type) {
        case ch::Type::kHello: st = on_hello(id, c, *msg); break;
        case ch::Type::kBuffer: st = on_buffer(c, *msg); break;
        case ch::Type::kBufferGone: st = on_buffer_gone(c, *msg); break;
        case ch::Type::kFrame: st = on_frame(id, c, *msg); break;
        case ch::Type::kTimeline: st = on_timeline(id, c, *msg); break;
        case ch::Type::kScanout:
          if (msg->fixed<ch::ScanoutMsg>().scanout.get() >= c.num_scanouts)
            st = make_error(Errc::kProtocol, "SCANOUT for a scanout the device does not have");
          break;
        case ch::Type::kCursor: st = on_cursor(c, *msg); break;
        default: st = make_error(Errc::kProtocol, "unexpected packet type"); break;
      }
    if (!st.ok()) {
      drop(id, st.error().what);
      return;
    }
  }
}

}  // namespace canopy::display
