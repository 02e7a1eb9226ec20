#include "app/gui_app.h"

#include <GLFW/glfw3.h>
#include <backends/imgui_impl_glfw.h>
#include <backends/imgui_impl_opengl3.h>
#include <imgui.h>
#include <unistd.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "app/demo_model.h"
#include "app/gui_png_capture.h"
#include "app/gui_settings.h"
#include "app/gui_test_hooks.h"
#include "app/worker.h"
#include "views/drilldown_view.h"
#include "views/dumps_view.h"
#include "views/log_view.h"
#include "views/map_view.h"
#include "views/run_view.h"

namespace lockstep::app {
namespace {

constexpr int kExitNoDisplay = 2;
const char* const kNoDisplay =
    "lockstep: no display for the workbench window; run it headless instead: `lockstep demo` "
    "(the embedded demo) or `lockstep bisect MODEL --prompt TEXT` (see `lockstep --help`)\n";

double steady_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

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
                                ImGuiWindowFlags_NoSavedSettings;
  ImGui::Begin("Lockstep", nullptr, root);
  // Left: the sidebar of inputs (model and lanes; dump directories and exports).
  ImGui::BeginChild("sidebar", ImVec2(340, 0), true);
  record_panel(rects, "panel.sidebar");
  if (ImGui::BeginTabBar("sidebar.tabs")) {
    if (ImGui::BeginTabItem("Model & lanes")) {
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
  ImGui::SameLine();
  // Right: run bar, map, then drill-down and log.
  ImGui::BeginGroup();
  const float line = ImGui::GetFrameHeightWithSpacing();
  ImGui::BeginChild("run", ImVec2(0, line * 2 + ImGui::GetTextLineHeightWithSpacing() + 12), true);
  record_panel(rects, "panel.run");
  views::draw_run_view(snapshot, ui, steady_now(), commands, rects);
  ImGui::EndChild();

  // The map child fits its table: the metric row, the sort/filter row, a three-line header,
  // one row per layer.
  const ImGuiStyle& style = ImGui::GetStyle();
  const float text = ImGui::GetTextLineHeight();
  const float map_h =
      snapshot.map ? line * 2 + text * 3 + style.CellPadding.y * 2 + 4 +
                         (text + 8 + style.CellPadding.y * 2) * float(snapshot.map->rows.size()) +
                         style.WindowPadding.y * 2 + 6
                   : line * 2;
  ImGui::BeginChild("map", ImVec2(0, map_h), true);
  record_panel(rects, "panel.map");
  views::draw_map_view(snapshot, ui, commands, rects);
  ImGui::EndChild();

  const float rest = ImGui::GetContentRegionAvail().x;
  ImGui::BeginChild("drilldown", ImVec2(rest * 0.68f, 0), true);
  record_panel(rects, "panel.drilldown");
  views::draw_drilldown_view(snapshot, ui, commands, rects);
  ImGui::EndChild();
  ImGui::SameLine();
  ImGui::BeginChild("log", ImVec2(0, 0), true);
  record_panel(rects, "panel.log");
  views::draw_log_view(snapshot, seen_error);
  ImGui::EndChild();
  ImGui::EndGroup();
  ImGui::End();
}

}  // namespace

int run_gui() {
  glfwSetErrorCallback([](int, const char*) {});  // the one-line message below says it all
  if (!glfwInit()) {
    std::fputs(kNoDisplay, stderr);
    return kExitNoDisplay;
  }
  glfwWindowHint(GLFW_CONTEXT_VERSION_MAJOR, 3);
  glfwWindowHint(GLFW_CONTEXT_VERSION_MINOR, 3);
  glfwWindowHint(GLFW_OPENGL_PROFILE, GLFW_OPENGL_CORE_PROFILE);
  glfwWindowHint(GLFW_OPENGL_FORWARD_COMPAT, GLFW_TRUE);
  GLFWwindow* window = glfwCreateWindow(1440, 900, "Lockstep workbench", nullptr, nullptr);
  if (!window) {
    std::fputs(kNoDisplay, stderr);
    glfwTerminate();
    return kExitNoDisplay;
  }
  glfwMakeContextCurrent(window);
  glfwSwapInterval(1);

  const std::filesystem::path config = settings_dir();
  std::error_code ec;
  std::filesystem::create_directories(config, ec);
  const std::string ini = (config / "imgui.ini").string();
  GuiSettings settings = load_settings(config);

  IMGUI_CHECKVERSION();
  ImGui::CreateContext();
  ImGuiIO& io = ImGui::GetIO();
  io.IniFilename = ini.c_str();
  ImGui::StyleColorsDark();
  ImGui_ImplGlfw_InitForOpenGL(window, true);
  ImGui_ImplOpenGL3_Init("#version 330");

  views::UiState ui;
  ui.fault = kDemoFault;
  ui.font_scale = settings.font_scale;
  for (size_t k = 0; k < views::kMetricCount; ++k)
    if (engine::map_metric_name(views::kMetrics[k]) == settings.metric) ui.metric = k;
  std::optional<GuiTestHooks> hooks = GuiTestHooks::from_environment();

  int code = 0;
  {
    Worker worker({.scratch = std::filesystem::temp_directory_path() /
                              ("lockstep-gui-" + std::to_string(getpid())),
                   .threads = 0,
                   .wake = [] { glfwPostEmptyEvent(); }});
    worker.post(views::LogCommand{"workbench started; settings in " + config.string()});
    worker.post(views::RunCommand{ui.fault, ui.decode});  // the embedded demo, at once

    uint64_t seen_error = 0;
    int eager_frames = 0;  // frames drawn without waiting, after input or a publish
    views::RectSink rects;
    views::CommandSink commands;
    while (!glfwWindowShouldClose(window)) {
      std::shared_ptr<const views::Snapshot> snapshot = worker.snapshot();
      // Redraw often while a job runs (progress, elapsed time), else wait for input or a
      // publish. ImGui settles some changes over a few frames (a popup is measured hidden for
      // its first frame), so an event buys a few frames drawn at once.
      if (eager_frames > 0) {
        --eager_frames;
        glfwPollEvents();
      } else {
        const double timeout = snapshot->job.running ? 1.0 / 30 : 0.5;
        const double before = steady_now();
        glfwWaitEventsTimeout(timeout);
        if (steady_now() - before < timeout * 0.9) eager_frames = 3;
      }
      snapshot = worker.snapshot();  // the one this frame draws

      io.FontGlobalScale = ui.font_scale;
      ImGui_ImplOpenGL3_NewFrame();
      ImGui_ImplGlfw_NewFrame();
      // A PNG capture waits for its popup to close; meanwhile no hover (tooltips, highlights)
      // may draw over the widget.
      if (!ui.png.widget.empty()) io.MousePos = ImVec2(-FLT_MAX, -FLT_MAX);
      ImGui::NewFrame();
      rects.clear();
      commands.clear();
      draw_workbench(*snapshot, ui, seen_error, commands, hooks ? &rects : nullptr);
      ImGui::Render();
      for (const views::Command& c : commands) worker.post(c);
      if (ui.settings_changed) {
        ui.settings_changed = false;
        settings.font_scale = ui.font_scale;
        settings.metric = std::string(engine::map_metric_name(views::kMetrics[ui.metric]));
        if (!save_settings(config, settings))
          worker.post(views::LogCommand{"could not save " + (config / "settings.json").string()});
      }

      int fb_w = 0, fb_h = 0;
      glfwGetFramebufferSize(window, &fb_w, &fb_h);
      glViewport(0, 0, fb_w, fb_h);
      glClearColor(0.08f, 0.09f, 0.1f, 1.0f);
      glClear(GL_COLOR_BUFFER_BIT);
      ImGui_ImplOpenGL3_RenderDrawData(ImGui::GetDrawData());
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
      if (hooks) {
        int wx = 0, wy = 0, ww = 0, wh = 0;
        glfwGetWindowPos(window, &wx, &wy);
        glfwGetWindowSize(window, &ww, &wh);
        hooks->write_rects(rects, wx, wy, ww, wh);
        hooks->write_state(*snapshot, ui);
        hooks->maybe_screenshot(fb_w, fb_h);
        if (hooks->quit_requested()) glfwSetWindowShouldClose(window, GLFW_TRUE);
      }
      glfwSwapBuffers(window);
    }
  }  // the worker cancels its job and joins before the context goes

  ImGui_ImplOpenGL3_Shutdown();
  ImGui_ImplGlfw_Shutdown();
  ImGui::DestroyContext();
  glfwDestroyWindow(window);
  glfwTerminate();
  return code;
}

}  // namespace lockstep::app
