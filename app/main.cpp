#include "app/cli.h"
#ifdef LOCKSTEP_HAVE_GUI
#include "app/gui_app.h"
#endif

int main(int argc, char** argv) {
#ifdef LOCKSTEP_HAVE_GUI
  if (argc == 1) return lockstep::app::run_gui();  // no arguments: the workbench on its demo
#endif
  return lockstep::app::run_cli(argc, argv);
}
