// The Landlock ruleset that takes writing away (Canopy's confined processes: partitions, back-ends;
// docs/security.md): every write right the running kernel's Landlock ABI knows, and from ABI 6 the
// signal and abstract-socket scopes. Rules beneath paths may grant rights back.
#pragma once

#include <cstddef>
#include <cstdint>

namespace canopy {

struct LandlockWrites {
  uint64_t attr[3] = {0, 0, 0};  // landlock_ruleset_attr: handled_access_fs, handled_access_net, scoped
  size_t attr_size = 0;          // what the kernel's ABI reads of attr; 0: no Landlock in this kernel
  uint64_t dir_rights = 0;       // what a rule beneath a folder may grant back (= handled_access_fs)
  uint64_t file_rights = 0;      // ... beneath a single file
};

// `device_ioctls`: take away ioctls on device files opened later too (ABI 5). Asks the kernel its ABI;
// no allocation (fit to be called before a fork or clone).
LandlockWrites landlock_writes(bool device_ioctls);

// Puts the calling process in a Landlock domain of its own that takes no right it needs (only making
// device nodes), for what every domain brings: processes outside it cannot be traced or have their
// /proc/<pid>/mem opened, and from ABI 6 cannot be signalled (kill, pidfd_send_signal through a
// /proc/<pid> folder, SIGIO) nor their abstract sockets reached. Its children inherit it and may nest
// domains of their own, which it can still signal. Sets no_new_privs. Call while the process has one
// thread (a domain covers only threads made after it). Returns the kernel's Landlock ABI, 0 when it
// has none (nothing done) and -1 when the kernel refused.
int landlock_scope_self();

}  // namespace canopy
