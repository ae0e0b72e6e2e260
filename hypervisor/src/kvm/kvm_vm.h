// A Linux guest on KVM (x86-64): memfd guest RAM (one slot below 3 GiB, the rest at 4 GiB), the in-kernel
// irqchip and PIT, vCPU threads with CPUID from KVM and long mode set up for the 64-bit boot protocol,
// the kernel + initramfs + command line loaded directly (boot.h), ACPI tables (acpi.h), COM1 (serial.h)
// to the console, and MMIO windows dispatched to devices (virtio-mmio, see kvm_devices.h).
//
//   auto vm = KvmVm::create(config);   (*vm)->add_mmio(base, size, handler) ...   (*vm)->run();
//
// run() returns when the guest powers off (ACPI S5 through the FADT's sleep control port), reboots (the
// reset port, the i8042 reset command or a triple fault), fails (a vCPU error), or request_stop() was
// called (SIGTERM in canopy-vmm): VmExit says which.
//
// Threading: run() starts a thread per vCPU and waits for them; MMIO handlers run on vCPU threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy::hypervisor::kvm {

struct KvmConfig {
  uint64_t ram_bytes = 512ull << 20;
  uint32_t vcpus = 1;
  std::string kernel;  // bzImage
  std::string initrd;  // optional
  std::string cmdline = "console=ttyS0";
  // Where the guest's serial console goes (each byte as written); default: stdout.
  std::function<void(uint8_t)> console;
};

enum class VmExit { kPowerOff, kReboot, kStopped, kError };
const char* to_string(VmExit e);

// A device's MMIO window: reads return the value (little-endian, len 1/2/4/8); writes carry it.
struct MmioHandler {
  std::function<uint64_t(uint64_t offset, uint32_t len)> read;
  std::function<void(uint64_t offset, uint32_t len, uint64_t value)> write;
};

class KvmVm {
 public:
  // Whether /dev/kvm can be opened (and its API version is 12).
  static bool available();
  static Result<std::unique_ptr<KvmVm>> create(const KvmConfig& c);
  ~KvmVm();

  // Before run(): an MMIO window [base, base + size) below 4 GiB, outside RAM.
  Status add_mmio(uint64_t base, uint64_t size, MmioHandler h);
  // An eventfd KVM signals when the guest writes `datamatch` (4 bytes) at `addr` (a queue notify).
  Status add_ioeventfd(uint64_t addr, uint32_t datamatch, int fd);
  Status remove_ioeventfd(uint64_t addr, uint32_t datamatch, int fd);
  // An eventfd that, when signalled, pulses GSI `gsi` (edge) in the IOAPIC.
  Status add_irqfd(uint32_t gsi, int fd);
  Status remove_irqfd(uint32_t gsi, int fd);
  // Pulses GSI `gsi` from the VMM.
  void pulse_irq(uint32_t gsi);
  // ACPI devices: the virtio-mmio windows to describe in the DSDT (before run()).
  void describe_virtio(uint64_t base, uint32_t size, uint32_t gsi);

  // A VIRTIO shared memory region (virtio 1.2 §2.10): `size` bytes (a multiple of 2 MiB, at most 64 GiB)
  // of guest-physical space above RAM, one KVM memory slot over a range of canopy-vmm's address space
  // that is reserved and inaccessible until map_shm() puts a back-end's file into part of it (the
  // guest then reaches that file's pages directly; touching an unmapped part stops the VM with an
  // error). Returns the region's index; *gpa is where the guest finds it.
  Result<uint32_t> add_shm_region(uint64_t size, uint64_t* gpa);
  // Maps [fd_offset, fd_offset + len) of fd at `offset` of region `region` (page aligned, inside the
  // region, not overlapping another mapping). Any thread.
  Status map_shm(uint32_t region, uint64_t offset, int fd, uint64_t fd_offset, uint64_t len, bool writable);
  // Takes back exactly one earlier mapping [offset, offset + len).
  Status unmap_shm(uint32_t region, uint64_t offset, uint64_t len);
  // Takes back every mapping of the region (a device reset or a back-end gone).
  void clear_shm(uint32_t region);
  // The number of live mappings of a region (tests, logs).
  size_t shm_mappings(uint32_t region) const;

  // Loads the kernel and tables, runs the vCPUs until the guest stops.
  Result<VmExit> run();
  // Any thread, or a signal handler.
  void request_stop();

  int ram_fd() const { return ram_fd_.get(); }
  uint64_t ram_bytes() const { return cfg_.ram_bytes; }
  // Host address of guest-physical `gpa` in the VMM's mapping (nullptr outside RAM).
  uint8_t* host_address(uint64_t gpa) const;
  uint64_t exits() const { return exits_.load(); }

  struct Impl;

 private:
  KvmVm() = default;
  KvmConfig cfg_;
  UniqueFd kvm_, vm_, ram_fd_;
  UniqueFd kernel_fd_, initrd_fd_;  // opened by create(), read by run()
  uint8_t* ram_ = nullptr;
  std::unique_ptr<Impl> impl_;
  std::atomic<uint64_t> exits_{0};
};

}  // namespace canopy::hypervisor::kvm
