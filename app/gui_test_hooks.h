#pragma once
// Hooks for the GUI tests, off unless LOCKSTEP_GUI_TEST_DIR names a directory. Then the app
//   - writes DIR/rects.json: {"window": {x, y, w, h}, "rects": {name: [x0, y0, x1, y1]...}} in
//     window pixels, whenever a rectangle changes;
//   - writes DIR/state.json whenever what is shown changes:
//     {"seq", "running", "title", "map_ready", "first_divergence", "selected", "verdict",
//     "replayed",
//      "diagnosis",
//      "top_k", "sign_flips", "metric", "fault", "decode", "errors",
//      "layout": {sidebar_width, map_height, log_width}, "logits_plot": {vocab, positions,
//      rows, levels} or null, "logits_readout", "logits_position"};
//   - when DIR/screenshot.request appears (its content: the PNG path to write), reads the frame
//     back (glReadPixels) after rendering it, writes the PNG and removes the request;
//   - when DIR/redraw-check.request appears (its content: an id), draws the frame once more in
//     full into a second target, compares it with the partially redrawn back buffer, and writes
//     DIR/redraw-check.json: {"id", "w", "h", "differing_pixels", "running" (a job ran during
//     that frame), "partial", "this_frame_share",
//     "frames", "full_frames", "unchanged_frames", "mean_share"} (the counts since the last
//     check), plus DIR/redraw-check.{composed,full}.png when pixels differ; and, once the frame
//     is presented, "presented_by" ("copy_sub_buffer" or "swap", app/gui_present.h) and
//     "window_differing_pixels": the pixels where the window, as the X server holds it,
//     differs from the back buffer (null when presented by swaps, after which the back
//     buffer is undefined), plus DIR/redraw-check.{window,back}.png when some differ;
//   - when DIR/quit.request appears, closes the window (the test's clean exit);
//   - when DIR/drop.request appears (one path per line), hands the paths to the same handler
//     as GLFW's drop callback and removes the request: xdotool cannot drive a real X
//     drag-and-drop (XDND needs a drag source), so the tests drop through this hook.
// Every file is written to a temporary name and renamed, so a reader never sees half of one.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "app/gui_compositor.h"
#include "app/gui_present.h"
#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::app {

class GuiTestHooks {
 public:
  static std::optional<GuiTestHooks> from_environment();

  void write_rects(const views::RectSink& rects, int win_x, int win_y, int win_w, int win_h);
  void write_state(const views::Snapshot& snapshot, const views::UiState& ui);
  // Call after rendering, before swapping buffers.
  void maybe_screenshot(int framebuffer_w, int framebuffer_h);
  // The id of a pending DIR/redraw-check.request, once; the request is removed.
  std::optional<std::string> take_redraw_check_request();
  void write_redraw_check(const std::string& id, bool running, const FrameCompositor::Check& check,
                          const FrameCompositor::Stats& stats,
                          const Presenter::WindowCheck& window);
  bool quit_requested() const;
  std::vector<std::string> take_drop_request();  // the paths of DIR/drop.request, once

 private:
  explicit GuiTestHooks(std::filesystem::path dir) : dir_(std::move(dir)) {}
  std::filesystem::path dir_;
  std::string last_rects_, last_state_;
};

}  // namespace lockstep::app
