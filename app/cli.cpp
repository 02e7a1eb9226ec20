#include "app/cli.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include "engine/inspect.h"
#include "formats/error.h"
#ifdef LOCKSTEP_HAVE_CUDA
#include "cuda/device.h"
#endif

namespace lockstep::app {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitUsage = 2;

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
  s += "\n";
#else
  s += "CUDA lanes: not built\n";
#endif
  return s;
}

struct InspectArgs {
  std::string input;
  bool json = false;
  std::string tensor;
  std::string npy;
};

int cmd_inspect(const InspectArgs& a) {
  if (!a.tensor.empty() || !a.npy.empty()) {
    if (a.tensor.empty() || a.npy.empty())
      throw Error("inspect: --tensor and --npy go together (name the tensor and the output file)");
    std::vector<uint64_t> shape = engine::export_tensor_npy(a.input, a.tensor, a.npy);
    std::string dims;
    for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
    std::printf("wrote %s: %s as f32 [%s]\n", a.npy.c_str(), a.tensor.c_str(), dims.c_str());
    return kExitOk;
  }
  nlohmann::json report = engine::inspect(a.input);
  if (a.json)
    std::cout << report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  else
    std::cout << engine::render_inspect_text(report);
  return kExitOk;
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{
      "Lockstep: find where two LLM inference engines part, and why.\n"
      "Runs one transformer through several lanes (CPU oracle, CPU engine, CUDA, dumps),\n"
      "captures every stage of every layer and compares them cell by cell.",
      "lockstep"};
  app.set_version_flag("--version", version_text());
  app.require_subcommand(0, 1);
  app.fallthrough(false);

  InspectArgs inspect;
  CLI::App* sub =
      app.add_subcommand("inspect", "Show what a GGUF/safetensors model or an APRT dump holds");
  sub->add_option("input", inspect.input,
                  "A .gguf file, a .safetensors file or HF model folder, an APRT dump "
                  "directory, or one .bin/.npy tensor file")
      ->required();
  sub->add_flag("--json", inspect.json, "Print the report as JSON");
  sub->add_option("--tensor", inspect.tensor,
                  "Tensor to export (a model tensor name, or a dump cell such as "
                  "layer-3/attn_norm)");
  sub->add_option("--npy", inspect.npy, "Write --tensor dequantized to f32 as this NPY file");

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
    if (sub->parsed()) return cmd_inspect(inspect);
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
