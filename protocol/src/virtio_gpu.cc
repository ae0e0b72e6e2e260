#include "canopy/protocol/virtio_gpu.h"

#include "canopy/buffers/image.h"

namespace canopy::protocol::virtio_gpu {

const char* cmd_name(uint32_t type) {
  switch (static_cast<Cmd>(type)) {
    case Cmd::kGetDisplayInfo: return "GET_DISPLAY_INFO";
    case Cmd::kResourceCreate2d: return "RESOURCE_CREATE_2D";
    case Cmd::kResourceUnref: return "RESOURCE_UNREF";
    case Cmd::kSetScanout: return "SET_SCANOUT";
    case Cmd::kResourceFlush: return "RESOURCE_FLUSH";
    case Cmd::kTransferToHost2d: return "TRANSFER_TO_HOST_2D";
    case Cmd::kResourceAttachBacking: return "RESOURCE_ATTACH_BACKING";
    case Cmd::kResourceDetachBacking: return "RESOURCE_DETACH_BACKING";
    case Cmd::kGetCapsetInfo: return "GET_CAPSET_INFO";
    case Cmd::kGetCapset: return "GET_CAPSET";
    case Cmd::kGetEdid: return "GET_EDID";
    case Cmd::kResourceAssignUuid: return "RESOURCE_ASSIGN_UUID";
    case Cmd::kResourceCreateBlob: return "RESOURCE_CREATE_BLOB";
    case Cmd::kSetScanoutBlob: return "SET_SCANOUT_BLOB";
    case Cmd::kCtxCreate: return "CTX_CREATE";
    case Cmd::kCtxDestroy: return "CTX_DESTROY";
    case Cmd::kCtxAttachResource: return "CTX_ATTACH_RESOURCE";
    case Cmd::kCtxDetachResource: return "CTX_DETACH_RESOURCE";
    case Cmd::kResourceCreate3d: return "RESOURCE_CREATE_3D";
    case Cmd::kTransferToHost3d: return "TRANSFER_TO_HOST_3D";
    case Cmd::kTransferFromHost3d: return "TRANSFER_FROM_HOST_3D";
    case Cmd::kSubmit3d: return "SUBMIT_3D";
    case Cmd::kResourceMapBlob: return "RESOURCE_MAP_BLOB";
    case Cmd::kResourceUnmapBlob: return "RESOURCE_UNMAP_BLOB";
    case Cmd::kUpdateCursor: return "UPDATE_CURSOR";
    case Cmd::kMoveCursor: return "MOVE_CURSOR";
    default: return "unknown";
  }
}

const char* resp_name(uint32_t type) {
  switch (static_cast<Resp>(type)) {
    case Resp::kOkNodata: return "OK_NODATA";
    case Resp::kOkDisplayInfo: return "OK_DISPLAY_INFO";
    case Resp::kOkCapsetInfo: return "OK_CAPSET_INFO";
    case Resp::kOkCapset: return "OK_CAPSET";
    case Resp::kOkEdid: return "OK_EDID";
    case Resp::kOkResourceUuid: return "OK_RESOURCE_UUID";
    case Resp::kOkMapInfo: return "OK_MAP_INFO";
    case Resp::kErrUnspec: return "ERR_UNSPEC";
    case Resp::kErrOutOfMemory: return "ERR_OUT_OF_MEMORY";
    case Resp::kErrInvalidScanoutId: return "ERR_INVALID_SCANOUT_ID";
    case Resp::kErrInvalidResourceId: return "ERR_INVALID_RESOURCE_ID";
    case Resp::kErrInvalidContextId: return "ERR_INVALID_CONTEXT_ID";
    case Resp::kErrInvalidParameter: return "ERR_INVALID_PARAMETER";
    default: return "unknown";
  }
}

uint32_t drm_fourcc(uint32_t virtio_format) {
  using buffers::fourcc_code;
  // virtio names list bytes in memory order; DRM names list bits of a little-endian word, high first.
  switch (static_cast<Format>(virtio_format)) {
    case Format::kB8G8R8A8: return fourcc_code('A', 'R', '2', '4');  // ARGB8888
    case Format::kB8G8R8X8: return fourcc_code('X', 'R', '2', '4');  // XRGB8888
    case Format::kA8R8G8B8: return fourcc_code('B', 'A', '2', '4');  // BGRA8888
    case Format::kX8R8G8B8: return fourcc_code('B', 'X', '2', '4');  // BGRX8888
    case Format::kR8G8B8A8: return fourcc_code('A', 'B', '2', '4');  // ABGR8888
    case Format::kX8B8G8R8: return fourcc_code('R', 'X', '2', '4');  // RGBX8888
    case Format::kA8B8G8R8: return fourcc_code('R', 'A', '2', '4');  // RGBA8888
    case Format::kR8G8B8X8: return fourcc_code('X', 'B', '2', '4');  // XBGR8888
    default: return 0;
  }
}

}  // namespace canopy::protocol::virtio_gpu
