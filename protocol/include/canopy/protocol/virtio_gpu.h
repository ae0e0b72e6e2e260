// virtio-gpu wire format (virtio 1.2 §5.7.6): explicit little-endian structs with their sizes and
// offsets asserted (BRIEF conventions 4). Values match the spec; names follow it without the prefix.
#pragma once

#include <cstddef>
#include <cstdint>

#include "canopy/base/le.h"

namespace canopy::protocol::virtio_gpu {

// Feature bits (§5.7.3).
inline constexpr uint64_t kFVirgl = uint64_t{1} << 0;
inline constexpr uint64_t kFEdid = uint64_t{1} << 1;
inline constexpr uint64_t kFResourceUuid = uint64_t{1} << 2;
inline constexpr uint64_t kFResourceBlob = uint64_t{1} << 3;
inline constexpr uint64_t kFContextInit = uint64_t{1} << 4;

inline constexpr uint32_t kMaxScanouts = 16;
inline constexpr uint32_t kEventDisplay = 1;
inline constexpr uint32_t kFlagFence = 1u << 0;
inline constexpr uint32_t kFlagInfoRingIdx = 1u << 1;
inline constexpr uint32_t kMaxRings = 64;  // ring_idx < 64 (§5.7.6.7)
inline constexpr uint32_t kContextInitCapsetMask = 0xff;

enum class Cmd : uint32_t {
  kUndefined = 0,
  kGetDisplayInfo = 0x0100,
  kResourceCreate2d,
  kResourceUnref,
  kSetScanout,
  kResourceFlush,
  kTransferToHost2d,
  kResourceAttachBacking,
  kResourceDetachBacking,
  kGetCapsetInfo,
  kGetCapset,
  kGetEdid,
  kResourceAssignUuid,
  kResourceCreateBlob,
  kSetScanoutBlob,
  kCtxCreate = 0x0200,
  kCtxDestroy,
  kCtxAttachResource,
  kCtxDetachResource,
  kResourceCreate3d,
  kTransferToHost3d,
  kTransferFromHost3d,
  kSubmit3d,
  kResourceMapBlob,
  kResourceUnmapBlob,
  kUpdateCursor = 0x0300,
  kMoveCursor,
};

enum class Resp : uint32_t {
  kOkNodata = 0x1100,
  kOkDisplayInfo,
  kOkCapsetInfo,
  kOkCapset,
  kOkEdid,
  kOkResourceUuid,
  kOkMapInfo,
  kErrUnspec = 0x1200,
  kErrOutOfMemory,
  kErrInvalidScanoutId,
  kErrInvalidResourceId,
  kErrInvalidContextId,
  kErrInvalidParameter,
};

const char* cmd_name(uint32_t type);
const char* resp_name(uint32_t type);

// Pixel formats (§5.7.6.8): the byte order in memory is the name's order.
enum class Format : uint32_t {
  kB8G8R8A8 = 1,
  kB8G8R8X8 = 2,
  kA8R8G8B8 = 3,
  kX8R8G8B8 = 4,
  kR8G8B8A8 = 67,
  kX8B8G8R8 = 68,
  kA8B8G8R8 = 121,
  kR8G8B8X8 = 134,
};
// The DRM fourcc of a virtio-gpu format (little-endian packed), or 0 for an unknown value.
uint32_t drm_fourcc(uint32_t virtio_format);
inline constexpr uint32_t kBytesPerPixel = 4;  // every 2D format above

enum class BlobMem : uint32_t { kGuest = 1, kHost3d = 2, kHost3dGuest = 3 };
inline constexpr uint32_t kBlobFlagMappable = 1, kBlobFlagShareable = 2, kBlobFlagCrossDevice = 4;

struct CtrlHdr {
  le32 type;
  le32 flags;
  le64 fence_id;
  le32 ctx_id;
  uint8_t ring_idx;
  uint8_t padding[3];
};
static_assert(sizeof(CtrlHdr) == 24 && offsetof(CtrlHdr, ring_idx) == 20);

// A request header (drivers and tests build every command on one).
inline CtrlHdr make_hdr(Cmd type, uint32_t flags = 0, uint64_t fence_id = 0, uint32_t ctx_id = 0,
                        uint8_t ring_idx = 0) {
  CtrlHdr h{};
  h.type = uint32_t(type);
  h.flags = flags;
  h.fence_id = fence_id;
  h.ctx_id = ctx_id;
  h.ring_idx = ring_idx;
  return h;
}

struct Rect {
  le32 x, y, width, height;
};
static_assert(sizeof(Rect) == 16);

struct DisplayOne {
  Rect r;
  le32 enabled;
  le32 flags;
};
struct RespDisplayInfo {
  CtrlHdr hdr;
  DisplayOne pmodes[kMaxScanouts];
};
static_assert(sizeof(RespDisplayInfo) == 24 + 16 * 24);

struct ResourceCreate2d {
  CtrlHdr hdr;
  le32 resource_id, format, width, height;
};
static_assert(sizeof(ResourceCreate2d) == 40);

struct ResourceUnref {
  CtrlHdr hdr;
  le32 resource_id, padding;
};
static_assert(sizeof(ResourceUnref) == 32);

struct SetScanout {
  CtrlHdr hdr;
  Rect r;
  le32 scanout_id, resource_id;
};
static_assert(sizeof(SetScanout) == 48);

struct ResourceFlush {
  CtrlHdr hdr;
  Rect r;
  le32 resource_id, padding;
};
static_assert(sizeof(ResourceFlush) == 48);

struct TransferToHost2d {
  CtrlHdr hdr;
  Rect r;
  le64 offset;
  le32 resource_id, padding;
};
static_assert(sizeof(TransferToHost2d) == 56 && offsetof(TransferToHost2d, offset) == 40);

struct MemEntry {
  le64 addr;
  le32 length, padding;
};
static_assert(sizeof(MemEntry) == 16);

struct ResourceAttachBacking {
  CtrlHdr hdr;
  le32 resource_id, nr_entries;
};
static_assert(sizeof(ResourceAttachBacking) == 32);

struct ResourceDetachBacking {
  CtrlHdr hdr;
  le32 resource_id, padding;
};
static_assert(sizeof(ResourceDetachBacking) == 32);

struct GetCapsetInfo {
  CtrlHdr hdr;
  le32 capset_index, padding;
};
static_assert(sizeof(GetCapsetInfo) == 32);

struct RespCapsetInfo {
  CtrlHdr hdr;
  le32 capset_id, capset_max_version, capset_max_size, padding;
};
static_assert(sizeof(RespCapsetInfo) == 40);

struct GetCapset {
  CtrlHdr hdr;
  le32 capset_id, capset_version;
};
static_assert(sizeof(GetCapset) == 32);

struct GetEdid {
  CtrlHdr hdr;
  le32 scanout, padding;
};
static_assert(sizeof(GetEdid) == 32);

inline constexpr uint32_t kEdidBlobSize = 1024;
struct RespEdid {
  CtrlHdr hdr;
  le32 size, padding;
  uint8_t edid[kEdidBlobSize];
};
static_assert(sizeof(RespEdid) == 32 + 1024);

struct ResourceAssignUuid {
  CtrlHdr hdr;
  le32 resource_id, padding;
};
static_assert(sizeof(ResourceAssignUuid) == 32);

struct RespResourceUuid {
  CtrlHdr hdr;
  uint8_t uuid[16];
};
static_assert(sizeof(RespResourceUuid) == 40);

struct ResourceCreateBlob {
  CtrlHdr hdr;
  le32 resource_id, blob_mem, blob_flags, nr_entries;
  le64 blob_id, size;
};
static_assert(sizeof(ResourceCreateBlob) == 56 && offsetof(ResourceCreateBlob, blob_id) == 40);

struct SetScanoutBlob {
  CtrlHdr hdr;
  Rect r;
  le32 scanout_id, resource_id, width, height, format, padding;
  le32 strides[4];
  le32 offsets[4];
};
static_assert(sizeof(SetScanoutBlob) == 96 && offsetof(SetScanoutBlob, strides) == 64);

struct CtxCreate {
  CtrlHdr hdr;
  le32 nlen, context_init;
  char debug_name[64];
};
static_assert(sizeof(CtxCreate) == 96);

struct CtxDestroy {
  CtrlHdr hdr;
};

struct CtxResource {
  CtrlHdr hdr;
  le32 resource_id, padding;
};
static_assert(sizeof(CtxResource) == 32);

// RESOURCE_CREATE_3D (§5.7.6.10): Gallium's target / format / bind values, passed to the renderer.
inline constexpr uint32_t kResourceFlagY0Top = 1u << 0;
struct ResourceCreate3d {
  CtrlHdr hdr;
  le32 resource_id, target, format, bind, width, height, depth, array_size, last_level, nr_samples, flags, padding;
};
static_assert(sizeof(ResourceCreate3d) == 72 && offsetof(ResourceCreate3d, flags) == 64);

struct Box {
  le32 x, y, z, w, h, d;
};
static_assert(sizeof(Box) == 24);

// TRANSFER_TO_HOST_3D and TRANSFER_FROM_HOST_3D (§5.7.6.10).
struct TransferHost3d {
  CtrlHdr hdr;
  Box box;
  le64 offset;
  le32 resource_id, level, stride, layer_stride;
};
static_assert(sizeof(TransferHost3d) == 72 && offsetof(TransferHost3d, offset) == 48 &&
              offsetof(TransferHost3d, resource_id) == 56);

struct CmdSubmit {
  CtrlHdr hdr;
  le32 size, padding;
};
static_assert(sizeof(CmdSubmit) == 32);

struct ResourceMapBlob {
  CtrlHdr hdr;
  le32 resource_id, padding;
  le64 offset;
};
static_assert(sizeof(ResourceMapBlob) == 40);

// VIRTIO_GPU_RESP_OK_MAP_INFO's body: how the guest should cache the mapping.
inline constexpr uint32_t kMapCacheMask = 0x0f, kMapCacheNone = 0, kMapCacheCached = 1, kMapCacheUncached = 2,
                          kMapCacheWc = 3;
struct RespMapInfo {
  CtrlHdr hdr;
  le32 map_info, padding;
};
static_assert(sizeof(RespMapInfo) == 32);

// Shared memory region ids (§5.7.5): the host-visible region RESOURCE_MAP_BLOB maps into.
inline constexpr uint8_t kShmIdHostVisible = 1;

struct ResourceUnmapBlob {
  CtrlHdr hdr;
  le32 resource_id, padding;
};
static_assert(sizeof(ResourceUnmapBlob) == 32);

struct CursorPos {
  le32 scanout_id, x, y, padding;
};
struct UpdateCursor {
  CtrlHdr hdr;
  CursorPos pos;
  le32 resource_id, hot_x, hot_y, padding;
};
static_assert(sizeof(UpdateCursor) == 56);
inline constexpr uint32_t kCursorSize = 64;  // cursor images are 64x64 (§5.7.6.10)

struct Config {
  le32 events_read, events_clear, num_scanouts, num_capsets;
};
static_assert(sizeof(Config) == 16);

}  // namespace canopy::protocol::virtio_gpu
