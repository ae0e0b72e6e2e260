// Test helper: a client under another identity, for tests of who may use a socket (root only).
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace canopy::test_support {

// A child running as another identity; what it said comes through `out`.
struct ChildAs {
  pid_t pid = -1;
  int out = -1;  // read end of the pipe the child writes its answer to
};

// Forks a child that takes gid and uid `uid` and `groups` as its supplementary groups, runs `fn` and
// writes the string it returns to the pipe. pid -1 when the pipe or fork failed; the child exits 1
// when it cannot take the identity (its answer is then empty).
template <class Fn>
ChildAs start_as(uid_t uid, const std::vector<gid_t>& groups, Fn fn) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    if (::setgroups(groups.size(), groups.data()) != 0 || ::setgid(uid) != 0 || ::setuid(uid) != 0) _exit(1);
    const std::string text = fn();
    (void)!::write(p[1], text.data(), text.size());
    _exit(0);
  }
  ::close(p[1]);
  if (pid < 0) {
    ::close(p[0]);
    return {};
  }
  return {pid, p[0]};
}

// Closes what start_as returned and reaps the child.
inline void finish(ChildAs& c) {
  if (c.out >= 0) ::close(c.out);
  if (c.pid > 0) ::waitpid(c.pid, nullptr, 0);
  c = {};
}

// Reads the child's answer to its end, then finishes it.
inline std::string answer_of(ChildAs c) {
  std::string text;
  char buf[4096];
  for (ssize_t n; c.out >= 0 && (n = ::read(c.out, buf, sizeof buf)) > 0;) text.append(buf, size_t(n));
  finish(c);
  return text;
}

}  // namespace canopy::test_support
