#pragma once
// manifest.json beside an APRT dump (DESIGN.md "Dumps"): which lane and model produced the
// dump, the token ids, and the shape of every file. Optional: a dump without one is still
// readable, flat or shaped by a loaded model's config.
//
//   {
//     "format_version": 1,
//     "tool": {"name": "lockstep", "version": "0.1.0"},
//     "lane": "cpu",
//     "model": {"path": "m.gguf", "sha256": "<64 hex digits>"},
//     "family": "llama",
//     "config": { ... },
//     "token_ids": [1, 403, 407],
//     "files": {"layer-0/attn_norm.bin": [3, 64], "lm_head.bin": [3, 512]}
//   }
//
// Reading: "format_version" is required and must not be newer than kManifestFormatVersion;
// every other key is optional; unknown keys are ignored so later versions can add some;
// a known key of the wrong type is an error naming the manifest and the key.

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace lockstep::formats {

inline constexpr int64_t kManifestFormatVersion = 1;
inline constexpr std::string_view kManifestFileName = "manifest.json";
inline constexpr size_t kManifestMaxRank = 8;

struct Manifest {
  int64_t format_version = kManifestFormatVersion;
  std::string tool_name;
  std::string tool_version;
  std::string lane;
  std::string model_path;
  std::string model_sha256;  // 64 lowercase hex digits, or empty
  std::string family;
  nlohmann::json config = nlohmann::json::object();
  std::vector<int32_t> token_ids;
  // Dump-relative path ("layer-0/attn_norm.bin", "lm_head.bin") → shape, e.g. [tokens, width].
  std::map<std::string, std::vector<uint64_t>, std::less<>> files;

  const std::vector<uint64_t>* shape_of(std::string_view rel_path) const;
  bool operator==(const Manifest&) const = default;
};

// Parses and type-checks; `name` appears in errors. Checks key paths and shapes
// (rank 1..kManifestMaxRank, product without overflow) but not the files themselves.
Manifest parse_manifest(std::string_view json, std::string name);
// Pretty JSON (2-space indent, trailing newline); empty optional fields are left out.
std::string format_manifest(const Manifest& m);

// For each listed file present in `dir`: a valid APRT file whose element count equals the
// product of its shape. Listed files that are absent are not an error (partial dumps).
// Throws lockstep::Error naming `manifest_name` and the key.
void verify_manifest_files(const Manifest& m, const std::filesystem::path& dir,
                           const std::string& manifest_name);

// parse_manifest over the file, then verify_manifest_files against its directory.
Manifest read_manifest(const std::filesystem::path& path);
// Writes through a temporary sibling renamed into place.
void write_manifest(const std::filesystem::path& path, const Manifest& m);

}  // namespace lockstep::formats
