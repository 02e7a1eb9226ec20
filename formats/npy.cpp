#include "formats/npy.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <string_view>

#include "formats/atomic_dir.h"
#include "formats/byte_reader.h"
#include "formats/error.h"
#include "formats/mapped_file.h"

namespace lockstep::formats {
namespace {

constexpr char kMagic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
constexpr uint64_t kMaxHeaderBytes = 16u << 20;  // NumPy itself refuses headers over 10 KB
constexpr uint64_t kAlign = 64;

// The header is a Python dict literal; this parses the subset NumPy writes: string keys,
// string / True / False values and tuples of integers.
class DictParser {
 public:
  DictParser(std::string_view text, uint64_t base, const std::string& name)
      : s_(text), base_(base), name_(name) {}

  struct Value {
    enum Kind { Str, Bool, Tuple } kind = Str;
    std::string str;
    bool flag = false;
    std::vector<uint64_t> ints;
    uint64_t at = 0;  // file offset, for errors about the value
  };

  // Calls `on_entry(key, value)` for each entry.
  template <typename F>
  void parse(F on_entry) {
    ws();
    expect('{', "'{' opening the header dict");
    ws();
    while (!eat('}')) {
      std::string key = string("a quoted key");
      ws();
      expect(':', "':' after the key");
      ws();
      Value v = value();
      on_entry(key, v);
      ws();
      if (eat(',')) {
        ws();
        continue;
      }
      ws();
      expect('}', "',' or '}' after a dict entry");
      break;
    }
    ws();
    if (pos_ != s_.size()) fail("only spaces and a newline after the header dict");
  }

  [[noreturn]] void fail(const std::string& expected) const { fail_at(pos_, expected); }
  [[noreturn]] void fail_at(size_t pos, const std::string& expected) const {
    std::string found = pos < s_.size() ? "'" + std::string(1, s_[pos]) + "'" : "end of header";
    throw Error(name_, base_ + pos, expected, found);
  }

 private:
  void ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool eat(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c, const std::string& what) {
    if (!eat(c)) fail(what);
  }
  bool eat_word(std::string_view w) {
    if (s_.substr(pos_, w.size()) != w) return false;
    pos_ += w.size();
    return true;
  }
  std::string string(const std::string& what) {
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) fail(what);
    char quote = s_[pos_++];
    size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] != quote) {
      if (s_[pos_] == '\\') fail("a string without escapes");
      ++pos_;
    }
    if (pos_ >= s_.size()) fail_at(start - 1, "a closed string");
    return std::string(s_.substr(start, pos_++ - start));
  }
  uint64_t integer() {
    size_t start = pos_;
    uint64_t v = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      auto d = static_cast<uint64_t>(s_[pos_] - '0');
      if (v > (UINT64_MAX - d) / 10) fail_at(start, "a dimension that fits in 64 bits");
      v = v * 10 + d;
      ++pos_;
    }
    if (pos_ == start) fail("a non-negative integer dimension");
    eat('L');  // Python 2 longs: "(3L, 4L)"
    return v;
  }
  Value value() {
    Value v;
    v.at = base_ + pos_;
    if (pos_ < s_.size() && (s_[pos_] == '\'' || s_[pos_] == '"')) {
      v.str = string("a string");
    } else if (eat_word("True")) {
      v.kind = Value::Bool;
      v.flag = true;
    } else if (eat_word("False")) {
      v.kind = Value::Bool;
    } else if (eat('(')) {
      v.kind = Value::Tuple;
      ws();
      while (!eat(')')) {
        if (v.ints.size() == kNpyMaxRank)
          fail("a shape of at most " + std::to_string(kNpyMaxRank) + " dimensions");
        v.ints.push_back(integer());
        ws();
        if (eat(',')) {
          ws();
          continue;
        }
        expect(')', "',' or ')' in the shape tuple");
        break;
      }
    } else if (pos_ < s_.size() && s_[pos_] == '[') {
      fail(
          "a string, True, False or a tuple (lists, as in structured dtypes, are not "
          "supported)");
    } else {
      fail("a string, True, False or a tuple");
    }
    return v;
  }

  std::string_view s_;
  uint64_t base_;
  const std::string& name_;
  size_t pos_ = 0;
};

std::string in_quotes(const std::string& s) {
  return "'" + s + "'";
}

}  // namespace

NpyHeader parse_npy_header(std::span<const std::byte> bytes, const std::string& name) {
  ByteReader r(bytes, name);
  auto magic = r.take(6, "the NPY magic \\x93NUMPY");
  if (std::memcmp(magic.data(), kMagic, 6) != 0) r.fail_at(0, "the NPY magic \\x93NUMPY");
  NpyHeader h;
  h.major = r.read<uint8_t>("the major version");
  h.minor = r.read<uint8_t>("the minor version");
  if (h.minor != 0 || h.major < 1 || h.major > 3)
    r.fail_at(6, "NPY version 1.0, 2.0 or 3.0",
              std::to_string(h.major) + "." + std::to_string(h.minor));
  uint64_t header_len = h.major == 1 ? r.read<uint16_t>("the header length (u16 LE)")
                                     : r.read<uint32_t>("the header length (u32 LE)");
  if (header_len > kMaxHeaderBytes)
    r.fail_at(8, "a header length of at most " + std::to_string(kMaxHeaderBytes),
              std::to_string(header_len));
  uint64_t header_at = r.offset();
  std::string_view text = r.take_string(header_len, "the header dict");
  h.data_offset = r.offset();

  std::optional<std::string> descr;
  std::optional<bool> fortran;
  std::optional<std::vector<uint64_t>> shape;
  DictParser p(text, header_at, name);
  p.parse([&](const std::string& key, const DictParser::Value& v) {
    auto bad = [&](const std::string& expected) {
      throw Error(name, v.at, "'" + key + "' to be " + expected);
    };
    if (key == "descr") {
      if (v.kind != DictParser::Value::Str) bad("a dtype string");
      descr = v.str;
    } else if (key == "fortran_order") {
      if (v.kind != DictParser::Value::Bool) bad("True or False");
      fortran = v.flag;
    } else if (key == "shape") {
      if (v.kind != DictParser::Value::Tuple) bad("a tuple of dimensions");
      shape = v.ints;
    } else {
      throw Error(name, header_at, "only the keys 'descr', 'fortran_order' and 'shape'",
                  "key " + in_quotes(key));
    }
  });
  if (!descr || !fortran || !shape)
    throw Error(name, header_at, "a header dict with 'descr', 'fortran_order' and 'shape'",
                std::string("no ") + (!descr     ? "'descr'"
                                      : !fortran ? "'fortran_order'"
                                                 : "'shape'"));
  if (*descr != "<f4") {
    std::string why;
    if (*descr == ">f4")
      why = "big-endian float32 (convert with a.astype('<f4'))";
    else if (*descr == "=f4" || *descr == "f4")
      why = "float32 of unstated byte order";
    else
      why = "a non-float32 dtype (convert with a.astype('<f4'))";
    throw Error(name, header_at, "dtype '<f4' (little-endian float32)",
                in_quotes(*descr) + ", " + why);
  }
  if (*fortran)
    throw Error(name, header_at, "'fortran_order': False (C order)",
                "True (save np.ascontiguousarray(a) instead)");
  h.shape = *shape;
  // A zero dimension makes the array empty whatever the others say.
  bool empty = std::find(h.shape.begin(), h.shape.end(), 0) != h.shape.end();
  h.elements = empty ? 0 : 1;
  for (uint64_t d : h.shape) {
    if (empty) break;
    if (h.elements > UINT64_MAX / 4 / d)
      throw Error(name, header_at, "a shape whose data size fits in 64 bits", "an overflow");
    h.elements *= d;
  }
  uint64_t data = h.elements * 4;
  if (r.remaining() != data)
    r.fail_at(r.remaining() < data ? bytes.size() : h.data_offset + data,
              std::to_string(data) + " data bytes (" + std::to_string(h.elements) + " f32)",
              std::to_string(r.remaining()) + " bytes after the header (" +
                  (r.remaining() < data ? "truncated" : "trailing bytes") + ")");
  return h;
}

NpyArray parse_npy(std::span<const std::byte> bytes, std::string name) {
  NpyHeader h = parse_npy_header(bytes, name);
  NpyArray a;
  a.shape = std::move(h.shape);
  a.values.resize(h.elements);
  if (h.elements > 0) std::memcpy(a.values.data(), bytes.data() + h.data_offset, h.elements * 4);
  return a;
}

NpyArray read_npy(const std::filesystem::path& path) {
  MappedFile f(path.string());
  return parse_npy(f.bytes(), path.string());
}

std::vector<std::byte> encode_npy(std::span<const float> values, std::span<const uint64_t> shape) {
  bool empty = std::find(shape.begin(), shape.end(), 0) != shape.end();
  uint64_t n = empty ? 0 : 1;
  bool overflow = false;
  for (uint64_t d : shape) {
    if (empty || overflow) break;
    if (n > UINT64_MAX / 4 / d) overflow = true;
    n *= d;
  }
  if (overflow || n != values.size() || shape.size() > kNpyMaxRank) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    throw Error(
        "NPY", Error::kNoOffset,
        "a shape of rank <= 64 whose product is the value count " + std::to_string(values.size()),
        s + ")");
  }
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) dict += (i ? ", " : "") + std::to_string(shape[i]);
  dict += shape.size() == 1 ? ",), }" : "), }";
  // Rank <= 64 with at most 20 digits a dimension keeps the header far below version 1.0's
  // 64 KiB limit. Pad so the data start is 64-byte aligned, as NumPy does.
  constexpr uint64_t prefix = 10;
  uint64_t total = prefix + dict.size() + 1;
  dict.append((kAlign - total % kAlign) % kAlign, ' ');
  dict += '\n';

  std::vector<std::byte> out(prefix + dict.size() + values.size() * 4);
  std::memcpy(out.data(), kMagic, 6);
  out[6] = std::byte{1};
  out[7] = std::byte{0};
  auto len = static_cast<uint16_t>(dict.size());
  std::memcpy(out.data() + 8, &len, 2);
  std::memcpy(out.data() + prefix, dict.data(), dict.size());
  if (!values.empty())
    std::memcpy(out.data() + prefix + dict.size(), values.data(), values.size() * 4);
  return out;
}

void write_npy(const std::filesystem::path& path, std::span<const float> values,
               std::span<const uint64_t> shape) {
  write_file_atomic(path, encode_npy(values, shape));
}

}  // namespace lockstep::formats
