#!/usr/bin/env bash
# Opens the workbench. Until the GUI lands, "the workbench" is the command line: its help,
# and an inspection of a real model (stories260K from ../shared/models when present).
set -euo pipefail
exe=${1:-build/app/lockstep}
root=$(cd "$(dirname "$0")/.." && pwd)
"$exe" --help
echo
"$exe" --version
model="$(cd "$root/.." && pwd)/shared/models/stories260K.gguf"
if [ -f "$model" ]; then
  echo
  echo "\$ lockstep inspect $model"
  "$exe" inspect "$model"
else
  echo
  echo "(../shared/models is absent: try '$exe inspect <model.gguf>')"
fi
