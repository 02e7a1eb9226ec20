#pragma once
// Runs the lockstep executable as a user would, capturing its exit code, stdout and stderr.

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "tests/test_util.h"

namespace lockstep::test {

struct CliResult {
  int code = -1;
  std::string out;
  std::string err;
};

// `args` is passed through the shell: quote paths with shell_quote().
inline CliResult run_lockstep(const std::string& args) {
  std::filesystem::path dir = scratch_dir("cli");
  std::string cmd = std::string(LOCKSTEP_EXE) + " " + args + " >" + (dir / "out").string() + " 2>" +
                    (dir / "err").string();
  int status = std::system(cmd.c_str());
  CliResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_file(dir / "out");
  r.err = read_file(dir / "err");
  std::filesystem::remove_all(dir);
  return r;
}

// (Built by appending: `"'" + s + "'"` trips GCC 12's -Wrestrict false positive, bug 105329,
// wherever it is inlined.)
inline std::string shell_quote(const std::filesystem::path& p) {
  std::string s = "'";
  s += p.string();
  s += "'";
  return s;
}

}  // namespace lockstep::test
