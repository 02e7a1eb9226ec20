#include "app/gui_settings.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <system_error>

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
                          {"recent_models", settings.recent_models}}
               .dump(2)
        << "\n";
    if (!out) return false;
  }
  std::filesystem::rename(tmp, dir / "settings.json", ec);
  return !ec;
}

}  // namespace lockstep::app
