#pragma once
// The workbench's settings: a small JSON file next to imgui.ini, in
// $XDG_CONFIG_HOME/lockstep/ (else ~/.config/lockstep/). A missing or unreadable file gives the
// defaults; a bad value is ignored.

#include <filesystem>
#include <string>
#include <vector>

namespace lockstep::app {

struct GuiSettings {
  float font_scale = 1.0f;
  std::string metric = "relative_rms";     // engine::map_metric_name
  std::vector<std::string> recent_models;  // most recent first, at most kMaxRecent
  static constexpr size_t kMaxRecent = 10;
  // The layout (app/gui_layout.h): splitter positions in pixels (0: the default) and the
  // window's size and position (kUnset: where the window system puts it).
  float sidebar_width = 340, map_height = 0, log_width = 0;
  static constexpr int kUnset = -100000;
  int window_x = kUnset, window_y = kUnset, window_w = 1440, window_h = 900;
};

std::filesystem::path settings_dir();  // created on first save
GuiSettings load_settings(const std::filesystem::path& dir);
// Writes dir/settings.json through a temporary file; returns false (and leaves the old file)
// when it cannot.
bool save_settings(const std::filesystem::path& dir, const GuiSettings& settings);

}  // namespace lockstep::app
