#include "canopy/audio/policy.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "canopy/config/policy_table.h"

namespace canopy::audio {

namespace {
constexpr uint32_t kMagic = 0x50414e43;  // "CNAP"
constexpr uint32_t kVersion = 1;
constexpr uint32_t kFlagDuck = 1, kFlagExclusive = 2;
}  // namespace

// The shared board: one file every canopy-snd maps writable; each claims slots with the policy it
// declares itself.
class SharedBoard final : public PolicyBoard {
 public:
  static Result<std::unique_ptr<PolicyBoard>> map(UniqueFd fd);
  ~SharedBoard() override;
  Result<uint32_t> claim(const std::string& label, const StreamPolicy& p) override;
  void release(uint32_t slot) override;
  void set_active(uint32_t slot, bool active, uint64_t now_ns) override;
  void refresh(uint32_t slot, uint64_t now_ns) override;
  Target target(uint32_t slot, uint64_t now_ns) const override;
  std::string describe(uint64_t now_ns) const override;

  struct Slot;

 private:
  UniqueFd fd_;
  Slot* slots_ = nullptr;
  size_t bytes_ = 0;
};

// One slot: written by its owner, read by everyone. `owner` (a pid) is the claim; the rest is published
// before `owner` is set and read after it (acquire/release).
struct SharedBoard::Slot {
  std::atomic<uint32_t> owner;  // 0: free
  uint32_t priority;
  uint32_t flags;
  int32_t duck_mdb;  // milli-dB
  uint32_t ramp_ms;
  std::atomic<uint32_t> active;
  std::atomic<uint64_t> refreshed_ns;
  char label[32];
};
static_assert(sizeof(SharedBoard::Slot) == 64);

namespace {
struct Header {
  uint32_t magic;
  uint32_t version;
  uint32_t slots;
  uint32_t slot_bytes;
  uint8_t pad[48];
};
static_assert(sizeof(Header) == 64);
constexpr size_t kBoardBytes = sizeof(Header) + PolicyBoard::kSlots * sizeof(SharedBoard::Slot);

// Whether a slot's process is gone: its /proc entry (not kill(pid, 0): refused to a confined back-end, and
// across identities).
bool process_gone(uint32_t pid) {
  if (pid == 0) return false;
  struct stat st{};
  return ::stat(("/proc/" + std::to_string(pid)).c_str(), &st) != 0 && errno == ENOENT;
}
}  // namespace

uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

Result<std::unique_ptr<PolicyBoard>> SharedBoard::map(UniqueFd fd) {
  // Size and initialise under an exclusive lock so two processes starting together agree.
  if (flock(fd.get(), LOCK_EX) != 0) return make_error(Errc::kIo, "policy board: flock failed", errno);
  struct stat st{};
  if (fstat(fd.get(), &st) != 0) return make_error(Errc::kIo, "policy board: fstat failed", errno);
  const bool fresh = st.st_size == 0;
  if (fresh && ftruncate(fd.get(), off_t(kBoardBytes)) != 0)
    return make_error(Errc::kIo, "policy board: cannot size the file", errno);
  if (!fresh && size_t(st.st_size) != kBoardBytes) {
    flock(fd.get(), LOCK_UN);
    return make_error(Errc::kInvalidArgument, "policy board: the file has the wrong size (not a canopy policy board)");
  }
  void* p = mmap(nullptr, kBoardBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) {
    flock(fd.get(), LOCK_UN);
    return make_error(Errc::kIo, "policy board: mmap failed", errno);
  }
  auto* h = static_cast<Header*>(p);
  if (fresh) {
    h->magic = kMagic;
    h->version = kVersion;
    h->slots = kSlots;
    h->slot_bytes = sizeof(Slot);
  } else if (h->magic != kMagic || h->version != kVersion || h->slots != kSlots || h->slot_bytes != sizeof(Slot)) {
    munmap(p, kBoardBytes);
    flock(fd.get(), LOCK_UN);
    return make_error(Errc::kInvalidArgument, "policy board: not a canopy policy board of this version");
  }
  flock(fd.get(), LOCK_UN);
  auto b = std::make_unique<SharedBoard>();
  b->fd_ = std::move(fd);
  b->slots_ = reinterpret_cast<Slot*>(static_cast<uint8_t*>(p) + sizeof(Header));
  b->bytes_ = kBoardBytes;
  return std::unique_ptr<PolicyBoard>(std::move(b));
}

Result<std::unique_ptr<PolicyBoard>> PolicyBoard::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) return make_error(Errc::kIo, "policy board: cannot open the file", errno);
  return SharedBoard::map(std::move(fd));
}

Result<std::unique_ptr<PolicyBoard>> PolicyBoard::anonymous() {
  UniqueFd fd(memfd_create("canopy-audio-policy", MFD_CLOEXEC));
  if (!fd.valid()) return make_error(Errc::kIo, "policy board: memfd_create failed", errno);
  return SharedBoard::map(std::move(fd));
}

SharedBoard::~SharedBoard() {
  if (slots_) munmap(reinterpret_cast<uint8_t*>(slots_) - sizeof(Header), bytes_);
}

Result<uint32_t> SharedBoard::claim(const std::string& label, const StreamPolicy& p) {
  const uint32_t me = uint32_t(getpid());
  const uint64_t now = monotonic_ns();
  for (uint32_t i = 0; i < kSlots; ++i) {
    Slot& s = slots_[i];
    uint32_t owner = s.owner.load(std::memory_order_acquire);
    // A slot whose process is gone is free again (a crashed canopy-snd).
    if (owner != 0 && process_gone(owner)) {
      s.active.store(0, std::memory_order_relaxed);
      if (s.owner.compare_exchange_strong(owner, 0)) owner = 0;
    }
    if (owner != 0) continue;
    // Claim with a placeholder first so nobody reads half-written fields as ours.
    uint32_t expected = 0;
    if (!s.owner.compare_exchange_strong(expected, 0xffffffffu, std::memory_order_acq_rel)) continue;
    s.priority = p.priority;
    s.flags = (p.duck_others ? kFlagDuck : 0) | (p.exclusive ? kFlagExclusive : 0);
    s.duck_mdb = int32_t(p.duck_db * 1000.0);
    s.ramp_ms = p.ramp_ms;
    s.active.store(0, std::memory_order_relaxed);
    s.refreshed_ns.store(now, std::memory_order_relaxed);
    std::memset(s.label, 0, sizeof s.label);
    std::snprintf(s.label, sizeof s.label, "%s", label.c_str());
    s.owner.store(me, std::memory_order_release);
    return i;
  }
  return make_error(Errc::kLimit, "policy board: all 64 slots are taken");
}

void SharedBoard::release(uint32_t slot) {
  if (slot >= kSlots) return;
  slots_[slot].active.store(0, std::memory_order_release);
  slots_[slot].owner.store(0, std::memory_order_release);
}

void SharedBoard::set_active(uint32_t slot, bool active, uint64_t now_ns) {
  if (slot >= kSlots) return;
  slots_[slot].refreshed_ns.store(now_ns, std::memory_order_relaxed);
  slots_[slot].active.store(active ? 1 : 0, std::memory_order_release);
}

void SharedBoard::refresh(uint32_t slot, uint64_t now_ns) {
  if (slot < kSlots) slots_[slot].refreshed_ns.store(now_ns, std::memory_order_relaxed);
}

PolicyBoard::Target SharedBoard::target(uint32_t slot, uint64_t now_ns) const {
  Target t;
  if (slot >= kSlots) return t;
  const uint32_t my_priority = slots_[slot].priority;
  for (uint32_t i = 0; i < kSlots; ++i) {
    if (i == slot) continue;
    const Slot& s = slots_[i];
    const uint32_t owner = s.owner.load(std::memory_order_acquire);
    if (owner == 0 || owner == 0xffffffffu) continue;
    if (!s.active.load(std::memory_order_acquire)) continue;
    const uint64_t seen = s.refreshed_ns.load(std::memory_order_relaxed);
    if (now_ns > seen && now_ns - seen > kStaleNs) continue;
    if (s.priority <= my_priority) continue;
    double db = 0;
    if (s.flags & kFlagExclusive) db = kMuteDb;
    else if (s.flags & kFlagDuck) db = s.duck_mdb / 1000.0;
    if (db < t.db) {
      t.db = db;
      t.ramp_ms = s.ramp_ms;
    }
  }
  return t;
}

std::string SharedBoard::describe(uint64_t now_ns) const {
  std::string out;
  for (uint32_t i = 0; i < kSlots; ++i) {
    const Slot& s = slots_[i];
    const uint32_t owner = s.owner.load(std::memory_order_acquire);
    if (owner == 0 || owner == 0xffffffffu) continue;
    // The label comes from shared memory another process writes: at most its 32 bytes, and only
    // printable ones (a line break there must not forge a line of the stats).
    // Copied once first: the writer may change the bytes while they are checked.
    char raw[sizeof s.label];
    std::memcpy(raw, s.label, sizeof raw);
    char label[sizeof s.label + 1];
    size_t n = 0;
    for (; n < sizeof raw && raw[n] != '\0'; ++n) label[n] = std::isprint(uint8_t(raw[n])) ? raw[n] : '?';
    label[n] = '\0';
    char line[256];  // room for every field at its widest: no slot's line is ever cut (and merged)
    const uint64_t seen = s.refreshed_ns.load(std::memory_order_relaxed);
    std::snprintf(line, sizeof line,
                  "%s pid=%u priority=%u duck=%s%.1fdB ramp=%ums exclusive=%d active=%u age_ms=%llu\n", label, owner,
                  s.priority, (s.flags & kFlagDuck) ? "" : "(off)", s.duck_mdb / 1000.0, s.ramp_ms,
                  (s.flags & kFlagExclusive) ? 1 : 0, s.active.load(std::memory_order_relaxed),
                  (unsigned long long)(now_ns > seen ? (now_ns - seen) / 1000000 : 0));
    out += line;
  }
  return out;
}

// canopy-vmm's board: the sealed policy table (copied here once: it cannot change) and the VMs' state
// segments, ours writable, the others mapped read-only from read-only descriptors.
class VmBoard final : public PolicyBoard {
 public:
  ~VmBoard() override {
    for (auto* m : states_) munmap(m, config::kPolicyStateBytes);
  }
  static Result<std::unique_ptr<PolicyBoard>> create(int table, const std::vector<int>& states, const std::string& vm) {
    auto b = std::make_unique<VmBoard>();
    // The table must be sealed against writes: then nobody (us included) can change a priority.
    const int seals = fcntl(table, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_WRITE) || !(seals & F_SEAL_SHRINK))
      return make_error(Errc::kInvalidArgument, "policy board: the policy table is not sealed");
    void* t = mmap(nullptr, config::kPolicyTableBytes, PROT_READ, MAP_SHARED, table, 0);
    if (t == MAP_FAILED) return make_error(Errc::kIo, "policy board: cannot map the policy table", errno);
    auto parsed = config::parse_policy_table({static_cast<const uint8_t*>(t), config::kPolicyTableBytes});
    munmap(t, config::kPolicyTableBytes);
    if (!parsed.ok()) return parsed.error();
    b->table_ = std::move(*parsed);
    if (states.size() != b->table_.vms.size())
      return make_error(Errc::kInvalidArgument, "policy board: one state segment per VM of the table is needed");
    for (size_t v = 0; v < states.size(); ++v) {
      const bool own = b->table_.vms[v] == vm;
      if (own) b->own_ = int(v);
      // A state segment of another VM must come read-only: writing it is what the board prevents.
      const int mode = fcntl(states[v], F_GETFL);
      if (mode < 0 || (!own && (mode & O_ACCMODE) != O_RDONLY))
        return make_error(Errc::kInvalidArgument, "policy board: another VM's state segment is writable");
      struct stat st{};
      if (fstat(states[v], &st) != 0 || size_t(st.st_size) < config::kPolicyStateBytes)
        return make_error(Errc::kInvalidArgument, "policy board: a state segment is too small");
      void* m =
          mmap(nullptr, config::kPolicyStateBytes, own ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, states[v], 0);
      if (m == MAP_FAILED) return make_error(Errc::kIo, "policy board: cannot map a state segment", errno);
      b->states_.push_back(static_cast<config::PolicyStateSlot*>(m));
    }
    if (b->own_ < 0) return make_error(Errc::kInvalidArgument, "policy board: this VM is not in the policy table");
    return std::unique_ptr<PolicyBoard>(std::move(b));
  }

  Result<uint32_t> claim(const std::string& label, const StreamPolicy&) override {
    const size_t slash = label.find('/');
    const int slot =
        table_.slot_of(table_.vms[size_t(own_)], slash == std::string::npos ? label : label.substr(slash + 1));
    if (slot < 0)
      return make_error(Errc::kInvalidArgument, "policy board: the manifest's policy table has no such stream");
    return uint32_t(slot);
  }
  void release(uint32_t slot) override {
    if (auto* s = own_slot(slot)) s->active.store(0, std::memory_order_release);
  }
  void set_active(uint32_t slot, bool active, uint64_t now_ns) override {
    if (auto* s = own_slot(slot)) {
      s->refreshed_ns.store(now_ns, std::memory_order_relaxed);
      s->active.store(active ? 1 : 0, std::memory_order_release);
    }
  }
  void refresh(uint32_t slot, uint64_t now_ns) override {
    if (auto* s = own_slot(slot)) s->refreshed_ns.store(now_ns, std::memory_order_relaxed);
  }
  Target target(uint32_t slot, uint64_t now_ns) const override {
    Target t;
    if (slot >= table_.entries.size() || table_.entries[slot].stream.empty()) return t;
    const uint32_t mine = table_.entries[slot].policy.priority;
    for (size_t i = 0; i < table_.entries.size(); ++i) {
      const config::PolicyTableEntry& e = table_.entries[i];
      if (i == slot || e.stream.empty() || e.policy.priority <= mine) continue;
      const config::PolicyStateSlot& st = state(i);
      if (!st.active.load(std::memory_order_acquire)) continue;
      const uint64_t seen = st.refreshed_ns.load(std::memory_order_relaxed);
      if (now_ns > seen && now_ns - seen > kStaleNs) continue;  // its back-end is gone or hung
      const double db = e.policy.exclusive ? kMuteDb : e.policy.duck_others ? e.policy.duck_db : 0.0;
      if (db < t.db) {
        t.db = db;
        t.ramp_ms = e.policy.ramp_ms;
      }
    }
    return t;
  }
  std::string describe(uint64_t now_ns) const override {
    std::string out;
    for (size_t i = 0; i < table_.entries.size(); ++i) {
      const config::PolicyTableEntry& e = table_.entries[i];
      if (e.stream.empty()) continue;
      const config::PolicyStateSlot& st = state(i);
      const uint64_t seen = st.refreshed_ns.load(std::memory_order_relaxed);
      char line[256];
      std::snprintf(line, sizeof line,
                    "%s/%s vm_slot=%zu priority=%u duck=%s%.1fdB ramp=%ums exclusive=%d active=%u age_ms=%llu\n",
                    table_.vms[i / config::kPolicySlotsPerVm].c_str(), e.stream.c_str(), i, e.policy.priority,
                    e.policy.duck_others ? "" : "(off)", e.policy.duck_db, e.policy.ramp_ms, e.policy.exclusive ? 1 : 0,
                    st.active.load(std::memory_order_relaxed),
                    (unsigned long long)(now_ns > seen ? (now_ns - seen) / 1000000 : 0));
      out += line;
    }
    return out;
  }

 private:
  // The state of the table's slot `i` (in its VM's segment).
  const config::PolicyStateSlot& state(size_t i) const {
    return states_[i / config::kPolicySlotsPerVm][i % config::kPolicySlotsPerVm];
  }
  // Our own VM's slot `slot`, or null (another VM's, or none): only ours are ever written.
  config::PolicyStateSlot* own_slot(uint32_t slot) {
    if (slot / config::kPolicySlotsPerVm != uint32_t(own_) || slot >= table_.entries.size()) return nullptr;
    return &states_[size_t(own_)][slot % config::kPolicySlotsPerVm];
  }
  config::PolicyTable table_;
  std::vector<config::PolicyStateSlot*> states_;  // per VM of the table: its segment, mapped
  int own_ = -1;
};

Result<std::unique_ptr<PolicyBoard>> PolicyBoard::from_vmm(int table, const std::vector<int>& states,
                                                           const std::string& vm) {
  return VmBoard::create(table, states, vm);
}

}  // namespace canopy::audio
