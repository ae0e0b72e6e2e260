// A dma-buf over pieces of memfds (Linux udmabuf, /dev/udmabuf): how guest memory, which reaches a
// back-end as memfd pages, becomes something a DRM device can scan out or a GPU can import, without a
// copy. The memfds must be sealed against shrinking (F_SEAL_SHRINK) and every piece page aligned; the
// kernel checks both and caps the list (its `list_limit`, 1024 items by default) and the size
// (`size_limit_mb`, 64 MiB by default). Adjacent pieces of one file are merged first.
//
// Where there is no /dev/udmabuf (this project's CI host: the test guests have it) the call fails with
// kUnsupported and callers fall back to their memfd path.
#pragma once

#include <span>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"
#include "canopy/buffers/scatter_mapping.h"

namespace canopy::buffers {

// The dma-buf (O_CLOEXEC) of the pieces, in order. Errors: kUnsupported (no /dev/udmabuf: ENOENT,
// ENODEV, ENXIO; other failures to open it are kIo),
// kInvalidArgument (no pieces, or a piece not page aligned), kIo (the kernel refused: unsealed file,
// over its limits; the error names errno).
[[nodiscard]] Result<UniqueFd> make_udmabuf(std::span<const FilePiece> pieces);

// Whether `fd` is a dma-buf that udmabuf exported (its pages are memfd pages: its size is fixed and
// reading a mapping of it never faults), by the file system it lives in and the exporter that
// /proc/self/fdinfo names. Another exporter's dma-buf (a device's memory) is not.
bool is_udmabuf(int fd);

// The pieces as one dma-buf: a duplicate of the piece when it is one whole udmabuf already (what
// canopy-gpu sends where it has /dev/udmabuf), else make_udmabuf.
[[nodiscard]] Result<UniqueFd> dmabuf_of(std::span<const FilePiece> pieces);

}  // namespace canopy::buffers
