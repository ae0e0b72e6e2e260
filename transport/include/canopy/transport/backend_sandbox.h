// Confinement of a vhost-user device back-end process (canopy-gpu, canopy-vhost-rng), applied by
// backend_main once the device is set up and its front-end connected, before the first message: from
// then on the process only serves that front-end. A compromised back-end (say, through a guest's 3D
// command stream inside virglrenderer or the host's GL driver) keeps what it already holds (the VM's
// guest memory, its sockets, the GPU's device files) but cannot grow it:
//
//   - PR_SET_NO_NEW_PRIVS, then a seccomp filter (libseccomp) that refuses with EPERM: execve/execveat,
//     fork/vfork and clone without CLONE_THREAD (threads stay; clone3 answers ENOSYS so that glibc
//     uses clone, whose flags the filter can see), ptrace, process_vm_readv/writev, kcmp, pidfd_open /
//     pidfd_getfd / pidfd_send_signal, kill, tkill, tgkill / rt_(tg)sigqueueinfo to other processes,
//     prlimit64 setting another process's limits, sockets other than AF_UNIX
//     (no network, no netlink), mount and the new mount API, chroot, pivot_root, unshare, setns, bpf,
//     perf_event_open, userfaultfd, io_uring, keyctl/add_key/request_key, module and kexec calls,
//     reboot, swapon/swapoff, acct, changing the clock, the host name, uids, gids and capabilities,
//     iopl/ioperm, personality, quotactl.
//   - Not covered: scheduling calls on other processes of the same user (sched_setaffinity and friends,
//     which GPU drivers use on their own threads), and connecting to any pathname unix socket the uid
//     may reach (Landlock does not cover connect; restrict_backend_writes below covers writes). canopy-vmm makes itself
//     non-dumpable, so a back-end of the same user cannot open its memory through /proc.
//   - Everything else stays allowed: a GPU driver's ioctls, Mesa's JIT (mmap/mprotect), memfds for
//     frames and blobs, AF_UNIX sockets (the compositor channel reconnects), threads, files (the uid's
//     permissions decide). An allowlist is what partitions get (hypervisor/sandbox.h); a back-end that
//     loads a GPU driver cannot be given one without breaking with each driver.
//
// Sanitizer builds (ASan / LSan) keep ptrace, kill and clone without CLONE_THREAD: LeakSanitizer stops
// the world with a traced helper task at exit.
//
// Threading: call once, from any thread, before other threads start is not required (the filter is
// applied to all threads: SECCOMP_FILTER_FLAG_TSYNC).
#pragma once

#include <string>
#include <vector>

#include "canopy/base/result.h"

namespace canopy::transport {

// The file system view of a back-end (Landlock; backend_main applies it before the device exists, while
// the process has one thread, because a Landlock domain covers only the threads made after it): it
// may write, create, remove, rename or truncate nothing but beneath `beneath` (what its options say it
// writes: a frame log, a socket, its stats; a cache of its GPU driver), plus open device files in /dev
// for writing (a GPU's render node, /dev/null) and use /dev/shm; reading stays as the uid's permissions
// say. From Landlock ABI 6 it can neither signal nor reach the abstract sockets of processes outside its
// domain. Paths that do not exist are skipped. Errors: kUnsupported when the kernel has no Landlock
// (the caller decides: backend_main goes on with a warning), kIo.
Status restrict_backend_writes(const std::vector<std::string>& beneath);

// Errors: kIo when the kernel refuses the filter (seccomp not built in).
Status confine_backend();
// Whether this build keeps ptrace, kill and process clones (a sanitizer build).
bool backend_sandbox_loosened();

}  // namespace canopy::transport
