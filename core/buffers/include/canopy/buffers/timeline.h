// Timeline fences shared between processes.
//
// A Timeline is a 64-bit counter in a small shared memfd page. Its producer signals points by raising the
// counter (signal(v) never lowers it); consumers wait for a value, or poll an eventfd that the producer
// writes on every signal. A second counter, `retired`, is raised by the consumer when it has finished with
// a point, so each point has a lifecycle: submitted (value > signalled) -> signalled -> retired.
//
// Waiting: wait() sleeps on a process-shared futex (not FUTEX_PRIVATE) on a sequence word in the page
// that every signal/retire/loss bumps; the fast path (already signalled) makes no system call, and signal()
// calls FUTEX_WAKE only when someone sleeps.
//
// Producer lost. At most one producer is attached to a timeline (attach_producer(), or create_producer()).
// It holds an open-file-description lock (F_OFD_SETLK write lock on byte 0) on its own, private reopening
// of the memfd (/proc/self/fd). The kernel drops that lock when the producer's process dies, however it
// dies (SIGKILL included), and when it execs (the descriptor is O_CLOEXEC). Anyone holding the memfd can
// test the lock (F_OFD_GETLK): a producer that is marked attached in the page but holds no lock is gone.
// The first process to notice marks the page "lost" (sticky: it can never be attached again), bumps the
// futex word, wakes all sleepers and writes the eventfd. Waiters sleep in slices of at most
// kLivenessSlice and probe the lock between slices, so wait() returns kProducerLost within about that long
// of the death. A producer that detaches (detach() or destruction) marks the timeline lost the same way,
// immediately. Nothing in the page is a pointer, so a corrupted page cannot make us touch other memory.
// A child forked from a producer process is not the producer: a pthread_atfork handler closes its copy
// of the lock descriptor (raw clone()/vfork() bypass that; exec closes it anyway).
//
// Poll loops: the eventfd becomes readable after a signal and on a loss detected by anyone. To keep
// signal() free of system calls when nobody polls, a signal writes the eventfd only when it is "armed":
// creation arms it, a write disarms it, consume_event() drains and re-arms it. So a poll loop does, in this
// order: poll -> consume_event() -> read signalled() / producer_state(); checking before draining could
// miss a signal. One polling consumer per timeline (the eventfd is one shared notification channel).
// A process that only polls (no thread in wait()) also polls producer_pidfd() when it has one: a pidfd of
// the producer's process, readable once it exits; then call check_producer(). export_fds() includes that
// pidfd when the exporting object is the producer or received one; a timeline imported before its
// producer attached has none, and its poll loop must call check_producer() on its poll timeout (e.g.
// every 20-100 ms).
//
// Who owns which descriptor: every Timeline object owns its own copies of the memfd, the eventfd and the
// optional pidfd; export_fds() returns fresh duplicates that the caller owns (and typically sends with
// send_timeline, which closes nothing of the sender's). The producer object also owns its private lock
// descriptor, which is never exported.
//
// Trust: all processes sharing a timeline can write the page. A malicious peer can forge values or fake
// liveness, but not make this code access memory outside the page or block past a deadline.
//
// Threading: signalled(), retired(), lifecycle(), wait*(), check_producer(), producer_state(), retire()
// and consume_event() are thread-safe on one object. signal() is for the producer's one thread (concurrent
// signals are not ordered). attach_producer(), detach(), export_fds(), moves and destruction must not run
// concurrently with other calls on the same object.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "canopy/base/result.h"
#include "canopy/base/unique_fd.h"

namespace canopy::buffers {

// Longest a waiter sleeps before probing the producer's liveness.
inline constexpr std::chrono::milliseconds kLivenessSlice{10};
inline constexpr uint64_t kTimelinePageSize = 4096;

// The descriptors that make up a timeline (for export/import). producer_pidfd may be invalid.
struct TimelineFds {
  UniqueFd memfd;
  UniqueFd eventfd;
  UniqueFd producer_pidfd;
};

enum class PointState { kSubmitted, kSignalled, kRetired };
enum class ProducerState : uint32_t { kNone = 0, kAttached = 1, kLost = 2 };

class Timeline {
 public:
  using Clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC

  Timeline();   // empty: every operation returns kState / 0
  ~Timeline();  // detach()es a producer
  Timeline(Timeline&&) noexcept;
  Timeline& operator=(Timeline&&) noexcept;
  Timeline(const Timeline&) = delete;
  Timeline& operator=(const Timeline&) = delete;

  // A new timeline at value 0 with no producer (create) or with this object as its producer.
  [[nodiscard]] static Result<Timeline> create();
  [[nodiscard]] static Result<Timeline> create_producer();
  // Adopts received descriptors. Checks that memfd is a sealed (shrink+grow) memfd of kTimelinePageSize
  // bytes holding a timeline page (magic, version) and that eventfd is an eventfd: kInvalidArgument
  // otherwise.
  [[nodiscard]] static Result<Timeline> import(TimelineFds fds);
  // Duplicates of the descriptors (the pidfd only when known).
  [[nodiscard]] Result<TimelineFds> export_fds() const;

  // Makes this object the producer. Errors: kState (another producer is attached, or the timeline is lost),
  // kUnsupported (/proc/self/fd cannot reopen the memfd), kIo. Attaching twice on one object is a no-op.
  [[nodiscard]] Status attach_producer();
  // A producer gives up: the timeline becomes lost (sticky) and every waiter returns kProducerLost.
  // No-op on a consumer or an empty object.
  void detach();

  // Producer: raises the counter to `value`, wakes sleeping waiters and, when armed, the eventfd. Equal to
  // the current value: no-op. Errors: kInvalidArgument (value below the current one; nothing changes), kState
  // (not the producer, or lost).
  [[nodiscard]] Status signal(uint64_t value);
  // Consumer: reports every point <= value done. Errors: kInvalidArgument (value above signalled, or below
  // the current retired value), kState (empty). Equal to the current retired value: no-op.
  [[nodiscard]] Status retire(uint64_t value);

  // Blocks until signalled() >= value (ok), the deadline passes (kTimeout) or the producer is lost before
  // signalling it (kProducerLost). A value already signalled returns ok even when lost.
  [[nodiscard]] Status wait(uint64_t value, Clock::time_point deadline) const;
  [[nodiscard]] Status wait_for(uint64_t value, std::chrono::nanoseconds timeout) const;
  // Blocks until retired() >= value or the deadline (kTimeout). For a producer recycling buffers.
  [[nodiscard]] Status wait_retired(uint64_t value, Clock::time_point deadline) const;

  uint64_t signalled() const;
  uint64_t retired() const;
  PointState lifecycle(uint64_t value) const;
  // The state recorded in the page (no liveness probe).
  ProducerState producer_state() const;
  // Probes the attached producer's lock; marks the timeline lost (and wakes everyone) when it is gone.
  ProducerState check_producer() const;
  // Drains the eventfd and re-arms it; true when it had been written since the last drain.
  bool consume_event() const;

  bool valid() const { return impl_ != nullptr; }
  bool is_producer() const;
  int eventfd() const;
  int producer_pidfd() const;  // -1 when unknown
  int memfd() const;
  uint32_t waiter_count() const;  // threads sleeping in the futex right now (diagnostics, tests)

  struct Impl;

 private:
  explicit Timeline(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Sends a timeline's descriptors in one message / receives and imports one.
[[nodiscard]] Status send_timeline(int sock, const Timeline& timeline);
[[nodiscard]] Result<Timeline> recv_timeline(int sock);

}  // namespace canopy::buffers
