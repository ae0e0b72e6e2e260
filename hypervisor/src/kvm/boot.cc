#include "kvm/boot.h"

#include <algorithm>
#include <cstring>

namespace canopy::hypervisor::kvm {

namespace {

template <typename T>
T get(std::span<const uint8_t> b, size_t off) {
  T v{};
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}
template <typename T>
void put(std::span<uint8_t> b, uint64_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof v);
}

// boot_params / setup header offsets (arch/x86/include/uapi/asm/bootparam.h).
constexpr size_t kSetupSects = 0x1f1, kBootFlag = 0x1fe, kJump = 0x200, kHeader = 0x202, kVersion = 0x206,
                 kTypeOfLoader = 0x210, kLoadflags = 0x211, kRamdiskImage = 0x218, kRamdiskSize = 0x21c,
                 kHeapEndPtr = 0x224, kCmdLinePtr = 0x228, kInitrdAddrMax = 0x22c, kXloadflags = 0x236,
                 kCmdlineSize = 0x238, kInitSize = 0x260, kAcpiRsdpAddr = 0x070, kExtRamdiskImage = 0x0c0,
                 kExtRamdiskSize = 0x0c4, kExtCmdLinePtr = 0x0c8, kE820Entries = 0x1e8, kE820Table = 0x2d0;
constexpr uint32_t kHdrS = 0x53726448;
constexpr uint16_t kXlfKernel64 = 1;
constexpr uint8_t kLoadedHigh = 0x01, kCanUseHeap = 0x80;
constexpr size_t kMaxE820 = 128;

}  // namespace

Result<KernelImage> parse_bzimage(std::span<const uint8_t> f) {
  if (f.size() < 0x1000) return make_error(Errc::kInvalidArgument, "kernel: too small to be a bzImage");
  if (get<uint16_t>(f, kBootFlag) != 0xaa55 || get<uint32_t>(f, kHeader) != kHdrS)
    return make_error(Errc::kInvalidArgument, "kernel: not a bzImage (no HdrS header)");
  KernelImage k;
  k.protocol = get<uint16_t>(f, kVersion);
  if (k.protocol < 0x020c) return make_error(Errc::kUnsupported, "kernel: boot protocol older than 2.12");
  if (!(get<uint16_t>(f, kXloadflags) & kXlfKernel64))
    return make_error(Errc::kUnsupported, "kernel: no 64-bit entry point (XLF_KERNEL_64)");
  if (!(f[kLoadflags] & kLoadedHigh)) return make_error(Errc::kUnsupported, "kernel: not a bzImage (zImage)");
  const uint32_t sects = f[kSetupSects] ? f[kSetupSects] : 4;
  k.setup_bytes = uint64_t(sects + 1) * 512;
  if (k.setup_bytes >= f.size()) return make_error(Errc::kInvalidArgument, "kernel: setup larger than the file");
  k.kernel_bytes = f.size() - k.setup_bytes;
  k.init_size = get<uint32_t>(f, kInitSize);
  k.initrd_addr_max = get<uint32_t>(f, kInitrdAddrMax);
  k.cmdline_size = get<uint32_t>(f, kCmdlineSize);
  k.header_end = kJump + 2 + f[kJump + 1];
  if (k.header_end > 0x1000 || k.header_end <= kSetupSects)
    return make_error(Errc::kInvalidArgument, "kernel: bad header length");
  return k;
}

std::vector<E820Entry> e820_map(uint64_t ram) {
  std::vector<E820Entry> m;
  m.push_back({0, kLowRamEnd, kE820Ram});
  m.push_back({kAcpiAddr, kKernelAddr - kAcpiAddr, kE820Acpi});
  const uint64_t low_end = std::min(ram, kMmioGapStart);
  if (low_end > kKernelAddr) m.push_back({kKernelAddr, low_end - kKernelAddr, kE820Ram});
  if (ram > kMmioGapStart) m.push_back({kHighRamStart, ram - kMmioGapStart, kE820Ram});
  return m;
}

Result<BootSetup> write_linux_boot(GuestRam ram, uint64_t ram_bytes, std::span<const uint8_t> bz,
                                   std::span<const uint8_t> initrd, const std::string& cmdline, uint64_t rsdp) {
  CANOPY_ASSIGN_OR_RETURN(KernelImage k, parse_bzimage(bz));
  std::span<uint8_t> low = ram.low;
  const uint64_t low_end = std::min<uint64_t>(low.size(), std::min(ram_bytes, kMmioGapStart));
  // The kernel decompresses itself from 1 MiB into [load, load + init_size) (at 16 MiB for Debian's
  // relocatable kernels): the initrd goes at the top of low RAM, above all of that.
  const uint64_t kernel_top = kKernelAddr + std::max<uint64_t>(k.kernel_bytes, k.init_size) + (16ull << 20);
  if (kernel_top > low_end) return make_error(Errc::kLimit, "kernel: does not fit in guest RAM (raise memory)");
  if (cmdline.size() >= kCmdlineMax || (k.cmdline_size && cmdline.size() > k.cmdline_size))
    return make_error(Errc::kLimit, "kernel: command line too long");
  std::memcpy(low.data() + kKernelAddr, bz.data() + k.setup_bytes, k.kernel_bytes);

  BootSetup s;
  s.entry = kKernelAddr + 0x200;
  s.zero_page = kZeroPage;
  if (!initrd.empty()) {
    uint64_t top = low_end;
    if (k.initrd_addr_max) top = std::min<uint64_t>(top, uint64_t(k.initrd_addr_max) + 1);
    if (initrd.size() > top) return make_error(Errc::kLimit, "initrd: larger than guest RAM");
    const uint64_t at = (top - initrd.size()) & ~0xfffull;
    if (at < kernel_top) return make_error(Errc::kLimit, "initrd: does not fit above the kernel (raise memory)");
    std::memcpy(low.data() + at, initrd.data(), initrd.size());
    s.initrd_addr = at;
    s.initrd_size = initrd.size();
  }

  // Zero page: cleared, the image's setup header copied in, then the loader's fields.
  std::span<uint8_t> zp = low.subspan(kZeroPage, 0x1000);
  std::fill(zp.begin(), zp.end(), 0);
  std::memcpy(zp.data() + kSetupSects, bz.data() + kSetupSects, k.header_end - kSetupSects);
  zp[kTypeOfLoader] = 0xff;
  zp[kLoadflags] = uint8_t(zp[kLoadflags] | kCanUseHeap);
  put<uint16_t>(zp, kHeapEndPtr, 0xe000 - 0x200);
  put<uint32_t>(zp, kCmdLinePtr, uint32_t(kCmdlineAddr));
  put<uint32_t>(zp, kExtCmdLinePtr, 0);
  put<uint32_t>(zp, kRamdiskImage, uint32_t(s.initrd_addr));
  put<uint32_t>(zp, kExtRamdiskImage, uint32_t(s.initrd_addr >> 32));
  put<uint32_t>(zp, kRamdiskSize, uint32_t(s.initrd_size));
  put<uint32_t>(zp, kExtRamdiskSize, uint32_t(s.initrd_size >> 32));
  put<uint64_t>(zp, kAcpiRsdpAddr, rsdp);
  const auto map = e820_map(ram_bytes);
  if (map.size() > kMaxE820) return make_error(Errc::kLimit, "e820: too many entries");
  zp[kE820Entries] = uint8_t(map.size());
  for (size_t i = 0; i < map.size(); ++i) {
    put<uint64_t>(zp, kE820Table + i * 20, map[i].addr);
    put<uint64_t>(zp, kE820Table + i * 20 + 8, map[i].size);
    put<uint32_t>(zp, kE820Table + i * 20 + 16, map[i].type);
  }
  std::memset(low.data() + kCmdlineAddr, 0, cmdline.size() + 1);
  std::memcpy(low.data() + kCmdlineAddr, cmdline.data(), cmdline.size());

  // Identity map of the first 4 GiB: PML4[0] -> PDPT, PDPT[0..3] -> four PDs of 2 MiB pages.
  const uint64_t pdpt = kPml4Addr + 0x1000, pd = kPml4Addr + 0x2000;
  std::memset(low.data() + kPml4Addr, 0, size_t{6} * 0x1000);
  put<uint64_t>(low, kPml4Addr, pdpt | 0x3);
  for (uint64_t g = 0; g < 4; ++g) {
    put<uint64_t>(low, pdpt + g * 8, (pd + g * 0x1000) | 0x3);
    for (uint64_t i = 0; i < 512; ++i) put<uint64_t>(low, pd + g * 0x1000 + i * 8, ((g * 512 + i) << 21) | 0x83);
  }
  // GDT (null, code, data, TSS) and an empty IDT.
  for (size_t i = 0; i < 4; ++i) put<uint64_t>(low, kGdtAddr + i * 8, kGdt[i]);
  put<uint64_t>(low, kIdtAddr, 0);
  return s;
}

}  // namespace canopy::hypervisor::kvm
