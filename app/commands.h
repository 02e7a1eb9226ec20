#pragma once
// One headless subcommand per app/cmd_<name>.cpp. Each adds itself to the CLI11 app and
// returns the code that runs it once parsing succeeded. Logic a test would want lives in
// engine/, not here.

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace lockstep::app {

constexpr int kExitOk = 0;
constexpr int kExitDivergence = 1;
constexpr int kExitUsage = 2;

struct Command {
  CLI::App* sub = nullptr;
  std::function<int()> run;  // may throw lockstep::Error (reported, exit 2)
};

Command add_inspect_command(CLI::App& app);
Command add_tokenize_command(CLI::App& app);
Command add_gen_model_command(CLI::App& app);
Command add_run_command(CLI::App& app);
Command add_dump_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_bisect_command(CLI::App& app);
Command add_diff_command(CLI::App& app);
Command add_demo_command(CLI::App& app);

// "ref, cpu": the CPU lanes engine/lanes.h knows, for help texts.
std::string cpu_lane_list();

// --fault NAME[@stage[,layer]] and --list-faults on a lane-running command (defined in
// cmd_run.cpp).
void add_fault_options(CLI::App& sub, std::string& fault);

}  // namespace lockstep::app
