// canopy-guest-vk: a small Vulkan program for a Linux guest whose GPU is virtio-gpu with venus (Mesa's
// Vulkan driver for virtio-gpu, talking to virglrenderer's venus in the back-end). It proves the whole
// path: instance and device through the venus protocol, host-visible memory that reaches the guest as
// host blobs mapped into virtio-gpu's host-visible region, command buffers executed by the host's
// Vulkan driver, a fence waited for, and the results read back through those mappings.
//
//   1. the physical device must be venus ("Virtio-GPU Venus" in its name; --any-device skips this);
//   2. buffer A (host visible and coherent) is filled by the guest with a pattern in which every
//      4-byte word differs; the GPU copies A to B (vkCmdCopyBuffer) and fills C (vkCmdFillBuffer);
//   3. an image is cleared to a colour (vkCmdClearColorImage) and copied into buffer D;
//   4. one submission, one fence; then B must equal A, C must hold the fill word and D the colour.
//
// Output: "canopy-guest-vk: KEY ..." lines; exit status 0 when every check held, 1 with a FAIL line.
// Usage: canopy-guest-vk [--any-device] [--rounds N]
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vulkan/vulkan.h>

static void fail(const char* what, VkResult r) {
  printf("canopy-guest-vk: FAIL %s (VkResult %d)\n", what, (int)r);
  exit(1);
}
#define CHECK(call)                        \
  do {                                     \
    VkResult r_ = (call);                  \
    if (r_ != VK_SUCCESS) fail(#call, r_); \
  } while (0)

static VkPhysicalDeviceMemoryProperties g_mem;
static VkDevice g_dev;

static uint32_t memory_type(uint32_t bits, VkMemoryPropertyFlags want) {
  for (uint32_t i = 0; i < g_mem.memoryTypeCount; ++i)
    if ((bits & (1u << i)) && (g_mem.memoryTypes[i].propertyFlags & want) == want) return i;
  fail("no memory type with the properties asked for", VK_ERROR_FEATURE_NOT_PRESENT);
  return 0;
}

struct buffer {
  VkBuffer buf;
  VkDeviceMemory mem;
  void* map;
};

static struct buffer make_buffer(VkDeviceSize size, VkBufferUsageFlags usage) {
  struct buffer b = {0};
  VkBufferCreateInfo bi = {VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
  bi.size = size;
  bi.usage = usage;
  bi.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  CHECK(vkCreateBuffer(g_dev, &bi, NULL, &b.buf));
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(g_dev, b.buf, &req);
  VkMemoryAllocateInfo ai = {VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
  ai.allocationSize = req.size;
  ai.memoryTypeIndex =
      memory_type(req.memoryTypeBits, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
  CHECK(vkAllocateMemory(g_dev, &ai, NULL, &b.mem));
  CHECK(vkBindBufferMemory(g_dev, b.buf, b.mem, 0));
  CHECK(vkMapMemory(g_dev, b.mem, 0, VK_WHOLE_SIZE, 0, &b.map));
  return b;
}

int main(int argc, char** argv) {
  int any_device = 0, rounds = 3;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--any-device")) any_device = 1;
    else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: canopy-guest-vk [--any-device] [--rounds N]\n");
      return 2;
    }
  }
  if (rounds < 1) rounds = 1;

  VkApplicationInfo app = {VK_STRUCTURE_TYPE_APPLICATION_INFO};
  app.pApplicationName = "canopy-guest-vk";
  app.apiVersion = VK_API_VERSION_1_1;
  VkInstanceCreateInfo ii = {VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
  ii.pApplicationInfo = &app;
  VkInstance inst;
  CHECK(vkCreateInstance(&ii, NULL, &inst));
  uint32_t n = 0;
  CHECK(vkEnumeratePhysicalDevices(inst, &n, NULL));
  if (n == 0) fail("no Vulkan device", VK_ERROR_INITIALIZATION_FAILED);
  VkPhysicalDevice devs[8];
  if (n > 8) n = 8;
  CHECK(vkEnumeratePhysicalDevices(inst, &n, devs));
  VkPhysicalDevice pd = VK_NULL_HANDLE;
  VkPhysicalDeviceProperties props;
  for (uint32_t i = 0; i < n; ++i) {
    vkGetPhysicalDeviceProperties(devs[i], &props);
    printf("canopy-guest-vk: device %u: %s (Vulkan %u.%u.%u, driver 0x%x)\n", i, props.deviceName,
           VK_API_VERSION_MAJOR(props.apiVersion), VK_API_VERSION_MINOR(props.apiVersion),
           VK_API_VERSION_PATCH(props.apiVersion), props.driverVersion);
    if (any_device || strstr(props.deviceName, "Venus")) {
      pd = devs[i];
      break;
    }
  }
  if (pd == VK_NULL_HANDLE) fail("no venus device", VK_ERROR_INITIALIZATION_FAILED);
  vkGetPhysicalDeviceProperties(pd, &props);
  printf("canopy-guest-vk: using %s\n", props.deviceName);
  vkGetPhysicalDeviceMemoryProperties(pd, &g_mem);
  for (uint32_t i = 0; i < g_mem.memoryTypeCount; ++i)
    printf("canopy-guest-vk: memory type %u: flags 0x%x heap %u\n", i, g_mem.memoryTypes[i].propertyFlags,
           g_mem.memoryTypes[i].heapIndex);

  uint32_t qn = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &qn, NULL);
  VkQueueFamilyProperties qf[16];
  if (qn > 16) qn = 16;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &qn, qf);
  uint32_t family = UINT32_MAX;
  for (uint32_t i = 0; i < qn && family == UINT32_MAX; ++i)
    if (qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT) family = i;
  if (family == UINT32_MAX) fail("no graphics queue", VK_ERROR_FEATURE_NOT_PRESENT);
  float prio = 1.0f;
  VkDeviceQueueCreateInfo qi = {VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
  qi.queueFamilyIndex = family;
  qi.queueCount = 1;
  qi.pQueuePriorities = &prio;
  VkDeviceCreateInfo di = {VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
  di.queueCreateInfoCount = 1;
  di.pQueueCreateInfos = &qi;
  CHECK(vkCreateDevice(pd, &di, NULL, &g_dev));
  VkQueue queue;
  vkGetDeviceQueue(g_dev, family, 0, &queue);

  enum { kBytes = 1 << 20, kW = 64, kH = 64, kFill = 0x5a5aa5a5 };
  struct buffer a = make_buffer(kBytes, VK_BUFFER_USAGE_TRANSFER_SRC_BIT);
  struct buffer b = make_buffer(kBytes, VK_BUFFER_USAGE_TRANSFER_DST_BIT);
  struct buffer c = make_buffer(kBytes, VK_BUFFER_USAGE_TRANSFER_DST_BIT);
  struct buffer d = make_buffer(kW * kH * 4, VK_BUFFER_USAGE_TRANSFER_DST_BIT);

  VkImageCreateInfo imi = {VK_STRUCTURE_TYPE_IMAGE_CREATE_INFO};
  imi.imageType = VK_IMAGE_TYPE_2D;
  imi.format = VK_FORMAT_R8G8B8A8_UNORM;
  imi.extent = (VkExtent3D){kW, kH, 1};
  imi.mipLevels = 1;
  imi.arrayLayers = 1;
  imi.samples = VK_SAMPLE_COUNT_1_BIT;
  imi.tiling = VK_IMAGE_TILING_OPTIMAL;
  imi.usage = VK_IMAGE_USAGE_TRANSFER_DST_BIT | VK_IMAGE_USAGE_TRANSFER_SRC_BIT;
  imi.initialLayout = VK_IMAGE_LAYOUT_UNDEFINED;
  VkImage image;
  CHECK(vkCreateImage(g_dev, &imi, NULL, &image));
  VkMemoryRequirements ireq;
  vkGetImageMemoryRequirements(g_dev, image, &ireq);
  VkMemoryAllocateInfo iai = {VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
  iai.allocationSize = ireq.size;
  iai.memoryTypeIndex = memory_type(ireq.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
  VkDeviceMemory imem;
  CHECK(vkAllocateMemory(g_dev, &iai, NULL, &imem));
  CHECK(vkBindImageMemory(g_dev, image, imem, 0));

  VkCommandPoolCreateInfo pi = {VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  pi.queueFamilyIndex = family;
  pi.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
  VkCommandPool pool;
  CHECK(vkCreateCommandPool(g_dev, &pi, NULL, &pool));
  VkCommandBufferAllocateInfo cai = {VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
  cai.commandPool = pool;
  cai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  cai.commandBufferCount = 1;
  VkCommandBuffer cmd;
  CHECK(vkAllocateCommandBuffers(g_dev, &cai, &cmd));
  VkFenceCreateInfo fi = {VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  VkFence fence;
  CHECK(vkCreateFence(g_dev, &fi, NULL, &fence));

  for (int round = 0; round < rounds; ++round) {
    // A pattern that differs in every word and every round; B and D are poisoned first.
    uint32_t* pa = a.map;
    for (uint32_t i = 0; i < kBytes / 4; ++i) pa[i] = (i + 1u) * 2654435761u ^ (uint32_t)round;
    memset(b.map, 0xee, kBytes);
    memset(c.map, 0x11, kBytes);
    memset(d.map, 0x22, kW * kH * 4);
    const float rgba[4] = {0.25f, 0.5f, 0.75f, (float)(round + 1) / (float)(rounds + 1)};

    CHECK(vkResetCommandBuffer(cmd, 0));
    VkCommandBufferBeginInfo bi = {VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    CHECK(vkBeginCommandBuffer(cmd, &bi));
    VkBufferCopy copy = {0, 0, kBytes};
    vkCmdCopyBuffer(cmd, a.buf, b.buf, 1, &copy);
    vkCmdFillBuffer(cmd, c.buf, 0, kBytes, kFill);
    VkImageMemoryBarrier to_dst = {VK_STRUCTURE_TYPE_IMAGE_MEMORY_BARRIER};
    to_dst.srcAccessMask = 0;
    to_dst.dstAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
    to_dst.oldLayout = VK_IMAGE_LAYOUT_UNDEFINED;
    to_dst.newLayout = VK_IMAGE_LAYOUT_TRANSFER_DST_OPTIMAL;
    to_dst.srcQueueFamilyIndex = to_dst.dstQueueFamilyIndex = VK_QUEUE_FAMILY_IGNORED;
    to_dst.image = image;
    to_dst.subresourceRange = (VkImageSubresourceRange){VK_IMAGE_ASPECT_COLOR_BIT, 0, 1, 0, 1};
    vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 0, NULL, 0, NULL, 1,
                         &to_dst);
    VkClearColorValue colour;
    memcpy(colour.float32, rgba, sizeof rgba);
    vkCmdClearColorImage(cmd, image, VK_IMAGE_LAYOUT_TRANSFER_DST_OPTIMAL, &colour, 1, &to_dst.subresourceRange);
    VkImageMemoryBarrier to_src = to_dst;
    to_src.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
    to_src.dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT;
    to_src.oldLayout = VK_IMAGE_LAYOUT_TRANSFER_DST_OPTIMAL;
    to_src.newLayout = VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL;
    vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 0, NULL, 0, NULL, 1,
                         &to_src);
    VkBufferImageCopy bic = {0};
    bic.imageSubresource = (VkImageSubresourceLayers){VK_IMAGE_ASPECT_COLOR_BIT, 0, 0, 1};
    bic.imageExtent = (VkExtent3D){kW, kH, 1};
    vkCmdCopyImageToBuffer(cmd, image, VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL, d.buf, 1, &bic);
    VkMemoryBarrier to_host = {VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    to_host.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
    to_host.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
    vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &to_host, 0, NULL, 0,
                         NULL);
    CHECK(vkEndCommandBuffer(cmd));
    VkSubmitInfo si = {VK_STRUCTURE_TYPE_SUBMIT_INFO};
    si.commandBufferCount = 1;
    si.pCommandBuffers = &cmd;
    CHECK(vkResetFences(g_dev, 1, &fence));
    CHECK(vkQueueSubmit(queue, 1, &si, fence));
    CHECK(vkWaitForFences(g_dev, 1, &fence, VK_TRUE, 60ull * 1000 * 1000 * 1000));

    if (memcmp(a.map, b.map, kBytes) != 0) {
      const uint32_t* pb = b.map;
      uint32_t i = 0;
      while (i < kBytes / 4 && pb[i] == pa[i]) ++i;
      printf("canopy-guest-vk: round %d: B differs from A at word %u (0x%08x, want 0x%08x)\n", round, i, pb[i], pa[i]);
      fail("the copied buffer differs", VK_ERROR_UNKNOWN);
    }
    const uint32_t* pc = c.map;
    for (uint32_t i = 0; i < kBytes / 4; ++i)
      if (pc[i] != (uint32_t)kFill) {
        printf("canopy-guest-vk: round %d: C word %u is 0x%08x\n", round, i, pc[i]);
        fail("the filled buffer differs", VK_ERROR_UNKNOWN);
      }
    const uint8_t* pd8 = d.map;
    uint8_t want[4];
    for (int k = 0; k < 4; ++k) want[k] = (uint8_t)(rgba[k] * 255.0f + 0.5f);
    for (uint32_t i = 0; i < kW * kH; ++i)
      for (int k = 0; k < 4; ++k)
        if (abs((int)pd8[i * 4 + k] - (int)want[k]) > 1) {
          printf("canopy-guest-vk: round %d: pixel %u is %u,%u,%u,%u, want %u,%u,%u,%u\n", round, i, pd8[i * 4],
                 pd8[i * 4 + 1], pd8[i * 4 + 2], pd8[i * 4 + 3], want[0], want[1], want[2], want[3]);
          fail("the cleared image differs", VK_ERROR_UNKNOWN);
        }
    printf("canopy-guest-vk: round %d: copy %u bytes equal, fill equal, clear %u,%u,%u,%u equal\n", round,
           (unsigned)kBytes, want[0], want[1], want[2], want[3]);
  }
  vkDestroyFence(g_dev, fence, NULL);
  vkDestroyCommandPool(g_dev, pool, NULL);
  vkDestroyImage(g_dev, image, NULL);
  vkFreeMemory(g_dev, imem, NULL);
  struct buffer* all[] = {&a, &b, &c, &d};
  for (int i = 0; i < 4; ++i) {
    vkUnmapMemory(g_dev, all[i]->mem);
    vkDestroyBuffer(g_dev, all[i]->buf, NULL);
    vkFreeMemory(g_dev, all[i]->mem, NULL);
  }
  vkDestroyDevice(g_dev, NULL);
  vkDestroyInstance(inst, NULL);
  printf("canopy-guest-vk: PASS %d round(s)\n", rounds);
  return 0;
}
