#include "canopy/buffers/udmabuf.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/udmabuf.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

namespace canopy::buffers {

Result<UniqueFd> make_udmabuf(std::span<const FilePiece> pieces) {
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  if (pieces.empty()) return make_error(Errc::kInvalidArgument, "udmabuf: no pieces");
  std::vector<udmabuf_create_item> items;
  for (const auto& p : pieces) {
    if (p.fd < 0 || p.length == 0 || p.offset % page || p.length % page)
      return make_error(Errc::kInvalidArgument, "udmabuf: a piece is not whole pages");
    if (!items.empty() && items.back().memfd == uint32_t(p.fd) && items.back().offset + items.back().size == p.offset) {
      items.back().size += p.length;
      continue;
    }
    udmabuf_create_item it{};
    it.memfd = uint32_t(p.fd);
    it.offset = p.offset;
    it.size = p.length;
    items.push_back(it);
  }
  UniqueFd dev(::open("/dev/udmabuf", O_RDWR | O_CLOEXEC));
  if (!dev.valid()) {
    // Only a missing device means "none here"; a full descriptor table or a refusal is an error.
    const int e = errno;
    if (e == ENOENT || e == ENODEV || e == ENXIO) return make_error(Errc::kUnsupported, "udmabuf: no /dev/udmabuf", e);
    return make_error(Errc::kIo, "udmabuf: cannot open /dev/udmabuf", e);
  }
  // struct udmabuf_create_list ends in a flexible array.
  const size_t bytes = sizeof(udmabuf_create_list) + items.size() * sizeof(udmabuf_create_item);
  std::unique_ptr<uint8_t[]> buf(new uint8_t[bytes]());
  auto* list = reinterpret_cast<udmabuf_create_list*>(buf.get());
  list->flags = UDMABUF_FLAGS_CLOEXEC;
  list->count = uint32_t(items.size());
  std::memcpy(buf.get() + sizeof(udmabuf_create_list), items.data(), items.size() * sizeof(udmabuf_create_item));
  const int fd = ::ioctl(dev.get(), UDMABUF_CREATE_LIST, list);
  if (fd < 0) return make_error(Errc::kIo, "udmabuf: the kernel refused the list", errno);
  return UniqueFd(fd);
}

bool is_udmabuf(int fd) {
  struct statfs fs{};
  if (fd < 0 || ::fstatfs(fd, &fs) != 0 || fs.f_type != DMA_BUF_MAGIC) return false;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  UniqueFd info(::open(path, O_RDONLY | O_CLOEXEC));
  if (!info.valid()) return false;
  char buf[1024];
  const ssize_t n = ::read(info.get(), buf, sizeof buf - 1);
  if (n <= 0) return false;
  buf[n] = '\0';
  // "exp_name:\tudmabuf" among the lines.
  const char* e = std::strstr(buf, "exp_name:");
  if (e == nullptr) return false;
  e += 9;
  while (*e == ' ' || *e == '\t') ++e;
  return std::strncmp(e, "udmabuf", 7) == 0 && (e[7] == '\n' || e[7] == '\0');
}

Result<UniqueFd> dmabuf_of(std::span<const FilePiece> pieces) {
  if (pieces.size() == 1 && pieces[0].offset == 0 && is_udmabuf(pieces[0].fd)) {
    struct stat st{};
    if (::fstat(pieces[0].fd, &st) == 0 && uint64_t(st.st_size) == pieces[0].length) {
      const int d = ::fcntl(pieces[0].fd, F_DUPFD_CLOEXEC, 0);
      if (d < 0) return make_error(Errc::kIo, "udmabuf: dup failed", errno);
      return UniqueFd(d);
    }
  }
  return make_udmabuf(pieces);
}

}  // namespace canopy::buffers
