#!/usr/bin/env bash
# Opens the workbench. Until the GUI lands, "the workbench" is the command line: its embedded
# demo (a synthetic model with a planted bug, bisected), then the commands to go further.
set -euo pipefail
exe=${1:-build/app/lockstep}
"$exe" --version
echo
echo "\$ lockstep demo"
"$exe" demo
echo
"$exe" --help
