// The Model & lanes panel and the run bar in a real window (Xvfb + xdotool, see gui_driver.h):
// typing a model's path and opening it, a bad path that leaves the previous model, dropping a
// model and a dump directory (a real XDND drag-and-drop from tests/gui/xdnd_drop.cpp), the
// recent list across a restart, the file browser (Ctrl+O, double-click),
// and `lockstep MODEL` on the command line.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "tests/gui/gui_driver.h"

namespace {

using namespace lockstep::guitest;
using nlohmann::json;

fs::path shared_model() {
  return fs::absolute(fs::path(LOCKSTEP_SHARED_DIR) / "models" / "stories260K.gguf");
}

class ModelPanel : public Workbench {
 protected:
  void SetUp() override {
    if (!fs::exists(shared_model())) GTEST_SKIP() << shared_model() << " is not there";
    Workbench::SetUp();
  }

  // Clicks a text field, clears it and types `text` until the state dump's `key` shows it.
  bool type_into(const std::string& widget, const std::string& text, const std::string& key) {
    for (int attempt = 0; attempt < 4; ++attempt) {
      if (!click(widget)) return false;
      // Keys sent in the frame that activates the field would miss it.
      std::this_thread::sleep_for(std::chrono::milliseconds(400));
      std::system("xdotool key ctrl+a BackSpace");
      std::system(("xdotool type --delay 15 '" + text + "'").c_str());
      if (wait_for(10, [&] { return state().value(key, std::string()) == text; })) return true;
    }
    return false;
  }

  std::string model_field(const std::string& field) {
    const json s = state();
    if (!s.contains("model") || !s["model"].is_object()) return {};
    return s["model"].value(field, json()).dump();
  }
  std::string loaded_path() {
    const json s = state();
    return s.contains("model") && s["model"].is_object() ? s["model"].value("path", "") : "";
  }

  // `lockstep MODEL`: waits until the run it starts on the model has finished.
  void wait_for_first_run() {
    ASSERT_TRUE(wait_for(180, [&] {
      const json s = state();
      return !app_alive() || (s.value("map_ready", false) && !s.value("running", true));
    })) << app_log();
    ASSERT_TRUE(app_alive()) << app_log();
  }

  bool idle() {
    const json s = state();
    return !s.value("running", true);
  }

  // Drops `paths` onto the window: a real XDND drag-and-drop (tests/gui/xdnd_drop.cpp) where
  // it was built, else through the app's drop hook, which calls the same handler.
  void drop(const std::vector<std::string>& paths) {
#ifdef LOCKSTEP_XDND_DROP
    std::string window;
    if (FILE* p = popen("xdotool search --name '^Lockstep workbench' 2>/dev/null", "r")) {
      char line[64];
      if (fgets(line, sizeof line, p)) window = line;
      pclose(p);
    }
    while (!window.empty() && (window.back() == '\n' || window.back() == ' ')) window.pop_back();
    ASSERT_FALSE(window.empty()) << "no window named Lockstep workbench";
    const auto rects = read_json(dir_ / "rects.json");
    ASSERT_TRUE(rects && rects->contains("window"));
    const json& w = (*rects)["window"];
    const int x = w["x"].get<int>() + w["w"].get<int>() / 2;
    const int y = w["y"].get<int>() + w["h"].get<int>() / 2;
    std::string command = std::string(LOCKSTEP_XDND_DROP) + " " + window + " " + std::to_string(x) +
                          " " + std::to_string(y);
    for (const std::string& path : paths) command += " '" + path + "'";
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
#else
    {
      std::ofstream out(dir_ / "drop.request.tmp");
      for (const std::string& p : paths) out << p << "\n";
    }
    fs::rename(dir_ / "drop.request.tmp", dir_ / "drop.request");
#endif
  }

  // Closes the app the way the test's teardown does, and starts it again on the same
  // settings folder (XDG_CONFIG_HOME).
  void restart() {
    std::ofstream(dir_ / "quit.request") << "\n";
    int status = 0;
    ASSERT_TRUE(wait_for(30, [&] { return exited(app_, &status); })) << "did not quit";
    fs::remove(dir_ / "quit.request");
    fs::remove(dir_ / "state.json");
    fs::remove(dir_ / "rects.json");
    app_ = spawn({LOCKSTEP_EXE},
                 {"DISPLAY=" + x_->display(), "LOCKSTEP_GUI_TEST_DIR=" + dir_.string(),
                  "XDG_CONFIG_HOME=" + (dir_ / "config").string()},
                 dir_ / "app-restarted.log");
    ASSERT_GT(app_, 0);
  }

  // Clicks Run until a run starts (a click that only closes a popup starts nothing), then
  // waits for `done`.
  bool run_until(const std::function<bool()>& done) {
    for (int attempt = 0; attempt < 4; ++attempt) {
      if (!click("run.run")) return false;
      if (wait_for(10, [&] { return state().value("running", false) || done(); }))
        return wait_for(120, done);
    }
    return false;
  }

  void open_by_typing() {
    ASSERT_TRUE(type_into("model.path", shared_model().string(), "model_path_field"))
        << "typing the model's path did not take";
    bool opened = false;
    for (int attempt = 0; attempt < 3 && !opened; ++attempt) {
      ASSERT_TRUE(click("model.open"));
      opened = wait_for(30, [&] { return loaded_path() == shared_model().string() && idle(); });
    }
    ASSERT_TRUE(opened) << "Open did not load the model; app log:\n" << app_log();
  }
};

TEST_F(ModelPanel, TypedPathOpensTheModelAndRunsRefAgainstCpu) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_NO_FATAL_FAILURE(open_by_typing());
  const json s = state();
  EXPECT_EQ(s["model"]["kind"], "gguf");
  EXPECT_EQ(s["model"]["family"], "llama");
  EXPECT_EQ(s["model"]["layers"], 5);
  EXPECT_EQ(s["model"]["tensors"], 48);
  EXPECT_TRUE(s["model"].value("tokenizer", false));
  EXPECT_FALSE(s.value("map_ready", true)) << "the demo's map belongs to the previous model";
  ASSERT_TRUE(wait_for(10, [&] { return screen_rect("model.tensors").has_value(); }))
      << "no tensor table";

  // No fault this time: pick "none" in the combo.
  bool none = false;
  for (int attempt = 0; attempt < 3 && !none; ++attempt) {
    ASSERT_TRUE(click("run.fault"));
    if (!wait_for(10, [&] { return screen_rect("run.fault.item.none").has_value(); })) continue;
    ASSERT_TRUE(click("run.fault.item.none"));
    none = wait_for(10, [&] { return state().value("fault", "?").empty(); });
  }
  ASSERT_TRUE(none) << "could not pick no fault";
  ASSERT_TRUE(type_into("run.prompt", "Once upon a time", "prompt"));

  ASSERT_TRUE(run_until([&] {
    const json r = state();
    return r.value("map_ready", false) && !r.value("running", true);
  })) << "the run did not finish; app log:\n"
      << app_log();
  const json r = state();
  EXPECT_TRUE(r["first_divergence"].is_null()) << r.dump(1);
  EXPECT_NE(r.value("title", "").find("stories260K.gguf"), std::string::npos) << r["title"];
  EXPECT_NE(r.value("title", "").find("lane ref vs lane cpu (no fault)"), std::string::npos)
      << r["title"];
  EXPECT_EQ(r["errors"], 0) << app_log();
  EXPECT_TRUE(screenshot("model-panel-stories260K"));

  // Token ids instead of a prompt: four ids, commas and spaces mixed.
  bool ids = false;
  for (int attempt = 0; attempt < 3 && !ids; ++attempt) {
    ASSERT_TRUE(click("run.input.tokens"));
    ids = wait_for(10, [&] { return state().value("use_token_ids", false); });
  }
  ASSERT_TRUE(ids) << "the token ids radio button did not take";
  ASSERT_TRUE(type_into("run.token_ids", "1, 5 9,12", "token_ids"));
  auto four_tokens = [&] {
    const json t = state();
    return t.value("title", "").find(", 4 tokens,") != std::string::npos &&
           !t.value("running", true);
  };
  bool ran_ids = false;
  for (int attempt = 0; attempt < 3 && !ran_ids; ++attempt) {
    ASSERT_TRUE(click("run.run"));
    ran_ids = wait_for(60, four_tokens);
  }
  ASSERT_TRUE(ran_ids) << state()["title"] << app_log();
  EXPECT_EQ(state()["errors"], 0) << app_log();
}

// The stage and layer choice decides what each lane's trace keeps (for the drill-down and the
// exports) and what the map shows: attn_norm in layers 1-2 is two cells a lane.
TEST_F(ModelPanel, StageAndLayerChoiceLimitsWhatIsCaptured) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  const size_t all_cells = state().value("kept_cells", size_t{0});
  EXPECT_GT(all_cells, 20u) << "the demo keeps every cell";
  ASSERT_NO_FATAL_FAILURE(open_by_typing());
  ASSERT_TRUE(type_into("run.layers", "1-2", "layers_field"));
  bool picked = false;
  for (int attempt = 0; attempt < 3 && !picked; ++attempt) {
    ASSERT_TRUE(click("run.stages"));
    if (!wait_for(10, [&] { return screen_rect("run.stages.item.attn_norm").has_value(); }))
      continue;
    ASSERT_TRUE(click("run.stages.item.attn_norm"));
    picked = wait_for(10, [&] {
      return state().value("stages_chosen", json::array()) == json::array({"attn_norm"});
    });
  }
  ASSERT_TRUE(picked) << "could not tick attn_norm";
  std::system("xdotool keydown Escape sleep 0.2 keyup Escape");  // closes the combo
  ASSERT_TRUE(run_until([&] {
    const json r = state();
    return r.value("title", "").find("stories260K") != std::string::npos &&
           r.value("map_ready", false) && !r.value("running", true);
  })) << "the run did not finish; app log:\n"
      << app_log();
  EXPECT_EQ(state()["kept_cells"], 2) << state().dump(1);
  EXPECT_EQ(state()["errors"], 0) << app_log();
  // Only the kept cells are on the map (the others show "—"): attn_norm@1 and @2.
  EXPECT_TRUE(wait_for(10, [&] { return screen_rect("map.cell.attn_norm@1").has_value(); }));
  EXPECT_FALSE(screen_rect("map.cell.attn_norm@0").has_value());
  EXPECT_FALSE(screen_rect("map.cell.ffn_up@1").has_value());
}

TEST_F(ModelPanel, BadPathsRaiseTheDialogAndKeepThePreviousModel) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  ASSERT_NO_FATAL_FAILURE(open_by_typing());
  // A truncated copy of the model, then a path that does not exist.
  const fs::path truncated = dir_ / "truncated.gguf";
  {
    std::ifstream in(shared_model(), std::ios::binary);
    std::string bytes(4096, '\0');
    in.read(bytes.data(), std::streamsize(bytes.size()));
    std::ofstream(truncated, std::ios::binary).write(bytes.data(), in.gcount());
  }
  int errors = 0;
  for (const std::string& bad : {truncated.string(), (dir_ / "no-such-model.gguf").string()}) {
    ASSERT_TRUE(type_into("model.path", bad, "model_path_field"));
    bool failed = false;
    for (int attempt = 0; attempt < 3 && !failed; ++attempt) {
      ASSERT_TRUE(click("model.open"));
      failed = wait_for(20, [&] { return state().value("errors", 0) > errors; });
    }
    ASSERT_TRUE(failed) << "opening " << bad << " raised no error";
    ++errors;
    EXPECT_TRUE(app_alive());
    const json s = state();
    EXPECT_EQ(s["error_title"], "Opening the model failed");
    EXPECT_EQ(loaded_path(), shared_model().string()) << "the previous model stays";
    ASSERT_TRUE(screenshot("model-panel-bad-path-" + std::to_string(errors)));
    std::system("xdotool keydown Return sleep 0.2 keyup Return");  // closes the dialog
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  // The log names the missing file.
  EXPECT_TRUE(app_alive());
}

TEST_F(ModelPanel, DroppedModelAndDumpAndRecentListAcrossARestart) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  // A copy that will be gone after the restart, then the shared model: most recent first.
  const fs::path copy = dir_ / "copy of 100%.gguf";  // a drop percent-encodes both
  fs::copy_file(shared_model(), copy);
  drop({copy.string()});
  ASSERT_TRUE(wait_for(30, [&] { return loaded_path() == copy.string() && idle(); })) << app_log();
  drop({shared_model().string()});
  ASSERT_TRUE(wait_for(30, [&] { return loaded_path() == shared_model().string() && idle(); }))
      << app_log();
  // A dropped dump directory becomes lane B.
  const fs::path dump = dir_ / "fake-dump";
  fs::create_directories(dump);
  std::ofstream(dump / "manifest.json") << "{}";
  drop({dump.string()});
  ASSERT_TRUE(wait_for(20, [&] { return state().value("lane_b", "") == "dump:" + dump.string(); }))
      << state().dump(1);
  EXPECT_EQ(state()["lane_a"], "ref");
  // Two dropped together: lanes A and B, in the order dropped.
  const fs::path dump2 = dir_ / "aprender-dump" / "layer-0";
  fs::create_directories(dump2);
  std::ofstream(dump2 / "attn_norm.npy") << "";
  drop({dump2.parent_path().string(), dump.string()});
  ASSERT_TRUE(wait_for(20, [&] {
    return state().value("lane_a", "") == "dump:" + dump2.parent_path().string();
  })) << state().dump(1);
  EXPECT_EQ(state()["lane_b"], "dump:" + dump.string());
  EXPECT_EQ(state()["errors"], 0) << app_log();

  const fs::path settings = dir_ / "config" / "lockstep" / "settings.json";
  ASSERT_TRUE(wait_for(10, [&] {
    auto j = read_json(settings);
    return j && (*j)["recent_models"].size() == 2;
  }));
  const json saved = *read_json(settings);
  EXPECT_EQ(saved["recent_models"][0], shared_model().string());
  EXPECT_EQ(saved["recent_models"][1], copy.string());

  fs::remove(copy);
  ASSERT_NO_FATAL_FAILURE(restart());
  ASSERT_TRUE(wait_for(60, [&] { return state()["recent"].size() == 2; })) << state().dump(1);
  const json r = state()["recent"];
  EXPECT_EQ(r[0]["path"], shared_model().string());
  EXPECT_TRUE(r[0]["exists"].get<bool>());
  EXPECT_EQ(r[1]["path"], copy.string());
  EXPECT_FALSE(r[1]["exists"].get<bool>()) << "a vanished file is marked";
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
}

TEST_F(ModelPanel, CtrlOOpensTheBrowserAndDoubleClickOpensAModel) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  bool open = false;
  for (int attempt = 0; attempt < 4 && !open; ++attempt) {
    ASSERT_TRUE(click("panel.log"));  // focus, with no text field active
    // Held for a while: ImGui 1.86 polls keys once a frame and misses a press released
    // within the same frame.
    std::system("xdotool keydown ctrl+o sleep 0.2 keyup ctrl+o");
    open = wait_for(10, [&] { return state().value("browser_open", false); });
  }
  ASSERT_TRUE(open) << "Ctrl+O did not open the file browser";
  const std::string models = fs::canonical(shared_model().parent_path()).string();
  bool listed = false;
  for (int attempt = 0; attempt < 3 && !listed; ++attempt) {
    ASSERT_TRUE(click("browser.path"));
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    std::system("xdotool key ctrl+a BackSpace");
    std::system(("xdotool type --delay 15 '" + models + "'").c_str());
    std::system("xdotool keydown Return sleep 0.2 keyup Return");
    listed = wait_for(10, [&] { return state().value("listing_dir", json()) == models; });
  }
  ASSERT_TRUE(listed) << state().dump(1);
  const json entries = state()["listing_entries"];
  EXPECT_NE(std::find(entries.begin(), entries.end(), "stories260K.gguf"), entries.end());
  ASSERT_TRUE(screenshot("file-browser"));

  const std::string entry = "browser.entry.stories260K.gguf";
  bool loaded = false;
  for (int attempt = 0; attempt < 3 && !loaded; ++attempt) {
    ASSERT_TRUE(wait_for(10, [&] { return screen_rect(entry).has_value(); }));
    auto r = screen_rect(entry);
    const int x = int(((*r)[0] + (*r)[2]) / 2), y = int(((*r)[1] + (*r)[3]) / 2);
    std::system(("xdotool mousemove " + std::to_string(x) + " " + std::to_string(y)).c_str());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::system("xdotool click --repeat 2 --delay 80 1");
    loaded = wait_for(30, [&] {
      return loaded_path() == (fs::path(models) / "stories260K.gguf").string() && idle();
    });
  }
  ASSERT_TRUE(loaded) << "double-clicking the model did not open it; " << state().dump(1);
  EXPECT_FALSE(state().value("browser_open", true)) << "the browser closes on opening";
  EXPECT_EQ(state()["errors"], 0) << app_log();
}

TEST_F(ModelPanel, ADroppedDumpIsLaneBAgainstALiveLaneOnItsTokens) {
  ASSERT_NO_FATAL_FAILURE(wait_for_demo());
  // A dump of the cpu lane with the demo's bug planted, written by `lockstep dump`.
  const fs::path dump = dir_ / "dump-cpu-gemv";
  const std::string cmd = std::string(LOCKSTEP_EXE) + " dump '" + shared_model().string() +
                          "' --prompt 'Once upon a time' --lane cpu --fault gemv_transposed@lm_head"
                          " -o '" +
                          dump.string() + "' >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  drop({shared_model().string()});
  ASSERT_TRUE(wait_for(30, [&] { return loaded_path() == shared_model().string() && idle(); }));
  drop({dump.string()});
  ASSERT_TRUE(wait_for(20, [&] { return state().value("lane_b", "") == "dump:" + dump.string(); }));

  ASSERT_TRUE(run_until([&] {
    const json r = state();
    return r.value("map_ready", false) && !r.value("running", true);
  })) << "the run did not finish; app log:\n"
      << app_log();
  const json r = state();
  EXPECT_EQ(r["first_divergence"], "lm_head") << r.dump(1);
  EXPECT_NE(r.value("title", "").find("lane ref vs lane dump:" + dump.string()), std::string::npos)
      << r["title"];
  EXPECT_EQ(r["errors"], 0) << app_log();
  EXPECT_TRUE(screenshot("model-panel-dump-lane"));
}

class ModelArgument : public ModelPanel {
 protected:
  ModelArgument() { args_ = {shared_model().string()}; }
};

TEST_F(ModelArgument, LockstepModelOpensAndRunsIt) {
  ASSERT_NO_FATAL_FAILURE(wait_for_first_run());
  const json s = state();
  EXPECT_EQ(loaded_path(), shared_model().string());
  EXPECT_NE(s.value("title", "").find("stories260K.gguf"), std::string::npos) << s["title"];
  EXPECT_NE(s.value("title", "").find("lane ref vs lane cpu (no fault), prefill"),
            std::string::npos)
      << s["title"];
  EXPECT_TRUE(s["first_divergence"].is_null()) << s.dump(1);
  EXPECT_EQ(s["errors"], 0) << app_log();
}

// A model lane ref cannot hold (here: the memory the app sees is made smaller than its f32
// weights) opens on lanes cpu and cpu without a noise floor, says why in the panel and the log,
// and runs: no failed run, no error dialog.
class ModelTooBigForRef : public ModelPanel {
 protected:
  ModelTooBigForRef() {
    args_ = {shared_model().string()};
    env_ = {"LOCKSTEP_MEMORY_AVAILABLE=100000"};  // stories260K: ~1 MB of f32 weights
  }
};

TEST_F(ModelTooBigForRef, OpensOnLanesThatHoldItAndSaysWhy) {
  ASSERT_NO_FATAL_FAILURE(wait_for_first_run());
  const json s = state();
  EXPECT_EQ(s["lane_a"], "cpu");
  EXPECT_EQ(s["lane_b"], "cpu");
  EXPECT_EQ(s["floor_cpu_ref"], false);
  EXPECT_NE(s.value("title", "").find("lane cpu vs lane cpu (no fault)"), std::string::npos)
      << s["title"];
  EXPECT_EQ(s["errors"], 0) << app_log();
  EXPECT_TRUE(screen_rect("model.ref_problem").has_value()) << "no warning in the panel";
  bool logged = false;
  for (const json& e : s.value("log", json::array()))
    logged = logged || e.dump().find("memory available") != std::string::npos;
  EXPECT_TRUE(logged) << s.value("log", json::array()).dump(1);
}

}  // namespace
