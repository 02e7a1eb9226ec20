#include <filesystem>
#include <string_view>

#include "app/cli.h"
#ifdef LOCKSTEP_HAVE_GUI
#include "app/gui_app.h"
#endif

namespace {

// `lockstep MODEL`: one argument that is no subcommand or option but an existing path.
bool is_model_argument(int argc, char** argv) {
  if (argc != 2 || argv[1][0] == '-') return false;
  for (std::string_view sub :
       {"inspect", "tokenize", "gen-model", "run", "dump", "bench", "bisect", "diff", "demo"})
    if (sub == argv[1]) return false;
  std::error_code ec;
  return std::filesystem::exists(argv[1], ec);
}

}  // namespace

int main(int argc, char** argv) {
#ifdef LOCKSTEP_HAVE_GUI
  if (argc == 1) return lockstep::app::run_gui();  // no arguments: the workbench on its demo
  if (is_model_argument(argc, argv)) return lockstep::app::run_gui(argv[1]);
#else
  (void)is_model_argument;
#endif
  return lockstep::app::run_cli(argc, argv);
}
