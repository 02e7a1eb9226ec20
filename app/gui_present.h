#pragma once
// Presenting a composed frame (app/gui_compositor.h) on the window. Where the GLX context offers
// GLX_MESA_copy_sub_buffer (Mesa's GLX, llvmpipe under Xvfb included), the compositor draws the
// changed pixels straight into the back buffer and only the damage rectangles are copied to the
// window: the back buffer is never swapped, so it keeps the composed frame for the next one (the
// GLX spec leaves it undefined only after a swap). Elsewhere a swap shows the whole frame, and
// the compositor keeps its frame in an offscreen target copied to the back buffer each frame.
// Under llvmpipe that copy is a textured draw over the whole window, about 5 ms of CPU a frame at
// 1440 x 900: more than the redraw it follows.
//
// Copies are not paced by the display's refresh as swaps with a swap interval are; the frame
// loop paces itself (60 Hz while a job runs, input otherwise). When the window system loses the
// window's pixels (an Expose: uncovered by another window, mapped again) the whole back buffer
// is copied at the next present.
//
// LOCKSTEP_COPY_SUB_BUFFER=0 presents with swaps (to compare). GUI thread only, the window's
// context current.

#include <cstdint>
#include <vector>

struct GLFWwindow;

namespace lockstep::app {

struct Damage;

class Presenter {
 public:
  // `sub_buffers`: whether partial presents may be used (partial redraw is on). Checks the
  // extension on the current context.
  Presenter(GLFWwindow* window, bool sub_buffers);
  Presenter(const Presenter&) = delete;
  Presenter& operator=(const Presenter&) = delete;

  // Whether frames are composed in the back buffer and presented by rectangle.
  bool copies_sub_buffers() const { return copy_ != nullptr; }

  // After compose: shows the frame. Copying, only `damage` (framebuffer pixels, all of them when
  // full, nothing when empty) unless the window lost its pixels since; else a swap.
  void present(const Damage& damage, int fb_w, int fb_h);

  // The window's pixels were lost (GLFW's refresh callback): the next present shows them all.
  void expose() { exposed_ = true; }

  // For the GUI tests: the window's pixels as the X server holds them, compared with the back
  // buffer's. -1 when they cannot be read (no X window, a framebuffer scale other than 1).
  struct WindowCheck {
    bool copies_sub_buffers = false;  // how the frame was presented
    int w = 0, h = 0;
    long long differing = -1;           // pixels whose RGB differ
    std::vector<uint8_t> window, back;  // [h, w, 3], rows top first; kept when some differ
  };
  WindowCheck check_window(int fb_w, int fb_h) const;

 private:
  GLFWwindow* window_;
  void* display_ = nullptr;     // Display*
  unsigned long drawable_ = 0;  // GLXDrawable
  void (*copy_)() = nullptr;    // glXCopySubBufferMESA, called through its own type
  bool exposed_ = true;  // nothing shown yet
};

}  // namespace lockstep::app
