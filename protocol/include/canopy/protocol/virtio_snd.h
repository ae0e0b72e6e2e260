// virtio-snd wire format (virtio 1.2 §5.14, control elements of virtio 1.3): explicit little-endian
// structs with their sizes and offsets asserted (BRIEF conventions 4). Values follow the spec; names
// follow it without the VIRTIO_SND_ prefix.
#pragma once

#include <cstddef>
#include <cstdint>

#include "canopy/base/le.h"

namespace canopy::protocol::virtio_snd {

inline constexpr uint32_t kDeviceId = 25;
inline constexpr uint64_t kFCtls = uint64_t{1} << 0;  // VIRTIO_SND_F_CTLS (1.3)

// Queues.
inline constexpr uint16_t kControlQ = 0, kEventQ = 1, kTxQ = 2, kRxQ = 3, kNumQueues = 4;

enum class Code : uint32_t {
  kJackInfo = 1,
  kJackRemap = 2,
  kPcmInfo = 0x0100,
  kPcmSetParams = 0x0101,
  kPcmPrepare = 0x0102,
  kPcmRelease = 0x0103,
  kPcmStart = 0x0104,
  kPcmStop = 0x0105,
  kChmapInfo = 0x0200,
  kCtlInfo = 0x0300,
  kCtlEnumItems = 0x0301,
  kCtlRead = 0x0302,
  kCtlWrite = 0x0303,
  kCtlTlvRead = 0x0304,
  kCtlTlvWrite = 0x0305,
  kCtlTlvCommand = 0x0306,
  kEvtJackConnected = 0x1000,
  kEvtJackDisconnected = 0x1001,
  kEvtPcmPeriodElapsed = 0x1100,
  kEvtPcmXrun = 0x1101,
  kEvtCtlNotify = 0x1200,
  kOk = 0x8000,
  kBadMsg = 0x8001,
  kNotSupp = 0x8002,
  kIoErr = 0x8003,
};
const char* code_name(uint32_t code);

enum class Direction : uint8_t { kOutput = 0, kInput = 1 };

// PCM stream feature bits (§5.14.6.6.2).
inline constexpr uint32_t kPcmFShmemHost = 1u << 0, kPcmFShmemGuest = 1u << 1, kPcmFMsgPolling = 1u << 2,
                          kPcmFEvtShmemPeriods = 1u << 3, kPcmFEvtXruns = 1u << 4;

// PCM sample formats (bit numbers).
enum class Format : uint8_t {
  kImaAdpcm = 0,
  kMuLaw,
  kALaw,
  kS8,
  kU8,
  kS16,
  kU16,
  kS18_3,
  kU18_3,
  kS20_3,
  kU20_3,
  kS24_3,
  kU24_3,
  kS20,
  kU20,
  kS24,
  kU24,
  kS32,
  kU32,
  kFloat,
  kFloat64,
  kDsdU8,
  kDsdU16,
  kDsdU32,
  kIec958Subframe,
};
inline constexpr uint8_t kFormatCount = 25;
// Bytes per sample of a format the device can carry (0: not a linear PCM format it supports).
uint32_t format_bytes(uint8_t format);
const char* format_name(uint8_t format);
// The byte that fills silence in a format (0x80 for unsigned 8-bit, else 0).
inline uint8_t silence_byte(uint8_t format) { return format == uint8_t(Format::kU8) ? 0x80 : 0; }

// PCM frame rates (bit numbers): 5512, 8000, ... 384000 (§5.14.6.6.2).
inline constexpr uint8_t kRateCount = 14;
inline constexpr uint32_t kRates[kRateCount] = {5512,  8000,  11025, 16000, 22050,  32000,  44100,
                                                48000, 64000, 88200, 96000, 176400, 192000, 384000};
// The bit of a rate in Hz; -1 when virtio-snd has none.
int rate_bit(uint32_t hz);

// Channel positions (§5.14.6.8.1.1).
enum class Pos : uint8_t {
  kNone = 0,
  kNa,
  kMono,
  kFl,
  kFr,
  kRl,
  kRr,
  kFc,
  kLfe,
  kSl,
  kSr,
  kRc,
  kFlc,
  kFrc,
  kRlc,
  kRrc,
  kFlw,
  kFrw,
  kFlh,
  kFch,
  kFrh,
  kTc,
  kTfl,
  kTfr,
  kTfc,
  kTrl,
  kTrr,
  kTrc,
  kTflc,
  kTfrc,
  kTsl,
  kTsr,
  kLlfe,
  kRlfe,
  kBc,
  kBlc,
  kBrc,
};
inline constexpr uint8_t kPosCount = 37;
inline constexpr uint32_t kChmapMaxSize = 18;
// "FL" -> kFl etc.; -1 when unknown.
int position_from_name(const char* name);
const char* position_name(uint8_t pos);

struct Config {
  le32 jacks;
  le32 streams;
  le32 chmaps;
  le32 controls;  // only with kFCtls
};
static_assert(sizeof(Config) == 16);
inline constexpr uint32_t kConfigBytesNoCtls = 12;

struct Hdr {
  le32 code;
};
static_assert(sizeof(Hdr) == 4);

struct Event {
  Hdr hdr;
  le32 data;
};
static_assert(sizeof(Event) == 8);

struct QueryInfo {
  Hdr hdr;
  le32 start_id;
  le32 count;
  le32 size;
};
static_assert(sizeof(QueryInfo) == 16);

struct Info {
  le32 hda_fn_nid;
};

struct JackHdr {
  Hdr hdr;
  le32 jack_id;
};
static_assert(sizeof(JackHdr) == 8);

inline constexpr uint32_t kJackFRemap = 1u << 0;
struct JackInfo {
  Info hdr;
  le32 features;
  le32 hda_reg_defconf;
  le32 hda_reg_caps;
  uint8_t connected;
  uint8_t padding[7];
};
static_assert(sizeof(JackInfo) == 24);

struct JackRemap {
  JackHdr hdr;
  le32 association;
  le32 sequence;
};
static_assert(sizeof(JackRemap) == 16);

struct PcmHdr {
  Hdr hdr;
  le32 stream_id;
};
static_assert(sizeof(PcmHdr) == 8);

struct PcmInfo {
  Info hdr;
  le32 features;
  le64 formats;
  le64 rates;
  uint8_t direction;
  uint8_t channels_min;
  uint8_t channels_max;
  uint8_t padding[5];
};
static_assert(sizeof(PcmInfo) == 32 && offsetof(PcmInfo, formats) == 8 && offsetof(PcmInfo, direction) == 24);

struct PcmSetParams {
  PcmHdr hdr;
  le32 buffer_bytes;
  le32 period_bytes;
  le32 features;
  uint8_t channels;
  uint8_t format;
  uint8_t rate;
  uint8_t padding;
};
static_assert(sizeof(PcmSetParams) == 24 && offsetof(PcmSetParams, channels) == 20);

struct PcmXfer {
  le32 stream_id;
};
static_assert(sizeof(PcmXfer) == 4);

struct PcmStatus {
  le32 status;
  le32 latency_bytes;
};
static_assert(sizeof(PcmStatus) == 8);

struct ChmapHdr {
  Hdr hdr;
  le32 chmap_id;
};

struct ChmapInfo {
  Info hdr;
  uint8_t direction;
  uint8_t channels;
  uint8_t positions[kChmapMaxSize];
};
static_assert(sizeof(ChmapInfo) == 24);

// Control elements (virtio 1.3 §5.14.6.10).
enum class CtlRole : uint32_t { kUndefined = 0, kVolume = 1, kMute = 2, kGain = 3 };
enum class CtlType : uint32_t { kBoolean = 0, kInteger = 1, kInteger64 = 2, kEnumerated = 3, kBytes = 4, kIec958 = 5 };
inline constexpr uint32_t kCtlAccessRead = 1u << 0, kCtlAccessWrite = 1u << 1, kCtlAccessVolatile = 1u << 2,
                          kCtlAccessInactive = 1u << 3, kCtlAccessTlvRead = 1u << 4, kCtlAccessTlvWrite = 1u << 5,
                          kCtlAccessTlvCommand = 1u << 6;
inline constexpr uint16_t kCtlEvtMaskValue = 1u << 0, kCtlEvtMaskInfo = 1u << 1, kCtlEvtMaskTlv = 1u << 2;
inline constexpr uint32_t kCtlNameBytes = 44;

struct CtlHdr {
  Hdr hdr;
  le32 control_id;
};
static_assert(sizeof(CtlHdr) == 8);

struct CtlInfo {
  Info hdr;
  le32 role;
  le32 type;
  le32 access;
  le32 count;
  le32 index;
  uint8_t name[kCtlNameBytes];
  uint8_t pad[4];  // the le64 members of the value union align it to 8 (92 bytes on i386 guests: use `size`)
  // The spec's value union (24 bytes): INTEGER {le32 min, max, step}; INTEGER64 {le64 min, max, step}
  // over all 24 bytes; ENUMERATED {le32 items} (= integer.min). Only INTEGER is offered.
  struct {
    struct {
      le32 min, max, step;
    } integer;
    uint8_t rest[12];
  } value;
};
static_assert(sizeof(CtlInfo) == 96 && offsetof(CtlInfo, name) == 24 && offsetof(CtlInfo, value) == 72);

struct CtlValue {
  union {
    le32 integer[128]{};
    le64 integer64[64];
    le32 enumerated[128];
    uint8_t bytes[512];
  };
};
static_assert(sizeof(CtlValue) == 512);

struct CtlEvent {
  Hdr hdr;
  le16 control_id;
  le16 mask;
};
static_assert(sizeof(CtlEvent) == 8);

struct CtlTlvHdr {
  le32 type;
  le32 length;
};
// ALSA TLV types used by the device (include/uapi/sound/tlv.h).
inline constexpr uint32_t kTlvDbScale = 1;
inline constexpr uint32_t kTlvDbScaleMute = 0x10000;

// HDA pin configuration defaults (HDA 7.3.3.31) for jacks: default device (bits 20..23).
inline constexpr uint32_t kHdaDevLineOut = 0x0, kHdaDevSpeaker = 0x1, kHdaDevHpOut = 0x2, kHdaDevLineIn = 0x8,
                          kHdaDevMicIn = 0xa;
// Pin capabilities (HDA 7.3.4.9).
inline constexpr uint32_t kHdaCapPresenceDetect = 1u << 2, kHdaCapOutput = 1u << 4, kHdaCapInput = 1u << 5;

}  // namespace canopy::protocol::virtio_snd
