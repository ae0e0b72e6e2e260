// The 8250/16550A UART at COM1 (I/O 0x3f8, IRQ 4) of canopy-vmm's KVM guests: enough for Linux's
// console and its tty layer. Transmit is immediate (LSR always says THR empty); a THR-empty interrupt is
// raised when the driver enables it or writes a byte with it enabled (through `irq`, an edge pulse);
// receive is not wired (no input). Output bytes go to `out`.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

namespace canopy::hypervisor::kvm {

class Serial8250 {
 public:
  static constexpr uint16_t kBase = 0x3f8;
  static constexpr uint32_t kIrq = 4;
  Serial8250(std::function<void(uint8_t)> out, std::function<void()> irq)
      : out_(std::move(out)), irq_(std::move(irq)) {}
  // Port offsets 0..7 from kBase.
  uint8_t read(uint16_t offset);
  void write(uint16_t offset, uint8_t value);

 private:
  std::mutex mu_;
  std::function<void(uint8_t)> out_;
  std::function<void()> irq_;
  uint8_t ier_ = 0, lcr_ = 0x03, mcr_ = 0x08, scr_ = 0, dll_ = 0x0c, dlm_ = 0;
  bool thre_pending_ = false;
};

// Appends one byte of a guest's console output to `line` as canopy-vmm prints it on its own stdout (a
// terminal, a log): printable ASCII, line feeds and tabs as they are; a carriage return dropped; every
// other byte (escape sequences, other control bytes, DEL, bytes >= 0x80 that a terminal may take as
// C1 controls) as the text \xNN, so a guest can neither drive the host's terminal nor forge its lines.
void append_console_byte(std::string& line, uint8_t b);

}  // namespace canopy::hypervisor::kvm
