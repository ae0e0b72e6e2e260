// Test helper: run a shell command and capture what it prints.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace canopy::test_support {

// Runs `cmd` with /bin/sh; its output (stdout and stderr) in `out`. Returns its exit code, -1 when it did
// not exit normally or could not be started.
inline int run_command(const std::string& cmd, std::string& out) {
  out.clear();
  FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
  if (f == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const int st = ::pclose(f);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace canopy::test_support
