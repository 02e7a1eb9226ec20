#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "app/commands.h"
#include "engine/inspect.h"
#include "formats/error.h"

namespace lockstep::app {
namespace {

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

Command add_inspect_command(CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* sub =
      app.add_subcommand("inspect", "Show what a GGUF/safetensors model or an APRT dump holds");
  sub->add_option("input", args->input,
                  "A .gguf file, a .safetensors file or HF model folder, an APRT dump "
                  "directory, or one .bin/.npy tensor file")
      ->required();
  sub->add_flag("--json", args->json, "Print the report as JSON");
  sub->add_option("--tensor", args->tensor,
                  "Tensor to export (a model tensor name, or a dump cell such as "
                  "layer-3/attn_norm)");
  sub->add_option("--npy", args->npy, "Write --tensor dequantized to f32 as this NPY file");
  return {sub, [args] { return cmd_inspect(*args); }};
}

}  // namespace lockstep::app
