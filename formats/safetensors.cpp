#include "formats/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "formats/atomic_dir.h"
#include "formats/byte_reader.h"
#include "formats/error.h"
#include "formats/shape.h"
#include "formats/json_util.h"
#include "formats/ggml_codec.h"

namespace lockstep::formats {
namespace fs = std::filesystem;
namespace {

using nlohmann::json;

// A tensor map is three levels deep; anything far deeper is hostile.
constexpr int kMaxJsonDepth = 16;
constexpr uint64_t kMaxIndexBytes = 64ull << 20;

struct DtypeBits {
  std::string_view name;
  uint32_t bits;
};
constexpr DtypeBits kDtypes[] = {
    {"BOOL", 8},    {"U8", 8},   {"I8", 8},   {"F8_E5M2", 8}, {"F8_E4M3", 8},
    {"F8_E8M0", 8}, {"I16", 16}, {"U16", 16}, {"F16", 16},    {"BF16", 16},
    {"I32", 32},    {"U32", 32}, {"F32", 32}, {"F64", 64},    {"I64", 64},
    {"U64", 64},    {"C64", 64}, {"F4", 4},   {"F6_E2M3", 6}, {"F6_E3M2", 6},
};

std::string in_quotes(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

SafetensorsDtype dtype_of(std::string_view s) {
  if (s == "F32") return SafetensorsDtype::F32;
  if (s == "F16") return SafetensorsDtype::F16;
  if (s == "BF16") return SafetensorsDtype::BF16;
  return SafetensorsDtype::Other;
}

// Bytes of `elements` of `bits` each, or nullopt on overflow or a partial byte.
std::optional<uint64_t> byte_size(uint64_t elements, uint32_t bits) {
  if (elements != 0 && elements > UINT64_MAX / bits) return std::nullopt;
  uint64_t total_bits = elements * bits;
  if (total_bits % 8 != 0) return std::nullopt;
  return total_bits / 8;
}

std::string read_small_file(const fs::path& path, uint64_t limit) {
  MappedFile f(path.string());
  if (f.size() > limit)
    throw Error(path.string(), Error::kNoOffset,
                "a file of at most " + std::to_string(limit) + " bytes",
                std::to_string(f.size()) + " bytes");
  auto b = f.bytes();
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace

std::optional<uint32_t> safetensors_dtype_bits(std::string_view dtype) {
  for (const auto& d : kDtypes)
    if (d.name == dtype) return d.bits;
  return std::nullopt;
}


SafetensorsFile SafetensorsFile::open(const fs::path& path, const SafetensorsLimits& limits) {
  auto map = std::make_shared<MappedFile>(path.string());
  SafetensorsFile f = parse(map->bytes(), path.string(), limits);
  f.map_ = std::move(map);
  return f;
}

SafetensorsFile SafetensorsFile::parse(std::span<const std::byte> bytes, std::string name,
                                       const SafetensorsLimits& limits) {
  SafetensorsFile f;
  f.bytes_ = bytes;
  f.path_ = name;
  ByteReader r(bytes, name);
  uint64_t n = r.read<uint64_t>("the header length (u64 LE)");
  if (n > limits.max_header)
    r.fail_at(0, "a header length of at most " + std::to_string(limits.max_header),
              std::to_string(n));
  if (n > r.remaining())
    r.fail_at(0,
              "a header length within the file's " + std::to_string(bytes.size()) +
                  " bytes (8 + header <= file size)",
              std::to_string(n));
  f.header_bytes_ = n;
  std::string_view text = r.take_string(n, "the JSON header");
  const uint64_t data_size = r.remaining();
  const uint64_t data_at = f.data_offset();

  json root = parse_json_document(text, name, kMaxJsonDepth, 8, "a well-formed JSON header");
  if (!root.is_object()) r.fail_at(8, "a JSON object as the header", json_type_name(root));
  if (root.size() > limits.max_tensors + 1)
    r.fail_at(8, "at most " + std::to_string(limits.max_tensors) + " tensors",
              std::to_string(root.size()) + " entries");

  auto fail = [&](const std::string& tensor, const std::string& expected,
                  const std::string& found = {}) -> void {
    throw Error(name, 8, "tensor " + in_quotes(tensor) + ": " + expected, found);
  };

  for (const auto& [key, val] : root.items()) {
    if (key == "__metadata__") {
      if (!val.is_object())
        throw Error(name, 8, "\"__metadata__\" to be an object of strings", json_type_name(val));
      for (const auto& [mk, mv] : val.items()) {
        if (!mv.is_string())
          throw Error(name, 8, "\"__metadata__\"." + in_quotes(mk) + " to be a string",
                      json_type_name(mv));
        f.metadata_.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    SafetensorsTensor t;
    t.name = key;
    if (!val.is_object()) fail(key, "an object", json_type_name(val));
    auto dt = val.find("dtype");
    if (dt == val.end()) fail(key, "a \"dtype\"", "none");
    if (!dt->is_string()) fail(key, "\"dtype\" to be a string", json_type_name(*dt));
    t.dtype_name = dt->get<std::string>();
    t.dtype = dtype_of(t.dtype_name);
    t.dtype_bits = safetensors_dtype_bits(t.dtype_name);

    auto sh = val.find("shape");
    if (sh == val.end()) fail(key, "a \"shape\"", "none");
    if (!sh->is_array()) fail(key, "\"shape\" to be an array", json_type_name(*sh));
    if (sh->size() > limits.max_rank)
      fail(key, "a shape of rank <= " + std::to_string(limits.max_rank),
           "rank " + std::to_string(sh->size()));
    for (const json& d : *sh) {
      if (!d.is_number_unsigned())
        fail(key, "shape dimensions to be non-negative integers",
             d.is_number() ? d.dump() : std::string(json_type_name(d)));
      t.shape.push_back(d.get<uint64_t>());
    }
    auto elements = shape_product(t.shape);
    if (!elements) {
      std::string s;
      for (uint64_t v : t.shape) s += (s.empty() ? "" : "x") + std::to_string(v);
      fail(key, "a shape whose element count fits in 64 bits", s);
    }
    t.elements = *elements;

    auto off = val.find("data_offsets");
    if (off == val.end()) fail(key, "\"data_offsets\"", "none");
    if (!off->is_array() || off->size() != 2)
      fail(key, "\"data_offsets\" to be [begin, end]",
           off->is_array() ? std::to_string(off->size()) + " items" : json_type_name(*off));
    for (const json& o : *off)
      if (!o.is_number_unsigned())
        fail(key, "data_offsets to be non-negative integers",
             o.is_number() ? o.dump() : std::string(json_type_name(o)));
    t.begin = (*off)[0].get<uint64_t>();
    t.end = (*off)[1].get<uint64_t>();
    if (t.begin > t.end)
      fail(key, "data_offsets begin <= end",
           "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + ")");
    if (t.end > data_size)
      throw Error(name, data_at + std::min(t.begin, data_size),
                  "tensor " + in_quotes(key) + ": data_offsets [" + std::to_string(t.begin) + ", " +
                      std::to_string(t.end) + ") within the data section of " +
                      std::to_string(data_size) + " bytes (file offset " + std::to_string(data_at) +
                      ")",
                  "end past the end of the file");
    if (t.dtype_bits) {
      auto want = byte_size(t.elements, *t.dtype_bits);
      if (!want || *want != t.bytes())
        fail(key,
             "data_offsets spanning elements x dtype size = " +
                 (want ? std::to_string(*want) : std::string("(overflow or partial byte)")) +
                 " bytes (" + std::to_string(t.elements) + " x " + t.dtype_name + ")",
             std::to_string(t.bytes()) + " bytes");
    }
    f.tensors_.push_back(std::move(t));
  }

  std::sort(f.tensors_.begin(), f.tensors_.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  // Sorted by begin, a tensor overlaps an earlier one iff it starts before the furthest
  // end so far (empty tensors occupy no bytes and overlap nothing).
  uint64_t furthest = 0;
  const SafetensorsTensor* owner = nullptr;
  for (const auto& t : f.tensors_) {
    if (t.begin == t.end) continue;
    if (owner != nullptr && t.begin < furthest)
      throw Error(
          name, data_at + t.begin,
          "tensor " + in_quotes(t.name) + " not to overlap tensor " + in_quotes(owner->name),
          "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + ") overlaps [" +
              std::to_string(owner->begin) + ", " + std::to_string(owner->end) + ")");
    if (t.end > furthest) {
      furthest = t.end;
      owner = &t;
    }
  }
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_.emplace(f.tensors_[i].name, i);
  return f;
}

const SafetensorsTensor* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::data(const SafetensorsTensor& t) const {
  return bytes_.subspan(data_offset() + t.begin, t.bytes());
}

std::vector<float> SafetensorsFile::to_f32(const SafetensorsTensor& t) const {
  auto raw = data(t);
  std::vector<float> out;
  switch (t.dtype) {
    case SafetensorsDtype::F32:
      out.resize(t.elements);
      if (!raw.empty()) std::memcpy(out.data(), raw.data(), raw.size());
      return out;
    case SafetensorsDtype::F16:
    case SafetensorsDtype::BF16: {
      out.resize(t.elements);
      bool f16 = t.dtype == SafetensorsDtype::F16;
      for (uint64_t i = 0; i < t.elements; ++i) {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);
        out[i] = f16 ? fp16_to_f32(h) : bf16_to_f32(h);
      }
      return out;
    }
    case SafetensorsDtype::Other:
      break;
  }
  throw Error(path_, data_offset() + t.begin,
              "tensor " + in_quotes(t.name) + " of dtype F32, F16 or BF16",
              t.dtype_name + (t.dtype_bits ? " (not supported)" : " (not a safetensors dtype)"));
}

SafetensorsIndex parse_safetensors_index(std::string_view text, std::string name) {
  json root = parse_json_document(text, name, kMaxJsonDepth);
  if (!root.is_object())
    throw Error(name, Error::kNoOffset, "a JSON object at the top level", json_type_name(root));
  SafetensorsIndex idx;
  if (auto md = root.find("metadata"); md != root.end() && !md->is_null()) {
    if (!md->is_object())
      throw Error(name, Error::kNoOffset, "key \"metadata\" to be an object", json_type_name(*md));
    if (auto ts = md->find("total_size"); ts != md->end()) {
      // Some exporters write it as a float ("total_size": 1234.0).
      if (ts->is_number_unsigned()) {
        idx.total_size = ts->get<uint64_t>();
      } else if (ts->is_number_float() && ts->get<double>() >= 0 && ts->get<double>() < 1.8e19 &&
                 std::floor(ts->get<double>()) == ts->get<double>()) {
        idx.total_size = static_cast<uint64_t>(ts->get<double>());
      } else {
        throw Error(name, Error::kNoOffset,
                    "key \"metadata\".\"total_size\" to be a non-negative integer",
                    ts->is_number() ? ts->dump() : std::string(json_type_name(*ts)));
      }
    }
  }
  auto wm = root.find("weight_map");
  if (wm == root.end()) throw Error(name, Error::kNoOffset, "key \"weight_map\"", "no such key");
  if (!wm->is_object())
    throw Error(name, Error::kNoOffset, "key \"weight_map\" to be an object", json_type_name(*wm));
  std::set<std::string> shards;
  for (const auto& [tensor, file] : wm->items()) {
    std::string key = "\"weight_map\"." + in_quotes(tensor);
    if (!file.is_string())
      throw Error(name, Error::kNoOffset, "key " + key + " to be a shard file name",
                  json_type_name(file));
    std::string s = file.get<std::string>();
    if (s.empty() || s == "." || s == ".." || s.find('/') != std::string::npos ||
        s.find('\\') != std::string::npos || s.find('\0') != std::string::npos)
      throw Error(name, Error::kNoOffset,
                  "key " + key + " to be a plain file name beside the index", in_quotes(s));
    shards.insert(s);
    idx.weight_map.emplace(tensor, std::move(s));
  }
  idx.shards.assign(shards.begin(), shards.end());
  return idx;
}

SafetensorsIndex read_safetensors_index(const fs::path& path) {
  return parse_safetensors_index(read_small_file(path, kMaxIndexBytes), path.string());
}

SafetensorsModel SafetensorsModel::open(const fs::path& path, const SafetensorsLimits& limits) {
  fs::path p = path;
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "model.safetensors.index.json", ec))
      p /= "model.safetensors.index.json";
    else if (fs::exists(p / "model.safetensors", ec))
      p /= "model.safetensors";
    else
      throw Error(path.string(), Error::kNoOffset,
                  "a directory holding model.safetensors.index.json or model.safetensors",
                  "neither");
  }
  SafetensorsModel m;
  std::string pname = p.filename().string();
  bool is_index = pname.size() >= 5 && pname.substr(pname.size() - 5) == ".json";
  if (!is_index) {
    m.files_.push_back(SafetensorsFile::open(p, limits));
    for (size_t t = 0; t < m.files_[0].tensors().size(); ++t)
      m.where_.emplace(m.files_[0].tensors()[t].name, std::make_pair(size_t{0}, t));
    return m;
  }
  SafetensorsIndex idx = read_safetensors_index(p);
  for (const auto& shard : idx.shards)
    m.files_.push_back(SafetensorsFile::open(p.parent_path() / shard, limits));
  for (size_t f = 0; f < m.files_.size(); ++f) {
    const auto& file = m.files_[f];
    for (size_t t = 0; t < file.tensors().size(); ++t) {
      const std::string& tname = file.tensors()[t].name;
      auto [it, inserted] = m.where_.emplace(tname, std::make_pair(f, t));
      if (!inserted)
        throw Error(p.string(), Error::kNoOffset,
                    "tensor " + in_quotes(tname) + " in one shard only",
                    "it is in " + m.files_[it->second.first].path() + " and " + file.path());
    }
  }
  for (const auto& [tname, shard] : idx.weight_map) {
    auto it = m.where_.find(tname);
    std::string where = p.parent_path().empty() ? shard : (p.parent_path() / shard).string();
    if (it == m.where_.end() || m.files_[it->second.first].path() != where)
      throw Error(p.string(), Error::kNoOffset,
                  "key \"weight_map\"." + in_quotes(tname) + ": the tensor inside " + shard,
                  it == m.where_.end() ? "in no shard" : "in " + m.files_[it->second.first].path());
  }
  return m;
}

std::optional<SafetensorsModel::Ref> SafetensorsModel::find(std::string_view name) const& {
  auto it = where_.find(name);
  if (it == where_.end()) return std::nullopt;
  const auto& file = files_[it->second.first];
  return Ref{&file, &file.tensors()[it->second.second]};
}

std::vector<std::string> SafetensorsModel::tensor_names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, _] : where_) out.push_back(name);
  return out;
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

void SafetensorsWriter::add(std::string name, std::string dtype, std::vector<uint64_t> shape,
                            std::span<const std::byte> data) {
  if (name == "__metadata__")
    throw Error("safetensors", Error::kNoOffset, "a tensor name other than __metadata__",
                in_quotes(name));
  for (const auto& e : entries_)
    if (e.name == name)
      throw Error("safetensors", Error::kNoOffset, "each tensor added once",
                  in_quotes(name) + " added twice");
  if (auto bits = safetensors_dtype_bits(dtype)) {
    auto elements = shape_product(shape);
    auto want = elements ? byte_size(*elements, *bits) : std::nullopt;
    if (!want || *want != data.size())
      throw Error("safetensors", Error::kNoOffset,
                  "tensor " + in_quotes(name) + ": " +
                      (want ? std::to_string(*want) : std::string("a valid number of")) +
                      " bytes of " + dtype,
                  std::to_string(data.size()) + " bytes");
  }
  entries_.push_back({std::move(name), std::move(dtype), std::move(shape),
                      std::vector<std::byte>(data.begin(), data.end())});
}

void SafetensorsWriter::add_f32(std::string name, std::vector<uint64_t> shape,
                                std::span<const float> values) {
  add(std::move(name), "F32", std::move(shape), std::as_bytes(values));
}

std::vector<std::byte> SafetensorsWriter::encode() const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    header[e.name] = {
        {"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.data.size()}}};
    offset += e.data.size();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::type_error& e) {
    throw Error("safetensors", Error::kNoOffset, "UTF-8 tensor names and metadata", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  uint64_t n = text.size();
  std::vector<std::byte> out(8 + n + offset);
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, text.data(), n);
  std::byte* p = out.data() + 8 + n;
  for (const auto& e : entries_) {
    if (!e.data.empty()) std::memcpy(p, e.data.data(), e.data.size());
    p += e.data.size();
  }
  return out;
}

void SafetensorsWriter::write(const fs::path& path) const {
  write_file_atomic(path, encode());
}

}  // namespace lockstep::formats
