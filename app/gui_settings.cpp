#include "app/gui_settings.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <system_error>
#include <type_traits>

namespace lockstep::app {

std::filesystem::path settings_dir() {
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x && *x)
    return std::filesystem::path(x) / "lockstep";
  if (const char* h = std::getenv("HOME"); h && *h)
    return std::filesystem::path(h) / ".config" / "lockstep";
  return std::filesystem::current_path() / ".lockstep";
}

GuiSettings load_settings(const std::filesystem::path& dir) {
  GuiSettings s;
  std::ifstream in(dir / "settings.json");
  if (!in) return s;
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_object()) return s;
  if (auto it = j.find("font_scale"); it != j.end() && it->is_number())
    s.font_scale = std::clamp(it->get<float>(), 0.5f, 4.0f);
  if (auto it = j.find("metric"); it != j.end() && it->is_string())
    s.metric = it->get<std::string>();
  if (auto it = j.find("recent_models"); it != j.end() && it->is_array())
    for (const nlohmann::json& r : *it)
      if (r.is_string() && s.recent_models.size() < GuiSettings::kMaxRecent)
        s.recent_models.push_back(r.get<std::string>());
  auto number = [&](const char* key, auto& v, double lo, double hi) {
    if (auto it = j.find(key); it != j.end() && it->is_number())
      v = static_cast<std::remove_reference_t<decltype(v)>>(std::clamp(it->get<double>(), lo, hi));
  };
  number("sidebar_width", s.sidebar_width, 0, 1e5);
  number("map_height", s.map_height, 0, 1e5);
  number("log_width", s.log_width, 0, 1e5);
  number("window_x", s.window_x, -1e5, 1e5);
  number("window_y", s.window_y, -1e5, 1e5);
  number("window_w", s.window_w, 320, 1e5);
  number("window_h", s.window_h, 240, 1e5);
  return s;
}

bool save_settings(const std::filesystem::path& dir, const GuiSettings& settings) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  const std::filesystem::path tmp = dir / "settings.json.tmp";
  {
    std::ofstream out(tmp);
    if (!out) return false;
    out << nlohmann::json{{"font_scale", settings.font_scale},
                          {"metric", settings.metric},
                          {"recent_models", settings.recent_models},
                          {"sidebar_width", settings.sidebar_width},
                          {"map_height", settings.map_height},
                          {"log_width", settings.log_width},
                          {"window_x", settings.window_x},
                          {"window_y", settings.window_y},
                          {"window_w", settings.window_w},
                          {"window_h", settings.window_h}}
               .dump(2)
        << "\n";
    if (!out) return false;
  }
  std::filesystem::rename(tmp, dir / "settings.json", ec);
  return !ec;
}

}  // namespace lockstep::app
