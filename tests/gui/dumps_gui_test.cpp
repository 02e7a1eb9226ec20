// The Dumps tab in a real window: dump directories written by `lockstep dump` (one with a
// missing file, one with a truncated file) are typed into the path fields and opened; the
// listing flags them. After the demo run, an export of every format goes through the UI and is
// read back with `lockstep diff`; the map is exported as PNG through its right-click menu and
// decodes at the map's size. A bad directory raises the error dialog and the app keeps running.

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "tests/gui/gui_driver.h"

namespace {

using namespace lockstep::guitest;

fs::path stories() {
  return fs::path(LOCKSTEP_SHARED_DIR) / "models" / "stories260K.gguf";
}

// Runs the CLI; returns its exit code and writes its output to `log`.
int lockstep_cli(const std::string& args, const fs::path& log) {
  const std::string cmd = std::string(LOCKSTEP_EXE) + " " + args + " > '" + log.string() + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class DumpsTab : public Workbench {
 protected:
  // Holds `keys` down for a while: ImGui 1.86 reads key state once per frame, so a press and
  // release that land between two frames would go unseen.
  static void press(const std::string& keys) {
    std::system(("xdotool keydown " + keys).c_str());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::system(("xdotool keyup " + keys).c_str());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }

  // Clicks a text field, selects what it holds and types `text` in its place.
  bool type_into(const std::string& field, const std::string& text) {
    if (!click(field)) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    press("ctrl+a");
    press("BackSpace");
    return std::system(("xdotool type --delay 20 '" + text + "'").c_str()) == 0;
  }

  void open_dumps_tab() {
    ASSERT_TRUE(wait_for(30, [&] { return screen_rect("tab.dumps").has_value(); }));
    for (int attempt = 0; attempt < 5 && !screen_rect("dumps.path_a"); ++attempt) {
      ASSERT_TRUE(click("tab.dumps"));
      wait_for(5, [&] { return screen_rect("dumps.path_a").has_value(); });
    }
    ASSERT_TRUE(screen_rect("dumps.path_a")) << "the Dumps tab did not open";
  }

  // Two dumps of stories260K (ref and cpu) with a file removed from A and one truncated in B.
  void write_dumps() {
    const fs::path model = stories();
    if (!fs::exists(model)) GTEST_SKIP() << model << " is absent (set -DLOCKSTEP_SHARED_DIR)";
    dump_a_ = dir_ / "dump-ref";
    dump_b_ = dir_ / "dump-cpu";
    for (const auto& [lane, out] : {std::pair{"ref", dump_a_}, std::pair{"cpu", dump_b_}})
      ASSERT_EQ(
          lockstep_cli("dump '" + model.string() + "' --lane " + lane +
                           " --threads 1 --prompt 'Once upon a time' --out '" + out.string() + "'",
                       dir_ / "dump.log"),
          0)
          << read_file(dir_ / "dump.log");
    fs::remove(dump_a_ / "layer-1" / "ffn_up.bin");
    fs::resize_file(dump_b_ / "layer-0" / "attn_out.bin", 30);
  }

  fs::path dump_a_, dump_b_;
};

TEST_F(DumpsTab, OpensTwoDumpsFlagsBadFilesExportsEverythingAndTheMapAsPng) {
  ASSERT_NO_FATAL_FAILURE(write_dumps());
  if (IsSkipped()) return;
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_NO_FATAL_FAILURE(open_dumps_tab());

  // Open both directories by typing their paths.
  ASSERT_TRUE(type_into("dumps.path_a", dump_a_.string()));
  ASSERT_TRUE(type_into("dumps.path_b", dump_b_.string()));
  bool opened = false;
  for (int attempt = 0; attempt < 3 && !opened; ++attempt) {
    ASSERT_TRUE(click("dumps.open"));
    opened = wait_for(30, [&] { return state()["dumps"].size() == 2; });
  }
  ASSERT_TRUE(opened) << "the dumps did not open; app log:\n" << app_log();
  const nlohmann::json s = state();
  const nlohmann::json& a = s["dumps"][0];
  const nlohmann::json& b = s["dumps"][1];
  EXPECT_EQ(a["dir"], dump_a_.string());
  EXPECT_EQ(a["lane"], "ref");
  EXPECT_TRUE(a["manifest"].get<bool>());
  EXPECT_EQ(a["status"]["ffn_up@1"], "missing");
  EXPECT_EQ(a["status"]["attn_out@0"], "ok");
  EXPECT_EQ(a["missing"], 1);
  EXPECT_EQ(a["malformed"], 0);
  EXPECT_EQ(b["status"]["attn_out@0"], "malformed");
  EXPECT_EQ(b["status"]["ffn_up@1"], "ok");
  EXPECT_EQ(b["malformed"], 1);
  EXPECT_EQ(b["missing"], 0);
  EXPECT_EQ(a["cells"], b["cells"]);
  EXPECT_GT(a["ok"].get<int>(), 50);  // 5 layers × 17 stages + 2
  EXPECT_EQ(s["errors"], 0) << app_log();
  EXPECT_TRUE(screen_rect("dumps.cell.a.lm_head") || screen_rect("dumps.cell.a.embedding@0"));
  screenshot("dumps-opened");

  // "Use as lanes" names the directories as lanes A and B.
  ASSERT_TRUE(click("dumps.use_as_lanes"));
  ASSERT_TRUE(wait_for(10, [&] { return state()["lane_b"] == "dump:" + dump_b_.string(); }));
  EXPECT_EQ(state()["lane_a"], "dump:" + dump_a_.string());

  // Export every format of the demo run to a fresh directory.
  const fs::path dest = dir_ / "export";
  ASSERT_TRUE(type_into("export.dest", dest.string()));
  bool exported = false;
  for (int attempt = 0; attempt < 3 && !exported; ++attempt) {
    ASSERT_TRUE(click("export.run"));
    exported = wait_for(60, [&] { return !state()["exported"].empty(); });
  }
  ASSERT_TRUE(exported) << "no export; app log:\n" << app_log();
  EXPECT_EQ(state()["exported"][0], dest.string());
  EXPECT_EQ(state()["errors"], 0) << app_log();
  for (const char* f :
       {"a/manifest.json", "b/manifest.json", "b/lm_head.bin", "a/layer-0/attn_norm.bin",
        "npy/b/lm_head.npy", "comparison.json", "comparison.md", "comparison.csv"})
    EXPECT_TRUE(fs::is_regular_file(dest / f)) << f;
  // APRT: the header says the file's own size.
  {
    const std::string bin = read_file(dest / "b" / "lm_head.bin");
    ASSERT_GE(bin.size(), 12u);
    EXPECT_EQ(bin.substr(0, 4), "APRT");
    uint32_t count = 0;
    std::memcpy(&count, bin.data() + 8, 4);
    EXPECT_EQ(bin.size(), 12 + 4 * size_t(count));
  }
  // Our own `lockstep diff` reads the export and finds the demo's planted divergence.
  EXPECT_EQ(lockstep_cli("diff '" + (dest / "a").string() + "' '" + (dest / "b").string() +
                             "' --floor none --report '" + (dir_ / "diff.json").string() + "'",
                         dir_ / "diff.log"),
            0)
      << read_file(dir_ / "diff.log");
  auto diff = read_json(dir_ / "diff.json");
  ASSERT_TRUE(diff) << read_file(dir_ / "diff.log");
  EXPECT_EQ((*diff)["first_divergence"]["cell"], "lm_head");
  auto report = read_json(dest / "comparison.json");
  ASSERT_TRUE(report);
  EXPECT_EQ((*report)["first_divergence"]["cell"], "lm_head");
  const std::string csv = read_file(dest / "comparison.csv");
  EXPECT_EQ(csv.rfind("cell,layer,stage,shape,relative_rms", 0), 0u);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), (*report)["cells"].size() + 1);

  // A second export to the same place is refused (the dialog explains), the first is intact.
  ASSERT_TRUE(click("export.run"));
  ASSERT_TRUE(wait_for(30, [&] { return state().value("errors", 0) == 1; })) << app_log();
  EXPECT_TRUE(app_alive());
  EXPECT_TRUE(fs::is_regular_file(dest / "comparison.csv"));
  press("Return");  // closes the error dialog

  // The map as PNG: right-click, a path, Export PNG...
  ASSERT_TRUE(wait_for(10, [&] { return screen_rect("png.map").has_value(); }));
  const fs::path png = dir_ / "map.png";
  bool menu = false;
  for (int attempt = 0; attempt < 3 && !menu; ++attempt) {
    ASSERT_TRUE(click("png.map", 3));
    menu = wait_for(10, [&] { return screen_rect("png.save").has_value(); });
  }
  ASSERT_TRUE(menu) << "right-click on the map opened no Export PNG menu";
  ASSERT_TRUE(type_into("png.path", png.string()));
  ASSERT_TRUE(click("png.save"));
  ASSERT_TRUE(wait_for(30, [&] { return state()["last_png"] == png.string(); }))
      << state().dump(1) << app_log();
  const auto map = window_rect("png.map");
  ASSERT_TRUE(map);
  std::optional<Image> img = load_png(png);
  ASSERT_TRUE(img) << "the PNG does not decode";
  EXPECT_NEAR(img->w, (*map)[2] - (*map)[0], 1.0);
  EXPECT_NEAR(img->h, (*map)[3] - (*map)[1], 1.0);
  // It is the map, not a blank: the heat colours vary, and magenta outlines the first divergence.
  int magenta = 0;
  for (int y = 0; y < img->h; ++y)
    for (int x = 0; x < img->w; ++x) {
      const unsigned char* p = img->at(x, y);
      if (p[0] > 230 && p[1] < 30 && p[2] > 230) ++magenta;
    }
  EXPECT_GT(magenta, 20) << "no first-divergence outline in the exported map";

  // A drill-down plot the same way: the value histogram of the selected cell (lm_head).
  const fs::path hist = dir_ / "values.png";
  menu = false;
  for (int attempt = 0; attempt < 3 && !menu; ++attempt) {
    ASSERT_TRUE(click("png.drilldown.values", 3));
    menu = wait_for(10, [&] { return screen_rect("png.save").has_value(); });
  }
  ASSERT_TRUE(menu) << "right-click on the value histogram opened no Export PNG menu";
  ASSERT_TRUE(type_into("png.path", hist.string()));
  ASSERT_TRUE(click("png.save"));
  ASSERT_TRUE(wait_for(30, [&] { return state()["last_png"] == hist.string(); }))
      << state().dump(1);
  const auto plot = window_rect("png.drilldown.values");
  ASSERT_TRUE(plot);
  std::optional<Image> himg = load_png(hist);
  ASSERT_TRUE(himg);
  EXPECT_NEAR(himg->w, (*plot)[2] - (*plot)[0], 1.0);
  EXPECT_NEAR(himg->h, (*plot)[3] - (*plot)[1], 1.0);
  EXPECT_EQ(state()["errors"], 1) << app_log();
}

TEST_F(DumpsTab, ABadDirectoryRaisesTheDialogAndTheAppKeepsRunning) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_NO_FATAL_FAILURE(open_dumps_tab());
  fs::create_directories(dir_ / "empty");
  ASSERT_TRUE(type_into("dumps.path_a", (dir_ / "empty").string()));
  ASSERT_TRUE(click("dumps.open"));
  ASSERT_TRUE(wait_for(30, [&] { return state().value("errors", 0) == 1; })) << app_log();
  press("Return");
  ASSERT_TRUE(type_into("dumps.path_a", (dir_ / "nowhere").string()));
  ASSERT_TRUE(click("dumps.open"));
  ASSERT_TRUE(wait_for(30, [&] { return state().value("errors", 0) == 2; })) << app_log();
  EXPECT_TRUE(app_alive());
  EXPECT_TRUE(state()["dumps"].empty());
}

}  // namespace
