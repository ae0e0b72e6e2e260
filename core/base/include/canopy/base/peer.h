// Who is on the other end of a unix socket, in the process tree: for services that refuse peers started
// by their own supervisor (canopy-vmm's and canopy-display's control sockets, docs/security.md).
#pragma once

#include <sys/types.h>

#include "canopy/base/result.h"

namespace canopy {

// The parent of `pid` as /proc says (0 when it cannot be read: gone, or not visible).
pid_t parent_of(pid_t pid);

// True when the process connected on `sock` is `ancestor` itself or descends from it (its parents, walked
// up to pid 1). The peer is pinned by its pidfd (SO_PEERPIDFD) while its parents are read; a peer that
// cannot be read, or is gone (its pid could be another's now), counts as a descendant: refuse it.
bool peer_descends_from(int sock, pid_t ancestor);

// True when the process connected on `sock` is an operator of a service run by this process's effective
// uid: that uid, root, or (when `group` is not -1) a member of `group` by its gid or its supplementary
// groups, as they were when it connected (SO_PEERCRED, SO_PEERGROUPS). False when they cannot be read.
bool peer_is_operator(int sock, gid_t group);

// The group an option names (--control-group): a number, or a name the group database knows.
// Errors: kInvalidArgument for a name it does not know.
Result<gid_t> group_named(const char* name_or_number);

}  // namespace canopy
