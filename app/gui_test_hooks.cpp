#include "app/gui_test_hooks.h"

#include <stb_image_write.h>  // Debian's libstb (linked with ImGui) holds the implementation

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <system_error>
#include <vector>

#include "app/gui_png_capture.h"

namespace lockstep::app {
namespace {

void write_atomically(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp);
    out << text;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
}

// The Dumps tab: per opened directory its counts and the cells by status; the lanes; the last
// export's files; the last PNG; a pending capture.
void write_dumps_state(nlohmann::json& j, const views::Snapshot& s, const views::UiState& ui) {
  nlohmann::json dumps = nlohmann::json::array();
  if (s.dumps)
    for (const engine::DumpListing& l : *s.dumps) {
      nlohmann::json d = {{"dir", l.dir},
                          {"cells", l.rows.size()},
                          {"ok", l.ok},
                          {"missing", l.missing},
                          {"malformed", l.malformed},
                          {"lane", l.lane},
                          {"manifest", l.has_manifest}};
      nlohmann::json status = nlohmann::json::object();
      for (const engine::DumpListingRow& r : l.rows)
        status[r.name] = std::string(engine::dump_cell_status_name(r.status));
      d["status"] = status;
      dumps.push_back(d);
    }
  j["dumps"] = dumps;
  j["exported"] = s.exported ? nlohmann::json(*s.exported) : nlohmann::json::array();
  j["last_png"] = s.last_png;
  j["png_pending"] = ui.png.widget;
  j["job"] = int(s.job.kind);
  j["error_text"] = s.error_text;
}

}  // namespace

std::optional<GuiTestHooks> GuiTestHooks::from_environment() {
  const char* dir = std::getenv("LOCKSTEP_GUI_TEST_DIR");
  if (!dir || !*dir) return std::nullopt;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  return GuiTestHooks(dir);
}

void GuiTestHooks::write_rects(const views::RectSink& rects, int win_x, int win_y, int win_w,
                               int win_h) {
  nlohmann::json r = nlohmann::json::object();
  for (const views::NamedRect& n : rects) r[n.name] = {n.x0, n.y0, n.x1, n.y1};
  const std::string text = nlohmann::json{
      {"window", {{"x", win_x}, {"y", win_y}, {"w", win_w}, {"h", win_h}}},
      {"rects", r}}.dump(1);
  if (text == last_rects_) return;
  last_rects_ = text;
  write_atomically(dir_ / "rects.json", text);
}

void GuiTestHooks::write_state(const views::Snapshot& s, const views::UiState& ui) {
  nlohmann::json j;
  j["running"] = s.job.running;
  j["title"] = s.title;
  // Per plot: whether it is drawn from its still image (views/plot_layer.h).
  j["plot_layers"] = nlohmann::json::object();
  for (const auto& [name, layer] : ui.plot_layers)
    j["plot_layers"][name] = layer.key != 0 && layer.key == layer.pending_key;
  j["map_ready"] = s.map != nullptr;
  j["kept_cells"] = s.kept_cells;
  j["layers_field"] = std::string(ui.layers.data());
  j["stages_chosen"] = ui.stages;
  j["first_divergence"] =
      s.map && s.map->first ? nlohmann::json(s.map->cells[*s.map->first].name) : nlohmann::json();
  const views::CellDetail* d = s.detail.get();
  j["selected"] = d ? nlohmann::json(d->name) : nlohmann::json();
  j["verdict"] = d ? nlohmann::json(d->verdict) : nlohmann::json();
  j["diagnosis"] = d ? nlohmann::json(d->diagnosis_class) : nlohmann::json();
  j["replayed"] = d && d->replayed_on_request;
  j["top_k"] = d ? d->top.size() : 0;
  j["sign_flips"] = d ? d->sign_flips : 0;
  j["metric"] = std::string(engine::map_metric_name(views::kMetrics[ui.metric]));
  j["map_sorted"] = ui.sort_by_worst;
  j["map_diverging_only"] = ui.diverging_rows_only;
  j["map_filter"] = std::string(ui.stage_filter.data());
  j["fault"] = ui.fault;
  j["decode"] = ui.decode;
  j["errors"] = s.error_seq;
  j["log"] = nlohmann::json::array();  // the messages, oldest first
  if (s.log)
    for (const views::LogEntry& e : *s.log) j["log"].push_back(e.text);
  j["layout"] = {{"sidebar_width", ui.sidebar_width},
                 {"map_height", ui.map_height},
                 {"log_width", ui.log_width}};
  if (d && d->logits)
    j["logits_plot"] = {
        {"vocab", d->logits->vocab},
        {"positions", d->logits->positions},
        {"rows", d->logits->rows.size()},
        {"levels", d->logits->rows.empty() ? 0 : d->logits->rows.back().a.levels.size()}};
  else
    j["logits_plot"] = nullptr;
  j["logits_readout"] = ui.logits_readout;
  j["logits_position"] = ui.logits_position;
  if (const views::ModelInfo* m = s.model.get())
    j["model"] = {{"path", m->path},
                  {"kind", m->kind},
                  {"family", m->family},
                  {"layers", m->layers},
                  {"tensors", m->tensors.size()},
                  {"tokenizer", m->has_tokenizer},
                  {"chat_template", m->has_chat_template}};
  else
    j["model"] = nullptr;
  j["recent"] = nlohmann::json::array();
  if (s.recent)
    for (const views::RecentModel& r : *s.recent)
      j["recent"].push_back({{"path", r.path}, {"exists", r.exists}});
  j["lane_a"] = ui.lane_a;
  j["lane_b"] = ui.lane_b;
  j["floor_cpu_ref"] = ui.floor_cpu_ref;
  j["model_path_field"] = std::string(ui.model_path.data());
  j["prompt"] = std::string(ui.prompt.data());
  j["use_token_ids"] = ui.use_token_ids;
  j["token_ids"] = std::string(ui.token_ids.data());
  j["browser_open"] = ui.browser_open;
  j["listing_dir"] = s.listing ? nlohmann::json(s.listing->dir) : nlohmann::json();
  j["listing_entries"] = nlohmann::json::array();
  if (s.listing)
    for (const views::DirEntry& e : s.listing->entries) j["listing_entries"].push_back(e.name);
  j["error_title"] = s.error_title;
  j["job"] = s.job.message;
  write_dumps_state(j, s, ui);
  const std::string text = j.dump(1);
  if (text == last_state_) return;
  last_state_ = text;
  nlohmann::json with_seq = j;
  with_seq["seq"] = s.seq;
  write_atomically(dir_ / "state.json", with_seq.dump(1));
}

void GuiTestHooks::maybe_screenshot(int w, int h) {
  const std::filesystem::path request = dir_ / "screenshot.request";
  std::error_code ec;
  if (!std::filesystem::exists(request, ec)) return;
  std::string target;
  {
    std::ifstream in(request);
    std::getline(in, target);
  }
  std::filesystem::remove(request, ec);
  if (target.empty() || w <= 0 || h <= 0) return;
  // Rows top first, so stb's process-wide flip flag stays off (the worker encodes PNG exports).
  const std::vector<unsigned char> pixels = read_back_rgb({0, 0, w, h}, h);  // [h, w, rgb]
  const std::string tmp = target + ".tmp.png";
  if (stbi_write_png(tmp.c_str(), w, h, 3, pixels.data(), w * 3))
    std::filesystem::rename(tmp, target, ec);
}

std::optional<std::string> GuiTestHooks::take_redraw_check_request() {
  const std::filesystem::path request = dir_ / "redraw-check.request";
  std::error_code ec;
  if (!std::filesystem::exists(request, ec)) return std::nullopt;
  std::string id;
  {
    std::ifstream in(request);
    std::getline(in, id);
  }
  std::filesystem::remove(request, ec);
  return id;
}

void GuiTestHooks::write_redraw_check(const std::string& id, bool running,
                                      const FrameCompositor::Check& c,
                                      const FrameCompositor::Stats& s,
                                      const Presenter::WindowCheck& window) {
  std::error_code ec;
  for (const char* which : {"composed", "full", "window", "back"})
    std::filesystem::remove(dir_ / ("redraw-check." + std::string(which) + ".png"), ec);
  if (c.differing > 0) {
    // Rows top first, as maybe_screenshot writes them.
    stbi_write_png((dir_ / "redraw-check.composed.png").c_str(), c.w, c.h, 3, c.composed.data(),
                   c.w * 3);
    stbi_write_png((dir_ / "redraw-check.full.png").c_str(), c.w, c.h, 3, c.full.data(), c.w * 3);
  }
  if (window.differing > 0) {
    stbi_write_png((dir_ / "redraw-check.window.png").c_str(), window.w, window.h, 3,
                   window.window.data(), window.w * 3);
    stbi_write_png((dir_ / "redraw-check.back.png").c_str(), window.w, window.h, 3,
                   window.back.data(), window.w * 3);
  }
  const nlohmann::json j = {
      {"id", id},
      {"w", c.w},
      {"h", c.h},
      {"differing_pixels", c.differing},
      {"running", running},
      {"partial", s.partial},
      {"this_frame_share", s.last_share},
      {"frames", s.frames},
      {"full_frames", s.full},
      {"unchanged_frames", s.unchanged},
      {"mean_share", s.frames > 0 ? s.damaged_share_sum / double(s.frames) : 1.0},
      {"presented_by", window.copies_sub_buffers ? "copy_sub_buffer" : "swap"},
      {"window_differing_pixels",
       window.differing >= 0 ? nlohmann::json(window.differing) : nlohmann::json()}};
  write_atomically(dir_ / "redraw-check.json", j.dump(1));
}

std::vector<std::string> GuiTestHooks::take_drop_request() {
  const std::filesystem::path request = dir_ / "drop.request";
  std::error_code ec;
  if (!std::filesystem::exists(request, ec)) return {};
  std::vector<std::string> paths;
  {
    std::ifstream in(request);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) paths.push_back(line);
  }
  std::filesystem::remove(request, ec);
  return paths;
}

bool GuiTestHooks::quit_requested() const {
  std::error_code ec;
  return std::filesystem::exists(dir_ / "quit.request", ec);
}

}  // namespace lockstep::app
