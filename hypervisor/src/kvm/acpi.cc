#include "kvm/acpi.h"

#include <cstring>
#include <string>

// GCC 12 reports a false -Wstringop-overflow in std::vector<uint8_t>::insert of small byte lists here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#endif

namespace canopy::hypervisor::kvm {

namespace {

void append(std::vector<uint8_t>& v, std::initializer_list<uint8_t> b) { v.insert(v.end(), b); }
void append(std::vector<uint8_t>& v, const std::vector<uint8_t>& b) { v.insert(v.end(), b.begin(), b.end()); }
void append_name(std::vector<uint8_t>& v, const char* n4) { v.insert(v.end(), n4, n4 + 4); }
template <typename T>
void append_le(std::vector<uint8_t>& v, T x) {
  for (size_t i = 0; i < sizeof(T); ++i) v.push_back(uint8_t(uint64_t(x) >> (8 * i)));
}
void append_integer(std::vector<uint8_t>& v, uint32_t x) {
  if (x == 0) v.push_back(0x00);                      // ZeroOp
  else if (x == 1) v.push_back(0x01);                 // OneOp
  else if (x <= 0xff) append(v, {0x0a, uint8_t(x)});  // BytePrefix
  else {
    v.push_back(0x0c);  // DWordPrefix
    append_le<uint32_t>(v, x);
  }
}
// An object with a PkgLength: opcode bytes, then PkgLength over `body`, then body.
std::vector<uint8_t> with_pkg(std::initializer_list<uint8_t> op, const std::vector<uint8_t>& body) {
  std::vector<uint8_t> o;
  o.reserve(op.size() + 4 + body.size());
  o.insert(o.end(), op.begin(), op.end());
  const std::vector<uint8_t> len = aml_pkg_length(body.size());
  o.insert(o.end(), len.begin(), len.end());
  o.insert(o.end(), body.begin(), body.end());
  return o;
}

// The 36-byte header of every table but the RSDP; the checksum is set by finish().
std::vector<uint8_t> header(const char* sig, uint8_t revision) {
  std::vector<uint8_t> t(36, 0);
  std::memcpy(t.data(), sig, 4);
  t[8] = revision;
  std::memcpy(t.data() + 10, "CANOPY", 6);
  std::memcpy(t.data() + 16, "CANOPYVM", 8);
  t[24] = 1;                              // OEM revision
  std::memcpy(t.data() + 28, "CNPY", 4);  // creator
  t[32] = 1;
  return t;
}
void finish(std::vector<uint8_t>& t) {
  const uint32_t len = uint32_t(t.size());
  std::memcpy(t.data() + 4, &len, 4);
  t[9] = 0;
  t[9] = uint8_t(-acpi_sum(t.data(), t.size()));
}
template <typename T>
void put(std::vector<uint8_t>& t, size_t off, T v) {
  std::memcpy(t.data() + off, &v, sizeof v);
}
// A Generic Address Structure for an 8-bit I/O port.
void put_io_gas(std::vector<uint8_t>& t, size_t off, uint16_t port) {
  t[off] = 1;      // SystemIO
  t[off + 1] = 8;  // bit width
  t[off + 2] = 0;
  t[off + 3] = 1;  // byte access
  put<uint64_t>(t, off + 4, port);
}

}  // namespace

uint8_t acpi_sum(const uint8_t* p, size_t n) {
  uint8_t s = 0;
  for (size_t i = 0; i < n; ++i) s = uint8_t(s + p[i]);
  return s;
}

std::vector<uint8_t> aml_pkg_length(size_t body) {
  // The length counts its own bytes too.
  if (body + 1 <= 0x3f) return {uint8_t(body + 1)};
  for (size_t n = 2; n <= 4; ++n) {
    const size_t total = body + n;
    const size_t max = n == 2 ? 0xfff : n == 3 ? 0xfffff : 0xfffffff;
    if (total > max) continue;
    std::vector<uint8_t> out{uint8_t(((n - 1) << 6) | (total & 0xf))};
    for (size_t i = 1; i < n; ++i) out.push_back(uint8_t(total >> (4 + 8 * (i - 1))));
    return out;
  }
  return {};
}

std::vector<uint8_t> dsdt_aml(const AcpiConfig& c) {
  std::vector<uint8_t> sb;  // Scope(\_SB) body
  append_name(sb, "_SB_");
  if (c.com1) {
    // Device(COM1) { _HID EISAID("PNP0501"), _UID 1, _CRS { IO(Decode16, 0x3f8, 0x3f8, 1, 8),
    // Interrupt(Consumer, Edge, ActiveHigh, Exclusive) {4} } }: with hardware-reduced ACPI there are no
    // legacy ISA IRQ mappings, so the UART's IRQ must come from here.
    std::vector<uint8_t> dev;
    append_name(dev, "COM1");
    append(dev, {0x08});
    append_name(dev, "_HID");
    append(dev, {0x0c, 0x41, 0xd0, 0x05, 0x01});  // EISAID("PNP0501")
    append(dev, {0x08});
    append_name(dev, "_UID");
    append(dev, {0x01});
    std::vector<uint8_t> res = {0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08,        // IO
                                0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00,  // Interrupt {4}
                                0x79, 0x00};
    std::vector<uint8_t> buf{0x0a, uint8_t(res.size())};
    append(buf, res);
    append(dev, {0x08});
    append_name(dev, "_CRS");
    append(dev, with_pkg({0x11}, buf));
    append(sb, with_pkg({0x5b, 0x82}, dev));
  }
  for (size_t i = 0; i < c.virtio.size(); ++i) {
    const AcpiVirtioDevice& d = c.virtio[i];
    const char name[5] = {'V', char('0' + i / 100 % 10), char('0' + i / 10 % 10), char('0' + i % 10), 0};
    std::vector<uint8_t> dev;
    append_name(dev, name);
    append(dev, {0x08});  // Name(_HID, "LNRO0005")
    append_name(dev, "_HID");
    append(dev, {0x0d});
    const char* hid = "LNRO0005";
    dev.insert(dev.end(), hid, hid + 9);  // with its NUL
    append(dev, {0x08});                  // Name(_UID, i)
    append_name(dev, "_UID");
    append_integer(dev, uint32_t(i));
    append(dev, {0x08});  // Name(_CCA, One): DMA is cache coherent
    append_name(dev, "_CCA");
    append(dev, {0x01});
    std::vector<uint8_t> res;               // ResourceTemplate contents
    append(res, {0x86, 0x09, 0x00, 0x01});  // Memory32Fixed(ReadWrite, base, size)
    append_le<uint32_t>(res, uint32_t(d.base));
    append_le<uint32_t>(res, d.size);
    append(res, {0x89, 0x06, 0x00, 0x03, 0x01});  // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive)
    append_le<uint32_t>(res, d.gsi);
    append(res, {0x79, 0x00});  // EndTag
    std::vector<uint8_t> buf;   // Buffer(size) { res }
    buf.push_back(0x0a);
    buf.push_back(uint8_t(res.size()));
    append(buf, res);
    append(dev, {0x08});
    append_name(dev, "_CRS");
    append(dev, with_pkg({0x11}, buf));
    append(sb, with_pkg({0x5b, 0x82}, dev));  // Device
  }
  std::vector<uint8_t> aml = with_pkg({0x10}, sb);  // Scope
  // Name(\_S5, Package(4) { 5, 0, 0, 0 }): S5 is SLP_TYP 5.
  append(aml, {0x08, 0x5c});
  append_name(aml, "_S5_");
  append(aml, {0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00});
  return aml;
}

Result<uint64_t> write_acpi_tables(std::span<uint8_t> low, uint64_t base, const AcpiConfig& c) {
  if (c.vcpus == 0 || c.vcpus > 254) return make_error(Errc::kInvalidArgument, "acpi: 1 to 254 vCPUs");
  if (c.virtio.size() > 999) return make_error(Errc::kLimit, "acpi: too many devices");
  const uint64_t rsdp_at = base, xsdt_at = base + 0x40, fadt_at = base + 0x100, madt_at = base + 0x300,
                 dsdt_at = base + 0x1000;

  std::vector<uint8_t> dsdt = header("DSDT", 2);
  append(dsdt, dsdt_aml(c));
  finish(dsdt);

  std::vector<uint8_t> fadt = header("FACP", 6);
  fadt.resize(276, 0);
  put<uint32_t>(fadt, 40, uint32_t(dsdt_at));  // DSDT (32-bit)
  put<uint16_t>(fadt, 109, 1u << 2);           // IAPC_BOOT_ARCH: no VGA
  // Flags: HW_REDUCED_ACPI, RESET_REG_SUP, no fixed power / sleep buttons.
  put<uint32_t>(fadt, 112, (1u << 20) | (1u << 10) | (1u << 4) | (1u << 5));
  put_io_gas(fadt, 116, kResetPort);
  fadt[128] = kResetValue;
  fadt[131] = 5;                      // FADT minor version (6.5)
  put<uint64_t>(fadt, 140, dsdt_at);  // X_DSDT
  put_io_gas(fadt, 244, kSleepControlPort);
  put_io_gas(fadt, 256, kSleepControlPort + 1);
  std::memcpy(fadt.data() + 268, "CANOPYVM", 8);  // hypervisor vendor identity
  finish(fadt);

  std::vector<uint8_t> madt = header("APIC", 5);
  append_le<uint32_t>(madt, uint32_t(kLocalApicAddr));
  append_le<uint32_t>(madt, 0);  // no PC-AT 8259s
  for (uint32_t i = 0; i < c.vcpus; ++i) {
    append(madt, {0, 8, uint8_t(i), uint8_t(i)});  // Processor Local APIC: UID, APIC ID
    append_le<uint32_t>(madt, 1);                  // enabled
  }
  append(madt, {1, 12, 0, 0});  // IO APIC id 0
  append_le<uint32_t>(madt, uint32_t(kIoApicAddr));
  append_le<uint32_t>(madt, 0);         // GSI base
  append(madt, {4, 6, 0xff, 0, 0, 1});  // Local APIC NMI: all processors, LINT1
  finish(madt);

  std::vector<uint8_t> xsdt = header("XSDT", 1);
  append_le<uint64_t>(xsdt, fadt_at);
  append_le<uint64_t>(xsdt, madt_at);
  finish(xsdt);

  std::vector<uint8_t> rsdp(36, 0);
  std::memcpy(rsdp.data(), "RSD PTR ", 8);
  std::memcpy(rsdp.data() + 9, "CANOPY", 6);
  rsdp[15] = 2;
  put<uint32_t>(rsdp, 20, 36);
  put<uint64_t>(rsdp, 24, xsdt_at);
  rsdp[8] = uint8_t(-acpi_sum(rsdp.data(), 20));
  rsdp[32] = uint8_t(-acpi_sum(rsdp.data(), 36));

  if (fadt.size() > madt_at - fadt_at || madt.size() > dsdt_at - madt_at || dsdt.size() > 0xf000 ||
      base + 0x10000 > low.size())
    return make_error(Errc::kLimit, "acpi: tables do not fit");
  std::memcpy(low.data() + rsdp_at, rsdp.data(), rsdp.size());
  std::memcpy(low.data() + xsdt_at, xsdt.data(), xsdt.size());
  std::memcpy(low.data() + fadt_at, fadt.data(), fadt.size());
  std::memcpy(low.data() + madt_at, madt.data(), madt.size());
  std::memcpy(low.data() + dsdt_at, dsdt.data(), dsdt.size());
  return rsdp_at;
}

}  // namespace canopy::hypervisor::kvm
