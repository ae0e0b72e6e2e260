#include "canopy/buffers/fault_guard.h"

#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#include "canopy/base/log.h"

namespace canopy::buffers::fault_guard {
namespace {

// Enough for kMaxMemoryRegions (509) twice over: a back-end builds the new table while the old one is
// still mapped.
constexpr int kSlots = 1024;

struct Slot {
  std::atomic<uint8_t*> base{nullptr};
  std::atomic<size_t> len{0};
  std::atomic<bool> lost{false};
  std::atomic<bool> taken{false};
};
static_assert(std::atomic<uint8_t*>::is_always_lock_free && std::atomic<size_t>::is_always_lock_free &&
              std::atomic<bool>::is_always_lock_free && std::atomic<uint64_t>::is_always_lock_free);

Slot g_slots[kSlots];
std::atomic<int> g_event_fd{-1};
std::atomic<uint64_t> g_lost{0};
struct sigaction g_previous{};
std::once_flag g_install;

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(info->si_addr);
  for (Slot& s : g_slots) {
    uint8_t* const base = s.base.load(std::memory_order_acquire);
    const size_t len = s.len.load(std::memory_order_acquire);
    const uintptr_t b = reinterpret_cast<uintptr_t>(base);
    if (!base || at < b || at - b >= len) continue;
    // Zeros over the whole range: the access that faulted runs again and completes, and so does every
    // later one (another thread faulting meanwhile loops here until the mapping is in place).
    if (!s.lost.exchange(true, std::memory_order_acq_rel)) {
      if (::mmap(base, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) ==
          MAP_FAILED)
        break;  // cannot recover: die as without the guard
      g_lost.fetch_add(1, std::memory_order_relaxed);
      const uint64_t one = 1;
      const int efd = g_event_fd.load(std::memory_order_acquire);
      if (efd >= 0) {
        ssize_t w = ::write(efd, &one, sizeof one);
        (void)w;
      }
    }
    return;
  }
  // Not guest memory: what was there before.
  if ((g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_sigaction) {
    g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN && g_previous.sa_handler) {
    g_previous.sa_handler(sig);
    return;
  }
  ::signal(SIGBUS, SIG_DFL);  // the access faults again and the process dies of SIGBUS
}

void install_once() {
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) CANOPY_WARN("fault guard: eventfd failed; losses are found without a wake-up");
  g_event_fd.store(efd, std::memory_order_release);
  struct sigaction sa{};
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (::sigaction(SIGBUS, &sa, &g_previous) != 0) CANOPY_WARN("fault guard: sigaction(SIGBUS) failed");
}

}  // namespace

void install() { std::call_once(g_install, install_once); }

int add(void* base, size_t len) {
  install();
  if (!base || !len) return kNoSlot;
  for (int i = 0; i < kSlots; ++i) {
    Slot& s = g_slots[i];
    bool expected = false;
    if (!s.taken.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) continue;
    s.lost.store(false, std::memory_order_relaxed);
    s.len.store(len, std::memory_order_release);
    s.base.store(static_cast<uint8_t*>(base), std::memory_order_release);
    return i;
  }
  static std::atomic<bool> told{false};
  if (!told.exchange(true)) CANOPY_WARN("fault guard: all %d slots taken; a mapping goes unguarded", kSlots);
  return kNoSlot;
}

void remove(int slot) {
  if (slot < 0 || slot >= kSlots) return;
  Slot& s = g_slots[slot];
  s.base.store(nullptr, std::memory_order_release);
  s.len.store(0, std::memory_order_release);
  s.taken.store(false, std::memory_order_release);
}

bool lost(int slot) { return slot >= 0 && slot < kSlots && g_slots[slot].lost.load(std::memory_order_acquire); }

int event_fd() { return g_event_fd.load(std::memory_order_acquire); }

uint64_t lost_count() { return g_lost.load(std::memory_order_relaxed); }

}  // namespace canopy::buffers::fault_guard
