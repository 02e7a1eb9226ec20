#pragma once
// The embedded demo's model, shared by `lockstep demo` and the workbench: a small Llama-shaped
// model with grouped heads and F32 weights (as in the aprender F32 GEMV bug the default fault
// copies), written fresh in a fraction of a second.

#include <atomic>
#include <filesystem>
#include <string>

namespace lockstep::app {

inline constexpr const char* kDemoFault = "gemv_transposed@lm_head";
inline constexpr const char* kDemoPrompt = "Once upon a time there was a little robot";

// Writes the demo model of `family` to `path` (lockstep::Error on failure; a set `cancel`
// stops it and leaves no file).
void write_demo_model(const std::filesystem::path& path, const std::string& family,
                      unsigned threads, const std::atomic<bool>* cancel = nullptr);

}  // namespace lockstep::app
