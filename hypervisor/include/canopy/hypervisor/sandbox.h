// The seccomp policy of a guest partition (applied by spawn() before exec, see process.h).
//
// An allowlist: what a dynamically linked C++ app needs to load and run (memory, files it may read,
// threads, time, futexes, signals to itself) and what the partition transport needs (send/recv on its
// socket, eventfds, poll). Everything else fails with EPERM, among it: process_vm_readv/writev, ptrace,
// kcmp, pidfd_open/pidfd_getfd (another process's memory or descriptors), socket/connect/bind (no new
// channels: the VMM socket is the only one), mount/unshare/setns/chroot, memfd_create, bpf,
// perf_event_open, userfaultfd, keyctl, module and reboot calls, fork (threads are allowed: clone with
// CLONE_THREAD), kill (tgkill for its own threads stays). clone3 fails with ENOSYS so that glibc falls
// back to clone, whose flags a filter can inspect. ioctl is limited to the terminal query stdio makes.
//
// Threading: pure; call from any thread.
#pragma once

#include <linux/filter.h>

#include <vector>

#include "canopy/base/result.h"

namespace canopy::hypervisor {

// The compiled filter (classic BPF for the running architecture), built with libseccomp.
Result<std::vector<sock_filter>> partition_seccomp_filter();

}  // namespace canopy::hypervisor
