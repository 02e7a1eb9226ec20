#include "formats/gguf.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <numeric>
#include <sstream>

#include "formats/byte_reader.h"
#include "formats/error.h"

namespace lockstep::formats {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as u32 LE
constexpr uint32_t kMaxValueType = 12;

// Smallest encoded size of one value of `t`: bounds array counts before allocating.
uint64_t min_encoded_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::UInt8:
    case GgufValueType::Int8:
    case GgufValueType::Bool:
      return 1;
    case GgufValueType::UInt16:
    case GgufValueType::Int16:
      return 2;
    case GgufValueType::UInt32:
    case GgufValueType::Int32:
    case GgufValueType::Float32:
      return 4;
    case GgufValueType::UInt64:
    case GgufValueType::Int64:
    case GgufValueType::Float64:
      return 8;
    case GgufValueType::String:
      return 8;  // length prefix
    case GgufValueType::Array:
      return 12;  // element type + count
  }
  return 1;
}

class Parser {
 public:
  Parser(std::span<const std::byte> bytes, std::string name, const GgufLimits& limits)
      : r_(bytes, std::move(name)), limits_(limits) {}

  std::string read_string(std::string_view what) {
    uint64_t at = r_.offset();
    uint64_t len = r_.read<uint64_t>(std::string(what) + " length");
    if (len > limits_.max_string)
      r_.fail_at(at, std::string(what) + " length <= " + std::to_string(limits_.max_string),
                 std::to_string(len));
    return std::string(r_.take_string(len, what));
  }

  GgufValueType read_type(std::string_view what) {
    uint64_t at = r_.offset();
    uint32_t t = r_.read<uint32_t>(what);
    if (t > kMaxValueType)
      r_.fail_at(at, std::string(what) + " (a GGUF value type 0..12)", std::to_string(t));
    return static_cast<GgufValueType>(t);
  }

  GgufValue read_value(GgufValueType t, const std::string& key, uint32_t depth) {
    switch (t) {
      case GgufValueType::UInt8:
        return GgufValue::u8(r_.read<uint8_t>(key));
      case GgufValueType::Int8:
        return GgufValue::i8(r_.read<int8_t>(key));
      case GgufValueType::UInt16:
        return GgufValue::u16(r_.read<uint16_t>(key));
      case GgufValueType::Int16:
        return GgufValue::i16(r_.read<int16_t>(key));
      case GgufValueType::UInt32:
        return GgufValue::u32(r_.read<uint32_t>(key));
      case GgufValueType::Int32:
        return GgufValue::i32(r_.read<int32_t>(key));
      case GgufValueType::UInt64:
        return GgufValue::u64(r_.read<uint64_t>(key));
      case GgufValueType::Int64:
        return GgufValue::i64(r_.read<int64_t>(key));
      case GgufValueType::Float32:
        return GgufValue::f32(r_.read<float>(key));
      case GgufValueType::Float64:
        return GgufValue::f64(r_.read<double>(key));
      case GgufValueType::Bool: {
        uint64_t at = r_.offset();
        uint8_t b = r_.read<uint8_t>(key);
        if (b > 1) r_.fail_at(at, "bool 0 or 1 for " + key, std::to_string(b));
        return GgufValue::boolean(b != 0);
      }
      case GgufValueType::String:
        return GgufValue::str(read_string("string value of " + key));
      case GgufValueType::Array: {
        if (depth >= limits_.max_array_depth)
          r_.fail("array nesting depth <= " + std::to_string(limits_.max_array_depth) + " in " +
                  key);
        GgufValueType elem = read_type("array element type of " + key);
        uint64_t at = r_.offset();
        uint64_t count = r_.read<uint64_t>("array length of " + key);
        uint64_t min_size = min_encoded_size(elem);
        if (count > r_.remaining() / min_size)
          r_.fail_at(at,
                     "array length of " + key + " that fits the " + std::to_string(r_.remaining()) +
                         " bytes left (" + std::to_string(min_size) + "+ bytes per " +
                         std::string(gguf_type_name(elem)) + ")",
                     std::to_string(count));
        std::vector<GgufValue> items;
        items.reserve(count);
        // A nested array's elements carry their own element type and count, no type tag.
        for (uint64_t i = 0; i < count; ++i) items.push_back(read_value(elem, key, depth + 1));
        return GgufValue::array(elem, std::move(items));
      }
    }
    r_.fail("a GGUF value type");
  }

  ByteReader r_;
  const GgufLimits& limits_;
};

std::string dims_string(const std::vector<uint64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

}  // namespace

std::string_view gguf_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::UInt8:
      return "u8";
    case GgufValueType::Int8:
      return "i8";
    case GgufValueType::UInt16:
      return "u16";
    case GgufValueType::Int16:
      return "i16";
    case GgufValueType::UInt32:
      return "u32";
    case GgufValueType::Int32:
      return "i32";
    case GgufValueType::Float32:
      return "f32";
    case GgufValueType::Bool:
      return "bool";
    case GgufValueType::String:
      return "string";
    case GgufValueType::Array:
      return "array";
    case GgufValueType::UInt64:
      return "u64";
    case GgufValueType::Int64:
      return "i64";
    case GgufValueType::Float64:
      return "f64";
  }
  return "?";
}

bool GgufArray::operator==(const GgufArray& other) const {
  return elem_type == other.elem_type && items == other.items;
}

bool GgufValue::is_integer() const {
  return std::holds_alternative<uint64_t>(value) || std::holds_alternative<int64_t>(value);
}

std::optional<uint64_t> GgufValue::as_u64() const {
  if (auto* u = std::get_if<uint64_t>(&value)) return *u;
  if (auto* i = std::get_if<int64_t>(&value); i && *i >= 0) return static_cast<uint64_t>(*i);
  return std::nullopt;
}

std::optional<int64_t> GgufValue::as_i64() const {
  if (auto* i = std::get_if<int64_t>(&value)) return *i;
  if (auto* u = std::get_if<uint64_t>(&value);
      u && *u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return static_cast<int64_t>(*u);
  return std::nullopt;
}

std::optional<double> GgufValue::as_f64() const {
  if (auto* d = std::get_if<double>(&value)) return *d;
  if (auto* u = std::get_if<uint64_t>(&value)) return static_cast<double>(*u);
  if (auto* i = std::get_if<int64_t>(&value)) return static_cast<double>(*i);
  return std::nullopt;
}

std::string GgufValue::summary(size_t max_items) const {
  std::ostringstream out;
  std::visit(
      [&](const auto& v) {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, bool>) {
          out << (v ? "true" : "false");
        } else if constexpr (std::is_same_v<V, std::string>) {
          std::string s = v.size() > 60 ? v.substr(0, 57) + "..." : v;
          out << '"';
          for (char c : s) {
            if (c == '\n')
              out << "\\n";
            else if (c == '"')
              out << "\\\"";
            else if (static_cast<unsigned char>(c) < 0x20)
              out << '?';
            else
              out << c;
          }
          out << '"';
        } else if constexpr (std::is_same_v<V, GgufArray>) {
          out << gguf_type_name(v.elem_type) << "[" << v.items.size() << "]";
          if (!v.items.empty() && max_items > 0) {
            out << " {";
            for (size_t i = 0; i < std::min(max_items, v.items.size()); ++i)
              out << (i ? ", " : "") << v.items[i].summary(0);
            if (v.items.size() > max_items) out << ", ...";
            out << "}";
          }
        } else if constexpr (std::is_same_v<V, double>) {
          char buf[64];
          std::snprintf(buf, sizeof buf, "%.9g", v);
          out << buf;
        } else {
          out << v;
        }
      },
      value);
  return out.str();
}

GgufFile GgufFile::open(const std::string& path, const GgufLimits& limits) {
  auto map = std::make_shared<MappedFile>(path);
  GgufFile f = parse(map->bytes(), path, limits);
  f.map_ = std::move(map);
  return f;
}

GgufFile GgufFile::parse(std::span<const std::byte> bytes, std::string name,
                         const GgufLimits& limits) {
  GgufFile f;
  f.bytes_ = bytes;
  f.path_ = name;
  Parser p(bytes, std::move(name), limits);
  ByteReader& r = p.r_;

  uint32_t magic = r.read<uint32_t>("GGUF magic");
  if (magic != kMagic) {
    std::string found;
    for (int i = 0; i < 4; ++i) {
      char c = static_cast<char>((magic >> (8 * i)) & 0xff);
      found += (c >= 0x20 && c < 0x7f) ? std::string(1, c) : "\\x" + std::to_string(uint8_t(c));
    }
    r.fail_at(0, "magic \"GGUF\"", "\"" + found + "\"");
  }
  f.version_ = r.read<uint32_t>("GGUF version");
  if (f.version_ == 0x02000000 || f.version_ == 0x03000000)
    r.fail_at(4, "a little-endian GGUF file", "a big-endian one (not supported)");
  if (f.version_ != 2 && f.version_ != 3)
    r.fail_at(4, "GGUF version 2 or 3", std::to_string(f.version_));

  uint64_t at = r.offset();
  uint64_t n_tensors = r.read<uint64_t>("tensor count");
  if (n_tensors > limits.max_tensors)
    r.fail_at(at, "tensor count <= " + std::to_string(limits.max_tensors),
              std::to_string(n_tensors));
  at = r.offset();
  uint64_t n_kv = r.read<uint64_t>("metadata count");
  if (n_kv > limits.max_kv)
    r.fail_at(at, "metadata count <= " + std::to_string(limits.max_kv), std::to_string(n_kv));
  // Each key-value takes at least 13 bytes, each tensor info at least 28: reject counts the
  // file cannot hold before reserving anything.
  if (n_kv > r.remaining() / 13)
    r.fail_at(at, "a metadata count the file can hold", std::to_string(n_kv));
  if (n_tensors > r.remaining() / 28)
    r.fail_at(at - 8, "a tensor count the file can hold", std::to_string(n_tensors));

  f.kv_.reserve(n_kv);
  uint64_t alignment_at = Error::kNoOffset;
  for (uint64_t i = 0; i < n_kv; ++i) {
    uint64_t key_at = r.offset();
    std::string key = p.read_string("metadata key #" + std::to_string(i));
    if (key.empty()) r.fail_at(key_at, "a non-empty metadata key");
    if (f.kv_index_.count(key)) r.fail_at(key_at, "unique metadata keys", "\"" + key + "\" twice");
    GgufValueType t = p.read_type("value type of " + key);
    if (key == "general.alignment") alignment_at = r.offset();
    GgufValue v = p.read_value(t, key, 0);
    f.kv_index_.emplace(key, f.kv_.size());
    f.kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = f.find("general.alignment")) {
    auto al = a->as_u64();
    if (a->type != GgufValueType::UInt32 || !al || *al == 0 || (*al & (*al - 1)) != 0 ||
        *al > limits.max_alignment)
      throw Error(
          f.path_, alignment_at,
          "general.alignment as a u32 power of two <= " + std::to_string(limits.max_alignment),
          a->summary());
    f.alignment_ = *al;
  }

  f.tensors_.reserve(n_tensors);
  std::vector<uint64_t> info_offsets;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    uint64_t name_at = r.offset();
    t.name = p.read_string("tensor name #" + std::to_string(i));
    if (t.name.empty()) r.fail_at(name_at, "a non-empty tensor name");
    if (f.tensor_index_.count(t.name))
      r.fail_at(name_at, "unique tensor names", "\"" + t.name + "\" twice");
    uint64_t nd_at = r.offset();
    uint32_t n_dims = r.read<uint32_t>("dimension count of " + t.name);
    if (n_dims == 0 || n_dims > limits.max_dims)
      r.fail_at(nd_at, "1.." + std::to_string(limits.max_dims) + " dimensions for " + t.name,
                std::to_string(n_dims));
    t.elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim_at = r.offset();
      uint64_t dim = r.read<uint64_t>("dimension of " + t.name);
      // ggml stores dims as int64: anything above INT64_MAX, or a product that overflows
      // it, cannot be a real tensor.
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (dim != 0 &&
           t.elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim))
        r.fail_at(dim_at, "dimensions of " + t.name + " whose product fits int64",
                  std::to_string(dim));
      t.dims.push_back(dim);
      t.elements *= dim;
    }
    uint64_t type_at = r.offset();
    uint32_t type = r.read<uint32_t>("type of " + t.name);
    const GgmlTypeInfo* ti = find_ggml_type(type);
    if (ti == nullptr)
      r.fail_at(type_at, "a known GGML type for " + t.name,
                "unknown type id " + std::to_string(type));
    t.type = ti->type;
    if (t.dims[0] % ti->block_elems != 0)
      r.fail_at(nd_at,
                "row length of " + t.name + " a multiple of " + std::string(ti->name) +
                    "'s block of " + std::to_string(ti->block_elems),
                dims_string(t.dims));
    auto bytes_needed = ggml_bytes(t.type, t.elements);
    if (!bytes_needed) r.fail_at(nd_at, "a byte size of " + t.name + " that fits 64 bits");
    t.bytes = *bytes_needed;
    uint64_t off_at = r.offset();
    info_offsets.push_back(off_at);
    t.offset = r.read<uint64_t>("data offset of " + t.name);
    if (t.offset % f.alignment_ != 0)
      r.fail_at(off_at, "data offset of " + t.name + " aligned to " + std::to_string(f.alignment_),
                std::to_string(t.offset));
    f.tensor_index_.emplace(t.name, f.tensors_.size());
    f.tensors_.push_back(std::move(t));
  }

  uint64_t header_end = r.offset();
  f.data_offset_ = (header_end + f.alignment_ - 1) / f.alignment_ * f.alignment_;
  if (n_tensors > 0 && f.data_offset_ > bytes.size())
    r.fail_at(header_end, "tensor data starting at offset " + std::to_string(f.data_offset_),
              "end of file at " + std::to_string(bytes.size()));
  uint64_t data_size = bytes.size() > f.data_offset_ ? bytes.size() - f.data_offset_ : 0;

  // Every tensor inside the data section, none overlapping another.
  std::vector<size_t> order(f.tensors_.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return f.tensors_[a].offset < f.tensors_[b].offset; });
  for (size_t k = 0; k < order.size(); ++k) {
    const GgufTensorInfo& t = f.tensors_[order[k]];
    if (t.offset > data_size || t.bytes > data_size - t.offset)
      throw Error(f.path_, info_offsets[order[k]],
                  "data offset of " + t.name + " such that its " + std::to_string(t.bytes) +
                      " bytes lie within the " + std::to_string(data_size) +
                      " bytes of tensor data",
                  "data offset " + std::to_string(t.offset));
    if (k + 1 < order.size()) {
      const GgufTensorInfo& next = f.tensors_[order[k + 1]];
      if (t.offset + t.bytes > next.offset)
        throw Error(f.path_, info_offsets[order[k + 1]],
                    "tensor " + next.name + " to start after " + t.name + " ends at data offset " +
                        std::to_string(t.offset + t.bytes),
                    "an overlap: it starts at data offset " + std::to_string(next.offset));
    }
  }
  return f;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

std::optional<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr || v->as_string() == nullptr) return std::nullopt;
  return *v->as_string();
}

std::optional<uint64_t> GgufFile::get_u64(std::string_view key) const {
  const GgufValue* v = find(key);
  return v == nullptr ? std::nullopt : v->as_u64();
}

std::optional<double> GgufFile::get_f64(std::string_view key) const {
  const GgufValue* v = find(key);
  return v == nullptr ? std::nullopt : v->as_f64();
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> GgufFile::tensor_data(const GgufTensorInfo& t) const {
  return bytes_.subspan(data_offset_ + t.offset, t.bytes);
}

// ---- writer ----

namespace {

template <typename T>
void put(std::ofstream& out, T v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof v);
}

void put_string(std::ofstream& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}

void put_value(std::ofstream& out, const GgufValue& v, const std::string& key);

void put_payload(std::ofstream& out, GgufValueType t, const GgufValue& v, const std::string& key) {
  if (v.type != t)
    throw Error("GGUF value of " + key + ": array element of type " +
                std::string(gguf_type_name(v.type)) + " in an array of " +
                std::string(gguf_type_name(t)));
  auto u = [&] { return std::get<uint64_t>(v.value); };
  auto i = [&] { return std::get<int64_t>(v.value); };
  switch (t) {
    case GgufValueType::UInt8:
      put<uint8_t>(out, static_cast<uint8_t>(u()));
      break;
    case GgufValueType::Int8:
      put<int8_t>(out, static_cast<int8_t>(i()));
      break;
    case GgufValueType::UInt16:
      put<uint16_t>(out, static_cast<uint16_t>(u()));
      break;
    case GgufValueType::Int16:
      put<int16_t>(out, static_cast<int16_t>(i()));
      break;
    case GgufValueType::UInt32:
      put<uint32_t>(out, static_cast<uint32_t>(u()));
      break;
    case GgufValueType::Int32:
      put<int32_t>(out, static_cast<int32_t>(i()));
      break;
    case GgufValueType::UInt64:
      put<uint64_t>(out, u());
      break;
    case GgufValueType::Int64:
      put<int64_t>(out, i());
      break;
    case GgufValueType::Float32:
      put<float>(out, static_cast<float>(std::get<double>(v.value)));
      break;
    case GgufValueType::Float64:
      put<double>(out, std::get<double>(v.value));
      break;
    case GgufValueType::Bool:
      put<uint8_t>(out, std::get<bool>(v.value) ? 1 : 0);
      break;
    case GgufValueType::String:
      put_string(out, std::get<std::string>(v.value));
      break;
    case GgufValueType::Array: {
      const GgufArray& a = std::get<GgufArray>(v.value);
      put<uint32_t>(out, static_cast<uint32_t>(a.elem_type));
      put<uint64_t>(out, a.items.size());
      for (const GgufValue& item : a.items) {
        if (a.elem_type == GgufValueType::Array)
          put_value(out, item, key);
        else
          put_payload(out, a.elem_type, item, key);
      }
      break;
    }
  }
}

// A nested array element carries its own element type and count but no value-type tag:
// put_payload writes exactly that.
void put_value(std::ofstream& out, const GgufValue& v, const std::string& key) {
  put_payload(out, v.type, v, key);
}

}  // namespace

GgufWriter::GgufWriter(std::string path, uint32_t alignment)
    : path_(std::move(path)), alignment_(alignment) {
  if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0)
    throw Error(path_ + ": GGUF alignment must be a power of two, got " +
                std::to_string(alignment));
  tmp_path_ = path_ + ".tmp-" + std::to_string(::getpid());
  if (alignment_ != 32) set("general.alignment", GgufValue::u32(alignment_));
}

GgufWriter::~GgufWriter() {
  if (!finished_) {
    out_.close();
    std::error_code ec;
    std::filesystem::remove(tmp_path_, ec);
  }
}

void GgufWriter::set(std::string key, GgufValue value) {
  if (header_written_) throw Error(path_ + ": metadata set after tensor data began: " + key);
  for (auto& [k, v] : kv_)
    if (k == key) {
      v = std::move(value);
      return;
    }
  kv_.emplace_back(std::move(key), std::move(value));
}

size_t GgufWriter::add_tensor(std::string name, GgmlType type, std::vector<uint64_t> dims) {
  if (header_written_) throw Error(path_ + ": tensor declared after data began: " + name);
  if (dims.empty() || dims.size() > 4)
    throw Error(path_ + ": tensor " + name + " needs 1..4 dimensions");
  for (const auto& t : tensors_)
    if (t.name == name) throw Error(path_ + ": tensor " + name + " declared twice");
  const GgmlTypeInfo& ti = ggml_type_info(type);
  GgufTensorInfo t;
  t.name = std::move(name);
  t.type = type;
  t.dims = std::move(dims);
  t.elements = 1;
  for (uint64_t d : t.dims) t.elements *= d;
  if (t.dims[0] % ti.block_elems != 0)
    throw Error(path_ + ": tensor " + t.name + " row of " + std::to_string(t.dims[0]) +
                " is not a multiple of " + std::string(ti.name) + "'s block of " +
                std::to_string(ti.block_elems));
  t.bytes = *ggml_bytes(type, t.elements);
  t.offset = data_pos_;
  data_pos_ += (t.bytes + alignment_ - 1) / alignment_ * alignment_;
  tensors_.push_back(std::move(t));
  return tensors_.size() - 1;
}

void GgufWriter::write_header() {
  out_.open(tmp_path_, std::ios::binary | std::ios::trunc);
  if (!out_) throw Error(tmp_path_ + ": cannot create");
  put<uint32_t>(out_, kMagic);
  put<uint32_t>(out_, 3);
  put<uint64_t>(out_, tensors_.size());
  put<uint64_t>(out_, kv_.size());
  for (const auto& [k, v] : kv_) {
    put_string(out_, k);
    put<uint32_t>(out_, static_cast<uint32_t>(v.type));
    put_value(out_, v, k);
  }
  for (const auto& t : tensors_) {
    put_string(out_, t.name);
    put<uint32_t>(out_, static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) put<uint64_t>(out_, d);
    put<uint32_t>(out_, static_cast<uint32_t>(t.type));
    put<uint64_t>(out_, t.offset);
  }
  // Like llama.cpp's writers, a file without tensors ends right after its metadata.
  auto pos = static_cast<uint64_t>(out_.tellp());
  uint64_t pad = tensors_.empty() ? 0 : (alignment_ - pos % alignment_) % alignment_;
  for (uint64_t i = 0; i < pad; ++i) put<uint8_t>(out_, 0);
  if (!out_) throw Error(tmp_path_ + ": write failed");
  header_written_ = true;
}

void GgufWriter::write_tensor(std::span<const std::byte> data) {
  if (finished_) throw Error(path_ + ": write after finish");
  if (!header_written_) write_header();
  if (next_tensor_ >= tensors_.size())
    throw Error(path_ + ": more tensor data written than tensors declared");
  const GgufTensorInfo& t = tensors_[next_tensor_];
  if (data.size() != t.bytes)
    throw Error(path_ + ": tensor " + t.name + " needs " + std::to_string(t.bytes) +
                " bytes, got " + std::to_string(data.size()));
  out_.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  uint64_t pad = (alignment_ - t.bytes % alignment_) % alignment_;
  for (uint64_t i = 0; i < pad; ++i) put<uint8_t>(out_, 0);
  if (!out_) throw Error(tmp_path_ + ": write failed (disk full?)");
  ++next_tensor_;
}

void GgufWriter::finish() {
  if (finished_) return;
  if (!header_written_) write_header();
  if (next_tensor_ != tensors_.size())
    throw Error(path_ + ": " + std::to_string(tensors_.size() - next_tensor_) +
                " declared tensors were never written (next: " + tensors_[next_tensor_].name + ")");
  out_.flush();
  out_.close();
  if (!out_) throw Error(tmp_path_ + ": write failed");
  std::error_code ec;
  std::filesystem::rename(tmp_path_, path_, ec);
  if (ec) throw Error(path_ + ": cannot rename the finished file into place: " + ec.message());
  finished_ = true;
}

}  // namespace lockstep::formats
