#pragma once
// PNG export of a widget: the GUI thread reads the rendered pixels of a rectangle back
// (glReadPixels, cheap) and posts them; the worker encodes (stb_image_write) and writes them
// atomically. Nothing here runs a draw call.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace lockstep::app {

struct PixelRect {
  int x = 0, y = 0, w = 0, h = 0;  // framebuffer pixels, top-left origin
};

// The framebuffer rectangle of a window-pixel rectangle, clipped to the framebuffer; w or h 0
// when nothing is left.
PixelRect to_framebuffer(float x0, float y0, float x1, float y1, float scale_x, float scale_y,
                         int fb_w, int fb_h);

// GUI thread, after rendering and before swapping: the back buffer's pixels of `r`, RGB, rows
// top first ([h, w, 3]).
std::vector<uint8_t> read_back_rgb(const PixelRect& r, int fb_h);

// "~/x" → $HOME/x; anything else unchanged.
std::filesystem::path expand_home(const std::string& path);

// Worker: encodes [h, w, 3] RGB (rows top first) as PNG and writes it through a temporary
// sibling. Throws lockstep::Error when `path` exists, its directory is missing, or a write
// fails.
void write_png(const std::filesystem::path& path, int w, int h, const std::vector<uint8_t>& rgb);

}  // namespace lockstep::app
