// The workbench end to end in a real window: the real binary under Xvfb (its own server when
// $DISPLAY is unset), driven with real input events (xdotool), checked through the app's test
// hooks (app/gui_test_hooks.h: widget rectangles, a state dump, screenshots) and the pixels.
// Every wait polls with a generous timeout: CI runs this on 2 slow cores with Mesa llvmpipe.

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "tests/gui/gui_driver.h"

namespace {

using namespace lockstep::guitest;

TEST_F(Workbench, DemoOpensAndClickingTheFirstDivergenceShowsItsEvidence) {
  // The embedded demo runs by itself: the map shows the planted bug's cell as the first
  // divergence.
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_TRUE(wait_for(30, [&] {
    return screen_rect("map.cell.lm_head") && screen_rect("map.cell.attn_norm@0");
  })) << "no rectangles for the map cells";
  std::optional<Image> initial = screenshot("demo-initial");
  ASSERT_TRUE(initial) << "no screenshot";

  // Click another cell, then the first divergence: real pointer events both times.
  ASSERT_TRUE(click_cell("attn_norm@0")) << "clicking attn_norm@0 did not select it";
  EXPECT_EQ(state()["verdict"], "inherited");
  ASSERT_TRUE(click_cell("lm_head")) << "clicking lm_head did not select it";
  const nlohmann::json s = state();
  EXPECT_EQ(s["verdict"], "introduced");
  EXPECT_EQ(s["diagnosis"], "layout");
  EXPECT_GT(s["sign_flips"].get<int>(), 0) << "a transposed GEMV flips signs in its top errors";

  // Replay on request: lane cpu's lm_head on lane ref's inputs still introduces the error.
  bool replayed = false;
  for (int attempt = 0; attempt < 3 && !replayed; ++attempt) {
    ASSERT_TRUE(click("drilldown.replay"));
    replayed = wait_for(20, [&] {
      const nlohmann::json r = state();
      return r.value("replayed", false) && !r.value("running", true);
    });
  }
  ASSERT_TRUE(replayed) << "the Replay button did not replay lm_head";
  EXPECT_EQ(state()["verdict"], "introduced");
  EXPECT_EQ(state()["diagnosis"], "layout");

  std::optional<Image> shot = screenshot("lm_head-selected");
  ASSERT_TRUE(shot);
  // The first divergence's outline: magenta along the cell's edges.
  const auto cell = window_rect("map.cell.lm_head");
  ASSERT_TRUE(cell);
  const int x0 = int((*cell)[0]), y0 = int((*cell)[1]), x1 = int((*cell)[2]), y1 = int((*cell)[3]);
  int magenta = 0, perimeter = 0;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) {
      const bool edge = x - x0 < 4 || x1 - 1 - x < 4 || y - y0 < 4 || y1 - 1 - y < 4;
      if (!edge || x < 0 || y < 0 || x >= shot->w || y >= shot->h) continue;
      ++perimeter;
      const unsigned char* p = shot->at(x, y);
      if (p[0] > 200 && p[1] < 80 && p[2] > 200) ++magenta;
    }
  EXPECT_GT(magenta, perimeter / 3)
      << magenta << " of " << perimeter << " edge pixels of lm_head are the outline's magenta";
  // The drill-down is drawn: not background, and its value histogram's A bars are there.
  const auto panel = window_rect("panel.drilldown");
  ASSERT_TRUE(panel);
  const unsigned char* bg = shot->at(int((*panel)[0]) + 3, int((*panel)[3]) - 3);
  int differ = 0, a_bars = 0, total = 0;
  for (int y = int((*panel)[1]); y < int((*panel)[3]) && y < shot->h; ++y)
    for (int x = int((*panel)[0]); x < int((*panel)[2]) && x < shot->w; ++x) {
      const unsigned char* p = shot->at(x, y);
      ++total;
      if (std::abs(p[0] - bg[0]) + std::abs(p[1] - bg[1]) + std::abs(p[2] - bg[2]) > 30) ++differ;
      if (std::abs(p[0] - 80) + std::abs(p[1] - 150) + std::abs(p[2] - 230) < 12) ++a_bars;
    }
  EXPECT_GT(differ, total / 50) << "the drill-down panel looks empty";
  EXPECT_GT(a_bars, 100) << "no value histogram bars in the drill-down";
}

TEST_F(Workbench, KeyNDecodeRunAndAFailedRunThatShowsTheErrorAndKeepsTheResult) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  // Keyboard: N from a cell that agrees goes to the next diverging cell. One tap, pressed and
  // released at once: the app holds the release back a frame (ImGui 1.86 would miss it).
  ASSERT_TRUE(click_cell("attn_norm@0"));
  std::system("xdotool key n");
  EXPECT_TRUE(wait_for(10, [&] {
    return state().value("selected", nlohmann::json()) == "lm_head";
  })) << "N did not select the next diverging cell";
  // Decode mode: one token per forward, stitched; the same cell diverges.
  bool decode = false;
  for (int attempt = 0; attempt < 3 && !decode; ++attempt) {
    ASSERT_TRUE(click("run.decode"));
    decode = wait_for(10, [&] { return state().value("decode", false); });
  }
  ASSERT_TRUE(decode) << "the decode radio button did not take";
  bool ran = false;
  auto ends_with_decode = [&] {
    const nlohmann::json r = state();
    const std::string title = r.value("title", "");
    return !r.value("running", true) && title.size() > 6 &&
           title.compare(title.size() - 6, 6, "decode") == 0;
  };
  for (int attempt = 0; attempt < 3 && !ran; ++attempt) {
    ASSERT_TRUE(click("run.run"));
    ran = wait_for(60, ends_with_decode);
  }
  ASSERT_TRUE(ran) << "no decode run finished; app log:\n" << app_log();
  EXPECT_EQ(state()["first_divergence"], "lm_head");
  EXPECT_EQ(state()["verdict"], "introduced");
  EXPECT_EQ(state()["diagnosis"], "layout");
  // drop_qkv_bias cannot show on a Llama (no QKV bias): the run fails before any lane runs.
  bool picked = false;
  for (int attempt = 0; attempt < 6 && !picked; ++attempt) {
    ASSERT_TRUE(wait_for(30, [&] { return screen_rect("run.fault").has_value(); }));
    ASSERT_TRUE(click("run.fault"));
    if (!wait_for(10,
                  [&] { return screen_rect("run.fault.item.drop_qkv_bias@qkv_bias").has_value(); }))
      continue;
    ASSERT_TRUE(click("run.fault.item.drop_qkv_bias@qkv_bias"));
    picked = wait_for(10, [&] { return state().value("fault", "") == "drop_qkv_bias@qkv_bias"; });
  }
  ASSERT_TRUE(picked) << "could not pick drop_qkv_bias in the fault combo";
  bool failed = false;
  for (int attempt = 0; attempt < 6 && !failed; ++attempt) {
    ASSERT_TRUE(click("run.run"));
    failed = wait_for(20, [&] { return state().value("errors", 0) >= 1; });
  }
  ASSERT_TRUE(failed) << "running drop_qkv_bias did not report an error";
  ASSERT_TRUE(screenshot("failed-run-dialog"));
  EXPECT_TRUE(app_alive());
  const nlohmann::json s = state();
  EXPECT_TRUE(s.value("map_ready", false));
  EXPECT_EQ(s["first_divergence"], "lm_head") << "the map keeps the last good result";
  EXPECT_FALSE(s.value("running", true));
}

// The map's sort and filters, through real clicks and typing: worst row first puts the model
// row (lm_head) above layer 0; "diverging layers only" hides the layers; the stage filter
// keeps only the matching columns.
TEST_F(Workbench, MapSortsByWorstAndFiltersLayersAndStages) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  auto top = [&](const std::string& cell) -> std::optional<double> {
    auto r = screen_rect("map.cell." + cell);
    return r ? std::optional<double>((*r)[1]) : std::nullopt;
  };
  ASSERT_TRUE(wait_for(30, [&] { return top("lm_head") && top("attn_norm@0"); }));
  EXPECT_GT(*top("lm_head"), *top("attn_norm@0")) << "plan order: the model row is last";

  auto toggle = [&](const std::string& widget, const char* key, bool want) {
    for (int attempt = 0; attempt < 4; ++attempt) {
      if (!click(widget)) return false;
      if (wait_for(10, [&] { return state().value(key, !want) == want; })) return true;
    }
    return false;
  };
  ASSERT_TRUE(toggle("map.sort", "map_sorted", true));
  EXPECT_TRUE(wait_for(10, [&] {
    auto m = top("lm_head"), l = top("attn_norm@0");
    return m && l && *m < *l;
  })) << "sorted by worst, the model row (lm_head diverges) comes first";

  ASSERT_TRUE(toggle("map.diverging_only", "map_diverging_only", true));
  EXPECT_TRUE(wait_for(10, [&] { return top("lm_head") && !top("attn_norm@0"); }))
      << "only the model row diverges, so layer 0 is hidden";
  ASSERT_TRUE(toggle("map.diverging_only", "map_diverging_only", false));
  ASSERT_TRUE(wait_for(10, [&] { return top("attn_norm@0").has_value(); }));

  bool typed = false;
  for (int attempt = 0; attempt < 3 && !typed; ++attempt) {
    ASSERT_TRUE(click("map.filter"));
    std::system("xdotool key ctrl+a BackSpace");
    std::system("xdotool type --delay 60 ffn_");
    typed = wait_for(10, [&] { return state().value("map_filter", "") == "ffn_"; });
  }
  ASSERT_TRUE(typed) << "typing into the stage filter did not take: "
                     << state().value("map_filter", "");
  EXPECT_TRUE(wait_for(10, [&] {
    return top("ffn_up@0") && top("ffn_norm@3") && !top("attn_norm@0") && !top("lm_head");
  })) << "the filter keeps the ffn_ stages only";
  EXPECT_TRUE(wait_for(10, [&] { return !screen_rect("map.row.model"); }))
      << "the model row has no ffn_ stage, so it is hidden";
  EXPECT_TRUE(screen_rect("map.row.layer 0").has_value());
  ASSERT_TRUE(screenshot("map-sorted-filtered"));
  EXPECT_TRUE(app_alive());
  EXPECT_EQ(state()["errors"], 0);
}

TEST(WorkbenchHeadless, WithoutADisplayItNamesTheHeadlessCommandAndExits2) {
  const std::string cmd = std::string("env -u DISPLAY -u WAYLAND_DISPLAY ") + LOCKSTEP_EXE +
                          " 2>&1 >/dev/null | head -c 2000";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_TRUE(p);
  std::string out;
  char buf[512];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  const int code = std::system(
      (std::string("env -u DISPLAY -u WAYLAND_DISPLAY ") + LOCKSTEP_EXE + " >/dev/null 2>&1")
          .c_str());
  EXPECT_EQ(WEXITSTATUS(code), 2);
  EXPECT_NE(out.find("lockstep demo"), std::string::npos) << out;
  EXPECT_NE(out.find("lockstep bisect"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
}

}  // namespace
