#include "engine/tokenizer.h"

#include <pcre2.h>  // PCRE2_CODE_UNIT_WIDTH=8 comes from engine/CMakeLists.txt

#include <algorithm>
#include <array>
#include <cstdio>
#include <queue>

#include "formats/error.h"
#include "formats/gguf.h"

namespace lockstep::engine {

using formats::GgufArray;
using formats::GgufFile;
using formats::GgufValue;
using formats::GgufValueType;

namespace {

constexpr std::string_view kSpaceMark = "\xe2\x96\x81";     // U+2581 "▁", SentencePiece's space
constexpr std::string_view kUnknownPiece = "\xe2\x96\x85";  // U+2585, llama.cpp's rendering
constexpr uint64_t kAbsentId = 0xFFFFFFFFu;  // converters write u32 -1 for "no such token"

// Texts llama.cpp treats as end of turn when the vocab has them.
constexpr std::array<std::string_view, 7> kEogTexts = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "<|eom_id|>"};

// llama.cpp's pre-tokenizer regex lists (applied one after another, each splitting the pieces
// the previous one left; text between matches stays a piece of its own).
constexpr std::string_view kGpt2Regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
constexpr std::string_view kLlama3Regex =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr std::string_view kQwen2Regex =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

struct PreTokenizer {
  std::vector<std::string_view> names;
  std::vector<std::string_view> regexes;
  bool ignore_merges = false;
};

const std::vector<PreTokenizer>& pre_tokenizers() {
  static const std::vector<PreTokenizer> table = {
      {{"default"}, {"[\\p{P}\\$\\+<=>\\^`\\|]+", kGpt2Regex, "\\p{N}+", "[0-9][0-9][0-9]"}, false},
      {{"llama-bpe", "llama3", "llama-v3"}, {kLlama3Regex}, true},
      {{"qwen2", "qwen2.5", "qwen-2.5", "deepseek-r1-qwen"}, {kQwen2Regex}, false},
      {{"starcoder", "refact", "command-r", "smollm", "codeshell"}, {"\\p{N}", kGpt2Regex}, false},
      {{"gpt-2", "gpt2", "mpt", "olmo"}, {kGpt2Regex}, false},
  };
  return table;
}

// Bytes of a UTF-8 sequence judged by its first byte, as llama.cpp does (stray continuation
// bytes count as one).
size_t utf8_len(uint8_t first) {
  static constexpr std::array<uint8_t, 16> kLen = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[first >> 4];
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's byte <-> printable code point map: printable Latin-1 bytes stand for themselves, the
// rest take code points from 256 upwards in byte order.
struct ByteMap {
  std::array<std::string, 256> to_utf8;
  std::array<int16_t, 512> to_byte;  // code point -> byte, -1 when not a mapped code point
};

const ByteMap& byte_map() {
  static const ByteMap map = [] {
    ByteMap m;
    m.to_byte.fill(-1);
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      uint32_t cp = printable ? b : 256 + extra++;
      append_utf8(m.to_utf8[b], cp);
      m.to_byte[cp] = static_cast<int16_t>(b);
    }
    return m;
  }();
  return map;
}

// Decodes one UTF-8 sequence at s[i]; returns the code point and advances i. Malformed input
// yields UINT32_MAX and advances by one byte.
uint32_t next_code_point(std::string_view s, size_t& i) {
  auto b = static_cast<uint8_t>(s[i]);
  size_t n = utf8_len(b);
  if (n == 1 || i + n > s.size()) {
    ++i;
    return b < 0x80 ? b : UINT32_MAX;
  }
  uint32_t cp = b & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < n; ++k) {
    auto c = static_cast<uint8_t>(s[i + k]);
    if ((c & 0xC0) != 0x80) {
      ++i;
      return UINT32_MAX;
    }
    cp = (cp << 6) | (c & 0x3F);
  }
  i += n;
  return cp;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos);
  return out;
}

const GgufValue& require(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.find(key);
  if (!v) throw Error(f.path(), Error::kNoOffset, "metadata key " + std::string(key));
  return *v;
}

const GgufArray& require_array(const GgufFile& f, std::string_view key, size_t expected_len) {
  const GgufValue& v = require(f, key);
  const GgufArray* a = v.as_array();
  if (!a)
    throw Error(f.path(), Error::kNoOffset, std::string(key) + " to be an array",
                std::string(formats::gguf_type_name(v.type)));
  if (expected_len != SIZE_MAX && a->items.size() != expected_len)
    throw Error(
        f.path(), Error::kNoOffset,
        std::string(key) + " to hold " + std::to_string(expected_len) + " items (one per token)",
        std::to_string(a->items.size()));
  return *a;
}

std::optional<bool> get_bool(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.find(key);
  if (!v) return std::nullopt;
  if (const bool* b = v->as_bool()) return *b;
  throw Error(f.path(), Error::kNoOffset, std::string(key) + " to be a bool",
              std::string(formats::gguf_type_name(v->type)));
}

// A token id key: absent (or the u32 -1 converters write for "none") gives `fallback`.
int32_t get_token_id(const GgufFile& f, std::string_view key, int32_t fallback, size_t vocab) {
  const GgufValue* v = f.find(key);
  if (!v) return fallback;
  std::optional<uint64_t> id = v->as_u64();
  if (!id) {
    if (v->as_i64() == -1) return Tokenizer::kNoToken;
    throw Error(f.path(), Error::kNoOffset, std::string(key) + " to be a token id", v->summary());
  }
  if (*id == kAbsentId) return Tokenizer::kNoToken;
  if (*id >= vocab)
    throw Error(f.path(), Error::kNoOffset,
                std::string(key) + " below the vocab size " + std::to_string(vocab),
                std::to_string(*id));
  return static_cast<int32_t>(*id);
}

}  // namespace

// The pre-tokenizer's regexes, compiled once per tokenizer.
struct PreSplitter {
  std::vector<pcre2_code*> codes;

  PreSplitter() = default;
  PreSplitter(const PreSplitter&) = delete;
  PreSplitter& operator=(const PreSplitter&) = delete;
  ~PreSplitter() {
    for (pcre2_code* c : codes) pcre2_code_free(c);
  }

  void add(std::string_view pattern) {
    int err = 0;
    PCRE2_SIZE err_off = 0;
    pcre2_code* code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_off, nullptr);
    if (!code) {
      std::array<PCRE2_UCHAR, 256> msg{};
      pcre2_get_error_message(err, msg.data(), msg.size());
      throw Error("pre-tokenizer regex does not compile at " + std::to_string(err_off) + ": " +
                  reinterpret_cast<const char*>(msg.data()));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; the interpreter remains
    codes.push_back(code);
  }

  // [offset, length] pieces of `text`, in order, covering all of it.
  std::vector<std::pair<size_t, size_t>> split(std::string_view text) const {
    std::vector<std::pair<size_t, size_t>> pieces = {{0, text.size()}};
    for (pcre2_code* code : codes) {
      std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
          pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
      std::vector<std::pair<size_t, size_t>> next;
      next.reserve(pieces.size() * 2);
      for (auto [off, len] : pieces) {
        auto subject = reinterpret_cast<PCRE2_SPTR>(text.data() + off);
        size_t start = 0;
        size_t pos = 0;
        while (pos < len) {
          int rc = pcre2_match(code, subject, len, pos, 0, md.get(), nullptr);
          if (rc == PCRE2_ERROR_NOMATCH) break;
          if (rc < 0)
            throw Error("pre-tokenizer regex failed (PCRE2 error " + std::to_string(rc) + ")");
          const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
          if (ov[1] == ov[0]) {  // empty match: step over one character
            pos = ov[0] + 1;
            while (pos < len && (subject[pos] & 0xC0) == 0x80) ++pos;
            continue;
          }
          if (ov[0] > start) next.emplace_back(off + start, ov[0] - start);
          next.emplace_back(off + ov[0], ov[1] - ov[0]);
          start = pos = ov[1];
        }
        if (start < len) next.emplace_back(off + start, len - start);
      }
      pieces = std::move(next);
    }
    return pieces;
  }
};

Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
  Tokenizer t;
  t.path_ = f.path();
  const GgufValue& model_value = require(f, "tokenizer.ggml.model");
  const std::string* model = model_value.as_string();
  if (!model || (*model != "llama" && *model != "gpt2"))
    throw Error(f.path(), Error::kNoOffset,
                "tokenizer.ggml.model to be \"llama\" (SentencePiece) or \"gpt2\" (byte-level BPE)",
                model ? "\"" + *model + "\"" : model_value.summary());
  t.kind_ = *model == "llama" ? TokenizerKind::Spm : TokenizerKind::Bpe;

  const GgufArray& tokens = require_array(f, "tokenizer.ggml.tokens", SIZE_MAX);
  const size_t n = tokens.items.size();
  if (n == 0 || n > size_t{INT32_MAX})
    throw Error(f.path(), Error::kNoOffset, "tokenizer.ggml.tokens to be a non-empty list",
                std::to_string(n) + " tokens");
  t.tokens_.reserve(n);
  t.token_ids_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string* s = tokens.items[i].as_string();
    if (!s)
      throw Error(f.path(), Error::kNoOffset,
                  "tokenizer.ggml.tokens[" + std::to_string(i) + "] to be a string",
                  tokens.items[i].summary());
    t.tokens_.push_back(*s);
    t.token_ids_[*s] = static_cast<int32_t>(i);  // a duplicate maps to its last id, as llama.cpp
  }

  t.scores_.assign(n, 0.0f);
  if (f.find("tokenizer.ggml.scores") || t.kind_ == TokenizerKind::Spm) {
    const GgufArray& scores = require_array(f, "tokenizer.ggml.scores", n);
    for (size_t i = 0; i < n; ++i) {
      std::optional<double> v = scores.items[i].as_f64();
      if (!v)
        throw Error(f.path(), Error::kNoOffset,
                    "tokenizer.ggml.scores[" + std::to_string(i) + "] to be a number",
                    scores.items[i].summary());
      t.scores_[i] = static_cast<float>(*v);
    }
  }

  t.types_.assign(n, TokenType::Normal);
  if (f.find("tokenizer.ggml.token_type")) {
    const GgufArray& types = require_array(f, "tokenizer.ggml.token_type", n);
    for (size_t i = 0; i < n; ++i) {
      std::optional<int64_t> v = types.items[i].as_i64();
      if (!v)
        throw Error(f.path(), Error::kNoOffset,
                    "tokenizer.ggml.token_type[" + std::to_string(i) + "] to be an integer",
                    types.items[i].summary());
      t.types_[i] = *v >= 1 && *v <= 6 ? static_cast<TokenType>(*v) : TokenType::Undefined;
    }
  }

  const bool spm = t.kind_ == TokenizerKind::Spm;
  if (!spm) {
    const GgufArray& merges = require_array(f, "tokenizer.ggml.merges", SIZE_MAX);
    t.merge_ranks_.reserve(merges.items.size());
    for (size_t i = 0; i < merges.items.size(); ++i) {
      const std::string* m = merges.items[i].as_string();
      // "left right"; the left part is never empty, so the separator is searched from 1.
      size_t sep = m ? m->find(' ', 1) : std::string::npos;
      if (sep == std::string::npos)
        throw Error(f.path(), Error::kNoOffset,
                    "tokenizer.ggml.merges[" + std::to_string(i) + "] to be \"left right\"",
                    merges.items[i].summary());
      t.merge_ranks_.emplace(*m, static_cast<int32_t>(i));  // first occurrence keeps its rank
    }
    const GgufValue* pre_value = f.find("tokenizer.ggml.pre");
    if (pre_value && !pre_value->as_string())
      throw Error(f.path(), Error::kNoOffset, "tokenizer.ggml.pre to be a string",
                  pre_value->summary());
    t.pre_ = pre_value ? *pre_value->as_string() : "default";
    const PreTokenizer* pre = nullptr;
    std::string known;
    for (const PreTokenizer& p : pre_tokenizers())
      for (std::string_view name : p.names) {
        if (name == t.pre_) pre = &p;
        known += (known.empty() ? "" : ", ") + std::string(name);
      }
    if (!pre)
      throw Error(f.path(), Error::kNoOffset, "tokenizer.ggml.pre to be one of: " + known,
                  "\"" + t.pre_ + "\"");
    auto splitter = std::make_shared<PreSplitter>();
    for (std::string_view r : pre->regexes) splitter->add(r);
    t.splitter_ = std::move(splitter);
    t.ignore_merges_ = pre->ignore_merges;
  }

  // llama.cpp's defaults: Llama's ids for SPM (when the vocab is that large), none for BPE.
  auto fallback = [&](int32_t id) { return spm && static_cast<size_t>(id) < n ? id : kNoToken; };
  t.bos_ = get_token_id(f, "tokenizer.ggml.bos_token_id", fallback(1), n);
  t.eos_ = get_token_id(f, "tokenizer.ggml.eos_token_id", fallback(2), n);
  t.unk_ = get_token_id(f, "tokenizer.ggml.unknown_token_id", fallback(0), n);
  t.add_bos_default_ = get_bool(f, "tokenizer.ggml.add_bos_token").value_or(spm);
  t.add_space_prefix_ = spm && get_bool(f, "tokenizer.ggml.add_space_prefix").value_or(true);

  for (int32_t id : {t.eos_, get_token_id(f, "tokenizer.ggml.eot_token_id", kNoToken, n),
                     get_token_id(f, "tokenizer.ggml.eom_token_id", kNoToken, n)})
    if (id != kNoToken) t.eog_.push_back(id);
  for (std::string_view text : kEogTexts) {
    std::optional<int32_t> id = t.find_token(text);
    if (!id) continue;
    t.eog_.push_back(*id);
    // Some converters mark these as normal; llama.cpp treats them as control, and so do we.
    if (t.types_[*id] == TokenType::Normal) t.types_[*id] = TokenType::Control;
  }

  for (size_t i = 0; i < n; ++i) {
    TokenType ty = t.types_[i];
    if ((ty == TokenType::Control || ty == TokenType::UserDefined || ty == TokenType::Unknown) &&
        !t.tokens_[i].empty())
      t.specials_.push_back(static_cast<int32_t>(i));
  }
  // Longest first, so "<|im_start|>" wins over any special that is its prefix.
  std::stable_sort(t.specials_.begin(), t.specials_.end(), [&t](int32_t a, int32_t b) {
    return t.tokens_[a].size() > t.tokens_[b].size();
  });
  return t;
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw Error(path_, Error::kNoOffset, "a token id in [0, " + std::to_string(vocab_size()) + ")",
                std::to_string(id));
}

std::optional<int32_t> Tokenizer::find_token(std::string_view text) const {
  auto it = token_ids_.find(text);
  if (it == token_ids_.end()) return std::nullopt;
  return it->second;
}

TokenType Tokenizer::token_type(int32_t id) const {
  check_id(id);
  return types_[id];
}

std::string Tokenizer::token_text(int32_t id) const {
  check_id(id);
  return tokens_[id];
}

bool Tokenizer::is_eog(int32_t id) const {
  return std::find(eog_.begin(), eog_.end(), id) != eog_.end();
}

std::vector<Tokenizer::Fragment> Tokenizer::partition(std::string_view text,
                                                      bool parse_special) const {
  std::vector<Fragment> frags = {{kNoToken, 0, text.size()}};
  std::vector<Fragment> next;
  for (int32_t id : specials_) {
    TokenType ty = types_[id];
    if (!parse_special && (ty == TokenType::Control || ty == TokenType::Unknown)) continue;
    const std::string& special = tokens_[id];
    next.clear();
    for (const Fragment& f : frags) {
      if (f.token != kNoToken) {
        next.push_back(f);
        continue;
      }
      std::string_view sub = text.substr(f.offset, f.length);
      size_t pos = 0;
      for (size_t hit; (hit = sub.find(special, pos)) != std::string_view::npos;
           pos = hit + special.size()) {
        if (hit > pos) next.push_back({kNoToken, f.offset + pos, hit - pos});
        next.push_back({id, f.offset + hit, special.size()});
      }
      if (pos < sub.size()) next.push_back({kNoToken, f.offset + pos, sub.size() - pos});
    }
    frags.swap(next);
  }
  return frags;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos,
                                       bool parse_special) const {
  std::vector<int32_t> out;
  if (add_bos) {
    if (bos_ == kNoToken)
      throw Error(path_, Error::kNoOffset, "a BOS token (tokenizer.ggml.bos_token_id)");
    out.push_back(bos_);
  }
  if (text.empty()) return out;
  out.reserve(out.size() + text.size() / 3);
  bool prev_special = true;  // SPM: a space prefix starts the text and follows each special
  for (const Fragment& f : partition(text, parse_special)) {
    if (f.token != kNoToken) {
      out.push_back(f.token);
      prev_special = true;
      continue;
    }
    std::string_view piece_text = text.substr(f.offset, f.length);
    if (kind_ == TokenizerKind::Spm) {
      std::string s = add_space_prefix_ && prev_special ? " " : "";
      s += piece_text;
      encode_spm(replace_all(s, " ", kSpaceMark), out);
    } else {
      encode_bpe(piece_text, out);
    }
    prev_special = false;
  }
  return out;
}

int32_t Tokenizer::spm_byte_token(uint8_t byte) const {
  std::array<char, 8> name{};
  std::snprintf(name.data(), name.size(), "<0x%02X>", byte);
  if (std::optional<int32_t> id = find_token(name.data())) return *id;
  if (std::optional<int32_t> id = find_token(std::string(1, static_cast<char>(byte)))) return *id;
  if (unk_ != kNoToken) return unk_;
  throw Error(path_, Error::kNoOffset,
              "a byte token " + std::string(name.data()) + " or an unknown token in the vocab");
}

namespace {

// The merge loop SentencePiece and byte-level BPE share: start from UTF-8 characters and
// repeatedly merge the adjacent pair with the best priority (leftmost on ties), using a
// priority queue whose stale entries are skipped when popped. `priority(left, right)` gives a
// pair's priority, or nullopt when the pair does not merge; larger merges first. Returns the
// final pieces as views into `text`.
template <typename Priority>
std::vector<std::string_view> merge_pairs(std::string_view text, Priority priority) {
  struct Symbol {
    int prev, next;
    size_t pos, len;
  };
  struct Bigram {
    int left, right;
    double priority;
    size_t size;
  };
  auto worse = [](const Bigram& a, const Bigram& b) {
    return a.priority < b.priority || (a.priority == b.priority && a.left > b.left);
  };
  std::vector<Symbol> sym;  // [characters]
  sym.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    size_t len = std::min(utf8_len(static_cast<uint8_t>(text[pos])), text.size() - pos);
    int idx = static_cast<int>(sym.size());
    sym.push_back({idx - 1, idx + 1, pos, len});
    pos += len;
  }
  std::vector<std::string_view> pieces;
  if (sym.empty()) return pieces;
  sym.back().next = -1;

  std::priority_queue<Bigram, std::vector<Bigram>, decltype(worse)> queue(worse);
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    std::optional<double> p = priority(text.substr(sym[left].pos, sym[left].len),
                                       text.substr(sym[right].pos, sym[right].len));
    if (p) queue.push({left, right, *p, sym[left].len + sym[right].len});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int>(i - 1), static_cast<int>(i));

  while (!queue.empty()) {
    Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.size) continue;  // stale
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  for (int i = 0; i != -1; i = sym[i].next) pieces.push_back(text.substr(sym[i].pos, sym[i].len));
  return pieces;
}

}  // namespace

// SentencePiece: a pair merges when its concatenation is a token; the higher score first.
// Pieces outside the vocab fall back to byte tokens.
void Tokenizer::encode_spm(std::string_view s, std::vector<int32_t>& out) const {
  auto score = [&](std::string_view left, std::string_view right) -> std::optional<double> {
    auto it = token_ids_.find(std::string_view(left.data(), left.size() + right.size()));
    if (it == token_ids_.end()) return std::nullopt;
    return scores_[it->second];
  };
  for (std::string_view piece_text : merge_pairs(s, score)) {
    if (auto it = token_ids_.find(piece_text); it != token_ids_.end()) {
      out.push_back(it->second);
    } else {
      for (char c : piece_text) out.push_back(spm_byte_token(static_cast<uint8_t>(c)));
    }
  }
}

void Tokenizer::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
  const ByteMap& bm = byte_map();
  std::string word;
  for (auto [off, len] : splitter_->split(text)) {
    word.clear();
    for (char c : text.substr(off, len)) word += bm.to_utf8[static_cast<uint8_t>(c)];
    bpe_word(word, out);
  }
}

// Byte-level BPE over one pre-tokenized word (already in GPT-2's code points): a pair merges
// when "left right" is a merge rule; the lowest rank first.
void Tokenizer::bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    if (auto it = token_ids_.find(word); it != token_ids_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::string key;
  auto rank = [&](std::string_view left, std::string_view right) -> std::optional<double> {
    key.assign(left);
    key += ' ';
    key += right;
    auto it = merge_ranks_.find(key);
    if (it == merge_ranks_.end()) return std::nullopt;
    return -static_cast<double>(it->second);
  };
  for (std::string_view piece_text : merge_pairs(word, rank)) {
    if (auto it = token_ids_.find(piece_text); it != token_ids_.end()) {
      out.push_back(it->second);
      continue;
    }
    // A merge result outside the vocab: emit whatever single bytes are tokens (llama.cpp).
    for (char c : piece_text)
      if (auto one = token_ids_.find(std::string_view(&c, 1)); one != token_ids_.end())
        out.push_back(one->second);
  }
}

std::string Tokenizer::piece(int32_t id, bool render_special) const {
  check_id(id);
  const std::string& text = tokens_[id];
  switch (types_[id]) {
    case TokenType::Control:
      return render_special ? text : std::string();
    case TokenType::Unknown:
      return render_special ? text : std::string(kUnknownPiece);
    case TokenType::UserDefined:
      return kind_ == TokenizerKind::Spm ? replace_all(text, kSpaceMark, " ") : text;
    case TokenType::Byte:
      if (kind_ == TokenizerKind::Spm && text.size() == 6 && text.starts_with("<0x")) {
        unsigned value = 0;
        if (std::sscanf(text.c_str() + 3, "%2x", &value) == 1)
          return std::string(1, static_cast<char>(value));
      }
      break;
    default:
      break;
  }
  if (kind_ == TokenizerKind::Spm) return replace_all(text, kSpaceMark, " ");
  // Byte-level BPE: every code point stands for one byte; one outside the map is kept as is.
  const ByteMap& bm = byte_map();
  std::string out;
  for (size_t i = 0; i < text.size();) {
    size_t start = i;
    uint32_t cp = next_code_point(text, i);
    if (cp < bm.to_byte.size() && bm.to_byte[cp] >= 0)
      out += static_cast<char>(bm.to_byte[cp]);
    else
      out.append(text, start, i - start);
  }
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool render_special) const {
  std::string out;
  for (int32_t id : ids) out += piece(id, render_special);
  return out;
}

}  // namespace lockstep::engine
