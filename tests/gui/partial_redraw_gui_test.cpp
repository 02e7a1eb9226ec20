// Partial redraw (app/gui_compositor.h) in a real window: while the workbench is driven (map
// cells hovered and clicked, the logits plot hovered, a run with Ctrl+R, a popup opened and
// closed), the app is asked at several points to draw the same frame once more in full and to
// compare it with the partially redrawn one (app/gui_test_hooks.h, redraw-check): not one pixel
// may differ, and the frames between checks must really have been drawn in part. Once the frame
// is presented, the window's pixels as the X server holds them are compared with the back buffer
// (app/gui_present.h: only the damage is copied to the window): not one may differ either.

#include <gtest/gtest.h>

#include <string>

#include "tests/gui/gui_driver.h"

namespace {

using namespace lockstep::guitest;

class PartialRedraw : public Workbench {
 protected:
  // Asks for a check and waits for its answer; a JSON null when none came.
  nlohmann::json redraw_check(const std::string& id) {
    const fs::path answer = dir_ / "redraw-check.json";
    {
      std::ofstream out(dir_ / "redraw-check.request.tmp");
      out << id << "\n";
    }
    fs::rename(dir_ / "redraw-check.request.tmp", dir_ / "redraw-check.request");
    nlohmann::json j;
    wait_for(30, [&] {
      auto r = read_json(answer);
      if (r && r->value("id", "") == id) j = *r;
      return !j.is_null();
    });
    return j;
  }

  // A check that must find the composed frame equal to a full redraw; the pictures of both
  // are kept (build/gui-screenshots/) when it does not. Returns the check.
  nlohmann::json expect_same_pixels(const std::string& id) {
    const nlohmann::json c = redraw_check(id);
    EXPECT_FALSE(c.is_null()) << id << ": no answer to the redraw check";
    if (c.is_null()) return c;
    EXPECT_GT(c.value("w", 0), 0) << id;
    EXPECT_EQ(c.value("differing_pixels", -1), 0)
        << id << ": the partially redrawn frame differs from a full redraw; " << c.dump();
    if (c.value("differing_pixels", 0) != 0)
      for (const char* which : {"composed", "full"}) {
        std::error_code ec;
        fs::copy_file(dir_ / ("redraw-check." + std::string(which) + ".png"),
                      shots_ / ("redraw-check-" + id + "-" + which + ".png"),
                      fs::copy_options::overwrite_existing, ec);
      }
    EXPECT_TRUE(c.value("partial", false)) << id << ": partial redraw was off";
    expect_window_shows_back_buffer(c, id);
    frames_ += c.value("frames", 0);
    full_frames_ += c.value("full_frames", 0);
    partial_checks_ += c.value("frames", 0) > 0 && c.value("mean_share", 1.0) < 0.5;
    return c;
  }

  // The window shows the composed frame: checked when frames are presented by copies out of
  // the back buffer. Under our Xvfb (Mesa's GLX) they are, unless `presented_by_` says swaps;
  // on a $DISPLAY found, the GL driver there decides.
  void expect_window_shows_back_buffer(const nlohmann::json& c, const std::string& id) {
    const std::string by = c.value("presented_by", "");
    if (x_->started_here() || presented_by_ == "swap") {
      EXPECT_EQ(by, presented_by_) << id;
    }
    if (by != "copy_sub_buffer") return;
    const nlohmann::json n = c.value("window_differing_pixels", nlohmann::json());
    EXPECT_TRUE(n.is_number()) << id << ": the window could not be read back; " << c.dump();
    EXPECT_EQ(n.is_number() ? n.get<long long>() : -1, 0)
        << id << ": the window shows other pixels than the back buffer; " << c.dump();
    if (n.is_number() && n.get<long long>() != 0)
      for (const char* which : {"window", "back"}) {
        std::error_code ec;
        fs::copy_file(dir_ / ("redraw-check." + std::string(which) + ".png"),
                      shots_ / ("redraw-check-" + id + "-" + which + ".png"),
                      fs::copy_options::overwrite_existing, ec);
      }
  }

  // Moves the pointer to `fx`, `fy` of the widget's rectangle and lets a few frames pass.
  bool hover(const std::string& widget, double fx = 0.5, double fy = 0.5) {
    auto r = screen_rect(widget);
    if (!r) return false;
    const int x = int((*r)[0] + ((*r)[2] - (*r)[0]) * fx);
    const int y = int((*r)[1] + ((*r)[3] - (*r)[1]) * fy);
    xdo("mousemove " + std::to_string(x) + " " + std::to_string(y));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    return true;
  }

  // Ctrl+R (held long enough for a frame to see it), then checks while the run lasts;
  // `during` counts them. Returns once the run is over.
  void run_and_check(int& during) {
    ASSERT_TRUE(hover("panel.map"));
    const unsigned long long seq_before = state().value("seq", 0ull);
    bool started = false;
    for (int attempt = 0; attempt < 3 && !started; ++attempt) {
      xdo("keydown ctrl");
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      xdo("keydown r");
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
      xdo("keyup r");
      xdo("keyup ctrl");
      // Running, or already done (the demo runs in moments): the worker published since.
      started = wait_for(10, [&] {
        const nlohmann::json s = state();
        return s.value("running", false) || s.value("seq", 0ull) > seq_before;
      });
    }
    ASSERT_TRUE(started) << "Ctrl+R started no run";
    for (int k = 0; k < 20 && state().value("running", false); ++k) {
      const nlohmann::json c = expect_same_pixels("running-" + std::to_string(k));
      during += c.value("running", false);
    }
    ASSERT_TRUE(wait_for(300, [&] {
      return state().value("map_ready", false) && !state().value("running", true);
    })) << app_log();
  }

  // Hovers map cells, clicks two, sweeps the logits plot and moves the pointer away, a check
  // after each step.
  void hover_click_and_sweep() {
    ASSERT_TRUE(wait_for(30, [&] { return screen_rect("map.cell.attn_norm@0").has_value(); }));
    expect_same_pixels("start");
    // Hover map cells (highlight and tooltip move from cell to cell), a check after each.
    for (const char* cell : {"attn_norm@0", "attn_norm@1", "ffn_up@1", "lm_head"}) {
      if (!hover(std::string("map.cell.") + cell)) continue;
      expect_same_pixels(std::string("hover-") + cell);
    }
    // Click another cell, then the first divergence.
    ASSERT_TRUE(click_cell("attn_norm@0"));
    expect_same_pixels("clicked-attn_norm@0");
    ASSERT_TRUE(click_cell("lm_head"));
    expect_same_pixels("clicked-lm_head");
    // Sweep the logits plot: the hover line and readout follow the pointer.
    ASSERT_TRUE(wait_for(10, [&] { return screen_rect("drilldown.logits").has_value(); }));
    for (double fx : {0.1, 0.35, 0.6, 0.9}) {
      ASSERT_TRUE(hover("drilldown.logits", fx));
      expect_same_pixels("logits-" + std::to_string(int(fx * 100)));
    }
    // The pointer leaves: hover line and tooltip go.
    xdo("mousemove 1595 995");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    expect_same_pixels("pointer-gone");
  }

  std::string presented_by_ = "copy_sub_buffer";  // Mesa's GLX under Xvfb offers the copies
  long long frames_ = 0, full_frames_ = 0;
  int partial_checks_ = 0;  // checks after frames that redrew under half the window on average
};

TEST_F(PartialRedraw, PartiallyRedrawnFramesEqualFullRedraws) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_NO_FATAL_FAILURE(hover_click_and_sweep());

  // A run with Ctrl+R, checks while it runs (the demo's run is short: maybe none).
  int during = 0;
  ASSERT_NO_FATAL_FAILURE(run_and_check(during));
  expect_same_pixels("run-done");

  // A popup: the fault combo opens over the run bar, then Escape closes it.
  ASSERT_TRUE(click("run.fault"));
  ASSERT_TRUE(wait_for(10, [&] {
    return screen_rect("run.fault.item.drop_qkv_bias@qkv_bias").has_value();
  })) << "the fault combo did not open";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  expect_same_pixels("popup-open");
  xdo("key Escape");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  xdo("mousemove 1595 995");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  expect_same_pixels("popup-closed");

  // Partial redraw was at work: most frames were drawn in part, and several checks followed
  // frames that redrew under half the window on average.
  EXPECT_GT(frames_, 20);
  EXPECT_LT(full_frames_ * 2, frames_) << full_frames_ << " of " << frames_ << " frames in full";
  EXPECT_GE(partial_checks_, 5);
  std::printf(
      "partial redraw: %lld frames, %lld in full, %d of the checks after partial "
      "frames, %d during the run\n",
      frames_, full_frames_, partial_checks_, during);
}

// A run long enough to check frames while it computes (progress bar, elapsed time): a
// generated 28-layer model with a 152,064-entry vocabulary, its map taller than the panel.
class PartialRedrawLongRun : public PartialRedraw {
 protected:
  PartialRedrawLongRun() {
    model_ = fs::path(LOCKSTEP_BINARY_DIR) / "gui-test" /
             ("partial-redraw-" + std::to_string(getpid()) + ".gguf");
    fs::create_directories(model_.parent_path());
    const std::string gen = std::string(LOCKSTEP_EXE) +
                            " gen-model --family qwen2 --hidden 256 --layers 28 --heads 4 "
                            "--kv-heads 2 --ffn 512 --vocab 152064 --out " +
                            model_.string() + " >/dev/null 2>&1";
    generated_ = std::system(gen.c_str()) == 0;
    args_ = {model_.string()};
  }
  ~PartialRedrawLongRun() override {
    std::error_code ec;
    fs::remove(model_, ec);
  }
  fs::path model_;
  bool generated_ = false;
};

TEST_F(PartialRedrawLongRun, FramesDrawnWhileARunComputesEqualFullRedraws) {
  ASSERT_TRUE(generated_) << "gen-model failed";
  // Opening the model runs it.
  ASSERT_TRUE(wait_for(300, [&] {
    const nlohmann::json s = state();
    return !app_alive() || (s.value("map_ready", false) && !s.value("running", true));
  })) << app_log();
  ASSERT_TRUE(app_alive()) << app_log();
  expect_same_pixels("opened");
  ASSERT_TRUE(click_cell("attn_norm@1"));
  expect_same_pixels("clicked-attn_norm@1");
  int during = 0;
  ASSERT_NO_FATAL_FAILURE(run_and_check(during));
  expect_same_pixels("run-done");
  EXPECT_GE(during, 2) << "the run was over before two checks";
  EXPECT_LT(full_frames_ * 2, frames_) << full_frames_ << " of " << frames_ << " frames in full";
  std::printf("partial redraw: %lld frames, %lld in full, %d checks during the run\n", frames_,
              full_frames_, during);
}

// The window loses its pixels (unmapped, mapped again: an Expose): the next frame shows them
// all again, though little or none of its draw data changed.
TEST_F(PartialRedraw, TheWholeFrameIsShownAgainAfterAnExpose) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  xdo("mousemove 1595 995");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  expect_same_pixels("before");
  xdo("search --sync --pid " + std::to_string(app_) + " --name \"Lockstep workbench\" " +
      "windowunmap --sync %@ windowmap --sync %@");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  expect_same_pixels("mapped-again");
}

// Presented by swaps (LOCKSTEP_COPY_SUB_BUFFER=0): the composed frame lives in an offscreen
// target, copied to the back buffer every frame; the same checks hold.
class PartialRedrawBySwaps : public PartialRedraw {
 protected:
  PartialRedrawBySwaps() {
    env_.push_back("LOCKSTEP_COPY_SUB_BUFFER=0");
    presented_by_ = "swap";
  }
};

TEST_F(PartialRedrawBySwaps, PartiallyRedrawnFramesEqualFullRedraws) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_NO_FATAL_FAILURE(hover_click_and_sweep());
  EXPECT_LT(full_frames_ * 2, frames_) << full_frames_ << " of " << frames_ << " frames in full";
  EXPECT_GE(partial_checks_, 3);
}

// LOCKSTEP_PARTIAL_REDRAW=0: every frame whole, and the check says so.
class FullRedraw : public PartialRedraw {
 protected:
  FullRedraw() { env_.push_back("LOCKSTEP_PARTIAL_REDRAW=0"); }
};

TEST_F(FullRedraw, TheEnvironmentTurnsPartialRedrawOff) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_TRUE(hover("panel.map"));
  const nlohmann::json c = redraw_check("off");
  ASSERT_FALSE(c.is_null());
  EXPECT_FALSE(c.value("partial", true));
  EXPECT_EQ(c.value("differing_pixels", -1), 0);
  EXPECT_EQ(c.value("full_frames", -1), c.value("frames", -2));
  EXPECT_EQ(c.value("this_frame_share", 0.0), 1.0);
  EXPECT_EQ(c.value("presented_by", ""), "swap");
}

}  // namespace
