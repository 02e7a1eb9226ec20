#include "app/gui_layers.h"

#define GL_GLEXT_PROTOTYPES 1
#include <GL/gl.h>
#include <GL/glext.h>
#include <backends/imgui_impl_opengl3.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace lockstep::app {

bool update_font_filter(ImVec2 framebuffer_scale, float font_scale) {
  static GLuint texture = 0;
  static GLint filter = 0;
  const auto id = static_cast<GLuint>(reinterpret_cast<intptr_t>(ImGui::GetIO().Fonts->TexID));
  const GLint want =
      framebuffer_scale.x == 1.0f && framebuffer_scale.y == 1.0f && font_scale == 1.0f ? GL_NEAREST
                                                                                       : GL_LINEAR;
  if (id == 0 || (id == texture && want == filter)) return false;
  GLint before = 0;
  glGetIntegerv(GL_TEXTURE_BINDING_2D, &before);
  glBindTexture(GL_TEXTURE_2D, id);
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, want);
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, want);
  glBindTexture(GL_TEXTURE_2D, GLuint(before));
  texture = id;
  filter = want;
  return true;
}

PlotLayerTextures::~PlotLayerTextures() {
  for (auto& [name, t] : textures_) glDeleteTextures(1, &t.id);
  if (framebuffer_) glDeleteFramebuffers(1, &framebuffer_);
}

bool PlotLayerTextures::render_pending(views::PlotLayers& layers, ImVec2 scale) {
  bool rendered = false;
  for (auto& [name, layer] : layers) {
    if (!layer.pending) continue;
    rendered = true;
    const int w = std::max(1, int(std::ceil(layer.pending_size.x * scale.x)));
    const int h = std::max(1, int(std::ceil(layer.pending_size.y * scale.y)));
    Texture& t = textures_[name];
    GLint texture_before = 0, framebuffer_before = 0;
    glGetIntegerv(GL_TEXTURE_BINDING_2D, &texture_before);
    glGetIntegerv(GL_FRAMEBUFFER_BINDING, &framebuffer_before);
    if (!t.id) glGenTextures(1, &t.id);
    glBindTexture(GL_TEXTURE_2D, t.id);
    if (t.w != w || t.h != h) {
      // Nearest: the texture is drawn at one texel per framebuffer pixel.
      glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, GL_NEAREST);
      glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, GL_NEAREST);
      glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_WRAP_S, GL_CLAMP_TO_EDGE);
      glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_WRAP_T, GL_CLAMP_TO_EDGE);
      glTexImage2D(GL_TEXTURE_2D, 0, GL_RGBA8, w, h, 0, GL_RGBA, GL_UNSIGNED_BYTE, nullptr);
      t.w = w;
      t.h = h;
    }
    if (!framebuffer_) glGenFramebuffers(1, &framebuffer_);
    glBindFramebuffer(GL_FRAMEBUFFER, framebuffer_);
    glFramebufferTexture2D(GL_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_TEXTURE_2D, t.id, 0);
    const bool complete = glCheckFramebufferStatus(GL_FRAMEBUFFER) == GL_FRAMEBUFFER_COMPLETE;
    if (complete) {
      glViewport(0, 0, w, h);
      glClearColor(0, 0, 0, 0);
      glClear(GL_COLOR_BUFFER_BIT);
      ImDrawList* list = layer.pending.get();
      ImDrawData data;
      data.Valid = true;
      data.CmdLists = &list;
      data.CmdListsCount = 1;
      data.TotalVtxCount = list->VtxBuffer.Size;
      data.TotalIdxCount = list->IdxBuffer.Size;
      data.DisplayPos = ImVec2(0, 0);
      data.DisplaySize = layer.pending_size;
      data.FramebufferScale = scale;
      ImGui_ImplOpenGL3_RenderDrawData(&data);  // restores the GL state it changes
    }
    glBindFramebuffer(GL_FRAMEBUFFER, GLuint(framebuffer_before));
    glBindTexture(GL_TEXTURE_2D, GLuint(texture_before));
    layer.pending.reset();
    if (complete) {
      layer.key = layer.pending_key;
      layer.texture = reinterpret_cast<ImTextureID>(static_cast<intptr_t>(t.id));
    } else {
      layer.key = 0;
      layer.texture = nullptr;
    }
  }
  return rendered;
}

}  // namespace lockstep::app
