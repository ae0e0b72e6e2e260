// The Vulkan renderer. One compute pipeline (compose.comp) draws each layer into the canvas; both
// live where they already are in host memory:
//   - a frame's buffer view and the compositor's canvas come with their Mapping; each mapping is
//     imported once as a storage buffer (VK_EXT_external_memory_host) and kept until forget_memory,
//     so composition reads guest memory in place and writes the canvas in place (0 bytes copied);
//   - memory without a mapping (the fallback images, tests' vectors) and mappings the driver refuses
//     are copied into a staging buffer, counted in Stats::bytes_staged.
// Each composition is one command buffer: fill the background, one dispatch per layer with a barrier
// between them (a layer blends over the ones below), a barrier to the host. A timeline semaphore
// signals its value; compose() waits for it with a time limit, and a device that misses it or is lost
// makes the renderer unusable (the compositor then goes on with pixman).
//
// Pixel rules are pixman's, in integers (compose.comp): the same 16.16 transform (matrix entries
// truncated like pixman_double_to_fixed, the first sample point rounded like pixman_transform_point),
// 7-bit bilinear weights, pad at the frame's edges, the layer alpha as an 8-bit solid mask and OVER
// with pixman's rounded 8-bit multiplies.
#include <unistd.h>
#include <vulkan/vulkan.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "canopy/base/log.h"
#include "canopy/display/renderer.h"

namespace canopy::display {
namespace {

constexpr uint32_t kSpirv[] = {
#include "compose.spv.inc"
};

constexpr uint64_t kWaitNs = 5'000'000'000;  // a composition that takes longer means a hung device
constexpr uint32_t kMaxLayers = 64;          // descriptor sets per composition
constexpr size_t kMaxImports = 512;
constexpr VkDeviceSize kStagingAlign = 256;

// compose.comp's push constants, std430 layout: no padding in this order.
struct Push {
  int32_t m[4];
  int32_t dst_origin[2];
  int32_t dst_size[2];
  int32_t v0[2];
  int32_t exact_origin[2];
  uint32_t canvas_stride;
  uint32_t src_offset;
  uint32_t src_stride;
  uint32_t src_w, src_h;
  uint32_t format;
  uint32_t mode;
  uint32_t mask;
  uint32_t op;
};
static_assert(sizeof(Push) <= 128, "push constants must fit the guaranteed minimum");
static_assert(offsetof(Push, dst_origin) == 16 && offsetof(Push, canvas_stride) == 48, "matches compose.comp");

Status vk_error(VkResult r, const char* what) {
  CANOPY_WARN("vulkan: %s: VkResult %d", what, int(r));
  return make_error(r == VK_ERROR_DEVICE_LOST ? Errc::kState : Errc::kIo, what);
}

#define VK_TRY(call, what)                                       \
  do {                                                           \
    const VkResult vk_try_r = (call);                            \
    if (vk_try_r != VK_SUCCESS) return vk_error(vk_try_r, what); \
  } while (0)

// compose.comp's format number; ~0u when it cannot draw the format.
uint32_t shader_format(buffers::Format f, bool& opaque) {
  opaque = false;
  switch (f) {
    case buffers::Format::kXRGB8888: opaque = true; return 0;
    case buffers::Format::kARGB8888: return 1;
    case buffers::Format::kXBGR8888: opaque = true; return 2;
    case buffers::Format::kABGR8888: return 3;
    case buffers::Format::kRGB565: opaque = true; return 4;
    default: return ~0u;
  }
}

int32_t to_fixed(double d) { return int32_t(d * 65536.0); }  // truncates, like pixman_double_to_fixed

// A buffer and its memory, owned.
struct VkBuf {
  VkBuffer buf = VK_NULL_HANDLE;
  VkDeviceMemory mem = VK_NULL_HANDLE;
  VkDeviceSize size = 0;
  void* mapped = nullptr;  // host-visible buffers we allocated
};

class VulkanRenderer final : public Renderer {
 public:
  ~VulkanRenderer() override {
    if (dev_) vkDeviceWaitIdle(dev_);
    for (auto& i : imports_) destroy(i.b);
    destroy(staging_);
    destroy(canvas_buf_);
    if (dev_) {
      if (timeline_) vkDestroySemaphore(dev_, timeline_, nullptr);
      if (cpool_) vkDestroyCommandPool(dev_, cpool_, nullptr);
      if (dpool_) vkDestroyDescriptorPool(dev_, dpool_, nullptr);
      if (pipe_) vkDestroyPipeline(dev_, pipe_, nullptr);
      if (playout_) vkDestroyPipelineLayout(dev_, playout_, nullptr);
      if (dsl_) vkDestroyDescriptorSetLayout(dev_, dsl_, nullptr);
      vkDestroyDevice(dev_, nullptr);
    }
    if (inst_) vkDestroyInstance(inst_, nullptr);
  }

  Status init(const VulkanOptions& opt) {
    VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
    app.pApplicationName = "canopy-display";
    app.apiVersion = VK_API_VERSION_1_2;
    VkInstanceCreateInfo ici{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
    ici.pApplicationInfo = &app;
    VK_TRY(vkCreateInstance(&ici, nullptr, &inst_), "no Vulkan instance (is a Vulkan driver installed?)");
    CANOPY_TRY(pick_device(opt));
    CANOPY_TRY(make_device());
    CANOPY_TRY(make_pipeline());
    VkCommandPoolCreateInfo cp{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
    cp.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    cp.queueFamilyIndex = qfam_;
    VK_TRY(vkCreateCommandPool(dev_, &cp, nullptr, &cpool_), "command pool");
    VkCommandBufferAllocateInfo ca{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    ca.commandPool = cpool_;
    ca.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ca.commandBufferCount = 1;
    VK_TRY(vkAllocateCommandBuffers(dev_, &ca, &cmd_), "command buffer");
    VkSemaphoreTypeCreateInfo st{VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO};
    st.semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE;
    VkSemaphoreCreateInfo sci{VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO};
    sci.pNext = &st;
    VK_TRY(vkCreateSemaphore(dev_, &sci, nullptr, &timeline_), "timeline semaphore");
    name_ = std::string("vulkan (") + props_.deviceName + ")";
    CANOPY_INFO("canopy-display: Vulkan renderer on %s, host-pointer import alignment %llu", props_.deviceName,
                (unsigned long long)import_align_);
    return {};
  }

  const char* name() const override { return name_.c_str(); }
  bool usable() const override { return !lost_; }
  Stats stats() const override { return stats_; }

  void forget_memory(const void* base) override {
    std::erase_if(imports_, [&](Import& i) {
      if (i.base != base) return false;
      destroy(i.b);
      return true;
    });
    std::erase(refused_, base);
  }

  Status compose(std::span<const LayerDraw> layers, const Canvas& t, uint32_t background) override {
    if (lost_) return make_error(Errc::kState, "vulkan: the device was lost or hung; renderer unusable");
    if (!t.data || t.width == 0 || t.height == 0 || t.stride < t.width * 4 || t.stride % 4)
      return make_error(Errc::kInvalidArgument, "vulkan: bad canvas");
    const VkDeviceSize canvas_bytes = VkDeviceSize(t.stride) * t.height;
    if (canvas_bytes > max_range_) return make_error(Errc::kUnsupported, "vulkan: canvas larger than a storage buffer");

    // Plan every layer first: what to read from where, what must be staged.
    struct Planned {
      Push push;
      VkBuffer src = VK_NULL_HANDLE;
      const uint8_t* stage_from = nullptr;  // staged: copy these bytes to staging offset `stage_at`
      VkDeviceSize stage_at = 0, stage_bytes = 0;
    };
    std::vector<Planned> plan;
    Status result;
    compose_start_ = use_clock_;  // imports used from here on are not evicted in this composition
    VkDeviceSize staging_needed = 0;
    for (const LayerDraw& d : layers) {
      if (plan.size() == kMaxLayers) {
        if (result.ok()) result = make_error(Errc::kLimit, "vulkan: more layers than one composition takes");
        break;
      }
      Planned p{};
      Status s = plan_layer(d, t, p.push);
      if (!s.ok()) {
        if (result.ok()) result = s;
        continue;
      }
      if (p.push.dst_size[0] == 0) continue;  // nothing visible
      const Image& im = d.image;
      const VkDeviceSize bytes =
          VkDeviceSize(im.stride) * (im.height - 1) + VkDeviceSize(im.width) * buffers::bytes_per_pixel(im.format);
      const VkBuf* imported = import(im.mapping, im.data, bytes);
      if (imported) {
        p.src = imported->buf;
        p.push.src_offset = uint32_t(im.data - static_cast<const uint8_t*>(im.mapping.base));
      } else {
        p.stage_from = im.data;
        p.stage_bytes = bytes;
        p.stage_at = staging_needed;
        p.push.src_offset = 0;
        staging_needed = (staging_needed + bytes + kStagingAlign - 1) & ~(kStagingAlign - 1);
      }
      plan.push_back(p);
    }
    if (staging_needed > max_range_) return make_error(Errc::kUnsupported, "vulkan: staged layers too large");
    if (staging_needed) {
      CANOPY_TRY(ensure_host_buffer(staging_, staging_needed));
      for (Planned& p : plan) {
        if (!p.stage_from) continue;
        std::memcpy(static_cast<uint8_t*>(staging_.mapped) + p.stage_at, p.stage_from, p.stage_bytes);
        stats_.bytes_staged += p.stage_bytes;
        p.src = staging_.buf;
        p.push.src_offset = uint32_t(p.stage_at);
      }
    }
    // The canvas: in place when it comes with a mapping the driver takes, else our buffer + a copy out.
    VkBuffer canvas = VK_NULL_HANDLE;
    VkDeviceSize canvas_offset = 0;
    if (const VkBuf* c = import(t.mapping, t.data, canvas_bytes)) {
      canvas = c->buf;
      canvas_offset = VkDeviceSize(t.data - static_cast<const uint8_t*>(t.mapping.base));
    } else {
      CANOPY_TRY(ensure_host_buffer(canvas_buf_, canvas_bytes));
      canvas = canvas_buf_.buf;
    }
    if (canvas_offset % min_offset_align_) return make_error(Errc::kUnsupported, "vulkan: canvas offset misaligned");

    VK_TRY(vkResetDescriptorPool(dev_, dpool_, 0), "reset descriptor pool");
    std::vector<VkDescriptorSet> sets(plan.size());
    if (!plan.empty()) {
      std::vector<VkDescriptorSetLayout> layouts(plan.size(), dsl_);
      VkDescriptorSetAllocateInfo ai{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
      ai.descriptorPool = dpool_;
      ai.descriptorSetCount = uint32_t(plan.size());
      ai.pSetLayouts = layouts.data();
      VK_TRY(vkAllocateDescriptorSets(dev_, &ai, sets.data()), "descriptor sets");
      for (size_t i = 0; i < plan.size(); ++i) {
        VkDescriptorBufferInfo bi[2] = {{canvas, canvas_offset, canvas_bytes}, {plan[i].src, 0, VK_WHOLE_SIZE}};
        VkWriteDescriptorSet w{VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET};
        w.dstSet = sets[i];
        w.dstBinding = 0;
        w.descriptorCount = 2;
        w.descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        w.pBufferInfo = bi;
        vkUpdateDescriptorSets(dev_, 1, &w, 0, nullptr);
      }
    }

    VK_TRY(vkResetCommandBuffer(cmd_, 0), "reset command buffer");
    VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    VK_TRY(vkBeginCommandBuffer(cmd_, &bi), "begin command buffer");
    // Background: the canvas rows (stride may exceed width: fill it all, as pixman fills the image).
    vkCmdFillBuffer(cmd_, canvas, canvas_offset, canvas_bytes, 0xff000000u | (background & 0x00ffffffu));
    barrier(VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
            VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
    vkCmdBindPipeline(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, pipe_);
    for (size_t i = 0; i < plan.size(); ++i) {
      Push& p = plan[i].push;
      p.canvas_stride = t.stride / 4;
      vkCmdBindDescriptorSets(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, playout_, 0, 1, &sets[i], 0, nullptr);
      vkCmdPushConstants(cmd_, playout_, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(Push), &p);
      vkCmdDispatch(cmd_, (uint32_t(p.dst_size[0]) + 15) / 16, (uint32_t(p.dst_size[1]) + 15) / 16, 1);
      barrier(VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
              VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
    }
    barrier(VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
            VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_WRITE_BIT, VK_PIPELINE_STAGE_HOST_BIT,
            VK_ACCESS_HOST_READ_BIT);
    VK_TRY(vkEndCommandBuffer(cmd_), "end command buffer");

    const uint64_t value = ++tick_;
    VkTimelineSemaphoreSubmitInfo ts{VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO};
    ts.signalSemaphoreValueCount = 1;
    ts.pSignalSemaphoreValues = &value;
    VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
    si.pNext = &ts;
    si.commandBufferCount = 1;
    si.pCommandBuffers = &cmd_;
    si.signalSemaphoreCount = 1;
    si.pSignalSemaphores = &timeline_;
    VkResult r = vkQueueSubmit(queue_, 1, &si, VK_NULL_HANDLE);
    if (r != VK_SUCCESS) return lose(r, "vulkan: submit failed");
    VkSemaphoreWaitInfo wi{VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO};
    wi.semaphoreCount = 1;
    wi.pSemaphores = &timeline_;
    wi.pValues = &value;
    r = vkWaitSemaphores(dev_, &wi, kWaitNs);
    if (r != VK_SUCCESS) return lose(r, "vulkan: composition did not finish in time");
    if (canvas == canvas_buf_.buf) {
      for (uint32_t y = 0; y < t.height; ++y)
        std::memcpy(t.data + size_t(y) * t.stride, static_cast<uint8_t*>(canvas_buf_.mapped) + size_t(y) * t.stride,
                    size_t(t.width) * 4);
    }
    ++stats_.compositions;
    return result;
  }

 private:
  struct Import {
    const void* base = nullptr;
    VkBuf b;
    uint64_t used = 0;
  };

  Status lose(VkResult r, const char* what) {
    lost_ = true;
    CANOPY_ERROR("%s (VkResult %d): the Vulkan renderer stops", what, int(r));
    return make_error(r == VK_TIMEOUT ? Errc::kTimeout : Errc::kState, what);
  }

  // The layer's geometry and pixel rules as push constants; dst_size 0 when nothing shows.
  Status plan_layer(const LayerDraw& d, const Canvas& t, Push& p) const {
    const LayerSpec& l = *d.layer;
    const Image& im = d.image;
    p = Push{};
    if (l.alpha <= 0 || l.dst.empty()) return {};
    bool opaque = false;
    const uint32_t fmt = shader_format(im.format, opaque);
    if (fmt == ~0u) return make_error(Errc::kUnsupported, "vulkan: frame format not supported");
    const uint32_t bpp = buffers::bytes_per_pixel(im.format);
    if (!im.data || im.width == 0 || im.height == 0 || im.stride < uint64_t(im.width) * bpp || im.stride % 4 ||
        reinterpret_cast<uintptr_t>(im.data) % 4)
      return make_error(Errc::kInvalidArgument, "vulkan: bad frame geometry");
    if (im.width > 32767 || im.height > 32767) return make_error(Errc::kUnsupported, "vulkan: frame too large");
    const Rect src = resolved_src(l, im.width, im.height);
    if (src.empty()) return {};
    const int64_t x0 = std::max<int64_t>(l.dst.x, 0), y0 = std::max<int64_t>(l.dst.y, 0);
    const int64_t x1 = std::min<int64_t>(int64_t(l.dst.x) + l.dst.width, t.width);
    const int64_t y1 = std::min<int64_t>(int64_t(l.dst.y) + l.dst.height, t.height);
    if (x1 <= x0 || y1 <= y0) return {};
    const int64_t off_x = x0 - l.dst.x, off_y = y0 - l.dst.y;
    const Affine m = dst_to_src(l, src);
    p.dst_origin[0] = int32_t(x0);
    p.dst_origin[1] = int32_t(y0);
    p.dst_size[0] = int32_t(x1 - x0);
    p.dst_size[1] = int32_t(y1 - y0);
    if (is_integer_translation(m)) {
      p.mode = 0;
      p.exact_origin[0] = int32_t(off_x + int64_t(m.e));
      p.exact_origin[1] = int32_t(off_y + int64_t(m.f));
    } else {
      p.mode = 1;
      const int64_t mx[2][3] = {{to_fixed(m.a), to_fixed(m.b), to_fixed(m.e)},
                                {to_fixed(m.c), to_fixed(m.d), to_fixed(m.f)}};
      // The first sample point, (off + 1/2) through the matrix, rounded as pixman_transform_point does.
      const int64_t v[3] = {off_x * 65536 + 32768, off_y * 65536 + 32768, 65536};
      for (int i = 0; i < 2; ++i) {
        const int64_t sum = mx[i][0] * v[0] + mx[i][1] * v[1] + mx[i][2] * v[2];
        p.v0[i] = int32_t((sum + 0x8000) >> 16);
      }
      p.m[0] = int32_t(mx[0][0]);
      p.m[1] = int32_t(mx[0][1]);
      p.m[2] = int32_t(mx[1][0]);
      p.m[3] = int32_t(mx[1][1]);
    }
    p.src_stride = im.stride;
    p.src_w = im.width;
    p.src_h = im.height;
    p.format = fmt;
    // pixman's solid mask: 16-bit alpha, used as its top 8 bits.
    const uint32_t a16 = l.alpha < 1.0 ? uint32_t(std::lround(std::clamp(l.alpha, 0.0, 1.0) * 0xffff)) : 0xffff;
    p.mask = a16 >> 8;
    p.op = (opaque && l.alpha >= 1.0) ? 0 : 1;
    return {};
  }

  // The import holding [data, data + bytes) when `mapping` is importable; nullptr means stage.
  const VkBuf* import(const Mapping& mapping, const uint8_t* data, VkDeviceSize bytes) {
    if (!mapping.base) return nullptr;
    const auto* base = static_cast<const uint8_t*>(mapping.base);
    if (data < base || data + bytes > base + mapping.size) return nullptr;  // not where the caller says
    for (Import& i : imports_) {
      if (i.base == mapping.base && i.b.size >= mapping.size) {
        i.used = ++use_clock_;
        return &i.b;
      }
    }
    if (std::find(refused_.begin(), refused_.end(), mapping.base) != refused_.end()) return nullptr;
    if (reinterpret_cast<uintptr_t>(mapping.base) % import_align_ || mapping.size % import_align_ ||
        mapping.size > max_range_) {
      refused_.push_back(mapping.base);
      return nullptr;
    }
    if (imports_.size() >= kMaxImports) {  // least recently used goes, unless this composition uses it
      auto lru = std::min_element(imports_.begin(), imports_.end(),
                                  [](const Import& a, const Import& b) { return a.used < b.used; });
      if (lru->used > compose_start_) return nullptr;
      destroy(lru->b);
      *lru = imports_.back();
      imports_.pop_back();
    }
    Import imp;
    imp.base = mapping.base;
    if (!import_host(const_cast<void*>(mapping.base), mapping.size, imp.b).ok()) {
      CANOPY_WARN_RL("vulkan: the driver refused to import a mapping of %zu bytes: staging it instead", mapping.size);
      refused_.push_back(mapping.base);
      return nullptr;
    }
    ++stats_.imports;
    imp.used = ++use_clock_;
    imports_.push_back(imp);
    return &imports_.back().b;
  }

  Status import_host(void* ptr, VkDeviceSize size, VkBuf& out) {
    VkMemoryHostPointerPropertiesEXT hp{VK_STRUCTURE_TYPE_MEMORY_HOST_POINTER_PROPERTIES_EXT};
    VK_TRY(get_host_props_(dev_, VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT, ptr, &hp),
           "host pointer properties");
    VkExternalMemoryBufferCreateInfo ext{VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO};
    ext.handleTypes = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT;
    VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
    bci.pNext = &ext;
    bci.size = size;
    bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
    VK_TRY(vkCreateBuffer(dev_, &bci, nullptr, &out.buf), "create import buffer");
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(dev_, out.buf, &req);
    const uint32_t type = memory_type(req.memoryTypeBits & hp.memoryTypeBits, VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
    if (type == ~0u) {
      destroy(out);
      return make_error(Errc::kUnsupported, "vulkan: no coherent memory type for imported host memory");
    }
    VkImportMemoryHostPointerInfoEXT imp{VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT};
    imp.handleType = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT;
    imp.pHostPointer = ptr;
    VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
    mai.pNext = &imp;
    mai.allocationSize = size;
    mai.memoryTypeIndex = type;
    VkResult r = vkAllocateMemory(dev_, &mai, nullptr, &out.mem);
    if (r == VK_SUCCESS) r = vkBindBufferMemory(dev_, out.buf, out.mem, 0);
    if (r != VK_SUCCESS) {
      destroy(out);
      return vk_error(r, "import host memory");
    }
    out.size = size;
    return {};
  }

  Status ensure_host_buffer(VkBuf& b, VkDeviceSize need) {
    if (b.size >= need) return {};
    destroy(b);
    const VkDeviceSize size = std::max<VkDeviceSize>(need, 1 << 20);
    VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
    bci.size = size;
    bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    VK_TRY(vkCreateBuffer(dev_, &bci, nullptr, &b.buf), "create staging buffer");
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(dev_, b.buf, &req);
    const uint32_t type =
        memory_type(req.memoryTypeBits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
    if (type == ~0u) {
      destroy(b);
      return make_error(Errc::kUnsupported, "vulkan: no host-visible coherent memory");
    }
    VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
    mai.allocationSize = req.size;
    mai.memoryTypeIndex = type;
    VkResult r = vkAllocateMemory(dev_, &mai, nullptr, &b.mem);
    if (r == VK_SUCCESS) r = vkBindBufferMemory(dev_, b.buf, b.mem, 0);
    if (r == VK_SUCCESS) r = vkMapMemory(dev_, b.mem, 0, VK_WHOLE_SIZE, 0, &b.mapped);
    if (r != VK_SUCCESS) {
      destroy(b);
      return vk_error(r, "staging memory");
    }
    b.size = size;
    return {};
  }

  void destroy(VkBuf& b) {
    if (!dev_) return;
    if (b.buf) vkDestroyBuffer(dev_, b.buf, nullptr);
    if (b.mem) vkFreeMemory(dev_, b.mem, nullptr);  // unmaps too
    b = VkBuf{};
  }

  uint32_t memory_type(uint32_t bits, VkMemoryPropertyFlags want) const {
    for (uint32_t i = 0; i < mem_props_.memoryTypeCount; ++i)
      if ((bits & (1u << i)) && (mem_props_.memoryTypes[i].propertyFlags & want) == want) return i;
    return ~0u;
  }

  void barrier(VkPipelineStageFlags from, VkAccessFlags from_access, VkPipelineStageFlags to, VkAccessFlags to_access) {
    VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    mb.srcAccessMask = from_access;
    mb.dstAccessMask = to_access;
    vkCmdPipelineBarrier(cmd_, from, to, 0, 1, &mb, 0, nullptr, 0, nullptr);
  }

  static int rank(VkPhysicalDeviceType t) {
    switch (t) {
      case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 4;
      case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 3;
      case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
      case VK_PHYSICAL_DEVICE_TYPE_CPU: return 1;
      default: return 0;
    }
  }

  Status pick_device(const VulkanOptions& opt) {
    uint32_t n = 0;
    VK_TRY(vkEnumeratePhysicalDevices(inst_, &n, nullptr), "enumerate devices");
    std::vector<VkPhysicalDevice> devs(n);
    VK_TRY(vkEnumeratePhysicalDevices(inst_, &n, devs.data()), "enumerate devices");
    int best = -1;
    for (VkPhysicalDevice d : devs) {
      VkPhysicalDeviceProperties pr;
      vkGetPhysicalDeviceProperties(d, &pr);
      if (pr.apiVersion < VK_API_VERSION_1_2) continue;
      if (!opt.device.empty() && std::string(pr.deviceName).find(opt.device) == std::string::npos) continue;
      if (!opt.allow_cpu && pr.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU) continue;
      uint32_t ne = 0;
      vkEnumerateDeviceExtensionProperties(d, nullptr, &ne, nullptr);
      std::vector<VkExtensionProperties> exts(ne);
      vkEnumerateDeviceExtensionProperties(d, nullptr, &ne, exts.data());
      const bool host_import = std::any_of(exts.begin(), exts.end(), [](const VkExtensionProperties& e) {
        return std::strcmp(e.extensionName, VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME) == 0;
      });
      VkPhysicalDeviceVulkan12Features f12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
      VkPhysicalDeviceFeatures2 f2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
      f2.pNext = &f12;
      vkGetPhysicalDeviceFeatures2(d, &f2);
      uint32_t nq = 0;
      vkGetPhysicalDeviceQueueFamilyProperties(d, &nq, nullptr);
      std::vector<VkQueueFamilyProperties> qs(nq);
      vkGetPhysicalDeviceQueueFamilyProperties(d, &nq, qs.data());
      int qf = -1;
      for (uint32_t i = 0; i < nq && qf < 0; ++i)
        if (qs[i].queueFlags & VK_QUEUE_COMPUTE_BIT) qf = int(i);
      if (!host_import || !f12.timelineSemaphore || qf < 0) continue;
      if (rank(pr.deviceType) > best) {
        best = rank(pr.deviceType);
        phys_ = d;
        qfam_ = uint32_t(qf);
        props_ = pr;
      }
    }
    if (!phys_)
      return make_error(
          Errc::kUnsupported,
          "vulkan: no device with Vulkan 1.2, timeline semaphores, VK_EXT_external_memory_host and compute");
    vkGetPhysicalDeviceMemoryProperties(phys_, &mem_props_);
    VkPhysicalDeviceExternalMemoryHostPropertiesEXT hp{
        VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_MEMORY_HOST_PROPERTIES_EXT};
    VkPhysicalDeviceProperties2 p2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    p2.pNext = &hp;
    vkGetPhysicalDeviceProperties2(phys_, &p2);
    import_align_ = std::max<VkDeviceSize>(hp.minImportedHostPointerAlignment, 1);
    max_range_ = props_.limits.maxStorageBufferRange;
    min_offset_align_ = std::max<VkDeviceSize>(props_.limits.minStorageBufferOffsetAlignment, 1);
    return {};
  }

  Status make_device() {
    const float prio = 1.0f;
    VkDeviceQueueCreateInfo q{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
    q.queueFamilyIndex = qfam_;
    q.queueCount = 1;
    q.pQueuePriorities = &prio;
    VkPhysicalDeviceVulkan12Features f12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    f12.timelineSemaphore = VK_TRUE;
    const char* exts[] = {VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME};
    VkDeviceCreateInfo dci{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
    dci.pNext = &f12;
    dci.queueCreateInfoCount = 1;
    dci.pQueueCreateInfos = &q;
    dci.enabledExtensionCount = 1;
    dci.ppEnabledExtensionNames = exts;
    VK_TRY(vkCreateDevice(phys_, &dci, nullptr, &dev_), "create device");
    vkGetDeviceQueue(dev_, qfam_, 0, &queue_);
    get_host_props_ = reinterpret_cast<PFN_vkGetMemoryHostPointerPropertiesEXT>(
        vkGetDeviceProcAddr(dev_, "vkGetMemoryHostPointerPropertiesEXT"));
    if (!get_host_props_) return make_error(Errc::kUnsupported, "vulkan: vkGetMemoryHostPointerPropertiesEXT missing");
    return {};
  }

  Status make_pipeline() {
    VkDescriptorSetLayoutBinding b[2] = {};
    for (uint32_t i = 0; i < 2; ++i) {
      b[i].binding = i;
      b[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
      b[i].descriptorCount = 1;
      b[i].stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
    }
    VkDescriptorSetLayoutCreateInfo dl{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
    dl.bindingCount = 2;
    dl.pBindings = b;
    VK_TRY(vkCreateDescriptorSetLayout(dev_, &dl, nullptr, &dsl_), "descriptor set layout");
    VkPushConstantRange pr{VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(Push)};
    VkPipelineLayoutCreateInfo pl{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
    pl.setLayoutCount = 1;
    pl.pSetLayouts = &dsl_;
    pl.pushConstantRangeCount = 1;
    pl.pPushConstantRanges = &pr;
    VK_TRY(vkCreatePipelineLayout(dev_, &pl, nullptr, &playout_), "pipeline layout");
    VkShaderModuleCreateInfo sm{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
    sm.codeSize = sizeof kSpirv;
    sm.pCode = kSpirv;
    VkShaderModule mod = VK_NULL_HANDLE;
    VK_TRY(vkCreateShaderModule(dev_, &sm, nullptr, &mod), "shader module");
    VkComputePipelineCreateInfo cp{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
    cp.stage = {VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO};
    cp.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
    cp.stage.module = mod;
    cp.stage.pName = "main";
    cp.layout = playout_;
    const VkResult r = vkCreateComputePipelines(dev_, VK_NULL_HANDLE, 1, &cp, nullptr, &pipe_);
    vkDestroyShaderModule(dev_, mod, nullptr);
    VK_TRY(r, "compute pipeline");
    VkDescriptorPoolSize ps{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 2 * kMaxLayers};
    VkDescriptorPoolCreateInfo dp{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
    dp.maxSets = kMaxLayers;
    dp.poolSizeCount = 1;
    dp.pPoolSizes = &ps;
    VK_TRY(vkCreateDescriptorPool(dev_, &dp, nullptr, &dpool_), "descriptor pool");
    return {};
  }

  VkInstance inst_ = VK_NULL_HANDLE;
  VkPhysicalDevice phys_ = VK_NULL_HANDLE;
  VkPhysicalDeviceProperties props_{};
  VkPhysicalDeviceMemoryProperties mem_props_{};
  uint32_t qfam_ = 0;
  VkDevice dev_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  PFN_vkGetMemoryHostPointerPropertiesEXT get_host_props_ = nullptr;
  VkDeviceSize import_align_ = 4096, max_range_ = 0, min_offset_align_ = 1;
  VkDescriptorSetLayout dsl_ = VK_NULL_HANDLE;
  VkPipelineLayout playout_ = VK_NULL_HANDLE;
  VkPipeline pipe_ = VK_NULL_HANDLE;
  VkDescriptorPool dpool_ = VK_NULL_HANDLE;
  VkCommandPool cpool_ = VK_NULL_HANDLE;
  VkCommandBuffer cmd_ = VK_NULL_HANDLE;
  VkSemaphore timeline_ = VK_NULL_HANDLE;
  uint64_t tick_ = 0;
  std::vector<Import> imports_;
  std::vector<const void*> refused_;  // mappings the driver would not import: staged until forgotten
  uint64_t use_clock_ = 0, compose_start_ = 0;
  VkBuf staging_, canvas_buf_;
  bool lost_ = false;
  Stats stats_;
  std::string name_ = "vulkan";
};

}  // namespace

Result<std::unique_ptr<Renderer>> make_vulkan_renderer(const VulkanOptions& options) {
  auto r = std::make_unique<VulkanRenderer>();
  CANOPY_TRY(r->init(options));
  return std::unique_ptr<Renderer>(std::move(r));
}

}  // namespace canopy::display
