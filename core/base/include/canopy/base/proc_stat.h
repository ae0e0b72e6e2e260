// What /proc/PID/stat says of a process: its parent, and the status the kernel keeps for a zombie.
#pragma once

#include <sys/types.h>

#include <optional>

namespace canopy {

// One numeric field of /proc/PID/stat, numbered as proc(5) numbers them from 1 (4: the parent's pid,
// 52: the wait status of a process that has exited; the kernel shows it only to a process that may
// trace it, else 0), from field 4 on. The command name (field 2) may hold spaces and parentheses: the
// fields are counted from the last ')'. nullopt when the process cannot be read (gone, not visible),
// the field is past the end of its line or is not a number.
std::optional<long long> proc_stat_field(pid_t pid, int field);

}  // namespace canopy
