// Fault guard: a back-end survives a front-end that shrinks a guest-memory file under its mapping.
//
// vhost-user front-ends may hand unsealed descriptors (memory-backend-file on hugetlbfs or /dev/shm is
// a common set-up), and a file truncated after SET_MEM_TABLE makes the next access to its lost pages
// raise SIGBUS: the whole back-end process would die, with every VM it serves. GuestMemory registers
// each region's mapping here. A SIGBUS inside a registered range replaces that whole range with
// private anonymous pages (MAP_FIXED, so the faulting access completes and reads zeros), marks it lost
// and signals event_fd(); the owner then fails the device with a clear error. A SIGBUS anywhere else
// goes to the handler that was there before, or to the default action (the process dies as it did).
//
// The handler is installed on the first add(). It is async-signal-safe: lock-free atomics, mmap and
// write. A range must be removed before it is unmapped.
#pragma once

#include <cstddef>
#include <cstdint>

namespace canopy::buffers::fault_guard {

inline constexpr int kNoSlot = -1;

// Installs the SIGBUS handler and makes event_fd() (once; add() does it too). Back-ends call it before
// they confine themselves.
void install();

// Registers [base, base+len) (page aligned); returns its slot, or kNoSlot when every slot is taken
// (the range is then unguarded, as before; logged once).
int add(void* base, size_t len);
// Forgets the slot (kNoSlot: nothing).
void remove(int slot);
// True once a SIGBUS hit the slot's range (its contents are zeros from then on).
bool lost(int slot);
// Readable (an eventfd) after each range lost; -1 before the first add().
int event_fd();
// Ranges lost since the process started.
uint64_t lost_count();

}  // namespace canopy::buffers::fault_guard
