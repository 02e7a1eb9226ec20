#pragma once
// Drives the real workbench binary in a real window for the GUI tests: its own Xvfb (unless
// $DISPLAY is set), real input events (xdotool), and the app's test hooks
// (app/gui_test_hooks.h: widget rectangles, a state dump, screenshots). Every wait polls with a
// generous timeout: CI runs these tests on 2 slow cores with Mesa llvmpipe.
//
// A test fixture derives from Workbench; it may set args_ (command-line arguments after
// `lockstep`) and env_ (extra NAME=VALUE) in its constructor before SetUp launches the app.

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stb_image.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace lockstep::guitest {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

inline bool on_path(const std::string& tool) {
  return std::system(("command -v " + tool + " >/dev/null 2>&1").c_str()) == 0;
}

// Runs `xdotool ARGS` (real input events on the display); a failure fails the test.
inline void xdo(const std::string& args) {
  ASSERT_EQ(std::system(("xdotool " + args).c_str()), 0) << "xdotool " << args;
}

// Polls `ready` every 100 ms until it holds or `seconds` pass.
inline bool wait_for(double seconds, const std::function<bool()>& ready) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return ready();
}

inline std::optional<nlohmann::json> read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

inline pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                   const fs::path& log = "/dev/null") {
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
    FILE* f = std::fopen(log.c_str(), "w");
    if (f) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

inline bool exited(pid_t pid, int* status = nullptr) {
  int s = 0;
  const pid_t r = waitpid(pid, &s, WNOHANG);
  if (r == pid && status) *status = s;
  return r == pid || (r < 0 && errno == ECHILD);  // ECHILD: reaped by an earlier call
}

// Our own X server on a free display number, unless one is already there ($DISPLAY). Xvfb
// picks the number itself (-displayfd), so tests running in parallel never race for one.
class XServer {
 public:
  XServer() {
    if (const char* d = std::getenv("DISPLAY"); d && *d) {
      display_ = d;
      return;
    }
    int fds[2];
    if (pipe(fds) != 0) return;
    const pid_t pid = spawn({"Xvfb", "-displayfd", std::to_string(fds[1]), "-screen", "0",
                             "1600x1000x24", "-nolisten", "tcp"});
    close(fds[1]);
    std::string number;
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    while (Clock::now() < deadline && number.find('\n') == std::string::npos) {
      pollfd p{fds[0], POLLIN, 0};
      if (poll(&p, 1, 200) <= 0) continue;
      char buf[32];
      const ssize_t n = read(fds[0], buf, sizeof buf);
      if (n <= 0) break;  // Xvfb exited without a display
      number.append(buf, size_t(n));
    }
    close(fds[0]);
    if (number.find('\n') != std::string::npos) {
      pid_ = pid;
      display_ = ":" + number.substr(0, number.find('\n'));
    } else {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  ~XServer() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      if (!wait_for(10, [&] { return exited(pid_); })) {
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
      }
    }
  }
  XServer(const XServer&) = delete;
  XServer& operator=(const XServer&) = delete;
  const std::string& display() const { return display_; }
  bool started_here() const { return pid_ > 0; }  // our Xvfb, not the $DISPLAY found

 private:
  std::string display_;
  pid_t pid_ = -1;
};

struct Image {
  int w = 0, h = 0;
  std::vector<unsigned char> rgb;  // [h, w, 3]
  const unsigned char* at(int x, int y) const {
    return &rgb[(size_t(y) * size_t(w) + size_t(x)) * 3];
  }
};

inline std::optional<Image> load_png(const fs::path& p) {
  int w = 0, h = 0, n = 0;
  unsigned char* data = stbi_load(p.c_str(), &w, &h, &n, 3);
  if (!data) return std::nullopt;
  Image img{w, h, std::vector<unsigned char>(data, data + size_t(w) * size_t(h) * 3)};
  stbi_image_free(data);
  return img;
}

class Workbench : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!on_path("xdotool")) GTEST_SKIP() << "xdotool is not installed (scripts/setup.sh deps)";
    if (!std::getenv("DISPLAY") && !on_path("Xvfb"))
      GTEST_SKIP() << "no $DISPLAY and Xvfb is not installed (scripts/setup.sh deps)";
    if (const char* d = std::getenv("DISPLAY")) original_display_ = d;
    x_ = std::make_unique<XServer>();
    ASSERT_FALSE(x_->display().empty()) << "could not start Xvfb on a free display";
    setenv("DISPLAY", x_->display().c_str(), 1);
    dir_ = fs::path(LOCKSTEP_BINARY_DIR) / "gui-test" / std::to_string(getpid());
    shots_ = fs::path(LOCKSTEP_BINARY_DIR) / "gui-screenshots";
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::create_directories(shots_);
    std::vector<std::string> argv = {LOCKSTEP_EXE};
    argv.insert(argv.end(), args_.begin(), args_.end());
    std::vector<std::string> env = {"DISPLAY=" + x_->display(),
                                    "LOCKSTEP_GUI_TEST_DIR=" + dir_.string(),
                                    "XDG_CONFIG_HOME=" + (dir_ / "config").string()};
    env.insert(env.end(), env_.begin(), env_.end());
    app_ = spawn(argv, env, dir_ / "app.log");
    ASSERT_GT(app_, 0);
  }

  void TearDown() override {
    if (app_ > 0) {
      std::ofstream(dir_ / "quit.request") << "\n";
      int status = 0;
      if (!wait_for(30, [&] { return exited(app_, &status); })) {
        kill(-app_, SIGKILL);
        waitpid(app_, nullptr, 0);
        ADD_FAILURE() << "the workbench did not close on request";
      } else {
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "exit status " << status;
      }
    }
    x_.reset();
    if (original_display_)
      setenv("DISPLAY", original_display_->c_str(), 1);
    else
      unsetenv("DISPLAY");
    if (!HasFailure()) fs::remove_all(dir_);  // on failure app.log and the dumps stay
  }

  std::string app_log() {
    std::ifstream in(dir_ / "app.log");
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  nlohmann::json state() {
    auto j = read_json(dir_ / "state.json");
    return j && j->is_object() ? *j : nlohmann::json::object();
  }

  bool app_alive() { return !exited(app_); }

  // The named widget's rectangle on the screen [x0, y0, x1, y1].
  std::optional<std::array<double, 4>> screen_rect(const std::string& name) {
    auto j = read_json(dir_ / "rects.json");
    if (!j || !j->contains("rects") || !(*j)["rects"].contains(name)) return std::nullopt;
    const auto& r = (*j)["rects"][name];
    const double wx = (*j)["window"]["x"], wy = (*j)["window"]["y"];
    return std::array<double, 4>{wx + double(r[0]), wy + double(r[1]), wx + double(r[2]),
                                 wy + double(r[3])};
  }
  std::optional<std::array<double, 4>> window_rect(const std::string& name) {
    auto j = read_json(dir_ / "rects.json");
    if (!j || !(*j)["rects"].contains(name)) return std::nullopt;
    const auto& r = (*j)["rects"][name];
    return std::array<double, 4>{r[0], r[1], r[2], r[3]};
  }

  // Moves the pointer off the window, then onto the widget's centre, and clicks `button`
  // (1 left, 3 right).
  bool click(const std::string& widget, int button = 1) {
    auto r = screen_rect(widget);
    if (!r) return false;
    const int x = int(((*r)[0] + (*r)[2]) / 2), y = int(((*r)[1] + (*r)[3]) / 2);
    std::system("xdotool mousemove 1595 995");
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    std::system(("xdotool mousemove " + std::to_string(x) + " " + std::to_string(y)).c_str());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    return std::system(("xdotool click " + std::to_string(button)).c_str()) == 0;
  }

  // Clicks a map cell until the state dump shows it selected (a click can land while a frame
  // is being built; retrying is safe).
  bool click_cell(const std::string& cell) {
    for (int attempt = 0; attempt < 6; ++attempt) {
      if (!click("map.cell." + cell)) return false;
      if (wait_for(10, [&] { return state().value("selected", nlohmann::json()) == cell; }))
        return true;
    }
    return false;
  }

  void wait_for_demo() {
    ASSERT_TRUE(wait_for(180,
                         [&] {
                           return !app_alive() || (state().value("map_ready", false) &&
                                                   !state().value("running", true));
                         }))
        << "the demo did not finish; app log:\n"
        << app_log();
    ASSERT_TRUE(app_alive()) << app_log();
    EXPECT_EQ(state()["first_divergence"], "lm_head");
    EXPECT_EQ(state()["errors"], 0) << app_log();
  }

  std::optional<Image> screenshot(const std::string& name) {
    const fs::path png = shots_ / (name + ".png");
    fs::remove(png);
    {
      std::ofstream out(dir_ / "screenshot.request.tmp");
      out << png.string() << "\n";
    }
    fs::rename(dir_ / "screenshot.request.tmp", dir_ / "screenshot.request");
    if (!wait_for(30, [&] { return fs::exists(png); })) return std::nullopt;
    return load_png(png);
  }

  std::vector<std::string> args_;  // after `lockstep`; none: the embedded demo
  std::vector<std::string> env_;   // extra NAME=VALUE for the app
  std::optional<std::string> original_display_;
  std::unique_ptr<XServer> x_;
  fs::path dir_, shots_;
  pid_t app_ = -1;
};

}  // namespace lockstep::guitest
