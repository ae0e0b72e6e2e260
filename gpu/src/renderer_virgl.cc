// The virgl renderer (renderer_virgl.h): virglrenderer 0.10 behind the Renderer interface.
#include "canopy/gpu/renderer_virgl.h"

#include <fcntl.h>
#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "canopy/base/log.h"

#define VIRGL_RENDERER_UNSTABLE_APIS 1
extern "C" {
#include <virgl/virglrenderer.h>
}
#include <EGL/egl.h>
#include <EGL/eglext.h>

#ifndef EGL_CONTEXT_PRIORITY_LEVEL_IMG
#define EGL_CONTEXT_PRIORITY_LEVEL_IMG 0x3100
#define EGL_CONTEXT_PRIORITY_HIGH_IMG 0x3101
#define EGL_CONTEXT_PRIORITY_MEDIUM_IMG 0x3102
#define EGL_CONTEXT_PRIORITY_LOW_IMG 0x3103
#endif

// virglrenderer.h only declares struct virgl_box; its layout (src/virgl_hw.h) is virtio-gpu's box.
struct virgl_box {
  uint32_t x, y, z, w, h, d;
};

namespace canopy::gpu {
namespace {

// Capset ids (virtio 1.2 §5.7.6.7 / virglrenderer_hw.h).
constexpr uint32_t kCapsetVirgl = 1, kCapsetVirgl2 = 2, kCapsetVenus = 4;
constexpr uint32_t kCapsets[] = {kCapsetVirgl, kCapsetVirgl2, kCapsetVenus};

std::atomic<bool> g_alive{false};
std::string g_priority_granted = "default";

// virglrenderer's GL contexts made by canopy-gpu (VirglOptions::priority): an EGL display without a
// window system (Mesa's surfaceless platform, or the first EGL device: NVIDIA's), contexts without a
// config or surface, each asked for at the VM's priority level. virglrenderer shares each new context
// with the one current on the calling thread, as its own EGL code does.
class OwnEgl {
 public:
  static Result<std::unique_ptr<OwnEgl>> create(bool gles, VirglOptions::Priority p) {
    auto get_platform_display =
        reinterpret_cast<PFNEGLGETPLATFORMDISPLAYEXTPROC>(eglGetProcAddress("eglGetPlatformDisplayEXT"));
    if (!get_platform_display) return make_error(Errc::kUnsupported, "virgl: EGL has no eglGetPlatformDisplayEXT");
    std::unique_ptr<OwnEgl> e(new OwnEgl());
    e->gles_ = gles;
    EGLint major = 0, minor = 0;
    e->dpy_ = get_platform_display(EGL_PLATFORM_SURFACELESS_MESA, EGL_DEFAULT_DISPLAY, nullptr);
    if (e->dpy_ == EGL_NO_DISPLAY || !eglInitialize(e->dpy_, &major, &minor)) {
      auto query_devices = reinterpret_cast<PFNEGLQUERYDEVICESEXTPROC>(eglGetProcAddress("eglQueryDevicesEXT"));
      EGLDeviceEXT dev;
      EGLint n = 0;
      if (!query_devices || !query_devices(1, &dev, &n) || n < 1)
        return make_error(Errc::kIo, "virgl: no surfaceless EGL platform and no EGL device");
      e->dpy_ = get_platform_display(EGL_PLATFORM_DEVICE_EXT, dev, nullptr);
      if (e->dpy_ == EGL_NO_DISPLAY || !eglInitialize(e->dpy_, &major, &minor))
        return make_error(Errc::kIo, "virgl: cannot initialise an EGL display");
    }
    e->initialised_ = true;
    const char* ext = eglQueryString(e->dpy_, EGL_EXTENSIONS);
    auto has = [ext](const char* name) { return ext && std::strstr(ext, name) != nullptr; };
    if (!has("EGL_KHR_no_config_context") || !has("EGL_KHR_surfaceless_context"))
      return make_error(Errc::kUnsupported, "virgl: EGL lacks contexts without a config or surface");
    if (!eglBindAPI(gles ? EGL_OPENGL_ES_API : EGL_OPENGL_API))
      return make_error(Errc::kIo, "virgl: eglBindAPI failed");
    if (p != VirglOptions::Priority::kDefault) {
      if (has("EGL_IMG_context_priority")) {
        e->priority_ = p == VirglOptions::Priority::kHigh     ? EGL_CONTEXT_PRIORITY_HIGH_IMG
                       : p == VirglOptions::Priority::kMedium ? EGL_CONTEXT_PRIORITY_MEDIUM_IMG
                                                              : EGL_CONTEXT_PRIORITY_LOW_IMG;
      } else {
        e->granted_ = "default (driver has no EGL_IMG_context_priority)";
      }
    }
    return e;
  }
  ~OwnEgl() {
    if (initialised_) {
      eglMakeCurrent(dpy_, EGL_NO_SURFACE, EGL_NO_SURFACE, EGL_NO_CONTEXT);
      eglTerminate(dpy_);
    }
  }
  void* display() const { return dpy_; }
  const std::string& granted() const { return granted_; }

  virgl_renderer_gl_context create_context(const virgl_renderer_gl_ctx_param& p) {
    EGLint attrs[16];
    int n = 0;
    attrs[n++] = EGL_CONTEXT_MAJOR_VERSION;
    attrs[n++] = p.major_ver;
    attrs[n++] = EGL_CONTEXT_MINOR_VERSION;
    attrs[n++] = p.minor_ver;
    if (!gles_) {
      attrs[n++] = EGL_CONTEXT_OPENGL_PROFILE_MASK;
      attrs[n++] = EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT;
    }
    if (priority_) {
      attrs[n++] = EGL_CONTEXT_PRIORITY_LEVEL_IMG;
      attrs[n++] = priority_;
    }
    attrs[n++] = EGL_NONE;
    EGLContext share = p.shared ? eglGetCurrentContext() : EGL_NO_CONTEXT;
    EGLContext c = eglCreateContext(dpy_, EGL_NO_CONFIG_KHR, share, attrs);
    if (c == EGL_NO_CONTEXT) return nullptr;
    if (priority_) {
      // The level asked for is a hint: what the driver gave is what counts.
      EGLint got = 0;
      eglQueryContext(dpy_, c, EGL_CONTEXT_PRIORITY_LEVEL_IMG, &got);
      granted_ = got == EGL_CONTEXT_PRIORITY_HIGH_IMG     ? "high"
                 : got == EGL_CONTEXT_PRIORITY_MEDIUM_IMG ? "medium"
                 : got == EGL_CONTEXT_PRIORITY_LOW_IMG    ? "low"
                                                          : "default";
    }
    return c;
  }
  void destroy_context(virgl_renderer_gl_context c) { eglDestroyContext(dpy_, static_cast<EGLContext>(c)); }
  int make_current(virgl_renderer_gl_context c) {
    return eglMakeCurrent(dpy_, EGL_NO_SURFACE, EGL_NO_SURFACE, static_cast<EGLContext>(c)) ? 0 : -1;
  }

 private:
  OwnEgl() = default;
  EGLDisplay dpy_ = EGL_NO_DISPLAY;
  bool initialised_ = false;
  bool gles_ = false;
  EGLint priority_ = 0;
  std::string granted_ = "default";
};

class VirglRenderer final : public Renderer {
 public:
  static Result<std::unique_ptr<Renderer>> create(const VirglOptions& o) {
    bool expected = false;
    if (!g_alive.compare_exchange_strong(expected, true))
      return make_error(Errc::kState, "virgl: virglrenderer already runs in this process");
    std::unique_ptr<VirglRenderer> r(new VirglRenderer());
    r->callbacks_.version = 4;
    r->callbacks_.write_fence = [](void* cookie, uint32_t fence) {
      static_cast<VirglRenderer*>(cookie)->on_global_fence(fence);
    };
    r->callbacks_.write_context_fence = [](void* cookie, uint32_t ctx, uint32_t ring, uint64_t fence) {
      static_cast<VirglRenderer*>(cookie)->on_context_fence(ctx, ring, fence);
    };
    int flags = VIRGL_RENDERER_THREAD_SYNC;
    if (o.gles) flags |= VIRGL_RENDERER_USE_GLES;
    if (o.priority == VirglOptions::Priority::kDefault) {
      flags |= VIRGL_RENDERER_USE_EGL | VIRGL_RENDERER_USE_SURFACELESS;
    } else {
      // canopy-gpu's own EGL display and contexts (virglrenderer's "external winsys").
      auto egl = OwnEgl::create(o.gles, o.priority);
      if (!egl.ok()) {
        g_alive = false;
        return egl.error();
      }
      r->egl_ = std::move(*egl);
      r->callbacks_.create_gl_context = [](void* cookie, int, virgl_renderer_gl_ctx_param* p) {
        return static_cast<VirglRenderer*>(cookie)->egl_->create_context(*p);
      };
      r->callbacks_.destroy_gl_context = [](void* cookie, virgl_renderer_gl_context c) {
        static_cast<VirglRenderer*>(cookie)->egl_->destroy_context(c);
      };
      r->callbacks_.make_current = [](void* cookie, int, virgl_renderer_gl_context c) {
        return static_cast<VirglRenderer*>(cookie)->egl_->make_current(c);
      };
      r->callbacks_.get_egl_display = [](void* cookie) { return static_cast<VirglRenderer*>(cookie)->egl_->display(); };
    }
    // Venus (Vulkan) contexts run in this process on the host's Vulkan driver (no render server).
    if (o.venus) flags |= VIRGL_RENDERER_VENUS;
    // The cookie must not be null: virglrenderer then fails without a word.
    if (virgl_renderer_init(r.get(), flags, &r->callbacks_) != 0) {
      g_alive = false;
      return make_error(Errc::kIo, "virgl: virgl_renderer_init failed (no EGL device or surfaceless platform?)");
    }
    r->initialised_ = true;
    g_priority_granted = r->egl_ ? r->egl_->granted() : "default";
    r->poll_fd_ = virgl_renderer_get_poll_fd();
    for (uint32_t id : kCapsets) {
      if (id == kCapsetVenus && !o.venus) continue;
      uint32_t ver = 0, size = 0;
      virgl_renderer_get_cap_set(id, &ver, &size);
      // Venus's capset has version 0; a size says the renderer has it.
      if (size > 0 && (ver > 0 || id == kCapsetVenus)) r->capsets_.push_back(CapsetInfo{id, ver, size});
    }
    if (o.venus &&
        std::none_of(r->capsets_.begin(), r->capsets_.end(), [](const CapsetInfo& c) { return c.id == kCapsetVenus; }))
      return make_error(Errc::kUnsupported,
                        "virgl: venus asked for, but virglrenderer has no venus (no Vulkan driver?)");
    if (r->capsets_.empty()) return make_error(Errc::kIo, "virgl: no virgl capsets (OpenGL too old?)");
    return std::unique_ptr<Renderer>(std::move(r));
  }

  ~VirglRenderer() override {
    if (initialised_) {
      for (auto& [id, iov] : backings_) virgl_renderer_resource_detach_iov(int(id), nullptr, nullptr);
      virgl_renderer_cleanup(this);
    }
    g_alive = false;
  }

  const char* name() const override { return "virgl"; }
  uint32_t num_capsets() const override { return uint32_t(capsets_.size()); }
  Result<CapsetInfo> capset_info(uint32_t index) const override {
    if (index >= capsets_.size()) return make_error(Errc::kInvalidArgument, "virgl: no such capset index");
    return capsets_[index];
  }
  Result<std::vector<uint8_t>> capset(uint32_t id, uint32_t version) const override {
    for (const auto& c : capsets_) {
      if (c.id != id) continue;
      // Linux's DRM_IOCTL_VIRTGPU_GET_CAPS passes Mesa's cap_set_ver, which Mesa leaves 0: version 0
      // asks for the capset as the renderer has it (QEMU and crosvm answer it the same way).
      if (version > c.max_version) break;
      std::vector<uint8_t> out(c.max_size);
      virgl_renderer_fill_caps(id, version, out.data());
      return out;
    }
    return make_error(Errc::kInvalidArgument, "virgl: no such capset or version");
  }

  Status create_context(uint32_t ctx_id, uint32_t capset_id, std::string_view debug_name) override {
    // No capset (a driver without CONTEXT_INIT) means virgl, as QEMU does.
    const uint32_t capset = capset_id == 0 ? kCapsetVirgl2 : capset_id;
    if (std::none_of(capsets_.begin(), capsets_.end(), [capset](const CapsetInfo& c) { return c.id == capset; }))
      return make_error(Errc::kInvalidArgument, "virgl: contexts of this capset are not served");
    const std::string name(debug_name.substr(0, 64));
    if (virgl_renderer_context_create_with_flags(ctx_id, capset, uint32_t(name.size()), name.c_str()) != 0)
      return make_error(Errc::kInvalidArgument, "virgl: context creation failed");
    return {};
  }
  void destroy_context(uint32_t ctx_id) override {
    virgl_renderer_context_destroy(ctx_id);
    // virglrenderer drops a destroyed context's fences without signalling them; the guest still waits
    // for their responses: its work is gone, so they are answered now, in order.
    auto c = ring_fences_.find(ctx_id);
    if (c == ring_fences_.end()) return;
    auto rings = std::move(c->second);
    ring_fences_.erase(c);
    for (auto& [ring, q] : rings)
      for (const auto& f : q)
        if (on_fence_) on_fence_(f.second);
  }

  Status submit(uint32_t ctx_id, std::span<const uint8_t> commands) override {
    if (commands.size() % 4 != 0) return make_error(Errc::kInvalidArgument, "virgl: command stream not in dwords");
    if (commands.empty()) return {};
    // virglrenderer decodes in place and wants dword alignment: an aligned copy.
    words_.resize(commands.size() / 4);
    std::memcpy(words_.data(), commands.data(), commands.size());
    if (virgl_renderer_submit_cmd(words_.data(), int(ctx_id), int(words_.size())) != 0)
      return make_error(Errc::kInvalidArgument, "virgl: the command stream was refused");
    return {};
  }

  Result<HostImage> create_2d(uint32_t resource_id, uint32_t width, uint32_t height) override {
    return two_d_->create_2d(resource_id, width, height);
  }

  bool supports_3d() const override { return true; }

  Status create_3d(uint32_t resource_id, const Resource3dArgs& a) override {
    virgl_renderer_resource_create_args args{};
    args.handle = resource_id;
    args.target = a.target;
    args.format = a.format;
    args.bind = a.bind;
    args.width = a.width;
    args.height = a.height;
    args.depth = a.depth;
    args.array_size = a.array_size;
    args.last_level = a.last_level;
    args.nr_samples = a.nr_samples;
    args.flags = a.flags;
    if (virgl_renderer_resource_create(&args, nullptr, 0) != 0)
      return make_error(Errc::kInvalidArgument, "virgl: resource creation refused");
    resources_[resource_id] = a;
    return {};
  }
  Status create_blob_3d(uint32_t resource_id, const Blob3dArgs& a,
                        std::span<const transport::GuestMemory::HostRange> ranges) override {
    virgl_renderer_resource_create_blob_args args{};
    args.res_handle = resource_id;
    args.ctx_id = a.ctx_id;
    args.blob_mem = a.blob_mem;
    args.blob_flags = a.blob_flags;
    args.blob_id = a.blob_id;
    args.size = a.size;
    if (!ranges.empty()) {
      auto& kept = keep_iov(resource_id, ranges);
      args.iovecs = kept.data();
      args.num_iovs = uint32_t(kept.size());
    }
    if (const int r = virgl_renderer_resource_create_blob(&args); r != 0) {
      backings_.erase(resource_id);
      return make_error(Errc::kInvalidArgument, "virgl: host blob refused", -r);
    }
    return {};
  }

  Result<BlobExport> export_blob(uint32_t resource_id) override {
    uint32_t type = 0;
    int fd = -1;
    if (virgl_renderer_resource_export_blob(resource_id, &type, &fd) != 0)
      return make_error(Errc::kUnsupported, "virgl: the blob cannot be exported as a file");
    BlobExport out;
    out.fd = UniqueFd(fd);
    // dma-bufs (a GPU's memory) and shared memory map; an opaque fd only where it is a memfd (lavapipe's
    // host-visible memory): anything else is not a file the front-end can map.
    if (type == VIRGL_RENDERER_BLOB_FD_TYPE_OPAQUE && fcntl(out.fd.get(), F_GET_SEALS) < 0)
      return make_error(Errc::kUnsupported, "virgl: the blob is an opaque handle, not mappable memory");
    if (type != VIRGL_RENDERER_BLOB_FD_TYPE_DMABUF && type != VIRGL_RENDERER_BLOB_FD_TYPE_SHM &&
        type != VIRGL_RENDERER_BLOB_FD_TYPE_OPAQUE)
      return make_error(Errc::kUnsupported, "virgl: unknown blob file type");
    uint32_t info = 0;
    if (virgl_renderer_resource_get_map_info(resource_id, &info) != 0) info = proto::kMapCacheCached;
    out.map_info = info & proto::kMapCacheMask;
    return out;
  }

  void destroy_3d(uint32_t resource_id) override {
    virgl_renderer_resource_unref(resource_id);
    resources_.erase(resource_id);
  }

  Status attach_backing_3d(uint32_t resource_id, std::span<const transport::GuestMemory::HostRange> ranges) override {
    auto& kept = keep_iov(resource_id, ranges);
    if (virgl_renderer_resource_attach_iov(int(resource_id), kept.data(), int(kept.size())) != 0) {
      backings_.erase(resource_id);
      return make_error(Errc::kInvalidArgument, "virgl: backing refused");
    }
    return {};
  }
  void detach_backing_3d(uint32_t resource_id) override {
    if (!backings_.count(resource_id)) return;
    virgl_renderer_resource_detach_iov(int(resource_id), nullptr, nullptr);
    backings_.erase(resource_id);
  }
  std::vector<transport::GuestMemory::HostRange> backing_3d(uint32_t resource_id) const override {
    std::vector<transport::GuestMemory::HostRange> out;
    if (auto it = backings_.find(resource_id); it != backings_.end())
      for (const iovec& v : it->second) out.push_back({static_cast<uint8_t*>(v.iov_base), v.iov_len});
    return out;
  }

  void attach_to_context(uint32_t ctx_id, uint32_t resource_id) override {
    virgl_renderer_ctx_attach_resource(int(ctx_id), int(resource_id));
  }
  void detach_from_context(uint32_t ctx_id, uint32_t resource_id) override {
    virgl_renderer_ctx_detach_resource(int(ctx_id), int(resource_id));
  }

  Status transfer_3d(uint32_t resource_id, bool to_host, const Transfer3d& t) override {
    virgl_box box{t.x, t.y, t.z, t.w, t.h, t.d};
    const int r = to_host ? virgl_renderer_transfer_write_iov(resource_id, t.ctx_id, int(t.level), t.stride,
                                                              t.layer_stride, &box, t.offset, nullptr, 0)
                          : virgl_renderer_transfer_read_iov(resource_id, t.ctx_id, t.level, t.stride, t.layer_stride,
                                                             &box, t.offset, nullptr, 0);
    if (r != 0) return make_error(Errc::kInvalidArgument, "virgl: transfer refused", r);
    return {};
  }

  Status read_pixels(uint32_t resource_id, const Rect& rect, uint8_t* dst, uint32_t stride) override {
    auto it = resources_.find(resource_id);
    if (it == resources_.end()) return make_error(Errc::kInvalidArgument, "virgl: no such resource");
    if (rect.width == 0 || rect.height == 0) return {};
    // A resource without VIRGL_RESOURCE_Y_0_TOP is OpenGL's way up: its row 0 is the bottom of the
    // picture (what a guest's GL driver renders its buffers as; dumb buffers carry the flag). The
    // display's row y is then the resource's row height - 1 - y, as QEMU's virgl display shows it.
    const bool flip = !(it->second.flags & proto::kResourceFlagY0Top);
    const uint32_t y = flip ? it->second.height - rect.y - rect.height : rect.y;
    virgl_box box{rect.x, y, 0, rect.width, rect.height, 1};
    iovec iov{dst, size_t(stride) * (rect.height - 1) + size_t(rect.width) * 4};
    if (virgl_renderer_transfer_read_iov(resource_id, 0, 0, stride, 0, &box, 0, &iov, 1) != 0)
      return make_error(Errc::kInvalidArgument, "virgl: read-back refused");
    if (flip) {
      row_.resize(size_t(rect.width) * 4);
      for (uint32_t a = 0, b = rect.height - 1; a < b; ++a, --b) {
        uint8_t* ra = dst + size_t(a) * stride;
        uint8_t* rb = dst + size_t(b) * stride;
        std::memcpy(row_.data(), ra, row_.size());
        std::memcpy(ra, rb, row_.size());
        std::memcpy(rb, row_.data(), row_.size());
      }
    }
    return {};
  }

  Status create_fence(uint32_t ctx_id, uint32_t ring_idx, bool on_ring, uint64_t id) override {
    if (on_ring && virgl_renderer_context_create_fence(ctx_id, 0, ring_idx, id) == 0) {
      ring_fences_[ctx_id][ring_idx].push_back({id, id});
      return {};
    }
    // The global timeline (or a ring virglrenderer does not have): a ctx0 fence after all work so far.
    // virglrenderer merges those and reports the newest that signalled: every older one is done too.
    const uint32_t seq = next_global_++;
    if (virgl_renderer_create_fence(int(seq), 0) != 0) return make_error(Errc::kIo, "virgl: fence refused");
    global_fences_.push_back({seq, id});
    return {};
  }
  void set_fence_callback(std::function<void(uint64_t)> cb) override { on_fence_ = std::move(cb); }
  int poll_fd() const override { return poll_fd_; }
  void poll() override {
    virgl_renderer_poll();
    for (auto& [ctx, rings] : ring_fences_)
      if (!rings.empty()) virgl_renderer_context_poll(ctx);
  }

 private:
  VirglRenderer() = default;

  // virglrenderer keeps the iovec array it is given (not a copy): it lives here, by resource, until the
  // backing is detached or the resource goes.
  std::vector<iovec>& keep_iov(uint32_t resource_id, std::span<const transport::GuestMemory::HostRange> ranges) {
    auto& kept = backings_[resource_id];
    kept.clear();
    kept.reserve(ranges.size());
    for (const auto& r : ranges) kept.push_back(iovec{r.base, r.len});
    return kept;
  }

  // (the renderer's fence id, the device's id), oldest first.
  using FenceQueue = std::deque<std::pair<uint64_t, uint64_t>>;

  // A timeline's fences signal in order: the one reported and every older one are done. An id the
  // queue does not hold (already reported, or never ours) changes nothing.
  void complete_through(FenceQueue& q, uint64_t fence) {
    if (std::find_if(q.begin(), q.end(), [fence](const auto& f) { return f.first == fence; }) == q.end()) return;
    while (!q.empty()) {
      const auto f = q.front();
      q.pop_front();
      if (on_fence_) on_fence_(f.second);
      if (f.first == fence) break;
    }
  }
  void on_global_fence(uint32_t seq) { complete_through(global_fences_, seq); }
  void on_context_fence(uint32_t ctx, uint32_t ring, uint64_t id) {
    auto c = ring_fences_.find(ctx);
    if (c == ring_fences_.end()) return;
    auto r = c->second.find(ring);
    if (r == c->second.end()) return;
    complete_through(r->second, id);
    if (r->second.empty()) c->second.erase(r);
  }

  virgl_renderer_callbacks callbacks_{};
  std::unique_ptr<OwnEgl> egl_;  // with a priority: the EGL display and contexts are ours
  bool initialised_ = false;
  int poll_fd_ = -1;
  std::vector<CapsetInfo> capsets_;
  std::unique_ptr<Renderer> two_d_ = make_2d_renderer();
  std::map<uint32_t, std::vector<iovec>> backings_;
  std::map<uint32_t, Resource3dArgs> resources_;
  std::vector<uint8_t> row_;
  std::vector<uint32_t> words_;
  std::function<void(uint64_t)> on_fence_;
  uint32_t next_global_ = 1;
  FenceQueue global_fences_;                                        // virgl's ctx0 fence seq -> device id
  std::map<uint32_t, std::map<uint32_t, FenceQueue>> ring_fences_;  // ctx -> ring -> (id, id)
};

}  // namespace

bool virgl_available() { return true; }
std::string virgl_priority_granted() { return g_priority_granted; }

Result<std::unique_ptr<Renderer>> make_virgl_renderer(const VirglOptions& options) {
  return VirglRenderer::create(options);
}

}  // namespace canopy::gpu
