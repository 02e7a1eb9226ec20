#include "app/cli.h"

int main(int argc, char** argv) {
  return lockstep::app::run_cli(argc, argv);
}
