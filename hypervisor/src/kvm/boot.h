// Linux x86-64 direct boot for canopy-vmm's KVM backend (Documentation/arch/x86/boot.rst, "64-bit boot
// protocol"): the bzImage header is checked, the protected-mode kernel is loaded at 1 MiB, and the
// zero page (boot_params: setup header, command line, initrd, e820 map, RSDP address), an identity
// map of the first 4 GiB in 2 MiB pages and a flat GDT are written into guest RAM. The vCPU then enters
// the kernel's 64-bit entry (load address + 0x200) in long mode with RSI = the zero page.
//
// Pure functions over a span of guest RAM (what a memfd mapping gives): unit-tested without /dev/kvm.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "canopy/base/result.h"

namespace canopy::hypervisor::kvm {

// Guest-physical layout (low memory).
inline constexpr uint64_t kGdtAddr = 0x500;
inline constexpr uint64_t kIdtAddr = 0x520;
inline constexpr uint64_t kZeroPage = 0x7000;
inline constexpr uint64_t kBootStack = 0x8ff0;
inline constexpr uint64_t kPml4Addr = 0x9000;  // then the PDPT at 0xa000 and four PDs at 0xb000..0xefff
inline constexpr uint64_t kCmdlineAddr = 0x20000;
inline constexpr uint64_t kCmdlineMax = 0x10000;
inline constexpr uint64_t kLowRamEnd = 0x9fc00;         // RAM below the EBDA / VGA / BIOS hole
inline constexpr uint64_t kAcpiAddr = 0xe0000;          // RSDP here, the other tables after it (to 1 MiB)
inline constexpr uint64_t kKernelAddr = 0x100000;       // the protected-mode kernel
inline constexpr uint64_t kMmioGapStart = 0xc0000000;   // [3 GiB, 4 GiB): devices, IOAPIC, LAPIC
inline constexpr uint64_t kHighRamStart = 0x100000000;  // RAM above 3 GiB continues at 4 GiB

// GDT selectors the vCPU is entered with.
inline constexpr uint16_t kCodeSelector = 0x08, kDataSelector = 0x10, kTssSelector = 0x18;
inline constexpr uint64_t kGdt[4] = {0, 0x00af9b000000ffffull, 0x00cf93000000ffffull, 0x008f8b000000ffffull};

struct KernelImage {
  uint16_t protocol = 0;      // boot protocol version (>= 0x020c required)
  uint64_t setup_bytes = 0;   // real-mode part: (setup_sects + 1) * 512
  uint64_t kernel_bytes = 0;  // the protected-mode part that goes to kKernelAddr
  uint32_t init_size = 0;     // memory the kernel needs from its load address
  uint32_t initrd_addr_max = 0;
  uint32_t cmdline_size = 0;  // longest command line (without NUL)
  uint64_t header_end = 0;    // the setup header is bytes [0x1f1, header_end) of the file
};

// Checks a bzImage (the "HdrS" magic, protocol >= 2.12, a 64-bit entry, a plausible size).
Result<KernelImage> parse_bzimage(std::span<const uint8_t> file);

struct E820Entry {
  uint64_t addr = 0;
  uint64_t size = 0;
  uint32_t type = 0;  // 1 RAM, 2 reserved, 3 ACPI
};
inline constexpr uint32_t kE820Ram = 1, kE820Reserved = 2, kE820Acpi = 3;

// The guest's memory map for `ram_bytes` of RAM: [0, 640K - 1K) RAM, the ACPI tables, RAM from 1 MiB
// to 3 GiB, the rest from 4 GiB.
std::vector<E820Entry> e820_map(uint64_t ram_bytes);

// Guest RAM as the VMM maps it: low (from GPA 0, up to 3 GiB) and high (from 4 GiB).
struct GuestRam {
  std::span<uint8_t> low;
  std::span<uint8_t> high;
};

struct BootSetup {
  uint64_t entry = 0;      // RIP
  uint64_t zero_page = 0;  // RSI
  uint64_t initrd_addr = 0;
  uint64_t initrd_size = 0;
};

// Writes the kernel, the initrd, the command line, the zero page, the page tables and the GDT.
// `rsdp` is the ACPI RSDP's address (0: none).
Result<BootSetup> write_linux_boot(GuestRam ram, uint64_t ram_bytes, std::span<const uint8_t> bzimage,
                                   std::span<const uint8_t> initrd, const std::string& cmdline, uint64_t rsdp);

}  // namespace canopy::hypervisor::kvm
