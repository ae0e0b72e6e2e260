#include "canopy/protocol/virtio_snd.h"

#include <cstring>

namespace canopy::protocol::virtio_snd {

const char* code_name(uint32_t code) {
  switch (Code(code)) {
    case Code::kJackInfo: return "JACK_INFO";
    case Code::kJackRemap: return "JACK_REMAP";
    case Code::kPcmInfo: return "PCM_INFO";
    case Code::kPcmSetParams: return "PCM_SET_PARAMS";
    case Code::kPcmPrepare: return "PCM_PREPARE";
    case Code::kPcmRelease: return "PCM_RELEASE";
    case Code::kPcmStart: return "PCM_START";
    case Code::kPcmStop: return "PCM_STOP";
    case Code::kChmapInfo: return "CHMAP_INFO";
    case Code::kCtlInfo: return "CTL_INFO";
    case Code::kCtlEnumItems: return "CTL_ENUM_ITEMS";
    case Code::kCtlRead: return "CTL_READ";
    case Code::kCtlWrite: return "CTL_WRITE";
    case Code::kCtlTlvRead: return "CTL_TLV_READ";
    case Code::kCtlTlvWrite: return "CTL_TLV_WRITE";
    case Code::kCtlTlvCommand: return "CTL_TLV_COMMAND";
    case Code::kEvtJackConnected: return "EVT_JACK_CONNECTED";
    case Code::kEvtJackDisconnected: return "EVT_JACK_DISCONNECTED";
    case Code::kEvtPcmPeriodElapsed: return "EVT_PCM_PERIOD_ELAPSED";
    case Code::kEvtPcmXrun: return "EVT_PCM_XRUN";
    case Code::kEvtCtlNotify: return "EVT_CTL_NOTIFY";
    case Code::kOk: return "S_OK";
    case Code::kBadMsg: return "S_BAD_MSG";
    case Code::kNotSupp: return "S_NOT_SUPP";
    case Code::kIoErr: return "S_IO_ERR";
  }
  return "unknown";
}

uint32_t format_bytes(uint8_t format) {
  switch (Format(format)) {
    case Format::kU8: return 1;
    case Format::kS16: return 2;
    case Format::kS24:
    case Format::kS32:
    case Format::kFloat: return 4;
    default: return 0;
  }
}

const char* format_name(uint8_t format) {
  static const char* const names[kFormatCount] = {"IMA_ADPCM", "MU_LAW", "A_LAW",   "S8",      "U8",
                                                  "S16",       "U16",    "S18_3",   "U18_3",   "S20_3",
                                                  "U20_3",     "S24_3",  "U24_3",   "S20",     "U20",
                                                  "S24",       "U24",    "S32",     "U32",     "FLOAT",
                                                  "FLOAT64",   "DSD_U8", "DSD_U16", "DSD_U32", "IEC958_SUBFRAME"};
  return format < kFormatCount ? names[format] : "unknown";
}

int rate_bit(uint32_t hz) {
  for (int i = 0; i < kRateCount; ++i)
    if (kRates[i] == hz) return i;
  return -1;
}

namespace {
const char* const kPosNames[kPosCount] = {"NONE", "NA",  "MONO", "FL",   "FR",  "RL",  "RR",  "FC",  "LFE",  "SL",
                                          "SR",   "RC",  "FLC",  "FRC",  "RLC", "RRC", "FLW", "FRW", "FLH",  "FCH",
                                          "FRH",  "TC",  "TFL",  "TFR",  "TFC", "TRL", "TRR", "TRC", "TFLC", "TFRC",
                                          "TSL",  "TSR", "LLFE", "RLFE", "BC",  "BLC", "BRC"};
}

int position_from_name(const char* name) {
  for (int i = 0; i < kPosCount; ++i)
    if (std::strcmp(kPosNames[i], name) == 0) return i;
  return -1;
}

const char* position_name(uint8_t pos) { return pos < kPosCount ? kPosNames[pos] : "?"; }

}  // namespace canopy::protocol::virtio_snd
