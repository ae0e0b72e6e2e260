// Confinement of the processes that read guest input: the vhost-user device back-ends (canopy-gpu,
// canopy-snd, canopy-vhost-rng; applied by backend_main once the device is set up and its front-end
// connected, before the first message) and canopy-display (once its outputs are open, before the first
// connection). A compromised process (say, through a guest's 3D command stream inside virglrenderer or
// the host's GL driver) keeps what it already holds (the VM's guest memory, its sockets, the GPU's
// device files) but cannot grow it:
//
//   - PR_SET_NO_NEW_PRIVS, then a seccomp allowlist (libseccomp) applied to every thread: memory,
//     files (the file system view below and the uid decide which), memfds, threads, its own signals,
//     time, unix sockets, eventfds, polling, a GPU driver's ioctls, and what the program adds
//     (SyscallPolicy::allow: canopy-display's SysV shared memory for X11). With conditions: clone only
//     with CLONE_THREAD (clone3 answers ENOSYS so that glibc uses clone, whose flags the filter can
//     see); tgkill, rt_(tg)sigqueueinfo and kill only to itself; prlimit64 sets only its own limits;
//     socket and socketpair only AF_UNIX (else EAFNOSUPPORT: no network, no netlink); ioctl never
//     TIOCSTI or TIOCLINUX (pushing input into the operator's terminal); neither fcntl nor ioctl
//     names a process to signal when a descriptor is ready (F_SETOWN, F_SETOWN_EX, F_SETSIG,
//     FIOSETOWN, SIOCSPGRP, TIOCSPGRP: kill() to anyone of the uid by another way).
//   - Refused with EPERM, whatever a program adds: exec, fork, other processes' memory (ptrace,
//     process_vm_*, pidfd_getfd, kcmp), pidfd_open, signals through a pidfd (signal 0, whether a
//     peer whose pidfd SO_PEERPIDFD gave still lives, is allowed), mounts, namespaces, chroot, bpf,
//     perf, userfaultfd, io_uring, keys, modules, kexec, reboot, swap, acct, clocks, host names, uids,
//     gids, capabilities, iopl/ioperm, personality, quotactl, file handles.
//   - Anything else is not in the allowlist: the call returns ENOSYS (as on a kernel without it) and the
//     process logs "seccomp: refused system call N (name)" (the first 32; seccomp_refusals() counts them
//     all), through a SIGSYS handler that writes the return register (x86-64, arm64; elsewhere a plain
//     ENOSYS). A thread that blocks SIGSYS (some libraries' helper threads block every signal) cannot
//     run the handler: the kernel then ends the process with SIGSYS instead. The conformance tests fail
//     on such a line: a GPU driver or PipeWire version that needs a call the list lacks shows there,
//     and `--seccomp-allow=NAME,...` adds it without a rebuild. `--seccomp-audit` lets unlisted calls
//     through and has the kernel log them instead (audit records of type SECCOMP, in dmesg or the audit
//     log), to list what a new driver needs.
//   - Not covered: scheduling calls on the same uid's other processes (sched_setaffinity and friends
//     name threads by tid, and GPU drivers and PipeWire set them on their own threads), and connecting
//     to any pathname unix socket the uid may reach (Landlock does not cover connect). canopy-vmm
//     makes itself non-dumpable, so a back-end of the same user cannot open its memory through /proc.
//
// Sanitizer builds (ASan / LSan) keep ptrace, kill, wait and clone without CLONE_THREAD: LeakSanitizer
// stops the world with a traced helper task at exit.
//
// Threading: confine_syscalls may be called with other threads running (SECCOMP_FILTER_FLAG_TSYNC);
// restrict_writes must be called while the process has one thread.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "canopy/base/result.h"

namespace canopy::transport {

// The file system view of a confined process (Landlock; backend_main applies it before the device
// exists, while the process has one thread, because a Landlock domain covers only the threads made after
// it): it may write, create, remove, rename or truncate nothing but beneath `beneath` (what its options
// say it writes: a frame log, a socket, its stats; a cache of its GPU driver), plus open device files in
// /dev for writing (a GPU's render node, /dev/null) and use /dev/shm; reading stays as the uid's
// permissions say. From Landlock ABI 6 it can neither signal nor reach the abstract sockets of
// processes outside its domain. Paths that do not exist are skipped. Device files it may open for
// writing: the entries of /dev that are GPUs (dri, nvidia*, mali*, kgsl*, galcore, pvr*, accel),
// dma-buf heaps (dma_heap, udmabuf) and pseudo devices (null, zero, full, random, urandom), as /dev
// lists them when it is confined (a device that appears later cannot be); never block devices or the
// character devices that write disks (SCSI and NVMe generic, MTD: a process of root's uid owns the
// disks, capabilities or not), input devices, sound cards, cameras, terminals, nor `refused_devices`
// (canopy-display: "udmabuf", so that a read-only descriptor of guest memory cannot be made into a
// writable dma-buf). Subfolders of /dev are allowed whole (/dev/dri ...).
// Errors: kUnsupported when the kernel has no Landlock (the caller decides: backend_main goes on with
// a warning), kIo.
Status restrict_writes(const std::vector<std::string>& beneath, const std::vector<std::string>& refused_devices = {});

// The same view, and with `restrict_reads` one in which the process may also read nothing but the
// system's files and `readable`: the program folders (/usr, /lib*, /bin, /sbin, /opt), /sys, /proc,
// /run/udev, each entry of /etc but its secrets (shadow and gshadow, ssh, ssl, sudoers, security,
// credentials of the network, VPN and Kerberos configurations), the device files it may open (not the
// disks), its writable folders and `readable`. Home folders, /root, /tmp, /srv, /var, /mnt and /media
// stay out, so a confined process of root's (or the operator's) uid cannot read the operator's keys,
// other VMs' files or a raw disk. Entries of /etc and /dev are taken as they are when it is confined.
struct FileView {
  std::vector<std::string> writable;         // restrict_writes' `beneath`
  std::vector<std::string> refused_devices;  // restrict_writes' `refused_devices`
  bool restrict_reads = false;
  std::vector<std::string> readable;  // read beyond the system's (a file, or a folder and beneath it)
  // false: no device file and not /dev/shm either (a process that opens none once confined).
  bool devices = true;
  // false: this layer scopes no signals or abstract sockets (from ABI 6), so that a process may still
  // signal the processes it started before it (in an outer domain, which may scope them itself).
  bool scope = true;
};
Status restrict_files(const FileView& view);
// What a path an option names gives restrict_writes: the folder itself, else the folder the file is in.
std::string writable_folder(const std::string& path);
// Where Mesa keeps its shader cache, for a process that runs a GPU driver: $CANOPY_SCRATCH_DIR, its
// VM's scratch folder, where that is given and MESA_SHADER_CACHE_DIR is not (which it then sets);
// else the folders Mesa uses beneath MESA_SHADER_CACHE_DIR, $XDG_CACHE_HOME or ~/.cache
// (mesa_shader_cache, _db, _sf), made here, and only where the folder and they are real folders of
// the process's uid (a link planted in their place is not followed); empty when there are none. Call
// before the process is confined, while it has one thread (it may call setenv).
std::vector<std::string> driver_cache_dirs();
// What a process that runs a GPU driver or PipeWire may read beyond the system's files
// (restrict_files): the Vulkan loader's folders in $XDG_CONFIG_HOME and $XDG_DATA_HOME (or ~/.config,
// ~/.local/share) and in $XDG_DATA_DIRS and $XDG_CONFIG_DIRS, ~/.drirc, and what the environment names
// for the loaders and drivers (VK_ICD_FILENAMES, VK_DRIVER_FILES, VK_ADD_DRIVER_FILES, VK_LAYER_PATH,
// VK_ADD_LAYER_PATH, LIBGL_DRIVERS_PATH, GBM_BACKENDS_PATH, __EGL_VENDOR_LIBRARY_DIRS and _FILENAMES,
// LD_LIBRARY_PATH, SPA_PLUGIN_DIR, PIPEWIRE_MODULE_DIR), resolved, and only those below where software
// is installed (/usr, /opt, /nix, /gnu, /snap, Flatpak's) or below a home folder outside its dot
// folders; those that exist.
std::vector<std::string> driver_config_paths();

// What a confined process may call beyond the shared allowlist.
struct SyscallPolicy {
  std::vector<std::string> allow;  // system call names (parse_syscall_names); the refused ones stay refused
  bool audit = false;              // calls outside the list go through, logged by the kernel
  // It may wait for and signal its own children through the pidfds it holds (waitid,
  // pidfd_send_signal; pidfd_open stays refused): canopy-vmm's KVM child and its device back-ends.
  bool children = false;
  // It may not make dma-bufs of memfd pages (udmabuf's UDMABUF_CREATE and UDMABUF_CREATE_LIST ioctls
  // refused, however /dev/udmabuf was opened: udmabuf looks at neither the device's open mode nor the
  // memfd descriptor's): canopy-display, so that a read-only descriptor of guest memory stays one.
  bool no_udmabuf = false;
  // It may not change a file's mode or ACL (fchmod, chmod, fchmodat, fchmodat2 and the setxattr calls
  // refused, also when `allow` names them): canopy-display, which as root owns the guest RAM a root
  // canopy-vmm made, so that mode 0444 holds.
  bool no_mode_changes = false;
};

// Loads the allowlist into every thread of the process. Errors: kIo when the kernel refuses the filter
// (seccomp not built in), or SIGSYS cannot be handled.
Status confine_syscalls(const SyscallPolicy& policy = {});
// How many calls outside the allowlist this process made since it was confined.
uint64_t seccomp_refusals();
// "a,b,c" -> names. Errors: kInvalidArgument for a name this architecture does not have or one that
// no confined process may make (execve, ptrace...).
Result<std::vector<std::string>> parse_syscall_names(std::string_view list);
// What `--seccomp-allow LIST` does: the names added to policy.allow. Errors: as parse_syscall_names,
// kInvalidArgument for an empty list.
Status allow_syscalls(std::string_view list, SyscallPolicy& policy);
// Whether the environment turns confinement off: CANOPY_NO_SANDBOX=1, which `canopy-vmm run
// --no-confine` hands everything it starts (as --no-sandbox).
bool sandbox_off_by_environment();
// The system calls every confined program makes for itself: memory, I/O on the descriptors it holds
// and the files its view lets it open, its threads, its own signals, time, polling and messages on its
// sockets. The back-ends' allowlist and the partitions' (hypervisor/sandbox.h) both start from it.
std::span<const char* const> basic_syscalls();
// Whether this build keeps ptrace, kill and process clones (a sanitizer build).
bool backend_sandbox_loosened();

}  // namespace canopy::transport
