#pragma once
// What the workbench's worker needs about its inputs, apart from ImGui: token ids typed as
// text, the recent-models list, the layer range of a run, a model's description for the
// Model & lanes panel, a directory listing for the file browser, and what a dropped path is.
// Plain functions, so the unit tests check them without a window.

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "engine/weights.h"
#include "views/snapshot.h"

namespace lockstep::app {

// "1, 2 3\n4" → {1, 2, 3, 4}: ids separated by commas and/or white space. Throws
// lockstep::Error naming the first piece that is not a non-negative integer, or when there
// is none.
std::vector<int32_t> parse_token_ids(std::string_view text);

// `path` moved to the front of `list`, once, the list cut to `max` entries.
std::vector<std::string> push_recent(std::vector<std::string> list, const std::string& path,
                                     size_t max);

// A run's layer range: "all" (or empty), "3", or "2-5" (inclusive). Throws lockstep::Error.
struct LayerRange {
  uint32_t first = 0, last = UINT32_MAX;
  bool contains(uint32_t layer) const { return layer >= first && layer <= last; }
};
LayerRange parse_layer_range(std::string_view text);

// The ids a run uses when none are given: the demo prompt encoded with the model's
// tokenizer, else ids 1..8 (those inside the vocab).
std::vector<int32_t> default_tokens(const engine::Model& model);

// The panel's description of an opened model (engine::inspect's report plus the family).
views::ModelInfo model_info(const std::filesystem::path& path, const engine::Model& model);

// `dir`'s entries, directories first, then files, each by name; hidden entries left out.
// Errors land in the listing's `error`.
views::DirListing list_dir(const std::filesystem::path& dir);

// Whether a directory looks like an APRT dump: a manifest.json, or *.aprt / *.npy files at
// its top or one level down (aprender's layer-N/ folders).
bool is_dump_dir(const std::filesystem::path& dir);

// Each entry with whether its file still exists.
std::vector<views::RecentModel> check_recent(const std::vector<std::string>& paths);

std::string byte_text(uint64_t bytes);  // "512 B", "3.1 KiB", "1.2 GiB"

}  // namespace lockstep::app
