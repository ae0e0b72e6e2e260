// Minimal ACPI tables for canopy-vmm's KVM guests, as QEMU's microvm does: an unmodified distribution
// kernel (Debian's 6.12 has no virtio_mmio.device= command-line support) finds its virtio-mmio devices,
// vCPUs and IOAPIC in them. Hardware-reduced ACPI:
//   RSDP (v2) -> XSDT -> FADT (HW_REDUCED; sleep control/status and reset registers in I/O space;
//                              X_DSDT) and MADT (a local APIC per vCPU, the IOAPIC, LINT1 as NMI)
//   DSDT: Scope(\_SB) { Device(Vnnn) { _HID "LNRO0005", _UID, _CCA, _CRS { Memory32Fixed, Interrupt
//         (edge, active high: the VMM pulses the line through an irqfd) } } ... }, Name(\_S5, {5, 0, 0, 0})
// so that `poweroff` writes SLP_TYP 5 | SLP_EN (0x34) to the sleep control port and `reboot` the reset
// value to the reset port.
//
// Pure functions over guest RAM: unit-tested (checksums, lengths, AML bytes) without /dev/kvm.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "canopy/base/result.h"

namespace canopy::hypervisor::kvm {

inline constexpr uint16_t kSleepControlPort = 0x600;  // and sleep status at 0x601
inline constexpr uint16_t kResetPort = 0x602;
inline constexpr uint8_t kResetValue = 0x42;
inline constexpr uint8_t kSleepEnable = 0x20;  // SLP_EN in the sleep control register
inline constexpr uint64_t kIoApicAddr = 0xfec00000, kLocalApicAddr = 0xfee00000;

struct AcpiVirtioDevice {
  uint64_t base = 0;  // MMIO window
  uint32_t size = 0;
  uint32_t gsi = 0;
};

struct AcpiConfig {
  uint32_t vcpus = 1;
  bool com1 = true;  // describe the UART at 0x3f8 / IRQ 4 (PNP0501)
  std::vector<AcpiVirtioDevice> virtio;
};

// The DSDT's AML body (after the 36-byte header): the devices and \_S5.
std::vector<uint8_t> dsdt_aml(const AcpiConfig& c);
// ACPI's PkgLength encoding of a package whose contents (after the PkgLength) are `body` bytes.
std::vector<uint8_t> aml_pkg_length(size_t body);

// Writes every table into low RAM at [table_base, table_base + 64 KiB); returns the RSDP's address.
Result<uint64_t> write_acpi_tables(std::span<uint8_t> low_ram, uint64_t table_base, const AcpiConfig& c);

// The byte sum of [p, p + n) (an ACPI table is valid when its sum is 0).
uint8_t acpi_sum(const uint8_t* p, size_t n);

}  // namespace canopy::hypervisor::kvm
