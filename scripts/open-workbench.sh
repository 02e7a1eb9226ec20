#!/usr/bin/env bash
# Opens the workbench: `lockstep` with no arguments, the window on its embedded demo (a
# synthetic model with a planted bug, bisected). Without a display, or in a build without the
# GUI, the same demo runs headless in the terminal.
set -euo pipefail
exe=${1:-build/app/lockstep}
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && "$exe" --version | grep -q '^GUI: built'; then
  exec "$exe"
fi
echo "(no display, or a build without the GUI: the embedded demo in the terminal)"
echo "\$ lockstep demo"
exec "$exe" demo
