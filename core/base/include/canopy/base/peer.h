// Who is on the other end of a unix socket, in the process tree: for services that refuse peers started
// by their own supervisor (canopy-vmm's and canopy-display's control sockets, docs/security.md).
#pragma once

#include <sys/types.h>

namespace canopy {

// The parent of `pid` as /proc says (0 when it cannot be read: gone, or not visible).
pid_t parent_of(pid_t pid);

// True when the process connected on `sock` is `ancestor` itself or descends from it (its parents, walked
// up to pid 1). The peer is pinned by its pidfd (SO_PEERPIDFD) while its parents are read; a peer that
// cannot be read, or is gone (its pid could be another's now), counts as a descendant: refuse it.
bool peer_descends_from(int sock, pid_t ancestor);

}  // namespace canopy
