// The workbench's layout and its logits plot in a real window: splitters dragged with real
// pointer events persist across a restart (settings.json); the map scrolls when it is made
// smaller than its table and names only the cells in sight; the lm_head cell shows the logits
// over the vocabulary with a hover readout; LOCKSTEP_FRAME_STATS writes a well-formed frame-time
// file (no timing is asserted: scripts/gui-frame-bench.sh measures).

#include <gtest/gtest.h>

#include <cmath>
#include <regex>
#include <string>

#include "tests/gui/gui_driver.h"

namespace {

using namespace lockstep::guitest;

class WorkbenchLayout : public Workbench {
 protected:
  WorkbenchLayout() {
    frames_ = fs::path(LOCKSTEP_BINARY_DIR) / "gui-test" / ("frames-" + std::to_string(getpid()));
    env_.push_back("LOCKSTEP_FRAME_STATS=" + frames_.string());
  }
  ~WorkbenchLayout() override {
    std::error_code ec;
    fs::remove(frames_, ec);
  }

  double width(const std::string& rect) {
    auto r = window_rect(rect);
    return r ? (*r)[2] - (*r)[0] : -1;
  }
  double height(const std::string& rect) {
    auto r = window_rect(rect);
    return r ? (*r)[3] - (*r)[1] : -1;
  }

  // Presses the left button on the splitter's centre, moves the pointer by (dx, dy) in steps,
  // releases it.
  void drag(const std::string& splitter, int dx, int dy) {
    auto r = screen_rect(splitter);
    ASSERT_TRUE(r) << "no rectangle for " << splitter;
    const int x = int(((*r)[0] + (*r)[2]) / 2), y = int(((*r)[1] + (*r)[3]) / 2);
    xdo("mousemove " + std::to_string(x) + " " + std::to_string(y));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    xdo("mousedown 1");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    for (int k = 1; k <= 4; ++k) {
      xdo("mousemove " + std::to_string(x + dx * k / 4) + " " + std::to_string(y + dy * k / 4));
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
    }
    xdo("mouseup 1");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }

  // Closes the app cleanly and starts it again on the same settings directory, with `env` added
  // to its environment.
  void restart(const std::vector<std::string>& env = {}) {
    std::ofstream(dir_ / "quit.request") << "\n";
    int status = 0;
    ASSERT_TRUE(wait_for(30, [&] { return exited(app_, &status); })) << "no clean exit";
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "exit status " << status;
    for (const char* f : {"quit.request", "rects.json", "state.json"}) fs::remove(dir_ / f);
    std::vector<std::string> full = {"DISPLAY=" + x_->display(),
                                     "LOCKSTEP_GUI_TEST_DIR=" + dir_.string(),
                                     "XDG_CONFIG_HOME=" + (dir_ / "config").string()};
    full.insert(full.end(), env.begin(), env.end());
    app_ = spawn({LOCKSTEP_EXE}, full, dir_ / "app.log");
    ASSERT_GT(app_, 0);
  }

  fs::path frames_;
};

TEST_F(WorkbenchLayout, DraggedSplittersPersistAcrossARestart) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_TRUE(wait_for(30, [&] { return screen_rect("map.cell.lm_head").has_value(); }));
  const double map0 = height("panel.map"), side0 = width("panel.sidebar");
  ASSERT_GT(map0, 0);
  const size_t cells0 = [&] {
    auto j = read_json(dir_ / "rects.json");
    size_t n = 0;
    for (auto& [name, r] : (*j)["rects"].items()) n += name.rfind("map.cell.", 0) == 0;
    return n;
  }();

  // The map made smaller than its table: it scrolls, and the model row (lm_head) is out of
  // sight, so it names no rectangle for it; the first layer's cells are still there.
  ASSERT_NO_FATAL_FAILURE(drag("split.map", 0, -70));
  ASSERT_TRUE(wait_for(10, [&] { return std::abs(height("panel.map") - (map0 - 70)) <= 2; }))
      << "the map's height did not follow the drag: " << height("panel.map") << " vs " << map0;
  ASSERT_TRUE(wait_for(10, [&] { return !screen_rect("map.cell.lm_head"); }))
      << "a cell scrolled out of sight still has a rectangle";
  EXPECT_TRUE(screen_rect("map.cell.attn_norm@0"));
  {
    auto j = read_json(dir_ / "rects.json");
    size_t n = 0;
    for (auto& [name, r] : (*j)["rects"].items()) n += name.rfind("map.cell.", 0) == 0;
    EXPECT_LT(n, cells0);
  }
  ASSERT_NO_FATAL_FAILURE(drag("split.sidebar", 60, 0));
  ASSERT_TRUE(wait_for(10, [&] { return std::abs(width("panel.sidebar") - (side0 + 60)) <= 2; }))
      << "the sidebar's width did not follow the drag";
  const double log0 = width("panel.log");  // the sidebar's drag took its share from the right
  ASSERT_NO_FATAL_FAILURE(drag("split.log", -50, 0));
  ASSERT_TRUE(wait_for(10, [&] { return std::abs(width("panel.log") - (log0 + 50)) <= 3; }))
      << "the log's width did not follow the drag: " << width("panel.log") << " vs " << log0;
  const double map1 = height("panel.map"), side1 = width("panel.sidebar"),
               log1 = width("panel.log"), drill1 = width("panel.drilldown");
  const nlohmann::json layout1 = state()["layout"];

  // Saved once the drags settled (not on every frame of a drag).
  const fs::path settings = dir_ / "config" / "lockstep" / "settings.json";
  ASSERT_TRUE(wait_for(10, [&] {
    auto j = read_json(settings);
    return j && j->value("map_height", 0.0) > 0 && j->value("log_width", 0.0) > 0;
  })) << "settings.json holds no layout";

  ASSERT_NO_FATAL_FAILURE(restart());
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_TRUE(wait_for(30, [&] { return height("panel.map") > 0; }));
  EXPECT_NEAR(height("panel.map"), map1, 1);
  EXPECT_NEAR(width("panel.sidebar"), side1, 1);
  EXPECT_NEAR(width("panel.log"), log1, 1);
  EXPECT_NEAR(width("panel.drilldown"), drill1, 1);
  EXPECT_EQ(state()["layout"], layout1);
  EXPECT_FALSE(screen_rect("map.cell.lm_head")) << "the restored map is as small as it was";
  // The imgui.ini beside it (table column widths and the like).
  EXPECT_TRUE(wait_for(10, [&] { return fs::exists(dir_ / "config" / "lockstep" / "imgui.ini"); }));
}

TEST_F(WorkbenchLayout, LmHeadShowsTheLogitsPlotWithAHoverReadout) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_TRUE(click_cell("lm_head"));
  ASSERT_TRUE(wait_for(10, [&] { return screen_rect("drilldown.logits").has_value(); }))
      << "no logits plot for lm_head";
  const nlohmann::json plot = state()["logits_plot"];
  ASSERT_TRUE(plot.is_object()) << state().dump(1);
  EXPECT_EQ(plot["vocab"], 384) << "the demo model's vocabulary";
  EXPECT_GE(plot["positions"].get<int>(), 1);
  EXPECT_EQ(plot["rows"], plot["positions"]) << "a small model keeps every position";
  EXPECT_EQ(plot["levels"], 1) << "384 entries: one level of 192 bins";

  // Hovering the plot three quarters along: the readout names a token there with A, B, |B-A|.
  auto r = screen_rect("drilldown.logits");
  ASSERT_TRUE(r);
  const double fx = 0.75;
  const int x = int((*r)[0] + ((*r)[2] - (*r)[0]) * fx), y = int(((*r)[1] + (*r)[3]) / 2);
  std::string readout;
  for (int attempt = 0; attempt < 5 && readout.empty(); ++attempt) {
    xdo("mousemove " + std::to_string(x) + " " + std::to_string(y + attempt));
    wait_for(5, [&] {
      readout = state().value("logits_readout", "");
      return !readout.empty();
    });
  }
  ASSERT_FALSE(readout.empty()) << "no hover readout over the logits plot";
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      readout, m,
      std::regex(R"(token (\d+): A \S+, B \S+, \|B - A\| \S+ +\(column: tokens (\d+)-(\d+)\))")))
      << readout;
  const int token = std::stoi(m[1]), lo = std::stoi(m[2]), hi = std::stoi(m[3]);
  EXPECT_LE(lo, token);
  EXPECT_LE(token, hi);
  EXPECT_NEAR(token, 384 * fx, 384.0 / ((*r)[2] - (*r)[0]) * 3 + 2)
      << "the readout's token lies under the pointer";

  // Drawn: lane A's blue trace (80, 150, 230) runs through the plot.
  std::optional<Image> shot = screenshot("logits-plot");
  ASSERT_TRUE(shot);
  auto wr = window_rect("drilldown.logits");
  int blue = 0;
  for (int py = int((*wr)[1]); py < int((*wr)[3]) && py < shot->h; ++py)
    for (int px = int((*wr)[0]); px < int((*wr)[2]) && px < shot->w; ++px) {
      const unsigned char* p = shot->at(px, py);
      if (p[2] > 150 && p[2] > p[0] + 70 && p[1] > 90) ++blue;  // lines are anti-aliased
    }
  EXPECT_GT(blue, 200) << "no lane A line in the logits plot";

  // The position slider: a click at its left end shows the first position.
  EXPECT_EQ(state()["logits_position"], -1) << "the last position by default";
  auto slider = screen_rect("drilldown.logits_position");
  ASSERT_TRUE(slider) << "no position slider (the demo has several positions)";
  bool moved = false;
  for (int attempt = 0; attempt < 3 && !moved; ++attempt) {
    xdo("mousemove " + std::to_string(int((*slider)[0]) + 2) + " " +
        std::to_string(int(((*slider)[1] + (*slider)[3]) / 2)));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    xdo("click 1");
    moved = wait_for(5, [&] { return state().value("logits_position", -1) == 0; });
  }
  EXPECT_TRUE(moved) << "clicking the slider's left end did not select position 0";

  // Another cell has no logits plot.
  ASSERT_TRUE(click_cell("attn_norm@0"));
  EXPECT_TRUE(state()["logits_plot"].is_null());
  EXPECT_FALSE(screen_rect("drilldown.logits"));

  // The frame-time file, written at exit: well-formed, with the frames drawn.
  std::ofstream(dir_ / "quit.request") << "\n";
  int status = 0;
  ASSERT_TRUE(wait_for(30, [&] { return exited(app_, &status); }));
  app_ = -1;
  auto frames = read_json(frames_);
  ASSERT_TRUE(frames) << "no " << frames_;
  EXPECT_GT((*frames)["frames"].get<int>(), 10);
  for (const char* series : {"frame_ms", "interval_ms"})
    for (const char* k : {"p50", "p90", "p99", "max", "mean"}) {
      ASSERT_TRUE((*frames)[series].contains(k)) << series << "." << k;
      EXPECT_GT((*frames)[series][k].get<double>(), 0) << series << "." << k;
    }
  EXPECT_LE((*frames)["frame_ms"]["p50"], (*frames)["frame_ms"]["p99"]);
  EXPECT_LE((*frames)["frame_ms"]["p99"], (*frames)["frame_ms"]["max"]);
}

// A layout saved on a bigger screen, off its edges: the window comes back on the screen and no
// larger than it; the splitters' sizes are clamped to what the window leaves.
class WorkbenchOffscreenLayout : public Workbench {
 protected:
  WorkbenchOffscreenLayout() {
    config_ =
        fs::path(LOCKSTEP_BINARY_DIR) / "gui-test" / ("offscreen-" + std::to_string(getpid()));
    fs::create_directories(config_ / "lockstep");
    std::ofstream(config_ / "lockstep" / "settings.json")
        << R"({"window_x": -3000, "window_y": 2500, "window_w": 5000, "window_h": 4000,
              "sidebar_width": 9000, "map_height": 9000, "log_width": 9000})";
    env_.push_back("XDG_CONFIG_HOME=" + config_.string());  // after the fixture's own: wins
  }
  ~WorkbenchOffscreenLayout() override {
    std::error_code ec;
    fs::remove_all(config_, ec);
  }
  fs::path config_;
};

TEST_F(WorkbenchOffscreenLayout, ASavedLayoutLargerThanTheScreenIsClampedToIt) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_TRUE(wait_for(30, [&] { return read_json(dir_ / "rects.json").has_value(); }));
  const nlohmann::json w = (*read_json(dir_ / "rects.json"))["window"];
  // The fixture's Xvfb screen is 1600 x 1000.
  EXPECT_LE(w["w"].get<int>(), 1600);
  EXPECT_LE(w["h"].get<int>(), 1000);
  EXPECT_GE(w["x"].get<int>(), 0);
  EXPECT_GE(w["y"].get<int>(), 0);
  EXPECT_LE(w["x"].get<int>() + w["w"].get<int>(), 1600);
  EXPECT_LE(w["y"].get<int>() + w["h"].get<int>(), 1000);
  // Every panel keeps a usable size inside the window.
  for (const char* panel : {"panel.sidebar", "panel.map", "panel.drilldown", "panel.log"}) {
    auto r = window_rect(panel);
    ASSERT_TRUE(r) << panel;
    EXPECT_GE((*r)[2] - (*r)[0], 100) << panel;
    EXPECT_GE((*r)[3] - (*r)[1], 60) << panel;
    EXPECT_LE((*r)[2], w["w"].get<double>()) << panel;
    EXPECT_LE((*r)[3], w["h"].get<double>()) << panel;
  }
}

}  // namespace

// The logits plots drawn from their still images (views/plot_layer.h) give the same pixels as
// drawn directly, every frame (LOCKSTEP_PLOT_LAYERS=0).
TEST_F(WorkbenchLayout, PlotsFromTheirStillImagesMatchPlotsDrawnDirectly) {
  auto plot_pixels = [&](bool from_image, const std::string& shot_name) {
    std::vector<unsigned char> pixels;
    EXPECT_TRUE(click_cell("lm_head"));
    EXPECT_TRUE(wait_for(10, [&] {
      const nlohmann::json layers = state()["plot_layers"];
      return layers.value("drilldown.logits", !from_image) == from_image &&
             layers.value("drilldown.logits_diff", !from_image) == from_image;
    })) << state()["plot_layers"].dump();
    xdo("mousemove 1595 995");  // no hover line, no tooltip
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    std::optional<Image> shot = screenshot(shot_name);
    EXPECT_TRUE(shot);
    if (!shot) return pixels;
    for (const char* plot : {"drilldown.logits", "drilldown.logits_diff"}) {
      auto r = window_rect(plot);
      EXPECT_TRUE(r) << plot;
      if (!r) continue;
      for (int y = int((*r)[1]); y < int((*r)[3]) && y < shot->h; ++y)
        for (int x = int((*r)[0]); x < int((*r)[2]) && x < shot->w; ++x)
          pixels.insert(pixels.end(), shot->at(x, y), shot->at(x, y) + 3);
    }
    return pixels;
  };
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  const std::vector<unsigned char> from_image = plot_pixels(true, "plots-from-still-images");
  ASSERT_NO_FATAL_FAILURE(restart({"LOCKSTEP_PLOT_LAYERS=0"}));
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  const std::vector<unsigned char> direct = plot_pixels(false, "plots-drawn-directly");
  ASSERT_GT(from_image.size(), 3000u) << "no plot pixels";
  ASSERT_EQ(from_image.size(), direct.size()) << "the plots moved between the two runs";
  size_t differ = 0;
  for (size_t i = 0; i < direct.size(); i += 3)
    differ += !std::equal(direct.begin() + long(i), direct.begin() + long(i) + 3,
                          from_image.begin() + long(i));
  EXPECT_EQ(differ, 0u) << "of " << direct.size() / 3 << " plot pixels";
}
