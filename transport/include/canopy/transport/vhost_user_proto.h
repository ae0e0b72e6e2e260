// vhost-user wire protocol (QEMU docs/interop/vhost-user.rst): message header, request codes, payloads.
// All payload structs are little-endian wire structs with static_asserted layouts (BRIEF conventions 4).
#pragma once

#include <cstddef>
#include <cstdint>

#include "canopy/base/le.h"

namespace canopy::transport::vhost_user {

// Requests sent by the front-end.
enum class Request : uint32_t {
  kNone = 0,
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kCreateCryptoSession = 26,
  kCloseCryptoSession = 27,
  kPostcopyAdvise = 28,
  kPostcopyListen = 29,
  kPostcopyEnd = 30,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kGpuSetSocket = 33,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
  kGetSharedObject = 41,
  kSetDeviceStateFd = 42,
  kCheckDeviceState = 43,
  kGetShmemConfig = 44,
  kMax = 45,
};

const char* request_name(Request r);

// Requests sent by the back-end on the back-end request channel (SET_BACKEND_REQ_FD).
enum class BackendRequest : uint32_t {
  kIotlbMsg = 1,
  kConfigChangeMsg = 2,
  kVringHostNotifierMsg = 3,
  kSharedObjectAdd = 6,
  kSharedObjectRemove = 7,
  kSharedObjectLookup = 8,
  kShmemMap = 9,
  kShmemUnmap = 10,
};

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
enum ProtocolFeature : uint64_t {
  kProtoMq = 0,
  kProtoLogShmfd = 1,
  kProtoRarp = 2,
  kProtoReplyAck = 3,
  kProtoMtu = 4,
  kProtoBackendReq = 5,
  kProtoCrossEndian = 6,
  kProtoCryptoSession = 7,
  kProtoPagefault = 8,
  kProtoConfig = 9,
  kProtoBackendSendFd = 10,
  kProtoHostNotifier = 11,
  kProtoInflightShmfd = 12,
  kProtoResetDevice = 13,
  kProtoInbandNotifications = 14,
  kProtoConfigureMemSlots = 15,
  kProtoStatus = 16,
  kProtoXenMmap = 17,
  kProtoSharedObject = 18,
  kProtoDeviceState = 19,
  kProtoShmem = 20,
};
constexpr uint64_t proto_bit(ProtocolFeature f) { return 1ull << f; }

// Header flags.
inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kVersionMask = 0x3;
inline constexpr uint32_t kFlagReply = 1u << 2;
inline constexpr uint32_t kFlagNeedReply = 1u << 3;

// Vring index payloads for KICK/CALL/ERR carry the index in bits 0-7 and "no fd" in bit 8.
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFdMask = 1ull << 8;

// Memory table limits: SET_MEM_TABLE carries at most 8 regions; with CONFIGURE_MEM_SLOTS up to
// GET_MAX_MEM_SLOTS regions are added one by one.
inline constexpr uint32_t kMemoryBaselineRegions = 8;
inline constexpr uint32_t kMaxFdsPerMessage = 8;
// Largest payload we accept: SET_MEM_TABLE (8 + 8*32) or a config space message (12 + 256).
inline constexpr uint32_t kMaxConfigSize = 256;
inline constexpr uint32_t kMaxPayload = 4096;

struct Header {
  le32 request;
  le32 flags;
  le32 size;
};
static_assert(sizeof(Header) == 12);

struct VringState {
  le32 index;
  le32 num;
};
static_assert(sizeof(VringState) == 8);

struct VringAddr {
  le32 index;
  le32 flags;  // bit 0: VHOST_VRING_F_LOG
  le64 desc_user_addr;
  le64 used_user_addr;
  le64 avail_user_addr;
  le64 log_guest_addr;
};
static_assert(sizeof(VringAddr) == 40);
static_assert(offsetof(VringAddr, desc_user_addr) == 8 && offsetof(VringAddr, avail_user_addr) == 24);

struct MemoryRegion {
  le64 guest_phys_addr;
  le64 memory_size;
  le64 userspace_addr;
  le64 mmap_offset;
};
static_assert(sizeof(MemoryRegion) == 32);

struct MemoryTable {
  le32 nregions;
  le32 padding;
  MemoryRegion regions[kMemoryBaselineRegions];
};
static_assert(sizeof(MemoryTable) == 8 + 32 * 8);
inline constexpr size_t kMemoryTableHeaderSize = 8;

struct SingleMemoryRegion {
  le64 padding;
  MemoryRegion region;
};
static_assert(sizeof(SingleMemoryRegion) == 40);

struct ConfigHeader {
  le32 offset;
  le32 size;
  le32 flags;  // 0: VHOST_SET_CONFIG_TYPE_FRONTEND, 1: MIGRATION
};
static_assert(sizeof(ConfigHeader) == 12);

// VIRTIO shared memory regions (protocol feature SHMEM): GET_SHMEM_CONFIG's reply gives each region's
// size by shmid (0 = none); the back-end then maps files into them with SHMEM_MAP / SHMEM_UNMAP on the
// back-end request channel (with NEED_REPLY; the front-end answers 0 when done).
inline constexpr uint32_t kMaxShmemRegions = 256;
struct ShmemConfig {
  le32 nregions;  // regions with a non-zero size
  le32 padding;
  le64 memory_sizes[kMaxShmemRegions];
};
static_assert(sizeof(ShmemConfig) == 8 + 8 * 256);

inline constexpr uint64_t kShmemMapWritable = 1;
struct ShmemMap {
  uint8_t shmid;
  uint8_t padding[7];
  le64 fd_offset;   // of the area in the file (MAP only)
  le64 shm_offset;  // from the start of the region
  le64 len;
  le64 flags;  // kShmemMapWritable, else read-only (MAP only)
};
static_assert(sizeof(ShmemMap) == 40 && offsetof(ShmemMap, fd_offset) == 8);

}  // namespace canopy::transport::vhost_user
