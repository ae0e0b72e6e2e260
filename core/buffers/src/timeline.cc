#include "canopy/buffers/timeline.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "canopy/base/le.h"
#include "canopy/buffers/fd_passing.h"
#include "canopy/buffers/shared_memory.h"
#include "sys_util.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

namespace canopy::buffers {

namespace {

constexpr uint32_t kPageMagic = 0x4c544e43;  // "CNTL"
constexpr uint32_t kPageVersion = 1;
constexpr off_t kLockByte = 0;  // the byte of the memfd the producer locks (F_OFD_SETLK)

// A write lock on kLockByte: the producer takes it (F_OFD_SETLK), anyone tests it (F_OFD_GETLK).
struct flock lock_byte_request() {
  struct flock fl{};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = kLockByte;
  fl.l_len = 1;
  fl.l_pid = 0;
  return fl;
}

// The shared page. Only fixed-size integers: nothing a peer writes here is ever used as an address.
struct TimelinePage {
  std::atomic<uint32_t> magic;
  std::atomic<uint32_t> version;
  std::atomic<uint64_t> signalled;     // written by the producer only; monotonic
  std::atomic<uint64_t> retired;       // raised by consumers; <= signalled
  std::atomic<uint32_t> seq;           // futex word: bumped on every signal, retire and loss
  std::atomic<uint32_t> waiters;       // threads inside FUTEX_WAIT (signal skips FUTEX_WAKE at 0)
  std::atomic<uint32_t> producer;      // ProducerState
  std::atomic<int32_t> producer_pid;   // informational: the producer's pid in its own namespace
  std::atomic<uint32_t> notify_armed;  // 1: the next signal writes the eventfd (consume_event re-arms)
};
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<uint32_t>) == 4 && sizeof(std::atomic<uint64_t>) == 8);
static_assert(sizeof(TimelinePage) == 48 && sizeof(TimelinePage) <= kTimelinePageSize);

// Message header for send_timeline / recv_timeline.
struct TimelineWireHeader {
  le32 magic;    // kWireMagic
  le32 num_fds;  // 2 (memfd, eventfd) or 3 (+ producer pidfd)
};
static_assert(sizeof(TimelineWireHeader) == 8);
constexpr uint32_t kWireMagic = 0x53544e43;  // "CNTS"

long futex(std::atomic<uint32_t>* word, int op, uint32_t val, const timespec* timeout) {
  // Not FUTEX_PRIVATE_FLAG: the word lives in a MAP_SHARED page waited on by several processes.
  return ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, val, timeout, nullptr, 0);
}

ProducerState decode_state(uint32_t v) {
  if (v == uint32_t(ProducerState::kNone)) return ProducerState::kNone;
  if (v == uint32_t(ProducerState::kAttached)) return ProducerState::kAttached;
  return ProducerState::kLost;  // kLost or a corrupted value: never wait on something we cannot read
}

}  // namespace

struct Timeline::Impl {
  SharedMemory shm;
  Mapping mapping;
  TimelinePage* page = nullptr;
  UniqueFd eventfd;
  UniqueFd pidfd;   // the producer's process, when known
  UniqueFd lockfd;  // producer only: the private reopening of the memfd that holds the OFD lock
  bool producer = false;
  pid_t producer_pid = 0;

  ProducerState state() const { return decode_state(page->producer.load(std::memory_order_acquire)); }

  enum class Notify { kNone, kIfArmed, kAlways };

  void wake_all(Notify notify) const {
    page->seq.fetch_add(1, std::memory_order_seq_cst);
    if (page->waiters.load(std::memory_order_seq_cst) != 0) futex(&page->seq, FUTEX_WAKE, INT_MAX, nullptr);
    // The eventfd is written once per consume_event(): while nobody drains it, it is already readable and
    // a write would only cost a system call. Order: the value is stored before the flag is taken, and the
    // poller drains before re-arming, so a poller that re-arms then reads the value never misses one.
    bool write_event = notify == Notify::kAlways;
    if (notify == Notify::kIfArmed) write_event = page->notify_armed.exchange(0, std::memory_order_seq_cst) != 0;
    if (write_event) {
      const uint64_t one = 1;
      // EAGAIN (counter saturated) still leaves the eventfd readable: nothing to do.
      (void)retry_eintr([&] { return ::write(eventfd.get(), &one, sizeof(one)); });
    }
  }

  // Attached -> lost, once; the winner wakes everybody.
  void mark_lost() const {
    uint32_t expected = uint32_t(ProducerState::kAttached);
    if (page->producer.compare_exchange_strong(expected, uint32_t(ProducerState::kLost), std::memory_order_acq_rel))
      wake_all(Notify::kAlways);
  }

  // The producer sets kAttached only while holding the lock and marks kLost before dropping it, so
  // "attached" without a lock means its process is gone.
  ProducerState probe() const {
    ProducerState s = state();
    if (s != ProducerState::kAttached) return s;
    struct flock fl = lock_byte_request();
    if (::fcntl(shm.fd(), F_OFD_GETLK, &fl) != 0)
      return ProducerState::kAttached;  // cannot tell: deadlines bound waits
    if (fl.l_type != F_UNLCK) return ProducerState::kAttached;
    mark_lost();
    return state();
  }

  // Sleeps until done() or the deadline; with check_lost, also returns kProducerLost once the producer is
  // lost. Probes liveness at most once per kLivenessSlice, and only after having slept (the signal -> wake
  // path makes no extra system call).
  template <typename Done>
  Status wait_until(Clock::time_point deadline, bool check_lost, Done done) const {
    Clock::time_point last_probe{};
    bool started = false;
    for (;;) {
      const uint32_t seq = page->seq.load(std::memory_order_seq_cst);
      if (done()) return ok_status();
      if (check_lost && state() == ProducerState::kLost)
        return make_error(Errc::kProducerLost, "timeline: producer lost");
      const auto now = Clock::now();
      if (now >= deadline) return make_error(Errc::kTimeout, "timeline: deadline passed");
      if (!started) {
        started = true;
        last_probe = now;
      } else if (check_lost && now - last_probe >= kLivenessSlice) {
        last_probe = now;
        if (probe() == ProducerState::kLost) continue;  // re-check the value first: it may have been signalled
      }
      const auto slice = std::min<Clock::duration>(deadline - now, kLivenessSlice);
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(slice).count();
      timespec ts{time_t(ns / 1000000000), long(ns % 1000000000)};
      page->waiters.fetch_add(1, std::memory_order_seq_cst);
      futex(&page->seq, FUTEX_WAIT, seq, &ts);  // 0, EAGAIN (seq moved), ETIMEDOUT, EINTR: all re-check
      page->waiters.fetch_sub(1, std::memory_order_seq_cst);
    }
  }
};

namespace {

// Producer objects of this process, so that a forked child stops being their producer (its copy of the
// lock descriptor would otherwise keep a dead parent "alive").
std::mutex g_registry_mu;
std::vector<Timeline::Impl*>& registry() {
  static auto* r = new std::vector<Timeline::Impl*>();  // never destroyed: atfork may run at any time
  return *r;
}
void atfork_prepare() { g_registry_mu.lock(); }
void atfork_parent() { g_registry_mu.unlock(); }
void atfork_child() {
  for (Timeline::Impl* impl : registry()) {
    impl->lockfd.reset();
    impl->producer = false;
  }
  registry().clear();
  g_registry_mu.unlock();
}
void register_producer(Timeline::Impl* impl) {
  static std::once_flag once;
  std::call_once(once, [] { ::pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
  std::lock_guard<std::mutex> lock(g_registry_mu);
  registry().push_back(impl);
}
void unregister_producer(Timeline::Impl* impl) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  auto& r = registry();
  r.erase(std::remove(r.begin(), r.end(), impl), r.end());
}

std::string fd_link(int fd) {
  char path[64];
  (void)std::snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  char buf[128];
  ssize_t n = ::readlink(path, buf, sizeof(buf) - 1);
  if (n < 0) return {};
  return std::string(buf, size_t(n));
}

Result<std::unique_ptr<Timeline::Impl>> map_impl(SharedMemory shm, UniqueFd eventfd) {
  auto impl = std::make_unique<Timeline::Impl>();
  CANOPY_ASSIGN_OR_RETURN(impl->mapping, shm.map(Access::kReadWrite));
  impl->shm = std::move(shm);
  impl->page = reinterpret_cast<TimelinePage*>(impl->mapping.data());
  impl->eventfd = std::move(eventfd);
  return impl;
}

}  // namespace

Timeline::Timeline() = default;
Timeline::Timeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Timeline::Timeline(Timeline&&) noexcept = default;
Timeline& Timeline::operator=(Timeline&& o) noexcept {
  if (this != &o) {
    detach();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
Timeline::~Timeline() { detach(); }

Result<Timeline> Timeline::create() {
  CANOPY_ASSIGN_OR_RETURN(SharedMemory shm, SharedMemory::create("canopy-timeline", kTimelinePageSize,
                                                                 kSealShrink | kSealGrow | kSealSeal));
  UniqueFd efd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!efd) return make_error(Errc::kIo, "timeline: eventfd", errno);
  CANOPY_ASSIGN_OR_RETURN(auto impl, map_impl(std::move(shm), std::move(efd)));
  TimelinePage* p = new (impl->mapping.data()) TimelinePage{};  // the memfd is zero-filled: value 0
  p->version.store(kPageVersion, std::memory_order_relaxed);
  p->notify_armed.store(1, std::memory_order_relaxed);
  p->magic.store(kPageMagic, std::memory_order_release);
  impl->page = p;
  return Timeline(std::move(impl));
}

Result<Timeline> Timeline::create_producer() {
  CANOPY_ASSIGN_OR_RETURN(Timeline t, create());
  CANOPY_TRY(t.attach_producer());
  return t;
}

Result<Timeline> Timeline::import(TimelineFds fds) {
  if (!fds.memfd || !fds.eventfd) return make_error(Errc::kInvalidArgument, "timeline: missing descriptor");
  CANOPY_ASSIGN_OR_RETURN(SharedMemory shm,
                          SharedMemory::import(std::move(fds.memfd), kTimelinePageSize, kSealShrink | kSealGrow));
  if (shm.size() != kTimelinePageSize) return make_error(Errc::kInvalidArgument, "timeline: page has the wrong size");
  if (fd_link(fds.eventfd.get()) != "anon_inode:[eventfd]")
    return make_error(Errc::kInvalidArgument, "timeline: not an eventfd");
  CANOPY_ASSIGN_OR_RETURN(auto impl, map_impl(std::move(shm), std::move(fds.eventfd)));
  if (impl->page->magic.load(std::memory_order_acquire) != kPageMagic ||
      impl->page->version.load(std::memory_order_relaxed) != kPageVersion)
    return make_error(Errc::kInvalidArgument, "timeline: not a timeline page");
  impl->pidfd = std::move(fds.producer_pidfd);
  return Timeline(std::move(impl));
}

Result<TimelineFds> Timeline::export_fds() const {
  if (!impl_) return make_error(Errc::kState, "timeline: empty");
  TimelineFds fds;
  CANOPY_ASSIGN_OR_RETURN(fds.memfd, impl_->shm.dup_fd());
  fds.eventfd = impl_->eventfd.dup();
  if (!fds.eventfd) return make_error(Errc::kIo, "timeline: dup", errno);
  if (impl_->pidfd) {
    fds.producer_pidfd = impl_->pidfd.dup();
    if (!fds.producer_pidfd) return make_error(Errc::kIo, "timeline: dup", errno);
  }
  return fds;
}

Status Timeline::attach_producer() {
  if (!impl_) return make_error(Errc::kState, "timeline: empty");
  if (impl_->producer) return ok_status();
  if (impl_->state() == ProducerState::kLost) return make_error(Errc::kState, "timeline: lost");
  // A private open file description of the memfd: its lock lives exactly as long as this process keeps it.
  char path[64];
  (void)std::snprintf(path, sizeof(path), "/proc/self/fd/%d", impl_->shm.fd());
  UniqueFd lock(retry_eintr([&] { return ::open(path, O_RDWR | O_CLOEXEC); }));
  if (!lock) return make_error(Errc::kUnsupported, "timeline: cannot reopen the memfd via /proc/self/fd", errno);
  struct stat a{}, b{};
  if (::fstat(lock.get(), &a) != 0 || ::fstat(impl_->shm.fd(), &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
    return make_error(Errc::kIo, "timeline: reopened memfd is another file");
  struct flock fl = lock_byte_request();
  if (::fcntl(lock.get(), F_OFD_SETLK, &fl) != 0) {
    if (errno == EAGAIN || errno == EACCES) return make_error(Errc::kState, "timeline: another producer is attached");
    return make_error(Errc::kIo, "timeline: F_OFD_SETLK", errno);
  }
  uint32_t expected = uint32_t(ProducerState::kNone);
  if (!impl_->page->producer.compare_exchange_strong(expected, uint32_t(ProducerState::kAttached),
                                                     std::memory_order_acq_rel)) {
    // kAttached while we hold the lock: the previous producer died unnoticed. Either way: lost, sticky.
    impl_->mark_lost();
    return make_error(Errc::kState, "timeline: lost");
  }
  const pid_t self = ::getpid();
  impl_->page->producer_pid.store(self, std::memory_order_relaxed);
  impl_->lockfd = std::move(lock);
  impl_->producer = true;
  impl_->producer_pid = self;
  if (!impl_->pidfd) impl_->pidfd.reset(int(::syscall(SYS_pidfd_open, self, 0)));  // optional: -1 on old kernels
  register_producer(impl_.get());
  return ok_status();
}

void Timeline::detach() {
  if (!impl_ || !impl_->producer) return;
  unregister_producer(impl_.get());
  // A copy in a process other than the one that attached (a raw clone without atfork) must not detach.
  if (::getpid() == impl_->producer_pid) impl_->mark_lost();
  impl_->lockfd.reset();  // after marking lost: attached-without-lock only ever means death
  impl_->producer = false;
}

Status Timeline::signal(uint64_t value) {
  if (!impl_) return make_error(Errc::kState, "timeline: empty");
  if (!impl_->producer) return make_error(Errc::kState, "timeline: not the producer");
  if (impl_->state() == ProducerState::kLost) return make_error(Errc::kState, "timeline: lost");
  TimelinePage* p = impl_->page;
  const uint64_t cur = p->signalled.load(std::memory_order_acquire);
  if (value < cur) return make_error(Errc::kInvalidArgument, "timeline: signal below the current value");
  if (value == cur) return ok_status();
  p->signalled.store(value, std::memory_order_seq_cst);
  impl_->wake_all(Impl::Notify::kIfArmed);
  return ok_status();
}

Status Timeline::retire(uint64_t value) {
  if (!impl_) return make_error(Errc::kState, "timeline: empty");
  TimelinePage* p = impl_->page;
  if (value > p->signalled.load(std::memory_order_acquire))
    return make_error(Errc::kInvalidArgument, "timeline: retire above the signalled value");
  uint64_t cur = p->retired.load(std::memory_order_acquire);
  for (;;) {
    if (value < cur) return make_error(Errc::kInvalidArgument, "timeline: retire below the current value");
    if (value == cur) return ok_status();
    if (p->retired.compare_exchange_weak(cur, value, std::memory_order_acq_rel)) break;
  }
  impl_->wake_all(Impl::Notify::kNone);
  return ok_status();
}

Status Timeline::wait(uint64_t value, Clock::time_point deadline) const {
  if (!impl_) return make_error(Errc::kState, "timeline: empty");
  const TimelinePage* p = impl_->page;
  return impl_->wait_until(deadline, true, [&] { return p->signalled.load(std::memory_order_acquire) >= value; });
}

Status Timeline::wait_for(uint64_t value, std::chrono::nanoseconds timeout) const {
  return wait(value, Clock::now() + std::chrono::duration_cast<Clock::duration>(timeout));
}

Status Timeline::wait_retired(uint64_t value, Clock::time_point deadline) const {
  if (!impl_) return make_error(Errc::kState, "timeline: empty");
  const TimelinePage* p = impl_->page;
  return impl_->wait_until(deadline, false, [&] { return p->retired.load(std::memory_order_acquire) >= value; });
}

uint64_t Timeline::signalled() const { return impl_ ? impl_->page->signalled.load(std::memory_order_acquire) : 0; }

uint64_t Timeline::retired() const { return impl_ ? impl_->page->retired.load(std::memory_order_acquire) : 0; }

PointState Timeline::lifecycle(uint64_t value) const {
  if (value <= retired()) return PointState::kRetired;
  if (value <= signalled()) return PointState::kSignalled;
  return PointState::kSubmitted;
}

ProducerState Timeline::producer_state() const { return impl_ ? impl_->state() : ProducerState::kNone; }

ProducerState Timeline::check_producer() const { return impl_ ? impl_->probe() : ProducerState::kNone; }

bool Timeline::consume_event() const {
  if (!impl_) return false;
  uint64_t v = 0;
  const bool had = retry_eintr([&] { return ::read(impl_->eventfd.get(), &v, sizeof(v)); }) == ssize_t(sizeof(v));
  impl_->page->notify_armed.store(1, std::memory_order_seq_cst);  // after draining: see wake_all
  return had;
}

bool Timeline::is_producer() const { return impl_ && impl_->producer; }
int Timeline::eventfd() const { return impl_ ? impl_->eventfd.get() : -1; }
int Timeline::producer_pidfd() const { return impl_ ? impl_->pidfd.get() : -1; }
int Timeline::memfd() const { return impl_ ? impl_->shm.fd() : -1; }
uint32_t Timeline::waiter_count() const { return impl_ ? impl_->page->waiters.load(std::memory_order_acquire) : 0; }

Status send_timeline(int sock, const Timeline& timeline) {
  CANOPY_ASSIGN_OR_RETURN(TimelineFds fds, timeline.export_fds());
  int raw[3] = {fds.memfd.get(), fds.eventfd.get(), fds.producer_pidfd.get()};
  const size_t n = fds.producer_pidfd ? 3 : 2;
  TimelineWireHeader h;
  h.magic = kWireMagic;
  h.num_fds = uint32_t(n);
  return send_fds(sock, &h, sizeof(h), std::span<const int>(raw, n));
}

Result<Timeline> recv_timeline(int sock) {
  TimelineWireHeader h{};
  CANOPY_ASSIGN_OR_RETURN(std::vector<UniqueFd> fds, recv_fds(sock, &h, sizeof(h), 3));
  if (h.magic.get() != kWireMagic) return make_error(Errc::kProtocol, "timeline: bad message magic");
  const uint32_t n = h.num_fds.get();
  if ((n != 2 && n != 3) || fds.size() != n) return make_error(Errc::kProtocol, "timeline: descriptor count");
  TimelineFds t;
  t.memfd = std::move(fds[0]);
  t.eventfd = std::move(fds[1]);
  if (n == 3) t.producer_pidfd = std::move(fds[2]);
  return Timeline::import(std::move(t));
}

}  // namespace canopy::buffers
