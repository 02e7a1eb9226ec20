#include "app/gui_png_capture.h"

#include <GL/gl.h>
#include <stb_image_write.h>  // Debian's libstb (linked with ImGui) holds the implementation

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "formats/atomic_dir.h"
#include "formats/error.h"

namespace lockstep::app {

PixelRect to_framebuffer(float x0, float y0, float x1, float y1, float scale_x, float scale_y,
                         int fb_w, int fb_h) {
  const int l = std::clamp(int(std::floor(x0 * scale_x)), 0, fb_w);
  const int t = std::clamp(int(std::floor(y0 * scale_y)), 0, fb_h);
  const int r = std::clamp(int(std::ceil(x1 * scale_x)), 0, fb_w);
  const int b = std::clamp(int(std::ceil(y1 * scale_y)), 0, fb_h);
  return {l, t, std::max(r - l, 0), std::max(b - t, 0)};
}

std::vector<uint8_t> read_back_rgb(const PixelRect& r, int fb_h) {
  std::vector<uint8_t> bottom_first(size_t(r.w) * size_t(r.h) * 3);  // GL's row order
  if (bottom_first.empty()) return bottom_first;
  glPixelStorei(GL_PACK_ALIGNMENT, 1);
  glReadBuffer(GL_BACK);
  glReadPixels(r.x, fb_h - r.y - r.h, r.w, r.h, GL_RGB, GL_UNSIGNED_BYTE, bottom_first.data());
  std::vector<uint8_t> top_first(bottom_first.size());
  const size_t row = size_t(r.w) * 3;
  for (int y = 0; y < r.h; ++y)
    std::copy_n(bottom_first.data() + size_t(r.h - 1 - y) * row, row,
                top_first.data() + size_t(y) * row);
  return top_first;
}

std::filesystem::path expand_home(const std::string& path) {
  if (path.rfind("~/", 0) == 0)
    if (const char* home = std::getenv("HOME"); home && *home)
      return std::filesystem::path(home) / path.substr(2);
  return path;
}

void write_png(const std::filesystem::path& path, int w, int h, const std::vector<uint8_t>& rgb) {
  if (w <= 0 || h <= 0 || rgb.size() != size_t(w) * size_t(h) * 3)
    throw Error("PNG export: nothing was captured (the widget was not on screen)");
  std::error_code ec;
  if (std::filesystem::exists(path, ec))
    throw Error("PNG export: " + path.string() + " already exists; choose another name");
  const std::filesystem::path parent = path.parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec))
    throw Error("PNG export: " + parent.string() + " is not a directory");
  std::vector<std::byte> png;
  auto append = [](void* context, void* data, int size) {
    auto* out = static_cast<std::vector<std::byte>*>(context);
    const auto* bytes = static_cast<const std::byte*>(data);
    out->insert(out->end(), bytes, bytes + size);
  };
  if (!stbi_write_png_to_func(append, &png, w, h, 3, rgb.data(), w * 3))
    throw Error("PNG export: encoding " + path.string() + " failed");
  formats::write_file_atomic(path, png);
}

}  // namespace lockstep::app
