#include "app/gui_present.h"

#define GL_GLEXT_PROTOTYPES 1
#include <GL/gl.h>
#include <GL/glx.h>
#include <GLFW/glfw3.h>
#include <X11/Xutil.h>

#include <cstdlib>
#include <cstring>
#include <string_view>

#include "app/gui_damage.h"
#include "app/gui_png_capture.h"

// GLFW's own accessor for the X window (glfw3native.h would also pull in the XRandR headers,
// which libglfw3-dev does not bring).
extern "C" Window glfwGetX11Window(GLFWwindow* window);

namespace lockstep::app {
namespace {

bool has_extension(const char* list, std::string_view name) {
  for (std::string_view rest = list ? list : ""; !rest.empty();) {
    const size_t end = rest.find(' ');
    if (rest.substr(0, end) == name) return true;
    if (end == std::string_view::npos) break;
    rest.remove_prefix(end + 1);
  }
  return false;
}

// A channel of an X pixel scaled to 8 bits, from the visual's mask.
uint8_t channel(unsigned long pixel, unsigned long mask) {
  if (!mask) return 0;
  int shift = 0;
  while (!((mask >> shift) & 1)) ++shift;
  const unsigned long max = mask >> shift;
  return uint8_t(((pixel & mask) >> shift) * 255 / max);
}

}  // namespace

Presenter::Presenter(GLFWwindow* window, bool sub_buffers) : window_(window) {
  const char* env = std::getenv("LOCKSTEP_COPY_SUB_BUFFER");
  if (!sub_buffers || (env && std::string_view(env) == "0")) return;
  Display* display = glXGetCurrentDisplay();
  const GLXDrawable drawable = glXGetCurrentDrawable();
  if (!display || !drawable) return;  // not a GLX context
  if (!has_extension(glXQueryExtensionsString(display, DefaultScreen(display)),
                     "GLX_MESA_copy_sub_buffer"))
    return;
  void (*copy)() = glXGetProcAddressARB(reinterpret_cast<const GLubyte*>("glXCopySubBufferMESA"));
  if (!copy) return;
  GLint doublebuffer = 0;
  glGetIntegerv(GL_DOUBLEBUFFER, &doublebuffer);
  if (!doublebuffer) return;
  display_ = display;
  drawable_ = drawable;
  copy_ = copy;
}

void Presenter::present(const Damage& damage, int fb_w, int fb_h) {
  if (!copy_) {
    glfwSwapBuffers(window_);
    return;
  }
  Display* display = static_cast<Display*>(display_);
  auto copy = [&](int x, int y, int w, int h) {
    reinterpret_cast<PFNGLXCOPYSUBBUFFERMESAPROC>(copy_)(display, drawable_, x, y, w, h);
  };
  // The copies flush what was drawn before them (the extension's implicit glFlush).
  if (exposed_ || damage.full) {
    copy(0, 0, fb_w, fb_h);
    exposed_ = false;
    return;
  }
  for (const DamageRect& r : damage.rects)
    if (!r.empty()) copy(r.x0, fb_h - r.y1, r.x1 - r.x0, r.y1 - r.y0);
  if (damage.rects.empty()) glFlush();  // nothing new to show; what was submitted still runs
}

Presenter::WindowCheck Presenter::check_window(int fb_w, int fb_h) const {
  WindowCheck c;
  c.copies_sub_buffers = copies_sub_buffers();
  Display* display = glXGetCurrentDisplay();
  const Window x_window = glfwGetX11Window(window_);
  int win_w = 0, win_h = 0;
  glfwGetWindowSize(window_, &win_w, &win_h);
  if (!display || !x_window || win_w != fb_w || win_h != fb_h || fb_w <= 0 || fb_h <= 0) return c;
  glFinish();
  XSync(display, False);  // the copies reach the server before the window is read
  XImage* image =
      XGetImage(display, x_window, 0, 0, unsigned(fb_w), unsigned(fb_h), AllPlanes, ZPixmap);
  if (!image) return c;
  c.w = fb_w;
  c.h = fb_h;
  c.window.resize(size_t(fb_w) * size_t(fb_h) * 3);
  for (int y = 0; y < fb_h; ++y)
    for (int x = 0; x < fb_w; ++x) {
      const unsigned long p = XGetPixel(image, x, y);
      uint8_t* out = c.window.data() + (size_t(y) * size_t(fb_w) + size_t(x)) * 3;
      out[0] = channel(p, image->red_mask);
      out[1] = channel(p, image->green_mask);
      out[2] = channel(p, image->blue_mask);
    }
  XDestroyImage(image);
  glBindFramebuffer(GL_READ_FRAMEBUFFER, 0);
  c.back = read_back_rgb({0, 0, fb_w, fb_h}, fb_h);
  c.differing = 0;
  for (size_t p = 0; p < c.back.size(); p += 3)
    if (std::memcmp(&c.back[p], &c.window[p], 3) != 0) ++c.differing;
  if (c.differing == 0) {
    c.window.clear();
    c.back.clear();
  }
  return c;
}

}  // namespace lockstep::app
