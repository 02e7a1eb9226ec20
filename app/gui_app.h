#pragma once
// The workbench window: GLFW + OpenGL 3.3 + ImGui, the frame loop, the worker, settings and
// the test hooks. Opens on the embedded demo, or, given `model` (`lockstep MODEL`), opens that
// model and runs lane ref against lane cpu on its default tokens. Returns the process exit
// code: 0 when the window is closed, 2 when there is no display (the message names the
// headless commands).

#include <string>

namespace lockstep::app {

int run_gui(const std::string& model = {});

}  // namespace lockstep::app
