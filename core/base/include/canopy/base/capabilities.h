// Giving up a process's capabilities (docs/security.md, "Confinement"): a confined program that runs as
// root keeps the uid (the operator's folders it writes are root's) but none of root's powers over other
// owners' files and processes: without CAP_DAC_OVERRIDE the mode bits bind it as they bind anyone (a
// descriptor handed out read-only, mode 0444, cannot be opened again writable through /proc/self/fd),
// without CAP_KILL and CAP_SYS_PTRACE it cannot signal or trace other uids' processes.
#pragma once

#include <initializer_list>

#include "canopy/base/result.h"

namespace canopy {

// Drops every capability but those in `keep` (CAP_* numbers) from the calling thread's effective,
// permitted and inheritable sets and its ambient set, and, where the thread may (CAP_SETPCAP), from the
// bounding set, so that no later execve regains one. Capabilities belong to each thread: call it while
// the process has one thread (before a GPU driver, PipeWire or SDL make theirs). A thread without
// capabilities (a non-root uid) has nothing to drop: ok. Errors: kInvalidArgument when the process has
// other threads (under ThreadSanitizer: other than its runtime's), kIo.
Status drop_capabilities(std::initializer_list<int> keep = {});

}  // namespace canopy
