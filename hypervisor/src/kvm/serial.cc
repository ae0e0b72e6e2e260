#include "kvm/serial.h"

namespace canopy::hypervisor::kvm {

namespace {
constexpr uint8_t kDlab = 0x80, kIerThri = 0x02, kLsrIdle = 0x60 /* THRE | TEMT */, kMsrIdle = 0xb0;
}

uint8_t Serial8250::read(uint16_t off) {
  std::lock_guard<std::mutex> l(mu_);
  switch (off) {
    case 0: return (lcr_ & kDlab) ? dll_ : 0;  // no receive data
    case 1: return (lcr_ & kDlab) ? dlm_ : ier_;
    case 2:  // IIR: FIFOs on (0xc0); a pending THR-empty interrupt is reported once
      if (thre_pending_) {
        thre_pending_ = false;
        return 0xc2;
      }
      return 0xc1;
    case 3: return lcr_;
    case 4: return mcr_;
    case 5: return kLsrIdle;
    case 6:
      return (mcr_ & 0x10) ? uint8_t(((mcr_ & 0x0c) << 4) | ((mcr_ & 0x01) << 5) | ((mcr_ & 0x02) << 3)) : kMsrIdle;
    case 7: return scr_;
    default: return 0xff;
  }
}

void Serial8250::write(uint16_t off, uint8_t v) {
  bool raise = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    switch (off) {
      case 0:
        if (lcr_ & kDlab) {
          dll_ = v;
        } else {
          if (!(mcr_ & 0x10)) out_(v);  // loopback mode sends nothing out
          if (ier_ & kIerThri) thre_pending_ = raise = true;
        }
        break;
      case 1:
        if (lcr_ & kDlab) {
          dlm_ = v;
        } else {
          const bool was = ier_ & kIerThri;
          ier_ = v & 0x0f;
          if ((ier_ & kIerThri) && !was) thre_pending_ = raise = true;  // THR is always empty
        }
        break;
      case 2: break;  // FCR
      case 3: lcr_ = v; break;
      case 4: mcr_ = v & 0x1f; break;
      case 7: scr_ = v; break;
      default: break;
    }
  }
  if (raise && irq_) irq_();
}

void append_console_byte(std::string& line, uint8_t b) {
  if (b == '\r') return;
  if (b == '\n' || b == '\t' || (b >= 0x20 && b < 0x7f)) {
    line.push_back(char(b));
    return;
  }
  static const char kHex[] = "0123456789abcdef";
  line += "\\x";
  line.push_back(kHex[b >> 4]);
  line.push_back(kHex[b & 15]);
}

}  // namespace canopy::hypervisor::kvm
