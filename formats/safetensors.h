#pragma once
// safetensors: an 8-byte LE header length, a JSON header, then the data section.
//
//   {"__metadata__": {"format": "pt"},
//    "model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}, ...}
//
// The reader maps the file and validates, before touching any tensor: the header length
// against the file size and a limit (100 MB, as the reference implementation), well-formed
// JSON, `__metadata__` as a map of strings, each tensor's dtype (a string), shape
// (non-negative integers, rank <= max_rank), data_offsets [begin, end) with begin <= end
// inside the data section, end - begin == elements · dtype size (with overflow checks), and
// no two tensors overlapping. Gaps between tensors are allowed.
//
// F32, F16 and BF16 are supported. Other dtypes are listed with their name and
// `supported() == false` and never guessed at: their sizes are checked when the dtype is
// one safetensors defines, and reading their values (to_f32) throws lockstep::Error naming
// the file, tensor and dtype.
//
// Sharded models: `model.safetensors.index.json` maps tensor names to shard files;
// SafetensorsModel opens one file, an index, or a directory holding either.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "formats/mapped_file.h"

namespace lockstep::formats {

enum class SafetensorsDtype { F32, F16, BF16, Other };

struct SafetensorsTensor {
  std::string name;
  std::string dtype_name;  // as written in the file, e.g. "BF16" or "I64"
  SafetensorsDtype dtype = SafetensorsDtype::Other;
  std::optional<uint32_t> dtype_bits;  // nullopt for a dtype safetensors does not define
  std::vector<uint64_t> shape;         // [] is a scalar
  uint64_t elements = 1;
  uint64_t begin = 0;  // data_offsets, relative to the data section
  uint64_t end = 0;
  bool supported() const { return dtype != SafetensorsDtype::Other; }
  uint64_t bytes() const { return end - begin; }
};

struct SafetensorsLimits {
  uint64_t max_header = 100'000'000;
  uint64_t max_tensors = 1u << 20;
  uint32_t max_rank = 8;
};

// Bits per element of a dtype safetensors defines (F4 is 4, F6_* are 6), or nullopt.
std::optional<uint32_t> safetensors_dtype_bits(std::string_view dtype);

class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path,
                              const SafetensorsLimits& limits = {});
  // Parses bytes held elsewhere (fuzzers, tests); `name` appears in errors. The bytes must
  // outlive the returned object.
  static SafetensorsFile parse(std::span<const std::byte> bytes, std::string name,
                               const SafetensorsLimits& limits = {});

  const std::string& path() const { return path_; }
  uint64_t header_bytes() const { return header_bytes_; }
  uint64_t data_offset() const { return 8 + header_bytes_; }  // file offset of the data
  const std::map<std::string, std::string, std::less<>>& metadata() const { return metadata_; }
  // Ordered by data offset (file order).
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(std::string_view name) const;

  // The tensor's raw bytes inside the file (little-endian, as stored).
  std::span<const std::byte> data(const SafetensorsTensor& t) const;
  // Values widened to f32 (F16/BF16 exactly; NaN payloads kept). Throws lockstep::Error for
  // an unsupported dtype.
  std::vector<float> to_f32(const SafetensorsTensor& t) const;

 private:
  std::shared_ptr<MappedFile> map_;  // null when parsed from caller-owned bytes
  std::span<const std::byte> bytes_;
  std::string path_;
  uint64_t header_bytes_ = 0;
  std::map<std::string, std::string, std::less<>> metadata_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
};

struct SafetensorsIndex {
  std::map<std::string, std::string, std::less<>> weight_map;  // tensor → shard file name
  std::vector<std::string> shards;                             // distinct, sorted
  std::optional<uint64_t> total_size;                          // metadata.total_size
};
// Shard names must be plain file names in the index's directory (no '/', not "." or "..").
SafetensorsIndex parse_safetensors_index(std::string_view json, std::string name);
SafetensorsIndex read_safetensors_index(const std::filesystem::path& path);

// One model's tensors across one or more files.
class SafetensorsModel {
 public:
  // `path`: a .safetensors file, a *.safetensors.index.json, or a directory holding
  // model.safetensors.index.json or model.safetensors. With an index, every listed tensor
  // must be in its shard, and no tensor may be in two shards.
  static SafetensorsModel open(const std::filesystem::path& path,
                               const SafetensorsLimits& limits = {});

  struct Ref {
    const SafetensorsFile* file;
    const SafetensorsTensor* tensor;
  };
  const std::vector<SafetensorsFile>& files() const { return files_; }
  // The Ref points into this model: a temporary's would dangle, hence the deleted overload.
  std::optional<Ref> find(std::string_view name) const&;
  std::optional<Ref> find(std::string_view name) const&& = delete;
  std::vector<std::string> tensor_names() const;  // sorted

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::pair<size_t, size_t>, std::less<>> where_;  // file, tensor
};

// Builds a safetensors file in memory: tensors laid out in the order added, header padded
// with spaces to a multiple of 8 bytes.
class SafetensorsWriter {
 public:
  void set_metadata(std::string key, std::string value);
  // Any dtype name; for dtypes safetensors defines, data.size() must match the shape.
  void add(std::string name, std::string dtype, std::vector<uint64_t> shape,
           std::span<const std::byte> data);
  void add_f32(std::string name, std::vector<uint64_t> shape, std::span<const float> values);

  std::vector<std::byte> encode() const;
  // Writes through a temporary sibling renamed into place.
  void write(const std::filesystem::path& path) const;

 private:
  struct Entry {
    std::string name;
    std::string dtype;
    std::vector<uint64_t> shape;
    std::vector<std::byte> data;
  };
  std::map<std::string, std::string> metadata_;
  std::vector<Entry> entries_;
};

}  // namespace lockstep::formats
