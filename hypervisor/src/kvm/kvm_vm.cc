#include "kvm/kvm_vm.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "canopy/base/log.h"
#include "kvm/acpi.h"
#include "kvm/boot.h"
#include "kvm/serial.h"

namespace canopy::hypervisor::kvm {

const char* to_string(VmExit e) {
  switch (e) {
    case VmExit::kPowerOff: return "power-off";
    case VmExit::kReboot: return "reboot";
    case VmExit::kStopped: return "stopped";
    case VmExit::kError: return "error";
  }
  return "?";
}

namespace {

constexpr uint64_t kTssAddr = 0xfffbd000, kIdentityMapAddr = 0xfffbc000;
int kick_signal() { return SIGRTMIN + 1; }  // takes a vCPU thread out of KVM_RUN

// Read from the start whatever was read before (a second run of the same VM reads it again).
Result<std::vector<uint8_t>> read_file(int fd, size_t max) {
  if (::lseek(fd, 0, SEEK_SET) != 0) return make_error(Errc::kIo, "lseek failed", errno);
  std::vector<uint8_t> b;
  uint8_t chunk[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0) return make_error(Errc::kIo, "read failed", errno);
    if (n == 0) break;
    if (b.size() + size_t(n) > max) return make_error(Errc::kLimit, "file too large");
    b.insert(b.end(), chunk, chunk + n);
  }
  return b;
}

kvm_segment segment(uint64_t descriptor, uint16_t selector) {
  kvm_segment s{};
  s.base = ((descriptor >> 16) & 0xffffff) | (((descriptor >> 56) & 0xff) << 24);
  const uint32_t limit = uint32_t((descriptor & 0xffff) | (((descriptor >> 48) & 0xf) << 16));
  s.g = (descriptor >> 55) & 1;
  s.limit = s.g ? (limit << 12) | 0xfff : limit;
  s.selector = selector;
  s.type = (descriptor >> 40) & 0xf;
  s.present = (descriptor >> 47) & 1;
  s.dpl = (descriptor >> 45) & 3;
  s.db = (descriptor >> 54) & 1;
  s.s = (descriptor >> 44) & 1;
  s.l = (descriptor >> 53) & 1;
  s.avl = (descriptor >> 52) & 1;
  s.unusable = s.present ? 0 : 1;
  return s;
}

}  // namespace

struct KvmVm::Impl {
  struct Window {
    uint64_t base, size;
    MmioHandler h;
  };
  struct Vcpu {
    uint32_t index = 0;
    UniqueFd fd;
    kvm_run* run = nullptr;
    size_t run_size = 0;
    pthread_t thread{};
    bool started = false;
  };
  std::vector<Window> windows;
  std::vector<AcpiVirtioDevice> virtio;
  std::vector<std::unique_ptr<Vcpu>> vcpus;
  std::unique_ptr<Serial8250> serial;
  std::atomic<bool> stop{false};
  std::atomic<int> outcome{-1};
  std::mutex console_mu;
  std::string console_line;
  struct Shm {
    uint64_t gpa = 0, size = 0;
    uint8_t* host = nullptr;
    std::map<uint64_t, uint64_t> maps;  // offset -> len
  };
  mutable std::mutex shm_mu;
  std::vector<Shm> shm;
  uint64_t next_shm_gpa = 0;
  uint32_t next_slot = 2;  // 0 and 1: RAM
};

bool KvmVm::available() {
  UniqueFd fd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  return fd.valid() && ioctl(fd.get(), KVM_GET_API_VERSION, 0) == KVM_API_VERSION;
}

Result<std::unique_ptr<KvmVm>> KvmVm::create(const KvmConfig& c) {
  if (c.vcpus == 0 || c.vcpus > 64) return make_error(Errc::kInvalidArgument, "kvm: 1 to 64 vCPUs");
  if (c.ram_bytes < (64ull << 20) || c.ram_bytes > (64ull << 30) || c.ram_bytes % (2ull << 20))
    return make_error(Errc::kInvalidArgument, "kvm: memory must be 64M..64G in 2 MiB steps");
  if (c.kernel.empty()) return make_error(Errc::kInvalidArgument, "kvm: no kernel");
  std::unique_ptr<KvmVm> vm(new KvmVm());
  vm->cfg_ = c;
  vm->impl_ = std::make_unique<Impl>();
  // Opened now, read by run(): the process may have given up its right to open them by then.
  vm->kernel_fd_ = UniqueFd(::open(c.kernel.c_str(), O_RDONLY | O_CLOEXEC));
  if (!vm->kernel_fd_.valid()) return make_error(Errc::kIo, "kvm: cannot open the kernel", errno);
  if (!c.initrd.empty()) {
    vm->initrd_fd_ = UniqueFd(::open(c.initrd.c_str(), O_RDONLY | O_CLOEXEC));
    if (!vm->initrd_fd_.valid()) return make_error(Errc::kIo, "kvm: cannot open the initrd", errno);
  }
  vm->kvm_ = UniqueFd(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!vm->kvm_.valid()) return make_error(Errc::kUnsupported, "kvm: cannot open /dev/kvm", errno);
  const int kfd = vm->kvm_.get();
  if (ioctl(kfd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
    return make_error(Errc::kUnsupported, "kvm: API version is not 12");
  for (int cap :
       {KVM_CAP_IRQCHIP, KVM_CAP_USER_MEMORY, KVM_CAP_IOEVENTFD, KVM_CAP_IRQFD, KVM_CAP_PIT2, KVM_CAP_EXT_CPUID})
    if (ioctl(kfd, KVM_CHECK_EXTENSION, cap) <= 0)
      return make_error(Errc::kUnsupported, "kvm: a required capability is missing");
  vm->vm_ = UniqueFd(ioctl(kfd, KVM_CREATE_VM, 0));
  if (!vm->vm_.valid()) return make_error(Errc::kIo, "kvm: KVM_CREATE_VM failed", errno);
  const int vfd = vm->vm_.get();
  if (ioctl(vfd, KVM_SET_TSS_ADDR, kTssAddr) < 0) return make_error(Errc::kIo, "kvm: KVM_SET_TSS_ADDR failed", errno);
  uint64_t idmap = kIdentityMapAddr;
  if (ioctl(vfd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0)
    return make_error(Errc::kIo, "kvm: KVM_SET_IDENTITY_MAP_ADDR failed", errno);
  // The irqchip before the PIT (and before any vCPU).
  if (ioctl(vfd, KVM_CREATE_IRQCHIP, 0) < 0) return make_error(Errc::kIo, "kvm: KVM_CREATE_IRQCHIP failed", errno);
  kvm_pit_config pit{};
  pit.flags = KVM_PIT_SPEAKER_DUMMY;
  if (ioctl(vfd, KVM_CREATE_PIT2, &pit) < 0) return make_error(Errc::kIo, "kvm: KVM_CREATE_PIT2 failed", errno);

  // Guest RAM: one memfd (shared with the vhost-user back-ends), mapped once.
  vm->ram_fd_ = UniqueFd(memfd_create("canopy-kvm-ram", MFD_CLOEXEC));
  if (!vm->ram_fd_.valid()) return make_error(Errc::kIo, "kvm: memfd_create failed", errno);
  if (ftruncate(vm->ram_fd_.get(), off_t(c.ram_bytes)) != 0)
    return make_error(Errc::kNoMemory, "kvm: cannot size guest RAM", errno);
  // Those given it read-only (the compositor through canopy-gpu) cannot open it again writable.
  CANOPY_TRY(forbid_writable_reopen(vm->ram_fd_.get()));
  void* p = mmap(nullptr, c.ram_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, vm->ram_fd_.get(), 0);
  if (p == MAP_FAILED) return make_error(Errc::kNoMemory, "kvm: cannot map guest RAM", errno);
  vm->ram_ = static_cast<uint8_t*>(p);
  const uint64_t low = std::min(c.ram_bytes, kMmioGapStart);
  kvm_userspace_memory_region r{};
  r.slot = 0;
  r.guest_phys_addr = 0;
  r.memory_size = low;
  r.userspace_addr = reinterpret_cast<uint64_t>(vm->ram_);
  if (ioctl(vfd, KVM_SET_USER_MEMORY_REGION, &r) < 0) return make_error(Errc::kIo, "kvm: cannot add guest RAM", errno);
  if (c.ram_bytes > low) {
    r.slot = 1;
    r.guest_phys_addr = kHighRamStart;
    r.memory_size = c.ram_bytes - low;
    r.userspace_addr = reinterpret_cast<uint64_t>(vm->ram_ + low);
    if (ioctl(vfd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
      return make_error(Errc::kIo, "kvm: cannot add high guest RAM", errno);
  }
  KvmVm* self = vm.get();
  vm->impl_->serial = std::make_unique<Serial8250>(
      [self](uint8_t b) {
        if (self->cfg_.console) {
          self->cfg_.console(b);
          return;
        }
        std::lock_guard<std::mutex> l(self->impl_->console_mu);
        std::string& line = self->impl_->console_line;
        append_console_byte(line, b);  // no raw escape sequences onto the host's terminal
        if (b == '\n' || line.size() >= 256) {
          ssize_t w = ::write(STDOUT_FILENO, line.data(), line.size());
          (void)w;
          line.clear();
        }
      },
      [self] { self->pulse_irq(Serial8250::kIrq); });
  return vm;
}

KvmVm::~KvmVm() {
  if (impl_) {
    request_stop();
    for (auto& v : impl_->vcpus) {
      if (v->started) pthread_join(v->thread, nullptr);
      if (v->run) munmap(v->run, v->run_size);
    }
  }
  if (ram_) munmap(ram_, cfg_.ram_bytes);
  if (impl_)
    for (auto& r : impl_->shm) munmap(r.host, r.size);
}

namespace {
constexpr uint64_t kShmAlign = 2ull << 20;
// An inaccessible reservation of [at, at + len) (or anywhere, at == nullptr).
void* reserve(void* at, uint64_t len) {
  return mmap(at, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (at ? MAP_FIXED : 0), -1, 0);
}
}  // namespace

Result<uint32_t> KvmVm::add_shm_region(uint64_t size, uint64_t* gpa) {
  if (size == 0 || size % kShmAlign || size > (64ull << 30))
    return make_error(Errc::kInvalidArgument, "kvm: a shared memory region is 2 MiB..64 GiB in 2 MiB steps");
  std::lock_guard<std::mutex> l(impl_->shm_mu);
  if (impl_->next_shm_gpa == 0) {
    // Above RAM, on a 1 GiB boundary.
    const uint64_t low = std::min(cfg_.ram_bytes, kMmioGapStart);
    impl_->next_shm_gpa = (kHighRamStart + (cfg_.ram_bytes - low) + (1ull << 30) - 1) & ~((1ull << 30) - 1);
  }
  // Each region on a boundary of its own size (up to 1 GiB), so the guest can use large pages.
  const uint64_t align = std::min<uint64_t>(1ull << 30, std::bit_ceil(size));
  const uint64_t at = (impl_->next_shm_gpa + align - 1) & ~(align - 1);
  void* host = reserve(nullptr, size);
  if (host == MAP_FAILED) return make_error(Errc::kNoMemory, "kvm: cannot reserve a shared memory region", errno);
  kvm_userspace_memory_region r{};
  r.slot = impl_->next_slot;
  r.guest_phys_addr = at;
  r.memory_size = size;
  r.userspace_addr = reinterpret_cast<uint64_t>(host);
  if (ioctl(vm_.get(), KVM_SET_USER_MEMORY_REGION, &r) < 0) {
    const int err = errno;
    munmap(host, size);
    return make_error(Errc::kIo, "kvm: cannot add a shared memory region's slot", err);
  }
  ++impl_->next_slot;
  impl_->next_shm_gpa = at + size;
  impl_->shm.push_back(Impl::Shm{at, size, static_cast<uint8_t*>(host), {}});
  *gpa = at;
  return uint32_t(impl_->shm.size() - 1);
}

Status KvmVm::map_shm(uint32_t region, uint64_t offset, int fd, uint64_t fd_offset, uint64_t len, bool writable) {
  std::lock_guard<std::mutex> l(impl_->shm_mu);
  if (region >= impl_->shm.size()) return make_error(Errc::kInvalidArgument, "kvm: no such shared memory region");
  Impl::Shm& r = impl_->shm[region];
  const uint64_t page = uint64_t(sysconf(_SC_PAGESIZE));
  if (len == 0 || offset % page || len % page || fd_offset % page)
    return make_error(Errc::kInvalidArgument, "kvm: shared memory mapping not page aligned or empty");
  if (offset > r.size || len > r.size - offset)
    return make_error(Errc::kOutOfRange, "kvm: shared memory mapping outside its region");
  auto next = r.maps.lower_bound(offset);
  if (next != r.maps.end() && next->first < offset + len)
    return make_error(Errc::kInvalidArgument, "kvm: shared memory mapping overlaps another");
  if (next != r.maps.begin() && std::prev(next)->first + std::prev(next)->second > offset)
    return make_error(Errc::kInvalidArgument, "kvm: shared memory mapping overlaps another");
  void* p =
      mmap(r.host + offset, len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED | MAP_FIXED, fd, off_t(fd_offset));
  if (p == MAP_FAILED) {
    const int err = errno;
    reserve(r.host + offset, len);  // MAP_FIXED may have dropped the reservation there
    return make_error(Errc::kIo, "kvm: cannot map the back-end's file", err);
  }
  r.maps.emplace(offset, len);
  return {};
}

Status KvmVm::unmap_shm(uint32_t region, uint64_t offset, uint64_t len) {
  std::lock_guard<std::mutex> l(impl_->shm_mu);
  if (region >= impl_->shm.size()) return make_error(Errc::kInvalidArgument, "kvm: no such shared memory region");
  Impl::Shm& r = impl_->shm[region];
  auto it = r.maps.find(offset);
  if (it == r.maps.end() || it->second != len)
    return make_error(Errc::kInvalidArgument, "kvm: no such shared memory mapping");
  if (reserve(r.host + offset, len) == MAP_FAILED)
    return make_error(Errc::kIo, "kvm: cannot take back a shared memory mapping", errno);
  r.maps.erase(it);
  return {};
}

void KvmVm::clear_shm(uint32_t region) {
  std::lock_guard<std::mutex> l(impl_->shm_mu);
  if (region >= impl_->shm.size()) return;
  Impl::Shm& r = impl_->shm[region];
  for (const auto& [off, len] : r.maps) reserve(r.host + off, len);
  r.maps.clear();
}

size_t KvmVm::shm_mappings(uint32_t region) const {
  std::lock_guard<std::mutex> l(impl_->shm_mu);
  return region < impl_->shm.size() ? impl_->shm[region].maps.size() : 0;
}

uint8_t* KvmVm::host_address(uint64_t gpa) const {
  const uint64_t low = std::min(cfg_.ram_bytes, kMmioGapStart);
  if (gpa < low) return ram_ + gpa;
  if (gpa >= kHighRamStart && gpa - kHighRamStart < cfg_.ram_bytes - low) return ram_ + low + (gpa - kHighRamStart);
  return nullptr;
}

Status KvmVm::add_mmio(uint64_t base, uint64_t size, MmioHandler h) {
  if (base < kMmioGapStart || base + size > kIoApicAddr || size == 0)
    return make_error(Errc::kInvalidArgument, "kvm: MMIO windows go in [3 GiB, IOAPIC)");
  for (const auto& w : impl_->windows)
    if (base < w.base + w.size && w.base < base + size)
      return make_error(Errc::kInvalidArgument, "kvm: MMIO windows overlap");
  impl_->windows.push_back({base, size, std::move(h)});
  return {};
}

void KvmVm::describe_virtio(uint64_t base, uint32_t size, uint32_t gsi) { impl_->virtio.push_back({base, size, gsi}); }

namespace {
Status ioeventfd(int vm, uint64_t addr, uint32_t datamatch, int fd, bool assign) {
  kvm_ioeventfd e{};
  e.datamatch = datamatch;
  e.addr = addr;
  e.len = 4;
  e.fd = fd;
  e.flags = KVM_IOEVENTFD_FLAG_DATAMATCH | (assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN);
  if (ioctl(vm, KVM_IOEVENTFD, &e) < 0) return make_error(Errc::kIo, "kvm: KVM_IOEVENTFD failed", errno);
  return {};
}
Status irqfd(int vm, uint32_t gsi, int fd, bool assign) {
  kvm_irqfd i{};
  i.fd = uint32_t(fd);
  i.gsi = gsi;
  i.flags = assign ? 0 : KVM_IRQFD_FLAG_DEASSIGN;
  if (ioctl(vm, KVM_IRQFD, &i) < 0) return make_error(Errc::kIo, "kvm: KVM_IRQFD failed", errno);
  return {};
}
}  // namespace

Status KvmVm::add_ioeventfd(uint64_t addr, uint32_t datamatch, int fd) {
  return ioeventfd(vm_.get(), addr, datamatch, fd, true);
}
Status KvmVm::remove_ioeventfd(uint64_t addr, uint32_t datamatch, int fd) {
  return ioeventfd(vm_.get(), addr, datamatch, fd, false);
}
Status KvmVm::add_irqfd(uint32_t gsi, int fd) { return irqfd(vm_.get(), gsi, fd, true); }
Status KvmVm::remove_irqfd(uint32_t gsi, int fd) { return irqfd(vm_.get(), gsi, fd, false); }

void KvmVm::pulse_irq(uint32_t gsi) {
  kvm_irq_level l{};
  l.irq = gsi;
  l.level = 1;
  (void)ioctl(vm_.get(), KVM_IRQ_LINE, &l);
  l.level = 0;
  (void)ioctl(vm_.get(), KVM_IRQ_LINE, &l);
}

void KvmVm::request_stop() {
  if (!impl_) return;
  impl_->stop.store(true);
  for (auto& v : impl_->vcpus) {
    if (v->run) v->run->immediate_exit = 1;
    if (v->started) pthread_kill(v->thread, kick_signal());
  }
}

namespace {

Status setup_cpuid(int kvm_fd, int vcpu_fd, uint32_t index, uint32_t count) {
  constexpr uint32_t kMax = 256;
  std::vector<uint8_t> buf(sizeof(kvm_cpuid2) + kMax * sizeof(kvm_cpuid_entry2));
  auto* cpuid = reinterpret_cast<kvm_cpuid2*>(buf.data());
  cpuid->nent = kMax;
  if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
    return make_error(Errc::kIo, "kvm: KVM_GET_SUPPORTED_CPUID failed", errno);
  const bool tsc_deadline = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) > 0;
  for (uint32_t i = 0; i < cpuid->nent; ++i) {
    kvm_cpuid_entry2& e = cpuid->entries[i];
    if (e.function == 1) {
      e.ebx = (e.ebx & 0x0000ffff) | (std::min<uint32_t>(count, 255) << 16) | (index << 24);
      e.ecx |= 1u << 31;  // running under a hypervisor
      if (tsc_deadline) e.ecx |= 1u << 24;
      e.ecx &= ~(1u << 15);  // no PDCM
      if (count > 1) e.edx |= 1u << 28;
    } else if (e.function == 0xb) {
      e.edx = index;  // x2APIC id
    }
  }
  if (ioctl(vcpu_fd, KVM_SET_CPUID2, cpuid) < 0) return make_error(Errc::kIo, "kvm: KVM_SET_CPUID2 failed", errno);
  return {};
}

Status setup_msrs(int vcpu_fd) {
  const std::pair<uint32_t, uint64_t> boot[] = {
      {0x174, 0},
      {0x175, 0},
      {0x176, 0},  // SYSENTER
      {0xc0000081, 0},
      {0xc0000082, 0},
      {0xc0000083, 0},
      {0xc0000084, 0},
      {0xc0000102, 0},          // STAR .. KERNEL_GS_BASE
      {0x10, 0},                // TSC
      {0x1a0, 1},               // MISC_ENABLE: fast strings
      {0x2ff, (1u << 11) | 6},  // MTRRdefType: enabled, write-back
  };
  std::vector<uint8_t> buf(sizeof(kvm_msrs) + std::size(boot) * sizeof(kvm_msr_entry));
  auto* msrs = reinterpret_cast<kvm_msrs*>(buf.data());
  msrs->nmsrs = std::size(boot);
  for (size_t i = 0; i < std::size(boot); ++i) {
    msrs->entries[i].index = boot[i].first;
    msrs->entries[i].data = boot[i].second;
  }
  if (ioctl(vcpu_fd, KVM_SET_MSRS, msrs) != int(std::size(boot)))
    return make_error(Errc::kIo, "kvm: KVM_SET_MSRS failed", errno);
  return {};
}

Status setup_lint(int vcpu_fd) {
  kvm_lapic_state l{};
  if (ioctl(vcpu_fd, KVM_GET_LAPIC, &l) < 0) return make_error(Errc::kIo, "kvm: KVM_GET_LAPIC failed", errno);
  auto set_mode = [&](size_t off, uint32_t mode) {
    uint32_t v;
    std::memcpy(&v, l.regs + off, 4);
    v = (v & ~0x700u) | (mode << 8);
    std::memcpy(l.regs + off, &v, 4);
  };
  set_mode(0x350, 7);  // LINT0: ExtINT
  set_mode(0x360, 4);  // LINT1: NMI
  if (ioctl(vcpu_fd, KVM_SET_LAPIC, &l) < 0) return make_error(Errc::kIo, "kvm: KVM_SET_LAPIC failed", errno);
  return {};
}

Status setup_boot_cpu(int vcpu_fd, const BootSetup& b) {
  kvm_sregs s{};
  if (ioctl(vcpu_fd, KVM_GET_SREGS, &s) < 0) return make_error(Errc::kIo, "kvm: KVM_GET_SREGS failed", errno);
  s.cs = segment(kGdt[1], kCodeSelector);
  s.ds = s.es = s.fs = s.gs = s.ss = segment(kGdt[2], kDataSelector);
  s.tr = segment(kGdt[3], kTssSelector);
  s.gdt.base = kGdtAddr;
  s.gdt.limit = sizeof(kGdt) - 1;
  s.idt.base = kIdtAddr;
  s.idt.limit = 7;
  s.cr0 = 0x80000011;  // PG | ET | PE
  s.cr3 = kPml4Addr;
  s.cr4 = 0x20;    // PAE
  s.efer = 0x500;  // LME | LMA
  if (ioctl(vcpu_fd, KVM_SET_SREGS, &s) < 0) return make_error(Errc::kIo, "kvm: KVM_SET_SREGS failed", errno);
  kvm_regs r{};
  r.rflags = 0x2;
  r.rip = b.entry;
  r.rsp = r.rbp = kBootStack;
  r.rsi = b.zero_page;
  if (ioctl(vcpu_fd, KVM_SET_REGS, &r) < 0) return make_error(Errc::kIo, "kvm: KVM_SET_REGS failed", errno);
  kvm_fpu f{};
  f.fcw = 0x37f;
  f.mxcsr = 0x1f80;
  if (ioctl(vcpu_fd, KVM_SET_FPU, &f) < 0) return make_error(Errc::kIo, "kvm: KVM_SET_FPU failed", errno);
  return {};
}

}  // namespace

Result<VmExit> KvmVm::run() {
  Impl& im = *impl_;
  CANOPY_ASSIGN_OR_RETURN(auto kernel, read_file(kernel_fd_.get(), 256u << 20));
  std::vector<uint8_t> initrd;
  if (initrd_fd_.valid()) {
    CANOPY_ASSIGN_OR_RETURN(initrd, read_file(initrd_fd_.get(), 2048u << 20));
  }
  const uint64_t low_bytes = std::min(cfg_.ram_bytes, kMmioGapStart);
  GuestRam ram{{ram_, low_bytes}, {ram_ + low_bytes, cfg_.ram_bytes - low_bytes}};
  AcpiConfig acpi;
  acpi.vcpus = cfg_.vcpus;
  acpi.virtio = im.virtio;
  CANOPY_ASSIGN_OR_RETURN(uint64_t rsdp, write_acpi_tables(ram.low, kAcpiAddr, acpi));
  CANOPY_ASSIGN_OR_RETURN(BootSetup boot, write_linux_boot(ram, cfg_.ram_bytes, kernel, initrd, cfg_.cmdline, rsdp));
  CANOPY_INFO("kvm: %u vCPU(s), %llu MiB, kernel %s (%zu KiB), initrd %zu KiB at 0x%llx, %zu device(s)", cfg_.vcpus,
              (unsigned long long)(cfg_.ram_bytes >> 20), cfg_.kernel.c_str(), kernel.size() >> 10, initrd.size() >> 10,
              (unsigned long long)boot.initrd_addr, im.virtio.size());

  const int run_size = ioctl(kvm_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size <= 0) return make_error(Errc::kIo, "kvm: KVM_GET_VCPU_MMAP_SIZE failed", errno);
  for (uint32_t i = 0; i < cfg_.vcpus; ++i) {
    auto v = std::make_unique<Impl::Vcpu>();
    v->index = i;
    v->fd = UniqueFd(ioctl(vm_.get(), KVM_CREATE_VCPU, i));
    if (!v->fd.valid()) return make_error(Errc::kIo, "kvm: KVM_CREATE_VCPU failed", errno);
    void* p = mmap(nullptr, size_t(run_size), PROT_READ | PROT_WRITE, MAP_SHARED, v->fd.get(), 0);
    if (p == MAP_FAILED) return make_error(Errc::kIo, "kvm: cannot map kvm_run", errno);
    v->run = static_cast<kvm_run*>(p);
    v->run_size = size_t(run_size);
    CANOPY_TRY(setup_cpuid(kvm_.get(), v->fd.get(), i, cfg_.vcpus));
    CANOPY_TRY(setup_msrs(v->fd.get()));
    if (i == 0) CANOPY_TRY(setup_boot_cpu(v->fd.get(), boot));
    CANOPY_TRY(setup_lint(v->fd.get()));
    im.vcpus.push_back(std::move(v));
  }

  // vCPU threads: a kick signal (no-op handler, no SA_RESTART) takes them out of KVM_RUN.
  struct sigaction sa{};
  sa.sa_handler = [](int) {};
  sigemptyset(&sa.sa_mask);
  sigaction(kick_signal(), &sa, nullptr);
  auto finish = [this](VmExit e) {
    int none = -1;
    impl_->outcome.compare_exchange_strong(none, int(e));
    request_stop();
  };
  for (auto& vp : im.vcpus) {
    Impl::Vcpu* v = vp.get();
    auto body = [this, v, finish] {
      Impl& im = *impl_;
      sigset_t unblock;
      sigemptyset(&unblock);
      sigaddset(&unblock, kick_signal());
      pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
      kvm_run* run = v->run;
      while (!im.stop.load()) {
        if (ioctl(v->fd.get(), KVM_RUN, 0) < 0) {
          if (errno == EINTR || errno == EAGAIN) {
            run->immediate_exit = 0;
            continue;
          }
          if (errno == EFAULT)
            CANOPY_ERROR(
                "kvm: vCPU %u: the guest touched memory without host pages (an unmapped part of a "
                "shared memory region?): stopping it",
                v->index);
          else CANOPY_ERROR("kvm: vCPU %u: KVM_RUN failed: %s", v->index, std::strerror(errno));
          finish(VmExit::kError);
          break;
        }
        exits_.fetch_add(1, std::memory_order_relaxed);
        switch (run->exit_reason) {
          case KVM_EXIT_IO: {
            auto* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
            for (uint32_t k = 0; k < run->io.count; ++k, data += run->io.size) {
              const uint16_t port = run->io.port;
              const bool out = run->io.direction == KVM_EXIT_IO_OUT;
              if (port >= Serial8250::kBase && port < Serial8250::kBase + 8) {
                if (out) im.serial->write(uint16_t(port - Serial8250::kBase), data[0]);
                else data[0] = im.serial->read(uint16_t(port - Serial8250::kBase));
              } else if (port == kSleepControlPort && out) {
                if (data[0] & kSleepEnable) finish(VmExit::kPowerOff);
              } else if (port == kResetPort && out) {
                if (data[0] == kResetValue) finish(VmExit::kReboot);
              } else if (port == 0x64 && out) {
                if (data[0] == 0xfe) finish(VmExit::kReboot);  // i8042 CPU reset
              } else if (!out) {
                std::memset(data, port == 0x64 || port == kSleepControlPort + 1 ? 0x00 : 0xff, run->io.size);
              }
            }
            break;
          }
          case KVM_EXIT_MMIO: {
            const uint64_t a = run->mmio.phys_addr;
            const uint32_t len = std::min<uint32_t>(run->mmio.len, 8);
            Impl::Window* w = nullptr;
            for (auto& win : im.windows)
              if (a >= win.base && a - win.base < win.size) w = &win;
            if (run->mmio.is_write) {
              uint64_t val = 0;
              std::memcpy(&val, run->mmio.data, len);
              if (w && w->h.write) w->h.write(a - w->base, len, val);
            } else {
              uint64_t val = ~uint64_t(0);
              if (w && w->h.read) val = w->h.read(a - w->base, len);
              std::memcpy(run->mmio.data, &val, len);
            }
            break;
          }
          case KVM_EXIT_SHUTDOWN:  // a triple fault: what a reset by `reboot=t` looks like, or a crash
            // (AMD's KVM has already reset the vCPU here, so its registers tell nothing.)
            CANOPY_INFO("kvm: vCPU %u: shutdown (triple fault)", v->index);
            finish(VmExit::kReboot);
            break;
          case KVM_EXIT_SYSTEM_EVENT:
            finish(run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN ? VmExit::kPowerOff : VmExit::kReboot);
            break;
          case KVM_EXIT_HLT:
          case KVM_EXIT_INTR: break;
          case KVM_EXIT_FAIL_ENTRY:
            CANOPY_ERROR("kvm: vCPU %u: entry failed (reason 0x%llx)", v->index,
                         (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
            finish(VmExit::kError);
            break;
          case KVM_EXIT_INTERNAL_ERROR:
            CANOPY_ERROR("kvm: vCPU %u: internal error %u", v->index, run->internal.suberror);
            finish(VmExit::kError);
            break;
          default:
            CANOPY_ERROR("kvm: vCPU %u: unexpected exit %u", v->index, run->exit_reason);
            finish(VmExit::kError);
            break;
        }
      }
    };
    // Threads start with the kick signal blocked so it only lands inside the loop above.
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, kick_signal());
    pthread_sigmask(SIG_BLOCK, &block, &old);
    auto* fn = new std::function<void()>(std::move(body));
    const int rc = pthread_create(
        &v->thread, nullptr,
        [](void* arg) -> void* {
          std::unique_ptr<std::function<void()>> f(static_cast<std::function<void()>*>(arg));
          (*f)();
          return nullptr;
        },
        fn);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (rc != 0) {
      delete fn;
      finish(VmExit::kError);
      break;
    }
    v->started = true;
  }
  for (auto& v : im.vcpus)
    if (v->started) {
      pthread_join(v->thread, nullptr);
      v->started = false;
    }
  {
    std::lock_guard<std::mutex> l(im.console_mu);
    if (!im.console_line.empty()) {
      ssize_t w = ::write(STDOUT_FILENO, im.console_line.data(), im.console_line.size());
      (void)w;
      im.console_line.clear();
    }
  }
  const int o = im.outcome.load();
  return o < 0 ? VmExit::kStopped : VmExit(o);
}

}  // namespace canopy::hypervisor::kvm
