#include "app/gui_app.h"

#include <GLFW/glfw3.h>
#include <backends/imgui_impl_glfw.h>
#include <backends/imgui_impl_opengl3.h>
#include <imgui.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "app/demo_model.h"
#include "app/frame_stats.h"
#include "app/gui_compositor.h"
#include "app/gui_layers.h"
#include "app/gui_layout.h"
#include "app/gui_png_capture.h"
#include "app/gui_present.h"
#include "app/gui_settings.h"
#include "app/gui_test_hooks.h"
#include "app/worker.h"
#include "views/drilldown_view.h"
#include "views/dumps_view.h"
#include "views/file_browser_view.h"
#include "views/log_view.h"
#include "views/map_view.h"
#include "views/model_view.h"
#include "views/run_view.h"
#include "views/splitter.h"

namespace lockstep::app {
namespace {

constexpr int kExitNoDisplay = 2;
const char* const kNoDisplay =
    "lockstep: no display for the workbench window; run it headless instead: `lockstep demo` "
    "(the embedded demo) or `lockstep bisect MODEL --prompt TEXT` (see `lockstep --help`)\n";

double steady_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The root window covers the framebuffer: glClear paints its background, and llvmpipe (the
// software rasteriser under Xvfb) is spared blending one more window-sized quad every frame.
constexpr ImGuiWindowFlags kRootBackground = ImGuiWindowFlags_NoBackground;
constexpr float kBackground[3] = {0.06f, 0.06f, 0.06f};  // the dark style's WindowBg, opaque
constexpr double kFramePeriod = 1.0 / 60;                // seconds between frames while a job runs

void record_panel(views::RectSink* rects, const char* name) {
  if (!rects) return;
  const ImVec2 a = ImGui::GetWindowPos(), s = ImGui::GetWindowSize();
  rects->push_back({name, a.x, a.y, a.x + s.x, a.y + s.y});
}

// One frame of the workbench: the sidebar on the left; on the right the run bar, the map below
// it, then drill-down and log.
void draw_workbench(const views::Snapshot& snapshot, views::UiState& ui, uint64_t& seen_error,
                    views::CommandSink& commands, views::RectSink* rects) {
  const ImGuiViewport* vp = ImGui::GetMainViewport();
  ImGui::SetNextWindowPos(vp->WorkPos);
  ImGui::SetNextWindowSize(vp->WorkSize);
  const ImGuiWindowFlags root = ImGuiWindowFlags_NoDecoration | ImGuiWindowFlags_NoMove |
                                ImGuiWindowFlags_NoBringToFrontOnFocus |
                                ImGuiWindowFlags_NoSavedSettings | kRootBackground;
  ImGui::Begin("Lockstep", nullptr, root);
  // Left: the sidebar of inputs (model and lanes; dump directories and exports).
  // The splitters' sizes, clamped to what the window leaves (a drag stores the clamped size).
  constexpr float kBar = 8;
  const float window_w = ImGui::GetContentRegionAvail().x;
  const float sidebar_w = std::clamp(ui.sidebar_width, 160.0f, std::max(160.0f, window_w - 420));
  ImGui::BeginChild("sidebar", ImVec2(sidebar_w, 0), true);
  record_panel(rects, "panel.sidebar");
  if (ImGui::BeginTabBar("sidebar.tabs")) {
    if (ImGui::BeginTabItem("Model & lanes")) {
      views::draw_model_view(snapshot, ui, commands, rects);
      ImGui::EndTabItem();
    }
    const bool dumps_tab = ImGui::BeginTabItem("Dumps");
    if (rects) {
      const ImVec2 a = ImGui::GetItemRectMin(), b = ImGui::GetItemRectMax();
      rects->push_back({"tab.dumps", a.x, a.y, b.x, b.y});
    }
    if (dumps_tab) {
      views::draw_dumps_view(snapshot, ui, commands, rects);
      ImGui::EndTabItem();
    }
    ImGui::EndTabBar();
  }
  ImGui::EndChild();
  ImGui::SameLine(0, 0);
  if (const float d = views::draw_splitter("split.sidebar", true,
                                           ImVec2(kBar, ImGui::GetContentRegionAvail().y),
                                           "Drag to resize the sidebar", rects))
    ui.sidebar_width = std::clamp(sidebar_w + d, 160.0f, std::max(160.0f, window_w - 420));
  ImGui::SameLine(0, 0);
  // Right: run bar, map, then drill-down and log.
  ImGui::BeginGroup();
  const float line = ImGui::GetFrameHeightWithSpacing();
  ImGui::BeginChild("run", ImVec2(0, line * 3 + ImGui::GetTextLineHeightWithSpacing() * 2 + 12),
                    true);
  record_panel(rects, "panel.run");
  views::draw_run_view(snapshot, ui, steady_now(), commands, rects);
  ImGui::EndChild();

  // The map child fits its table: the metric row, the sort/filter row, a three-line header,
  // one row per layer.
  const ImGuiStyle& style = ImGui::GetStyle();
  const float text = ImGui::GetTextLineHeight();
  const float fit_h =
      snapshot.map ? line * 2 + text * 3 + style.CellPadding.y * 2 + 4 +
                         (text + 8 + style.CellPadding.y * 2) * float(snapshot.map->rows.size()) +
                         style.WindowPadding.y * 2 + 6
                   : line * 2;
  // Bounded: by default the fit, up to half of what is left; the splitter below sets it; the
  // map's table scrolls (frozen header row and layer column) when it holds more.
  const float right_h = ImGui::GetContentRegionAvail().y;
  const float max_map_h = std::max(line * 3, right_h - 160);
  const float map_h =
      std::clamp(ui.map_height > 0 ? ui.map_height : std::min(fit_h, right_h * 0.5f),
                 std::min(line * 3, max_map_h), max_map_h);
  ImGui::BeginChild("map", ImVec2(0, map_h), true);
  record_panel(rects, "panel.map");
  views::draw_map_view(snapshot, ui, commands, rects);
  ImGui::EndChild();
  ImGui::SetCursorPosY(ImGui::GetCursorPosY() - style.ItemSpacing.y);
  if (const float d = views::draw_splitter(
          "split.map", false, ImVec2(ImGui::GetContentRegionAvail().x, kBar),
          "Drag to share the height between the map and the drill-down", rects))
    ui.map_height = std::clamp(map_h + d, std::min(line * 3, max_map_h), max_map_h);
  ImGui::SetCursorPosY(ImGui::GetCursorPosY() - style.ItemSpacing.y);

  const float rest = ImGui::GetContentRegionAvail().x;
  const float max_log_w = std::max(120.0f, rest - 240);
  const float log_w = std::clamp(ui.log_width > 0 ? ui.log_width : rest * 0.32f, 120.0f, max_log_w);
  ImGui::BeginChild("drilldown", ImVec2(rest - log_w - kBar, 0), true);
  record_panel(rects, "panel.drilldown");
  views::draw_drilldown_view(snapshot, ui, commands, rects);
  ImGui::EndChild();
  ImGui::SameLine(0, 0);
  if (const float d =
          views::draw_splitter("split.log", true, ImVec2(kBar, ImGui::GetContentRegionAvail().y),
                               "Drag to share the width between the drill-down and the log", rects))
    ui.log_width = std::clamp(log_w - d, 120.0f, max_log_w);
  ImGui::SameLine(0, 0);
  ImGui::BeginChild("log", ImVec2(0, 0), true);
  record_panel(rects, "panel.log");
  views::draw_log_view(snapshot, seen_error);
  ImGui::EndChild();
  ImGui::EndGroup();
  views::sync_model_view(snapshot, ui, commands);
  views::draw_file_browser(snapshot, ui, commands, rects);
  ImGui::End();
}

// Paths dropped onto the window (GLFW's drop callback, or the test hook that stands in for it):
// the worker opens models and turns dump directories into a lane.
void handle_drop(Worker& worker, std::vector<std::string> paths) {
  if (!paths.empty()) worker.post(views::DropCommand{std::move(paths)});
}

// What GLFW's callbacks reach through the window's user pointer.
struct WindowLink {
  Worker& worker;
  Presenter& presenter;
};

void on_drop(GLFWwindow* window, int count, const char** paths) {
  auto* link = static_cast<WindowLink*>(glfwGetWindowUserPointer(window));
  if (link) handle_drop(link->worker, std::vector<std::string>(paths, paths + count));
}

// The window system lost the window's pixels (an Expose): present all of them again. The event
// also wakes the frame loop.
void on_refresh(GLFWwindow* window) {
  auto* link = static_cast<WindowLink*>(glfwGetWindowUserPointer(window));
  if (link) link->presenter.expose();
}

// ImGui 1.86 reads keys as held-down flags once a frame, so a key pressed and released within
// one frame (a quick tap, a macro, xdotool) is never seen down. A release of a key pressed since
// the last frame began waits for the frame after it (GUI thread only: GLFW calls back from
// inside its event polling).
struct HeldBackReleases {
  std::vector<int> pressed;                  // keys pressed since the last frame was drawn
  std::vector<std::array<int, 4>> releases;  // key, scancode, action, mods
};
HeldBackReleases held_back;

void on_key(GLFWwindow* window, int key, int scancode, int action, int mods) {
  if (action == GLFW_RELEASE && std::find(held_back.pressed.begin(), held_back.pressed.end(),
                                          key) != held_back.pressed.end()) {
    held_back.releases.push_back({key, scancode, action, mods});
    return;
  }
  if (action == GLFW_PRESS) held_back.pressed.push_back(key);
  ImGui_ImplGlfw_KeyCallback(window, key, scancode, action, mods);
}

// After a frame is drawn: hands ImGui the releases held back for it; true when there were any
// (a frame should follow soon, to see them).
bool release_held_back_keys(GLFWwindow* window) {
  held_back.pressed.clear();
  const std::vector<std::array<int, 4>> releases = std::move(held_back.releases);
  held_back.releases.clear();
  for (const std::array<int, 4>& r : releases) on_key(window, r[0], r[1], r[2], r[3]);
  return !releases.empty();
}

}  // namespace

int run_gui(const std::string& model) {
  glfwSetErrorCallback([](int, const char*) {});  // the one-line message below says it all
  if (!glfwInit()) {
    std::fputs(kNoDisplay, stderr);
    return kExitNoDisplay;
  }
  glfwWindowHint(GLFW_CONTEXT_VERSION_MAJOR, 3);
  glfwWindowHint(GLFW_CONTEXT_VERSION_MINOR, 3);
  glfwWindowHint(GLFW_OPENGL_PROFILE, GLFW_OPENGL_CORE_PROFILE);
  glfwWindowHint(GLFW_OPENGL_FORWARD_COMPAT, GLFW_TRUE);
  const std::filesystem::path config = settings_dir();
  GuiSettings settings = load_settings(config);
  const std::array<int, 2> window_size = initial_window_size(settings);
  GLFWwindow* window =
      glfwCreateWindow(window_size[0], window_size[1], "Lockstep workbench", nullptr, nullptr);
  if (!window) {
    std::fputs(kNoDisplay, stderr);
    glfwTerminate();
    return kExitNoDisplay;
  }
  place_window(window, settings);
  glfwMakeContextCurrent(window);
  glfwSwapInterval(1);

  std::error_code ec;
  std::filesystem::create_directories(config, ec);
  const std::string ini = (config / "imgui.ini").string();

  IMGUI_CHECKVERSION();
  ImGui::CreateContext();
  ImGuiIO& io = ImGui::GetIO();
  io.IniFilename = ini.c_str();
  ImGui::StyleColorsDark();
  {
    // No anti-aliasing: nearly everything drawn is axis-aligned (cells, bars, the plots'
    // vertical min-max lines), where it changes no pixel's look but triples the triangles of
    // every line. Under Mesa's llvmpipe (Xvfb), frames were ~15% faster without it
    // (scripts/gui-frame-bench.sh).
    ImGuiStyle& style = ImGui::GetStyle();
    style.AntiAliasedLines = false;
    style.AntiAliasedLinesUseTex = false;
    style.AntiAliasedFill = false;
  }
  ImGui_ImplGlfw_InitForOpenGL(window, true);
  glfwSetKeyCallback(window, on_key);  // in front of the backend's (which it calls)
  ImGui_ImplOpenGL3_Init("#version 330");

  views::UiState ui;
  ui.fault = model.empty() ? kDemoFault : "";  // a model of one's own runs clean by default
  std::snprintf(ui.model_path.data(), ui.model_path.size(), "%s", model.c_str());
  ui.font_scale = settings.font_scale;
  ui.sidebar_width = settings.sidebar_width;
  ui.map_height = settings.map_height;
  ui.log_width = settings.log_width;
  LayoutSaver layout_saver;
  std::optional<FrameStats> frame_stats = FrameStats::from_environment();
  for (size_t k = 0; k < views::kMetricCount; ++k)
    if (engine::map_metric_name(views::kMetrics[k]) == settings.metric) ui.metric = k;
  std::optional<GuiTestHooks> hooks = GuiTestHooks::from_environment();

  int code = 0;
  {
    Worker worker({.scratch = std::filesystem::temp_directory_path() /
                              ("lockstep-gui-" + std::to_string(getpid())),
                   .threads = 0,
                   .wake = [] { glfwPostEmptyEvent(); },
                   .recent = settings.recent_models});
    worker.post(views::LogCommand{"workbench started; settings in " + config.string()});
    if (!model.empty()) worker.post(views::LoadModelCommand{model});
    if (model.empty())
      worker.post(views::run_command(ui));  // the embedded demo, at once
    else
      ui.run_when_model_opens = true;  // once it is open, on lanes that can hold it
    // Partial redraw (app/gui_compositor.h), presented by rectangle where the window system
    // can (app/gui_present.h); LOCKSTEP_PARTIAL_REDRAW=0 draws every frame whole.
    FrameCompositor compositor(FrameCompositor::partial_from_environment());
    Presenter presenter(window, compositor.partial());
    compositor.compose_in_back_buffer(presenter.copies_sub_buffers());
    WindowLink link{worker, presenter};
    glfwSetWindowUserPointer(window, &link);
    glfwSetDropCallback(window, on_drop);
    glfwSetWindowRefreshCallback(window, on_refresh);
    std::shared_ptr<const std::vector<views::RecentModel>> saved_recent;
    std::string window_title;

    uint64_t seen_error = 0;
    int eager_frames = 0;   // frames drawn without waiting, after input or a publish
    double next_frame = 0;  // while a job runs, when the next frame may begin (steady clock, s)
    views::RectSink rects;
    views::CommandSink commands;
    PlotLayerTextures layers;  // freed at the end of this scope, with the context still current
    // LOCKSTEP_PLOT_LAYERS=0: plots drawn directly every frame (to compare, app/gui_layers.h).
    const char* layers_env = std::getenv("LOCKSTEP_PLOT_LAYERS");
    const bool plot_layers = !layers_env || std::string_view(layers_env) != "0";
    while (!glfwWindowShouldClose(window)) {
      std::shared_ptr<const views::Snapshot> snapshot = worker.snapshot();
      // Redraw on a clock while a job runs (progress, elapsed time), else wait for input or a
      // publish.
      if (snapshot->job.running) {
        // While a job runs, frames start on a 60 Hz clock (swaps are not paced by every display
        // server, Xvfb's included): faster shows nothing more and takes cores from the worker.
        // A 7B-shaped run under the frame bench finished in 26 s instead of 37 s, frames as
        // smooth. The loop sleeps to the next tick whatever woke it; input waits for the tick.
        if (const double wait = next_frame - steady_now(); wait > 0)
          std::this_thread::sleep_for(std::chrono::duration<double>(wait));
        glfwPollEvents();
      } else if (eager_frames > 0) {
        --eager_frames;
        glfwPollEvents();
      } else {
        // Idle, input or a publish wakes the loop, and its frames are drawn at once. ImGui
        // settles some changes over a few frames (a popup is measured hidden for its first
        // frame), so an event buys a few frames drawn without waiting.
        const double before = steady_now();
        glfwWaitEventsTimeout(0.5);
        if (steady_now() - before < 0.45) eager_frames = 3;
      }
      // The next tick is one period after this one. A frame that starts over half a period late
      // (after a slow frame, or the first of a job) starts the clock afresh instead of hurrying
      // the frames after it.
      const double now = steady_now();
      next_frame += kFramePeriod;
      if (next_frame < now + kFramePeriod / 2 || next_frame > now + kFramePeriod)
        next_frame = now + kFramePeriod;
      snapshot = worker.snapshot();  // the one this frame draws
      if (frame_stats) frame_stats->begin_frame(steady_now());
      if (snapshot->title != window_title) {  // what was run: model, lanes, fault, mode
        window_title = snapshot->title;
        glfwSetWindowTitle(window, ("Lockstep workbench: " + window_title).c_str());
      }

      io.FontGlobalScale = ui.font_scale;
      ImGui_ImplOpenGL3_NewFrame();
      ImGui_ImplGlfw_NewFrame();
      // A PNG capture waits for its popup to close; meanwhile no hover (tooltips, highlights)
      // may draw over the widget.
      if (!ui.png.widget.empty()) io.MousePos = ImVec2(-FLT_MAX, -FLT_MAX);
      // A new font sampling changes pixels the draw data does not show: redraw all of them.
      bool invalidate = update_font_filter(io.DisplayFramebufferScale, io.FontGlobalScale);
      ImGui::NewFrame();
      rects.clear();
      commands.clear();
      draw_workbench(*snapshot, ui, seen_error, commands, hooks ? &rects : nullptr);
      ImGui::Render();
      if (frame_stats) frame_stats->built(steady_now());
      if (plot_layers && layers.render_pending(ui.plot_layers, io.DisplayFramebufferScale))
        invalidate = true;  // a texture's pixels changed under quads that may not have
      for (const views::Command& c : commands) worker.post(c);
      if (snapshot->recent && snapshot->recent != saved_recent) {  // a model was opened
        saved_recent = snapshot->recent;
        std::vector<std::string> paths;
        for (const views::RecentModel& r : *snapshot->recent) paths.push_back(r.path);
        if (paths != settings.recent_models) {
          settings.recent_models = std::move(paths);
          ui.settings_changed = true;
        }
      }
      if (ui.settings_changed) {
        ui.settings_changed = false;
        settings.font_scale = ui.font_scale;
        settings.metric = std::string(engine::map_metric_name(views::kMetrics[ui.metric]));
        if (!save_settings(config, settings))
          worker.post(views::LogCommand{"could not save " + (config / "settings.json").string()});
      }
      if (layout_saver.update(steady_now(), ui, window, ImGui::IsAnyMouseDown(),
                              glfwWindowShouldClose(window), settings) &&
          !save_settings(config, settings))
        worker.post(views::LogCommand{"could not save " + (config / "settings.json").string()});

      int fb_w = 0, fb_h = 0;
      glfwGetFramebufferSize(window, &fb_w, &fb_h);
      // Only what changed since the last frame is drawn again, offscreen; the composed frame
      // lands in the back buffer, which every read-back below reads.
      compositor.compose(*ImGui::GetDrawData(), fb_w, fb_h, kBackground, invalidate);
      if (frame_stats)
        frame_stats->composed(steady_now(), compositor.last_damage().fraction(fb_w, fb_h));
      if (!ui.png.widget.empty()) {
        // Read the widget back from this frame once the popup is gone (a few frames), then hand
        // the pixels to the worker, which encodes and writes them.
        eager_frames = std::max(eager_frames, 1);
        if (++ui.png.frames >= 3) {
          const PixelRect r = to_framebuffer(ui.png.x0, ui.png.y0, ui.png.x1, ui.png.y1,
                                             io.DisplayFramebufferScale.x,
                                             io.DisplayFramebufferScale.y, fb_w, fb_h);
          auto rgb = std::make_shared<const std::vector<uint8_t>>(read_back_rgb(r, fb_h));
          worker.post(views::ExportPngCommand{ui.png.widget, ui.png.path, r.w, r.h, rgb});
          ui.png = views::PngRequest{};
        }
      }
      double hooks_seconds = 0;  // the tests' hooks are not a user's: see below
      std::optional<std::string> redraw_check_id;
      FrameCompositor::Check redraw_check;
      if (hooks) {
        const double start = steady_now();
        int wx = 0, wy = 0, ww = 0, wh = 0;
        glfwGetWindowPos(window, &wx, &wy);
        glfwGetWindowSize(window, &ww, &wh);
        hooks->write_rects(rects, wx, wy, ww, wh);
        hooks->write_state(*snapshot, ui);
        hooks->maybe_screenshot(fb_w, fb_h);
        redraw_check_id = hooks->take_redraw_check_request();
        if (redraw_check_id)
          redraw_check =
              compositor.check_against_full(*ImGui::GetDrawData(), fb_w, fb_h, kBackground);
        if (hooks->quit_requested()) glfwSetWindowShouldClose(window, GLFW_TRUE);
        handle_drop(worker, hooks->take_drop_request());
        hooks_seconds += steady_now() - start;
      }
      presenter.present(compositor.last_damage(), fb_w, fb_h);
      if (redraw_check_id) {  // what the window shows now, against the back buffer
        const double start = steady_now();
        hooks->write_redraw_check(
            *redraw_check_id, snapshot->job.running, redraw_check, compositor.take_stats(),
            presenter.copies_sub_buffers() ? presenter.check_window(fb_w, fb_h)
                                           : Presenter::WindowCheck{});
        hooks_seconds += steady_now() - start;
      }
      // The hooks' time stops the frame clock, and frame stats leave it out.
      next_frame += hooks_seconds;
      if (release_held_back_keys(window)) eager_frames = std::max(eager_frames, 1);
      if (frame_stats) {
        frame_stats->end_frame(steady_now(), snapshot->job.running, hooks_seconds);
        frame_stats->maybe_write(steady_now());
      }
    }
    if (layout_saver.update(steady_now(), ui, window, false, true, settings))
      save_settings(config, settings);
    if (frame_stats) frame_stats->write();
    glfwSetDropCallback(window, nullptr);
    glfwSetWindowRefreshCallback(window, nullptr);
    glfwSetWindowUserPointer(window, nullptr);
  }  // the worker cancels its job and joins before the context goes

  ImGui_ImplOpenGL3_Shutdown();
  ImGui_ImplGlfw_Shutdown();
  ImGui::DestroyContext();
  glfwDestroyWindow(window);
  glfwTerminate();
  return code;
}

}  // namespace lockstep::app
