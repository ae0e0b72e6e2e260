// GpuDevice's guest memory behind resources: backing entries, file pieces, 2D transfers, and the
// renderer's view of 3D backings (device_internal.h).
#include "device_internal.h"

namespace canopy::gpu {

using namespace detail;  // NOLINT(google-build-using-namespace): the device's own helpers
using proto::Resp;

uint64_t GpuDevice::take_guest_copies() {
  if (!mem_) return 0;
  const uint64_t now = mem_->bytes_copied(), n = now - copy_mark_;
  copy_mark_ = now;
  stats_.bytes_copied += n;
  return n;
}

Resp GpuDevice::set_backing(Resource& r, std::span<const uint8_t> tail, uint32_t count) {
  std::vector<proto::MemEntry> ents;
  DecodeError err{};
  if (!decode_entries(tail, count, options_.caps.max_backing_entries, ents, &err)) return err.resp;
  if (count == 0) return Resp::kErrInvalidParameter;
  if (!mem_) return Resp::kErrUnspec;
  std::vector<transport::Segment> segs;
  segs.reserve(count);
  uint64_t total = 0;
  for (const auto& e : ents) {
    const uint64_t addr = e.addr, len = e.length;
    if (len == 0 || !checked_add(addr, len)) return Resp::kErrInvalidParameter;
    if (!mem_->contains(addr, len)) return Resp::kErrInvalidParameter;
    total += len;  // <= 16384 * 4 GiB: no overflow
    segs.push_back({addr, uint32_t(len)});
  }
  auto sorted = segs;
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.gpa < b.gpa; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i - 1].gpa + sorted[i - 1].len > sorted[i].gpa) return Resp::kErrInvalidParameter;  // overlap
  if (stats_.backing_bytes + total > options_.caps.max_backing_bytes) return Resp::kErrOutOfMemory;
  if (stats_.backing_entries + segs.size() > options_.caps.max_backing_entries_total) return Resp::kErrOutOfMemory;
  r.backing = std::move(segs);
  r.backing_end.resize(r.backing.size());
  uint64_t end = 0;
  for (size_t i = 0; i < r.backing.size(); ++i) r.backing_end[i] = end += r.backing[i].len;
  r.backing_bytes = total;
  stats_.backing_bytes += total;
  stats_.backing_entries += r.backing.size();
  backing_changed(r);
  r.pieces.reset();
  return Resp::kOkNodata;
}

Status GpuDevice::make_pieces(Resource& r) {
  std::vector<std::pair<int, SharedFd>> dups;
  std::vector<FramePiece> pieces;
  for (const auto& s : r.backing) {
    CANOPY_ASSIGN_OR_RETURN(auto ranges, mem_->file_ranges(s.gpa, s.len));
    for (const auto& fr : ranges) {
      SharedFd fd;
      for (auto& [raw, sh] : dups)
        if (raw == fr.fd) fd = sh;
      if (!fd) {
        UniqueFd d(fcntl(fr.fd, F_DUPFD_CLOEXEC, 0));
        if (!d) return make_error(Errc::kIo, "gpu: dup guest memory fd", errno);
        fd = std::make_shared<const UniqueFd>(std::move(d));
        dups.emplace_back(fr.fd, fd);
      }
      if (!pieces.empty() && pieces.back().fd == fd && pieces.back().offset + pieces.back().length == fr.offset)
        pieces.back().length += fr.length;
      else pieces.push_back({fd, fr.offset, fr.length});
    }
  }
  r.pieces = std::make_shared<const std::vector<FramePiece>>(std::move(pieces));
  return {};
}

void GpuDevice::free_backing(Resource& r) {
  stats_.backing_bytes -= r.backing_bytes;
  stats_.backing_entries -= r.backing.size();
  r.backing.clear();
  r.backing_end.clear();
  r.backing_bytes = 0;
  r.pieces.reset();
  backing_changed(r);
}

void GpuDevice::backing_changed(Resource& r) {
  if (r.generation) output_->on_backing_gone(r.id, r.generation);
  r.generation = 0;
  r.view = std::make_shared<Frame::ViewCache>();
}

Resp GpuDevice::attach_backing(const Command& c) {
  const auto ab = c.as<proto::ResourceAttachBacking>();
  auto it = resources_.find(ab.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (r.blob) return Resp::kErrInvalidParameter;
  if (!r.backing.empty()) return Resp::kErrUnspec;  // already attached (QEMU answers the same)
  const Resp b = set_backing(r, c.tail<proto::ResourceAttachBacking>(), ab.nr_entries);
  if (b != Resp::kOkNodata) return b;
  if (r.is3d) return attach_backing_3d(r);
  if (options_.alias_2d) (void)make_pieces(r);  // alias only where it works; copies otherwise
  return Resp::kOkNodata;
}

Resp GpuDevice::detach_backing(const Command& c) {
  const auto db = c.as<proto::ResourceDetachBacking>();
  auto it = resources_.find(db.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  if (r.blob) return Resp::kErrInvalidParameter;
  if (r.backing.empty()) return Resp::kErrUnspec;
  if (r.is3d) renderer_->detach_backing_3d(r.id);
  free_backing(r);
  return Resp::kOkNodata;
}

bool GpuDevice::aliased(const Resource& r) const {
  return options_.alias_2d && r.pieces && r.backing_bytes >= uint64_t(r.width) * proto::kBytesPerPixel * r.height;
}

bool GpuDevice::read_backing(const Resource& r, uint64_t offset, uint8_t* dst, uint64_t len) const {
  // The entry holding `offset`, then across entries. The caller checked offset + len <= backing_bytes.
  size_t e = size_t(std::upper_bound(r.backing_end.begin(), r.backing_end.end(), offset) - r.backing_end.begin());
  while (len > 0) {
    if (e >= r.backing.size() || !mem_) return false;
    const uint64_t within = offset - (r.backing_end[e] - r.backing[e].len);
    const uint64_t n = std::min<uint64_t>(len, r.backing[e].len - within);
    if (!mem_->read(r.backing[e].gpa + within, dst, size_t(n)).ok()) return false;
    dst += n;
    offset += n;
    len -= n;
    ++e;
  }
  return true;
}

Resp GpuDevice::transfer_to_host_2d(const Command& c) {
  const auto t = c.as<proto::TransferToHost2d>();
  auto it = resources_.find(t.resource_id);
  if (it == resources_.end()) return Resp::kErrInvalidResourceId;
  Resource& r = *it->second;
  // A guest blob is its guest memory: there is no host copy to update, so a transfer has nothing to do.
  // Linux's virtio_gpu makes dumb buffers guest blobs when RESOURCE_BLOB is on (and 3D is off) and still
  // transfers them before each flush, as QEMU and crosvm accept.
  if (r.blob) return Resp::kOkNodata;
  if (r.is3d) return Resp::kErrInvalidParameter;  // TRANSFER_TO_HOST_3D for those
  if (r.backing.empty()) return Resp::kErrUnspec;
  if (!rect_inside(t.r, r.width, r.height)) return Resp::kErrInvalidParameter;
  const uint32_t w = t.r.width, h = t.r.height, x = t.r.x, y = t.r.y;
  if (w == 0 || h == 0) return Resp::kOkNodata;
  const uint64_t stride = uint64_t(r.width) * proto::kBytesPerPixel;
  const uint64_t row = uint64_t(w) * proto::kBytesPerPixel;
  // Source rows start at offset + stride * i in the backing (QEMU's and Linux's layout).
  auto last = checked_add<uint64_t>(t.offset.get(), stride * (h - 1) + row);
  if (!last || *last > r.backing_bytes) return Resp::kErrInvalidParameter;
  if (aliased(r)) return Resp::kOkNodata;
  uint8_t* host = reinterpret_cast<uint8_t*>(r.host.map.data());
  bool ok = true;
  for (uint32_t i = 0; i < h && ok; ++i) {
    uint8_t* dst = host + (uint64_t(y) + i) * r.host.stride + uint64_t(x) * proto::kBytesPerPixel;
    ok = read_backing(r, t.offset.get() + stride * i, dst, row);
  }
  // As GuestMemory counted them, not as computed; the rows copied before a failure count too.
  r.pending_copied += take_guest_copies();
  return ok ? Resp::kOkNodata : Resp::kErrUnspec;
}

bool GpuDevice::backing_ranges(const Resource& r, std::vector<transport::GuestMemory::HostRange>& out) const {
  out.clear();
  for (const auto& seg : r.backing) {
    auto ranges = mem_->host_ranges(seg.gpa, seg.len);
    if (!ranges.ok()) return false;
    out.insert(out.end(), ranges->begin(), ranges->end());
  }
  return true;
}

Resp GpuDevice::attach_backing_3d(Resource& r) {
  std::vector<transport::GuestMemory::HostRange> iov;
  if (!backing_ranges(r, iov)) {
    free_backing(r);
    return Resp::kErrInvalidParameter;
  }
  if (!renderer_->attach_backing_3d(r.id, iov).ok()) {
    free_backing(r);
    return Resp::kErrUnspec;
  }
  mem_layout_ = mem_->layout();
  return Resp::kOkNodata;
}

void GpuDevice::memory_changed() {
  if (mem_ && mem_->layout() != mem_layout_) refresh_3d_backings();
}

void GpuDevice::refresh_3d_backings() {
  mem_layout_ = mem_->layout();
  for (auto& [id, r] : resources_) {
    if (r->in_renderer) {
      // A guest blob: its own pieces (for scanouts) do not move; the renderer's view of it is renewed,
      // or the renderer's copy of the resource dropped where its memory is gone.
      renderer_->detach_backing_3d(id);
      std::vector<transport::GuestMemory::HostRange> iov;
      if (!backing_ranges(*r, iov) || !renderer_->attach_backing_3d(id, iov).ok()) {
        CANOPY_WARN_RL("gpu: guest blob %u: its memory moved out of reach; the renderer no longer has it", id);
        renderer_->destroy_3d(id);
        r->in_renderer = false;
      }
      continue;
    }
    if (!r->is3d || r->backing.empty()) continue;
    renderer_->detach_backing_3d(id);
    bool inside = true;
    for (const auto& s : r->backing) inside = inside && mem_->contains(s.gpa, s.len);
    if (!inside || attach_backing_3d(*r) != Resp::kOkNodata) {
      CANOPY_WARN_RL("gpu: resource %u: its backing is no longer guest memory; detached", id);
      free_backing(*r);
    }
  }
}

}  // namespace canopy::gpu
