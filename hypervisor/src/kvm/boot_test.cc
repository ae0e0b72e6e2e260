#include "kvm/boot.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "kvm/acpi.h"
#include "kvm/serial.h"

namespace canopy::hypervisor::kvm {
namespace {

template <typename T>
T at(const std::vector<uint8_t>& b, size_t off) {
  T v{};
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}
template <typename T>
void set(std::vector<uint8_t>& b, size_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof v);
}

// A bzImage header good enough for the loader: 2 setup sectors, protocol 2.15, 64-bit entry.
std::vector<uint8_t> fake_bzimage(size_t kernel_bytes = 0x4000) {
  std::vector<uint8_t> f(3 * 512 + kernel_bytes, 0);
  f[0x1f1] = 2;
  set<uint16_t>(f, 0x1fe, 0xaa55);
  f[0x200] = 0xeb;
  f[0x201] = 0x66;  // header ends at 0x268
  set<uint32_t>(f, 0x202, 0x53726448);
  set<uint16_t>(f, 0x206, 0x020f);
  f[0x211] = 0x01;  // LOADED_HIGH
  set<uint32_t>(f, 0x22c, 0x7fffffff);
  set<uint16_t>(f, 0x236, 0x0001);  // XLF_KERNEL_64
  set<uint32_t>(f, 0x238, 2047);
  set<uint32_t>(f, 0x260, 0x200000);  // init_size
  for (size_t i = 0; i < kernel_bytes; ++i) f[3 * 512 + i] = uint8_t(i * 13);
  return f;
}

TEST(KvmBoot, ParsesABzImageAndRefusesWhatIsNot) {
  auto k = parse_bzimage(fake_bzimage());
  ASSERT_TRUE(k.ok()) << k.error().what;
  EXPECT_EQ(k->protocol, 0x020f);
  EXPECT_EQ(k->setup_bytes, 3u * 512);
  EXPECT_EQ(k->kernel_bytes, 0x4000u);
  EXPECT_EQ(k->header_end, 0x268u);
  auto bad = fake_bzimage();
  bad[0x202] = 'X';
  EXPECT_FALSE(parse_bzimage(bad).ok());
  bad = fake_bzimage();
  set<uint16_t>(bad, 0x206, 0x020b);
  EXPECT_FALSE(parse_bzimage(bad).ok());
  bad = fake_bzimage();
  set<uint16_t>(bad, 0x236, 0);
  EXPECT_FALSE(parse_bzimage(bad).ok());
  bad = fake_bzimage();
  bad[0x1f1] = 200;  // setup past the end of the file
  EXPECT_FALSE(parse_bzimage(bad).ok());
  EXPECT_FALSE(parse_bzimage(std::vector<uint8_t>(100, 0)).ok());
}

TEST(KvmBoot, TheDebianGuestKernelParsesWhereItIsCached) {
  const char* root = std::getenv("CANOPY_CACHE");
  const std::filesystem::path dir = std::filesystem::path(root ? root : "/var/cache/canopy") / "guest-kernel";
  std::error_code ec;
  size_t checked = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec); !ec && it != std::filesystem::end(it);
       it.increment(ec)) {
    if (it->path().filename().string().rfind("vmlinuz-", 0) != 0) continue;
    std::ifstream in(it->path(), std::ios::binary);
    std::vector<uint8_t> f((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto k = parse_bzimage(f);
    ASSERT_TRUE(k.ok()) << it->path() << ": " << k.error().what;
    EXPECT_GE(k->protocol, 0x020c);
    EXPECT_GT(k->init_size, 0u);
    ++checked;
  }
  if (!checked) GTEST_SKIP() << "no guest kernel in the cache (scripts/guest-kernel.sh fetches it)";
}

TEST(KvmBoot, WritesKernelInitrdZeroPageE820PageTablesAndGdt) {
  const uint64_t ram_bytes = 128ull << 20;
  std::vector<uint8_t> ram(ram_bytes, 0xcc);
  const auto bz = fake_bzimage();
  std::vector<uint8_t> initrd(10000, 0x5a);
  auto s = write_linux_boot({ram, {}}, ram_bytes, bz, initrd, "console=ttyS0 quiet", 0xe0000);
  ASSERT_TRUE(s.ok()) << s.error().what;
  EXPECT_EQ(s->entry, kKernelAddr + 0x200);
  EXPECT_EQ(s->zero_page, kZeroPage);
  EXPECT_EQ(s->initrd_addr % 4096, 0u);
  EXPECT_EQ(s->initrd_addr, (ram_bytes - initrd.size()) & ~0xfffull);
  EXPECT_EQ(0, std::memcmp(ram.data() + kKernelAddr, bz.data() + 3 * 512, bz.size() - 3 * 512));
  EXPECT_EQ(0, std::memcmp(ram.data() + s->initrd_addr, initrd.data(), initrd.size()));
  EXPECT_STREQ(reinterpret_cast<const char*>(ram.data() + kCmdlineAddr), "console=ttyS0 quiet");
  const std::vector<uint8_t> zp(ram.begin() + kZeroPage, ram.begin() + kZeroPage + 4096);
  EXPECT_EQ(at<uint32_t>(zp, 0x202), 0x53726448u);  // the setup header was copied
  EXPECT_EQ(zp[0x210], 0xff);                       // type_of_loader
  EXPECT_EQ(at<uint32_t>(zp, 0x228), kCmdlineAddr);
  EXPECT_EQ(at<uint32_t>(zp, 0x218), s->initrd_addr);
  EXPECT_EQ(at<uint32_t>(zp, 0x21c), initrd.size());
  EXPECT_EQ(at<uint64_t>(zp, 0x070), 0xe0000u);  // acpi_rsdp_addr
  ASSERT_EQ(zp[0x1e8], 3);                       // e820: low RAM, ACPI, RAM from 1 MiB
  EXPECT_EQ(at<uint64_t>(zp, 0x2d0), 0u);
  EXPECT_EQ(at<uint64_t>(zp, 0x2d0 + 8), kLowRamEnd);
  EXPECT_EQ(at<uint32_t>(zp, 0x2d0 + 16), kE820Ram);
  EXPECT_EQ(at<uint32_t>(zp, 0x2d0 + 20 + 16), kE820Acpi);
  EXPECT_EQ(at<uint64_t>(zp, 0x2d0 + 40), kKernelAddr);
  EXPECT_EQ(at<uint64_t>(zp, 0x2d0 + 48), ram_bytes - kKernelAddr);
  // Identity map: PML4[0] -> PDPT; PDPT[3] -> the fourth PD; its last entry maps 4 GiB - 2 MiB.
  EXPECT_EQ(at<uint64_t>(ram, kPml4Addr), (kPml4Addr + 0x1000) | 3);
  EXPECT_EQ(at<uint64_t>(ram, kPml4Addr + 0x1000 + 24), (kPml4Addr + 0x5000) | 3);
  EXPECT_EQ(at<uint64_t>(ram, kPml4Addr + 0x5000 + 511 * 8), ((4ull << 30) - (2ull << 20)) | 0x83);
  EXPECT_EQ(at<uint64_t>(ram, kGdtAddr + 8), kGdt[1]);
}

TEST(KvmBoot, MemoryAboveThreeGibGoesToFourGibInTheMap) {
  const auto m = e820_map(5ull << 30);
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[2].addr + m[2].size, kMmioGapStart);
  EXPECT_EQ(m[3].addr, kHighRamStart);
  EXPECT_EQ(m[3].size, 2ull << 30);
}

TEST(KvmBoot, RefusesWhatDoesNotFit) {
  std::vector<uint8_t> ram(16ull << 20, 0);
  const auto bz = fake_bzimage();
  EXPECT_FALSE(write_linux_boot({ram, {}}, ram.size(), bz, {}, "x", 0).ok());  // below kernel + init + 16 MiB
  std::vector<uint8_t> big(64ull << 20, 0);
  std::vector<uint8_t> initrd(60ull << 20, 1);
  EXPECT_FALSE(write_linux_boot({big, {}}, big.size(), bz, initrd, "x", 0).ok());  // initrd over the kernel
  EXPECT_FALSE(write_linux_boot({big, {}}, big.size(), bz, {}, std::string(3000, 'a'), 0).ok());  // > cmdline_size
}

TEST(KvmAcpi, PkgLengthEncoding) {
  EXPECT_EQ(aml_pkg_length(0x3e), (std::vector<uint8_t>{0x3f}));
  EXPECT_EQ(aml_pkg_length(63), (std::vector<uint8_t>{0x41, 0x04}));  // 65 with its 2 bytes
  EXPECT_EQ(aml_pkg_length(0xffd), (std::vector<uint8_t>{0x4f, 0xff}));
  EXPECT_EQ(aml_pkg_length(0xffe), (std::vector<uint8_t>{0x81, 0x00, 0x01}));
}

TEST(KvmAcpi, TablesHaveValidChecksumsAndTheDevicesInTheDsdt) {
  std::vector<uint8_t> ram(2 << 20, 0);
  AcpiConfig c;
  c.vcpus = 2;
  c.virtio = {{0xd0000000, 0x1000, 5}, {0xd0001000, 0x1000, 6}};
  auto rsdp = write_acpi_tables(ram, kAcpiAddr, c);
  ASSERT_TRUE(rsdp.ok()) << rsdp.error().what;
  const uint8_t* r = ram.data() + *rsdp;
  EXPECT_EQ(std::memcmp(r, "RSD PTR ", 8), 0);
  EXPECT_EQ(acpi_sum(r, 20), 0);
  EXPECT_EQ(acpi_sum(r, 36), 0);
  uint64_t xsdt;
  std::memcpy(&xsdt, r + 24, 8);
  auto table = [&](uint64_t a, const char* sig) {
    EXPECT_EQ(std::memcmp(ram.data() + a, sig, 4), 0) << sig;
    uint32_t len;
    std::memcpy(&len, ram.data() + a + 4, 4);
    EXPECT_EQ(acpi_sum(ram.data() + a, len), 0) << sig;
    return std::vector<uint8_t>(ram.begin() + long(a), ram.begin() + long(a + len));
  };
  const auto x = table(xsdt, "XSDT");
  ASSERT_EQ(x.size(), 36u + 16);
  const auto fadt = table(at<uint64_t>(x, 36), "FACP");
  const auto madt = table(at<uint64_t>(x, 44), "APIC");
  EXPECT_EQ(fadt.size(), 276u);
  EXPECT_TRUE(at<uint32_t>(fadt, 112) & (1u << 20));  // hardware-reduced
  EXPECT_EQ(fadt[244], 1);                            // sleep control in I/O space
  EXPECT_EQ(at<uint64_t>(fadt, 248), kSleepControlPort);
  EXPECT_EQ(at<uint64_t>(fadt, 120), kResetPort);
  const auto dsdt = table(at<uint64_t>(fadt, 140), "DSDT");
  // MADT: two local APICs (ids 0, 1), the IOAPIC, the LINT1 NMI.
  ASSERT_EQ(madt.size(), 44u + 2 * 8 + 12 + 6);
  EXPECT_EQ(madt[44], 0);
  EXPECT_EQ(madt[44 + 8 + 3], 1);
  EXPECT_EQ(madt[60], 1);
  EXPECT_EQ(at<uint32_t>(madt, 64), kIoApicAddr);
  // Device V001: _HID "LNRO0005", _UID One, Memory32Fixed at 0xd0001000 size 0x1000, edge IRQ 6.
  const std::vector<uint8_t> v001 = {
      0x5b, 0x82, 0x41, 0x04, 'V',  '0',  '0',  '1',                                           // Device, PkgLen 65
      0x08, '_',  'H',  'I',  'D',  0x0d, 'L',  'N',  'R',  'O',  '0',  '0',  '0', '5', 0x00,  // Name(_HID, ...)
      0x08, '_',  'U',  'I',  'D',  0x01,                                                      // Name(_UID, One)
      0x08, '_',  'C',  'C',  'A',  0x01,                                                      // Name(_CCA, One)
      0x08, '_',  'C',  'R',  'S',  0x11, 0x1a, 0x0a, 0x17,                                    // Buffer(23)
      0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00,                  // Memory32Fixed
      0x89, 0x06, 0x00, 0x03, 0x01, 0x06, 0x00, 0x00, 0x00,                                    // Interrupt(edge){6}
      0x79, 0x00};
  EXPECT_NE(std::search(dsdt.begin(), dsdt.end(), v001.begin(), v001.end()), dsdt.end());
  const std::vector<uint8_t> s5 = {0x08, 0x5c, '_', 'S', '5', '_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0, 0, 0};
  EXPECT_NE(std::search(dsdt.begin(), dsdt.end(), s5.begin(), s5.end()), dsdt.end());
  const std::vector<uint8_t> com1 = {0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01};  // EISAID("PNP0501")
  EXPECT_NE(std::search(dsdt.begin(), dsdt.end(), com1.begin(), com1.end()), dsdt.end());
  AcpiConfig none;
  none.vcpus = 0;
  EXPECT_FALSE(write_acpi_tables(ram, kAcpiAddr, none).ok());
}

TEST(KvmSerial, TransmitsAndRaisesTheThrEmptyInterrupt) {
  std::string out;
  int irqs = 0;
  Serial8250 s([&](uint8_t b) { out.push_back(char(b)); }, [&] { ++irqs; });
  EXPECT_EQ(s.read(5), 0x60);  // THR empty, transmitter empty
  EXPECT_EQ(s.read(2), 0xc1);  // no interrupt pending
  s.write(0, 'h');
  s.write(0, 'i');
  EXPECT_EQ(out, "hi");
  EXPECT_EQ(irqs, 0);
  s.write(1, 0x02);  // enable THR-empty: pending at once
  EXPECT_EQ(irqs, 1);
  EXPECT_EQ(s.read(2), 0xc2);
  EXPECT_EQ(s.read(2), 0xc1);  // reported once
  s.write(0, '!');
  EXPECT_EQ(irqs, 2);
  EXPECT_EQ(s.read(1), 0x02);
  s.write(3, 0x83);  // DLAB: divisor latch, not THR
  s.write(0, 0x01);
  EXPECT_EQ(out, "hi!");
  EXPECT_EQ(s.read(0), 0x01);
  s.write(3, 0x03);
  s.write(1, 0xff);
  EXPECT_EQ(s.read(1), 0x0f);  // only the low four IER bits exist
}

// What a guest writes to its console reaches canopy-vmm's stdout filtered: an escape sequence that
// would clear the host's terminal or retitle it arrives as text; ordinary lines are untouched.
TEST(KvmSerial, ConsoleOutputCannotDriveTheHostTerminal) {
  std::string line;
  for (uint8_t b : std::string("boot ok\r\n")) append_console_byte(line, b);
  EXPECT_EQ(line, "boot ok\n");
  line.clear();
  for (uint8_t b : std::string("\x1b[2J\x1b]0;owned\x07\x9b"
                               "1m\x7f\tend"))
    append_console_byte(line, b);
  EXPECT_EQ(line,
            "\\x1b[2J\\x1b]0;owned\\x07\\x9b"
            "1m\\x7f\tend");
  EXPECT_EQ(line.find('\x1b'), std::string::npos);
}

}  // namespace
}  // namespace canopy::hypervisor::kvm
