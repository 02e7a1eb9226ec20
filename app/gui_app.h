#pragma once
// The workbench window: GLFW + OpenGL 3.3 + ImGui, the frame loop, the worker, settings and
// the test hooks. Opens on the embedded demo. Returns the process exit code: 0 when the window
// is closed, 2 when there is no display (the message names the headless commands).

namespace lockstep::app {

int run_gui();

}  // namespace lockstep::app
