// The KMS output: libdrm atomic commits, planes chosen by libliftoff.
//
// One KmsCard per DRM device (one file descriptor, DRM master, one libliftoff device with every plane
// registered); each output takes the next connected connector (by connector id) and a free CRTC that
// can drive it, in the mode of the output's size (else the connector's preferred mode). Composed
// canvases go to two dumb buffers in turn, shown by one libliftoff layer, which libliftoff puts on a
// plane the CRTC can scan out (the primary, here). (Not libliftoff's "composition layer": that one is
// only placed when other layers need composing, and the canvas is all there is to show.) The first commit sets the mode
// (ALLOW_MODESET, blocking); later ones are non-blocking page flips with a flip event. present() never writes a buffer
// the display still scans out: while a flip is pending it waits for its event for at most one refresh
// period and otherwise skips that composition (counted).
//
// Plane offload (present_planes): each VM frame becomes a DRM framebuffer over its own memory (the
// udmabuf canopy-gpu sent of the frame's pages, or one made here when canopy-display runs unconfined;
// confined it may not open /dev/udmabuf), imported with drmPrimeFDToHandle, cached per buffer until the
// compositor forgets it), one libliftoff layer per composition layer (position, crop, zpos, alpha,
// rotation), the canvas layer disabled. libliftoff tests the assignment with TEST_ONLY commits; if any
// layer would need composition, nothing goes on planes and the compositor composes as usual (all or
// nothing: a partial offload would need a transparent composition buffer between planes). A frame on a
// plane is held (not released to its VM) until the flip after the one that replaced it has completed.
// The hardware here (virtio-gpu: one primary and one cursor plane per CRTC, no import of foreign
// dma-bufs in Linux 6.12) refuses it, so only that refusal is tested (docs/display.md).
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xf86drm.h>
#include <xf86drmMode.h>
extern "C" {  // libliftoff 0.3's header has no C++ guards
#include <libliftoff.h>
}

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "canopy/base/log.h"
#include "canopy/base/unique_fd.h"
#include "canopy/buffers/udmabuf.h"
#include "canopy/display/sink.h"

namespace canopy::display {

struct KmsCard {
  UniqueFd fd;
  std::string path;
  std::vector<uint32_t> connectors;  // connected, by id
  size_t next_connector = 0;
  uint32_t crtcs_used = 0;             // bit i: resources->crtcs[i]
  std::vector<uint32_t> planes_taken;  // planes already given to an output's libliftoff device
  // Page flips per CRTC, updated from the shared descriptor's events whichever output reads them.
  struct Flips {
    bool pending = false;
    uint64_t completed = 0;
  };
  std::vector<std::pair<uint32_t, Flips*>> flips;
};

namespace {

uint32_t prop_id(int fd, uint32_t obj, uint32_t type, const char* name) {
  drmModeObjectProperties* props = drmModeObjectGetProperties(fd, obj, type);
  if (!props) return 0;
  uint32_t id = 0;
  for (uint32_t i = 0; i < props->count_props && !id; ++i) {
    drmModePropertyRes* p = drmModeGetProperty(fd, props->props[i]);
    if (p && std::strcmp(p->name, name) == 0) id = p->prop_id;
    drmModeFreeProperty(p);
  }
  drmModeFreeObjectProperties(props);
  return id;
}

struct DumbBuffer {
  uint32_t handle = 0, fb = 0, pitch = 0;
  uint64_t size = 0;
  uint8_t* map = nullptr;
};

class KmsSink final : public OutputSink {
 public:
  KmsSink(std::shared_ptr<KmsCard> card, std::string name) : card_(std::move(card)), name_(std::move(name)) {}
  ~KmsSink() override {
    const int fd = card_->fd.get();
    wait_flip(200);
    for (liftoff_layer* l : vm_layers_) liftoff_layer_destroy(l);
    for (auto& [key, f] : fbs_) drop_fb(f);
    if (layer_) liftoff_layer_destroy(layer_);
    if (out_) liftoff_output_destroy(out_);
    if (lo_) liftoff_device_destroy(lo_);
    std::erase_if(card_->flips, [&](const auto& e) { return e.first == crtc_id_; });
    for (auto& b : bufs_) {
      if (b.map) ::munmap(b.map, b.size);
      if (b.fb) drmModeRmFB(fd, b.fb);
      if (b.handle) {
        drm_mode_destroy_dumb d{};
        d.handle = b.handle;
        drmIoctl(fd, DRM_IOCTL_MODE_DESTROY_DUMB, &d);
      }
    }
    if (mode_blob_) drmModeDestroyPropertyBlob(fd, mode_blob_);
    if (crtc_bit_) card_->crtcs_used &= ~crtc_bit_;
    CANOPY_INFO(
        "kms: output %s: %llu commits, %llu flips completed, %llu compositions skipped while a flip was pending; "
        "%llu on planes, %llu refused planes",
        name_.c_str(), (unsigned long long)commits_, (unsigned long long)flips_.completed, (unsigned long long)skipped_,
        (unsigned long long)on_planes_, (unsigned long long)planes_refused_);
  }

  bool offers_planes() const override { return true; }

  Result<bool> present_planes(std::span<const PlaneLayer> layers) override {
    if (layers.empty() || !mode_set_) return false;  // the first commit sets the mode with the canvas
    std::vector<uint32_t> fbs;
    for (const auto& l : layers) {
      const uint32_t fb = framebuffer(l);
      if (!fb) {
        ++planes_refused_;
        return false;
      }
      fbs.push_back(fb);
    }
    if (flips_.pending && !wait_flip(period_ms_)) {
      ++skipped_;
      return true;  // as present(): the display still shows the previous buffers
    }
    while (vm_layers_.size() < layers.size()) {
      liftoff_layer* l = liftoff_layer_create(out_);
      if (!l) return false;
      vm_layers_.push_back(l);
    }
    for (size_t i = 0; i < vm_layers_.size(); ++i) {
      liftoff_layer* l = vm_layers_[i];
      if (i >= layers.size()) {
        liftoff_layer_set_property(l, "FB_ID", 0);
        continue;
      }
      const LayerSpec& spec = *layers[i].layer;
      const Rect src = resolved_src(spec, layers[i].image.width, layers[i].image.height);
      liftoff_layer_set_property(l, "FB_ID", fbs[i]);
      liftoff_layer_set_property(l, "zpos", i);
      liftoff_layer_set_property(l, "CRTC_X", uint64_t(int64_t(spec.dst.x)));
      liftoff_layer_set_property(l, "CRTC_Y", uint64_t(int64_t(spec.dst.y)));
      liftoff_layer_set_property(l, "CRTC_W", spec.dst.width);
      liftoff_layer_set_property(l, "CRTC_H", spec.dst.height);
      liftoff_layer_set_property(l, "SRC_X", uint64_t(src.x) << 16);
      liftoff_layer_set_property(l, "SRC_Y", uint64_t(src.y) << 16);
      liftoff_layer_set_property(l, "SRC_W", uint64_t(src.width) << 16);
      liftoff_layer_set_property(l, "SRC_H", uint64_t(src.height) << 16);
      // Only what differs from a plane's defaults, so planes without these properties still qualify.
      if (spec.alpha < 1.0)
        liftoff_layer_set_property(l, "alpha", uint64_t(std::lround(std::clamp(spec.alpha, 0.0, 1.0) * 0xffff)));
      else liftoff_layer_unset_property(l, "alpha");
      // KMS rotates counter-clockwise, the layout clockwise.
      if (spec.rotation != Rotation::k0)
        liftoff_layer_set_property(l, "rotation",
                                   spec.rotation == Rotation::k90    ? DRM_MODE_ROTATE_270
                                   : spec.rotation == Rotation::k180 ? DRM_MODE_ROTATE_180
                                                                     : DRM_MODE_ROTATE_90);
      else liftoff_layer_unset_property(l, "rotation");
    }
    liftoff_layer_set_property(layer_, "FB_ID", 0);  // the canvas is not shown
    std::vector<std::shared_ptr<void>> holds;
    for (const auto& l : layers) holds.push_back(l.hold);
    const int r = commit(true);
    if (r == 1) return true;  // skipped (EBUSY)
    if (r != 0) {
      ++planes_refused_;
      for (liftoff_layer* l : vm_layers_) liftoff_layer_set_property(l, "FB_ID", 0);
      return false;
    }
    ++on_planes_;
    shown(std::move(holds));
    return true;
  }

  void forget_memory(const void* base) override {
    for (auto it = fbs_.begin(); it != fbs_.end();) {
      if (it->first.base == base) {
        drop_fb(it->second);
        it = fbs_.erase(it);
      } else {
        ++it;
      }
    }
  }

  const char* name() const override { return "kms"; }

  Status init(uint32_t width, uint32_t height) {
    const int fd = card_->fd.get();
    if (card_->next_connector >= card_->connectors.size())
      return make_error(Errc::kUnsupported, "kms: no connected connector left for this output");
    conn_id_ = card_->connectors[card_->next_connector++];
    drmModeRes* res = drmModeGetResources(fd);
    drmModeConnector* conn = drmModeGetConnector(fd, conn_id_);
    Status st = pick(res, conn, width, height);
    drmModeFreeConnector(conn);
    drmModeFreeResources(res);
    CANOPY_TRY(st);
    if (drmModeCreatePropertyBlob(fd, &mode_, sizeof mode_, &mode_blob_) != 0)
      return make_error(Errc::kIo, "kms: mode blob", errno);
    conn_crtc_prop_ = prop_id(fd, conn_id_, DRM_MODE_OBJECT_CONNECTOR, "CRTC_ID");
    crtc_mode_prop_ = prop_id(fd, crtc_id_, DRM_MODE_OBJECT_CRTC, "MODE_ID");
    crtc_active_prop_ = prop_id(fd, crtc_id_, DRM_MODE_OBJECT_CRTC, "ACTIVE");
    if (!conn_crtc_prop_ || !crtc_mode_prop_ || !crtc_active_prop_)
      return make_error(Errc::kUnsupported, "kms: connector or CRTC lacks atomic properties");
    for (auto& b : bufs_) CANOPY_TRY(make_buffer(b));
    // This output's own libliftoff device, with the planes that can show its CRTC and no other output
    // has: a commit then only touches this output's planes (libliftoff disables every free plane it
    // manages in each commit, and a plane of another CRTC would pull that CRTC into the commit).
    lo_ = liftoff_device_create(fd);
    if (!lo_) return make_error(Errc::kIo, "kms: libliftoff device");
    CANOPY_TRY(register_planes());
    out_ = liftoff_output_create(lo_, crtc_id_);
    if (!out_) return make_error(Errc::kIo, "kms: libliftoff output");
    layer_ = liftoff_layer_create(out_);
    if (!layer_) return make_error(Errc::kIo, "kms: libliftoff layer");
    liftoff_layer_set_property(layer_, "CRTC_X", 0);
    liftoff_layer_set_property(layer_, "CRTC_Y", 0);
    liftoff_layer_set_property(layer_, "CRTC_W", mode_.hdisplay);
    liftoff_layer_set_property(layer_, "CRTC_H", mode_.vdisplay);
    liftoff_layer_set_property(layer_, "SRC_X", 0);
    liftoff_layer_set_property(layer_, "SRC_Y", 0);
    liftoff_layer_set_property(layer_, "SRC_W", uint64_t(mode_.hdisplay) << 16);
    liftoff_layer_set_property(layer_, "SRC_H", uint64_t(mode_.vdisplay) << 16);
    period_ms_ = mode_.vrefresh ? int(1000 / mode_.vrefresh) + 1 : 17;
    card_->flips.emplace_back(crtc_id_, &flips_);
    CANOPY_INFO("kms: output %s on %s connector %u, CRTC %u, %zu plane(s), mode %s (%ux%u@%u); canvas %ux%u",
                name_.c_str(), card_->path.c_str(), conn_id_, crtc_id_, planes_, mode_.name, mode_.hdisplay,
                mode_.vdisplay, mode_.vrefresh, width, height);
    return {};
  }

  Status present(const Canvas& c) override {
    if (flips_.pending && !wait_flip(period_ms_)) {
      ++skipped_;
      return {};  // the display still shows the previous buffer; nothing is torn
    }
    DumbBuffer& b = bufs_[back_];
    // The canvas into the back buffer, top-left aligned, clipped to the mode; X bytes set to 0xff.
    const uint32_t w = std::min<uint32_t>(c.width, mode_.hdisplay), h = std::min<uint32_t>(c.height, mode_.vdisplay);
    for (uint32_t y = 0; y < h; ++y) {
      const auto* src = reinterpret_cast<const uint32_t*>(c.data + size_t(y) * c.stride);
      auto* dst = reinterpret_cast<uint32_t*>(b.map + size_t(y) * b.pitch);
      for (uint32_t x = 0; x < w; ++x) dst[x] = src[x] | 0xff000000u;
    }
    liftoff_layer_set_property(layer_, "FB_ID", b.fb);
    for (liftoff_layer* l : vm_layers_) liftoff_layer_set_property(l, "FB_ID", 0);
    const int r = commit(false);
    if (r == 1) return {};
    if (r != 0) {
      CANOPY_WARN_RL("kms: output %s: commit failed: %s", name_.c_str(), std::strerror(-r));
      return make_error(Errc::kIo, "kms: atomic commit failed", -r);
    }
    shown({});
    back_ ^= 1;
    return {};
  }

  bool poll() override {
    if (flips_.pending) wait_flip(0);
    return true;
  }

 private:
  // One atomic commit of the libliftoff layers as set: 0 committed, 1 skipped (EBUSY: the CRTC still
  // has a flip queued; show this next time), else -errno. With `planes`, every VM layer must be on a
  // plane (-ENOSPC otherwise); without, the canvas layer must be.
  int commit(bool planes) {
    drmModeAtomicReq* req = drmModeAtomicAlloc();
    if (!req) return -ENOMEM;
    uint32_t flags = DRM_MODE_ATOMIC_NONBLOCK | DRM_MODE_PAGE_FLIP_EVENT;
    if (!mode_set_) {
      flags = DRM_MODE_ATOMIC_ALLOW_MODESET;
      drmModeAtomicAddProperty(req, conn_id_, conn_crtc_prop_, crtc_id_);
      drmModeAtomicAddProperty(req, crtc_id_, crtc_mode_prop_, mode_blob_);
      drmModeAtomicAddProperty(req, crtc_id_, crtc_active_prop_, 1);
    }
    int r = liftoff_output_apply(out_, req, flags);
    if (r == 0) {
      if (planes) {
        for (liftoff_layer* l : vm_layers_)
          if (liftoff_layer_needs_composition(l)) r = -ENOSPC;  // (disabled layers need none)
      } else if (liftoff_layer_needs_composition(layer_)) {
        r = -ENOSPC;  // no plane could take the canvas
      }
    }
    if (r == 0 && drmModeAtomicCommit(card_->fd.get(), req, flags, card_.get()) != 0) r = -errno;
    drmModeAtomicFree(req);
    if (r == -EBUSY) {
      ++skipped_;
      return 1;
    }
    if (r != 0) return r;
    ++commits_;
    if (mode_set_) flips_.pending = true;
    mode_set_ = true;
    return 0;
  }

  // A commit went out showing what `holds` keep: the previous flip has completed (present waits for
  // it), so what was on screen before it is no longer read.
  void shown(std::vector<std::shared_ptr<void>> holds) {
    holds_[0] = std::move(holds_[1]);
    holds_[1] = std::move(holds);
  }

  struct FbKey {
    const void* base;
    uint64_t offset;
    uint32_t width, height, stride, fourcc;
    bool operator<(const FbKey& o) const {
      return std::tie(base, offset, width, height, stride, fourcc) <
             std::tie(o.base, o.offset, o.width, o.height, o.stride, o.fourcc);
    }
  };
  struct Fb {
    uint32_t fb = 0, handle = 0;  // fb 0: the device refused this buffer (not tried again)
  };

  void drop_fb(const Fb& f) {
    if (f.fb) drmModeRmFB(card_->fd.get(), f.fb);
    if (f.handle) drmCloseBufferHandle(card_->fd.get(), f.handle);
  }

  // The framebuffer over a layer's own memory; 0 when the device cannot scan it out.
  uint32_t framebuffer(const PlaneLayer& l) {
    const auto* base = static_cast<const uint8_t*>(l.buffer_base);
    const FbKey key{l.buffer_base,  uint64_t(l.image.data - base), l.image.width, l.image.height,
                    l.image.stride, uint32_t(l.image.format)};
    if (auto it = fbs_.find(key); it != fbs_.end()) return it->second.fb;
    Fb& f = fbs_[key];
    auto dmabuf = buffers::dmabuf_of(l.pieces);
    if (!dmabuf.ok()) {
      CANOPY_WARN_RL("kms: output %s: a frame cannot go on a plane: %s", name_.c_str(), dmabuf.error().what);
      return 0;
    }
    if (drmPrimeFDToHandle(card_->fd.get(), dmabuf->get(), &f.handle) != 0) {
      f.handle = 0;
      CANOPY_WARN_RL("kms: output %s: %s cannot import guest memory (dma-buf): %s; composing instead", name_.c_str(),
                     card_->path.c_str(), std::strerror(errno));
      return 0;
    }
    const uint32_t handles[4] = {f.handle}, pitches[4] = {l.image.stride}, offsets[4] = {uint32_t(key.offset)};
    if (key.offset > UINT32_MAX || drmModeAddFB2(card_->fd.get(), l.image.width, l.image.height, key.fourcc, handles,
                                                 pitches, offsets, &f.fb, 0) != 0) {
      f.fb = 0;
      CANOPY_WARN_RL("kms: output %s: no framebuffer over a frame's memory: %s; composing instead", name_.c_str(),
                     std::strerror(errno));
    }
    return f.fb;
  }

  Status pick(drmModeRes* res, drmModeConnector* conn, uint32_t width, uint32_t height) {
    if (!res || !conn || conn->count_modes == 0) return make_error(Errc::kIo, "kms: connector has no modes");
    const drmModeModeInfo* chosen = nullptr;
    for (int i = 0; i < conn->count_modes && !chosen; ++i)
      if (conn->modes[i].hdisplay == width && conn->modes[i].vdisplay == height) chosen = &conn->modes[i];
    for (int i = 0; i < conn->count_modes && !chosen; ++i)
      if (conn->modes[i].type & DRM_MODE_TYPE_PREFERRED) chosen = &conn->modes[i];
    mode_ = chosen ? *chosen : conn->modes[0];
    // A CRTC one of the connector's encoders can drive and no other output has.
    for (int e = 0; e < conn->count_encoders && !crtc_id_; ++e) {
      drmModeEncoder* enc = drmModeGetEncoder(card_->fd.get(), conn->encoders[e]);
      if (!enc) continue;
      for (int i = 0; i < res->count_crtcs && !crtc_id_; ++i) {
        const uint32_t bit = 1u << i;
        if ((enc->possible_crtcs & bit) && !(card_->crtcs_used & bit)) {
          crtc_id_ = res->crtcs[i];
          crtc_bit_ = bit;
          card_->crtcs_used |= bit;
        }
      }
      drmModeFreeEncoder(enc);
    }
    if (!crtc_id_) return make_error(Errc::kUnsupported, "kms: no free CRTC for the connector");
    return {};
  }

  Status register_planes() {
    const int fd = card_->fd.get();
    drmModePlaneRes* pr = drmModeGetPlaneResources(fd);
    if (!pr) return make_error(Errc::kIo, "kms: plane resources", errno);
    size_t n = 0;
    for (uint32_t i = 0; i < pr->count_planes; ++i) {
      const uint32_t id = pr->planes[i];
      drmModePlane* p = drmModeGetPlane(fd, id);
      const bool ours =
          p && (p->possible_crtcs & crtc_bit_) &&
          std::find(card_->planes_taken.begin(), card_->planes_taken.end(), id) == card_->planes_taken.end();
      drmModeFreePlane(p);
      if (!ours || !liftoff_plane_create(lo_, id)) continue;
      card_->planes_taken.push_back(id);
      ++n;
    }
    drmModeFreePlaneResources(pr);
    if (n == 0) return make_error(Errc::kUnsupported, "kms: no plane left for the output's CRTC");
    planes_ = n;
    return {};
  }

  Status make_buffer(DumbBuffer& b) {
    const int fd = card_->fd.get();
    drm_mode_create_dumb cd{};
    cd.width = mode_.hdisplay;
    cd.height = mode_.vdisplay;
    cd.bpp = 32;
    if (drmIoctl(fd, DRM_IOCTL_MODE_CREATE_DUMB, &cd) != 0)
      return make_error(Errc::kIo, "kms: create dumb buffer", errno);
    b.handle = cd.handle;
    b.pitch = cd.pitch;
    b.size = cd.size;
    const uint32_t handles[4] = {b.handle}, pitches[4] = {b.pitch}, offsets[4] = {0};
    if (drmModeAddFB2(fd, mode_.hdisplay, mode_.vdisplay, uint32_t(buffers::Format::kXRGB8888), handles, pitches,
                      offsets, &b.fb, 0) != 0)
      return make_error(Errc::kIo, "kms: add framebuffer", errno);
    drm_mode_map_dumb md{};
    md.handle = b.handle;
    if (drmIoctl(fd, DRM_IOCTL_MODE_MAP_DUMB, &md) != 0) return make_error(Errc::kIo, "kms: map dumb buffer", errno);
    void* p = ::mmap(nullptr, b.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(md.offset));
    if (p == MAP_FAILED) return make_error(Errc::kIo, "kms: mmap dumb buffer", errno);
    b.map = static_cast<uint8_t*>(p);
    std::memset(b.map, 0, b.size);
    return {};
  }

  // Takes flip events (for every output of the card: the descriptor is shared); true once this
  // output's flip has completed.
  bool wait_flip(int timeout_ms) {
    pollfd p{card_->fd.get(), POLLIN, 0};
    while (flips_.pending) {
      const int n = ::poll(&p, 1, timeout_ms);
      if (n <= 0) break;
      drmEventContext ev{};
      ev.version = 3;
      // Events are for CRTCs: the descriptor is shared, so this may complete another output's flip.
      ev.page_flip_handler2 = [](int, unsigned, unsigned, unsigned, unsigned crtc, void* data) {
        auto* card = static_cast<KmsCard*>(data);
        for (auto& [id, f] : card->flips)
          if (id == crtc) {
            f->pending = false;
            ++f->completed;
          }
      };
      drmHandleEvent(card_->fd.get(), &ev);
      if (timeout_ms == 0) break;
    }
    return !flips_.pending;
  }

  std::shared_ptr<KmsCard> card_;
  std::string name_;
  uint32_t conn_id_ = 0, crtc_id_ = 0, crtc_bit_ = 0;
  drmModeModeInfo mode_{};
  uint32_t mode_blob_ = 0, conn_crtc_prop_ = 0, crtc_mode_prop_ = 0, crtc_active_prop_ = 0;
  DumbBuffer bufs_[2];
  int back_ = 0;
  liftoff_device* lo_ = nullptr;
  size_t planes_ = 0;
  liftoff_output* out_ = nullptr;
  liftoff_layer* layer_ = nullptr;         // the canvas
  std::vector<liftoff_layer*> vm_layers_;  // frames on planes (FB_ID 0: unused)
  std::map<FbKey, Fb> fbs_;
  std::vector<std::shared_ptr<void>> holds_[2];  // on screen, and in the last commit
  uint64_t on_planes_ = 0, planes_refused_ = 0;
  bool mode_set_ = false;
  KmsCard::Flips flips_;
  int period_ms_ = 17;
  uint64_t commits_ = 0, skipped_ = 0;
};

}  // namespace

Result<std::shared_ptr<KmsCard>> open_kms_card(const std::string& path) {
  std::vector<std::string> candidates;
  if (!path.empty()) candidates.push_back(path);
  else
    for (int i = 0; i < 8; ++i) candidates.push_back("/dev/dri/card" + std::to_string(i));
  for (const auto& p : candidates) {
    UniqueFd fd(::open(p.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd.valid()) continue;
    if (drmSetClientCap(fd.get(), DRM_CLIENT_CAP_UNIVERSAL_PLANES, 1) != 0 ||
        drmSetClientCap(fd.get(), DRM_CLIENT_CAP_ATOMIC, 1) != 0) {
      CANOPY_INFO("kms: %s has no atomic modesetting", p.c_str());
      continue;
    }
    drmModeRes* res = drmModeGetResources(fd.get());
    if (!res) continue;
    auto card = std::make_shared<KmsCard>();
    for (int i = 0; i < res->count_connectors; ++i) {
      drmModeConnector* c = drmModeGetConnector(fd.get(), res->connectors[i]);
      if (c && c->connection == DRM_MODE_CONNECTED && c->count_modes > 0) card->connectors.push_back(c->connector_id);
      drmModeFreeConnector(c);
    }
    drmModeFreeResources(res);
    if (card->connectors.empty()) continue;
    std::sort(card->connectors.begin(), card->connectors.end());
    card->fd = std::move(fd);
    card->path = p;
    return card;
  }
  return make_error(Errc::kUnsupported, "kms: no DRM device with atomic modesetting and a connected connector");
}

Result<std::unique_ptr<OutputSink>> make_kms_sink(std::shared_ptr<KmsCard> card, const std::string& name,
                                                  uint32_t width, uint32_t height) {
  auto s = std::make_unique<KmsSink>(std::move(card), name);
  CANOPY_TRY(s->init(width, height));
  return std::unique_ptr<OutputSink>(std::move(s));
}

}  // namespace canopy::display
