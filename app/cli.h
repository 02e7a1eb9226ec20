#pragma once
// The headless command line: CLI11 subcommands. Returns the process exit code:
// 0 success, 1 divergence (where asked for), 2 usage or input error.

namespace lockstep::app {

int run_cli(int argc, char** argv);

}  // namespace lockstep::app
