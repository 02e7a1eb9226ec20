#pragma once
// The workbench's layout between sessions: the window's size and position and the splitters'
// positions (views::UiState), kept in settings.json (GuiSettings). Applied at start, clamped to
// the screen; saved a moment after a change settles, not on every frame of a drag.

#include <array>

#include "app/gui_settings.h"
#include "views/ui_state.h"

struct GLFWwindow;

namespace lockstep::app {

// The window's size from the settings, clamped to the primary monitor's work area (when there
// is one): {w, h}.
std::array<int, 2> initial_window_size(const GuiSettings& settings);
// Moves the window to its saved position, kept on the primary monitor's work area; leaves it
// where the window system put it when none was saved.
void place_window(GLFWwindow* window, const GuiSettings& settings);

class LayoutSaver {
 public:
  static constexpr double kSettleSeconds = 0.5;
  // Call once per frame. Copies the current layout into `settings` and returns true when it
  // should be saved now: it changed, then stayed unchanged for kSettleSeconds with no mouse
  // button held (or `closing`, when anything changed since the last save).
  bool update(double now, const views::UiState& ui, GLFWwindow* window, bool mouse_down,
              bool closing, GuiSettings& settings);

 private:
  std::array<float, 7> last_{};
  bool seen_ = false, dirty_ = false;
  double changed_at_ = 0;
};

}  // namespace lockstep::app
