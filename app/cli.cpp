#include "app/cli.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include "app/commands.h"
#include "formats/error.h"
#ifdef LOCKSTEP_HAVE_CUDA
#include "cuda/device.h"
#endif

namespace lockstep::app {
namespace {

std::string version_text() {
  std::string s = std::string("lockstep ") + LOCKSTEP_VERSION + "\n";
#ifdef LOCKSTEP_HAVE_CUDA
  cuda::DeviceReport r = cuda::probe_devices();
  s += "CUDA lanes: built (runtime " + std::to_string(r.runtime_version / 1000) + "." +
       std::to_string(r.runtime_version % 1000 / 10) + ")";
  if (r.devices.empty()) s += ", " + r.problem;
  for (const auto& d : r.devices)
    s += "\n  device " + std::to_string(d.index) + ": " + d.name + " (sm_" +
         std::to_string(d.cc_major) + std::to_string(d.cc_minor) + ", " +
         std::to_string(d.total_memory >> 20) + " MiB)";
#else
  s += "CUDA lanes: not built";
#endif
#ifdef LOCKSTEP_HAVE_GUI
  s += "\nGUI: built (lockstep, or lockstep MODEL, opens the workbench window)";
#else
  s += "\nGUI: not built (the headless commands only)";
#endif
  return s;  // CLI11 adds the final newline
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{
      "Lockstep: find where two LLM inference engines part, and why.\n"
      "Runs one transformer through several lanes (CPU oracle, CPU engine, CUDA, dumps),\n"
      "captures every stage of every layer and compares them cell by cell.",
      "lockstep"};
  app.set_version_flag("--version",
                       std::function<std::string()>(version_text));  // probes CUDA only when asked
  app.require_subcommand(0, 1);
  app.fallthrough(false);

  std::vector<Command> commands = {add_inspect_command(app),   add_tokenize_command(app),
                                   add_gen_model_command(app), add_run_command(app),
                                   add_dump_command(app),      add_bench_command(app),
                                   add_bisect_command(app),    add_diff_command(app),
                                   add_demo_command(app)};
  // After the subcommands: they would inherit it.
#ifdef LOCKSTEP_HAVE_GUI
  app.footer(
      "The workbench window: `lockstep` with no arguments opens it on the embedded demo;\n"
      "`lockstep MODEL` (a .gguf file or a safetensors folder) opens it on MODEL and runs\n"
      "lane ref against lane cpu on the model's default tokens.");
#endif

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help (of the subcommand asked) or --version, on stdout
  } catch (const CLI::ParseError& e) {
    // One line: what was wrong, and where to look.
    std::string what = e.what();
    while (!what.empty() && what.back() == '\n') what.pop_back();
    std::cerr << "lockstep: " << what << " (run 'lockstep --help')\n";
    return kExitUsage;
  }

  try {
    for (const Command& c : commands)
      if (c.sub->parsed()) return c.run();
    std::cout << app.help();
    return kExitOk;
  } catch (const Error& e) {
    std::cerr << "lockstep: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "lockstep: unexpected failure: " << e.what() << "\n";
    return kExitUsage;
  }
}

}  // namespace lockstep::app
