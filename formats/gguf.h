#pragma once
// GGUF v2/v3: a reader over a memory map and a streaming writer.
//
// The reader validates every count, string length, dimension, type and offset against the
// file size before it allocates or reads; tensor data stay in the map and are exposed as
// spans. The writer streams tensor data to a temporary file renamed into place on finish().

#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "formats/ggml_type.h"
#include "formats/mapped_file.h"

namespace lockstep::formats {

enum class GgufValueType : uint32_t {
  UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7,
  String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
};
std::string_view gguf_type_name(GgufValueType t);

struct GgufValue;
struct GgufArray {
  GgufValueType elem_type = GgufValueType::UInt8;
  std::vector<GgufValue> items;
  bool operator==(const GgufArray& other) const;  // defined where GgufValue is complete
};

// One metadata value. Integers keep their GGUF type in `type`; the payload is widened
// (unsigned → uint64_t, signed → int64_t, floats → double, exactly representable).
struct GgufValue {
  GgufValueType type = GgufValueType::UInt8;
  std::variant<uint64_t, int64_t, double, bool, std::string, GgufArray> value;

  static GgufValue u8(uint8_t v) { return {GgufValueType::UInt8, uint64_t{v}}; }
  static GgufValue i8(int8_t v) { return {GgufValueType::Int8, int64_t{v}}; }
  static GgufValue u16(uint16_t v) { return {GgufValueType::UInt16, uint64_t{v}}; }
  static GgufValue i16(int16_t v) { return {GgufValueType::Int16, int64_t{v}}; }
  static GgufValue u32(uint32_t v) { return {GgufValueType::UInt32, uint64_t{v}}; }
  static GgufValue i32(int32_t v) { return {GgufValueType::Int32, int64_t{v}}; }
  static GgufValue u64(uint64_t v) { return {GgufValueType::UInt64, v}; }
  static GgufValue i64(int64_t v) { return {GgufValueType::Int64, v}; }
  static GgufValue f32(float v) { return {GgufValueType::Float32, double{v}}; }
  static GgufValue f64(double v) { return {GgufValueType::Float64, v}; }
  static GgufValue boolean(bool v) { return {GgufValueType::Bool, v}; }
  static GgufValue str(std::string v) { return {GgufValueType::String, std::move(v)}; }
  static GgufValue array(GgufValueType elem, std::vector<GgufValue> items) {
    return {GgufValueType::Array, GgufArray{elem, std::move(items)}};
  }

  bool is_integer() const;
  bool is_float() const { return type == GgufValueType::Float32 || type == GgufValueType::Float64; }
  // Conversions that fail (return nullopt) instead of truncating or changing sign.
  std::optional<uint64_t> as_u64() const;
  std::optional<int64_t> as_i64() const;
  std::optional<double> as_f64() const;  // integers and floats
  const std::string* as_string() const { return std::get_if<std::string>(&value); }
  const GgufArray* as_array() const { return std::get_if<GgufArray>(&value); }
  const bool* as_bool() const { return std::get_if<bool>(&value); }

  // Short human-readable form; arrays show their type, length and first items.
  std::string summary(size_t max_items = 4) const;
  bool operator==(const GgufValue&) const = default;
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<uint64_t> dims;  // ggml order: dims[0] is the innermost (row length)
  uint64_t offset = 0;         // relative to the data section
  uint64_t elements = 0;
  uint64_t bytes = 0;
  uint64_t rows() const { return dims.empty() || dims[0] == 0 ? 0 : elements / dims[0]; }
};

// Sane limits: a file claiming more is rejected before anything is allocated.
struct GgufLimits {
  uint64_t max_tensors = 1u << 20;
  uint64_t max_kv = 1u << 20;
  uint64_t max_string = 1u << 26;   // 64 MiB for one string
  uint32_t max_dims = 4;            // GGML_MAX_DIMS
  uint32_t max_array_depth = 8;
  uint32_t max_alignment = 1u << 16;
};

class GgufFile {
 public:
  // Maps and parses `path`; throws lockstep::Error on any malformed byte.
  static GgufFile open(const std::string& path, const GgufLimits& limits = {});
  // Parses bytes held elsewhere (fuzzers, tests); `name` appears in errors. The bytes
  // must outlive the returned object.
  static GgufFile parse(std::span<const std::byte> bytes, std::string name,
                        const GgufLimits& limits = {});

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return bytes_.size(); }

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  std::optional<std::string> get_string(std::string_view key) const;
  std::optional<uint64_t> get_u64(std::string_view key) const;
  std::optional<double> get_f64(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  // The tensor's raw bytes inside the map.
  std::span<const std::byte> tensor_data(const GgufTensorInfo& t) const;

 private:
  std::shared_ptr<MappedFile> map_;  // null when parsed from caller-owned bytes
  std::span<const std::byte> bytes_;
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Streams a GGUF v3 file: set metadata, declare every tensor, then write each tensor's
// bytes in declaration order. Data go to "<path>.tmp-<pid>" renamed to `path` by finish();
// an unfinished writer removes its temporary file.
class GgufWriter {
 public:
  explicit GgufWriter(std::string path, uint32_t alignment = 32);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  void set(std::string key, GgufValue value);  // replaces an earlier value of the same key
  // dims in ggml order (dims[0] innermost). Returns the tensor's index.
  size_t add_tensor(std::string name, GgmlType type, std::vector<uint64_t> dims);
  // Writes the next declared tensor's bytes (the header goes out before the first call).
  void write_tensor(std::span<const std::byte> data);
  // Writes the header if no tensor was written, checks every tensor was, and renames.
  void finish();

 private:
  void write_header();
  std::string path_;
  std::string tmp_path_;
  uint32_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::ofstream out_;
  bool header_written_ = false;
  bool finished_ = false;
  size_t next_tensor_ = 0;
  uint64_t data_pos_ = 0;
};

}  // namespace lockstep::formats
