#include "app/gui_layout.h"

#include <GLFW/glfw3.h>

#include <algorithm>

namespace lockstep::app {
namespace {

// The primary monitor's work area {x, y, w, h}; w = 0 when there is none.
std::array<int, 4> work_area() {
  std::array<int, 4> a{0, 0, 0, 0};
  if (GLFWmonitor* m = glfwGetPrimaryMonitor())
    glfwGetMonitorWorkarea(m, &a[0], &a[1], &a[2], &a[3]);
  return a;
}

}  // namespace

std::array<int, 2> initial_window_size(const GuiSettings& s) {
  const std::array<int, 4> a = work_area();
  if (a[2] <= 0 || a[3] <= 0) return {s.window_w, s.window_h};
  return {std::clamp(s.window_w, std::min(320, a[2]), a[2]),
          std::clamp(s.window_h, std::min(240, a[3]), a[3])};
}

void place_window(GLFWwindow* window, const GuiSettings& s) {
  if (s.window_x == GuiSettings::kUnset || s.window_y == GuiSettings::kUnset) return;
  const std::array<int, 4> a = work_area();
  int w = 0, h = 0;
  glfwGetWindowSize(window, &w, &h);
  int x = s.window_x, y = s.window_y;
  if (a[2] > 0 && a[3] > 0) {  // keep the whole window on the screen where it fits
    x = std::clamp(x, a[0], std::max(a[0], a[0] + a[2] - w));
    y = std::clamp(y, a[1], std::max(a[1], a[1] + a[3] - h));
  }
  glfwSetWindowPos(window, x, y);
}

bool LayoutSaver::update(double now, const views::UiState& ui, GLFWwindow* window, bool mouse_down,
                         bool closing, GuiSettings& settings) {
  int x = 0, y = 0, w = 0, h = 0;
  glfwGetWindowPos(window, &x, &y);
  glfwGetWindowSize(window, &w, &h);
  const std::array<float, 7> now_layout = {ui.sidebar_width, ui.map_height, ui.log_width, float(x),
                                           float(y),         float(w),      float(h)};
  if (!seen_) {
    seen_ = true;
    last_ = now_layout;
  }
  if (now_layout != last_) {
    last_ = now_layout;
    dirty_ = true;
    changed_at_ = now;
  }
  if (!dirty_ || (!closing && (mouse_down || now - changed_at_ < kSettleSeconds))) return false;
  dirty_ = false;
  settings.sidebar_width = ui.sidebar_width;
  settings.map_height = ui.map_height;
  settings.log_width = ui.log_width;
  if (w > 0 && h > 0) {  // not while minimised
    settings.window_x = x;
    settings.window_y = y;
    settings.window_w = w;
    settings.window_h = h;
  }
  return true;
}

}  // namespace lockstep::app
