#pragma once
// Tokenizers built from GGUF metadata, matching llama.cpp's observable behaviour:
//   - "llama": SentencePiece-style. Text gets a leading space (tokenizer.ggml.add_space_prefix,
//     default true), spaces become "▁", then adjacent pieces merge greedily by vocab score;
//     pieces that are not tokens fall back to <0xNN> byte tokens.
//   - "gpt2": byte-level BPE. A pre-tokenizer regex list chosen by tokenizer.ggml.pre splits the
//     text into words, each word's bytes map to GPT-2's printable code points, and merges apply
//     by rank (tokenizer.ggml.merges order).
// Control and unknown tokens are matched inside text only with parse_special=true; user-defined
// tokens always are (as llama.cpp does).

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lockstep::formats {
class GgufFile;
}

namespace lockstep::engine {

enum class TokenizerKind { Spm, Bpe };

// tokenizer.ggml.token_type values.
enum class TokenType : uint8_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

struct PreSplitter;  // compiled pre-tokenizer regexes (tokenizer.cpp)

class Tokenizer {
 public:
  static constexpr int32_t kNoToken = -1;

  // Throws lockstep::Error naming the file and the key when tokenizer metadata is missing or
  // malformed.
  static Tokenizer from_gguf(const formats::GgufFile& file);

  // add_bos prepends bos() (an Error when the vocab has none). parse_special maps the text of
  // control/unknown tokens (e.g. "<|im_start|>") to their ids instead of spelling them out.
  std::vector<int32_t> encode(std::string_view text, bool add_bos,
                              bool parse_special = false) const;
  // Concatenated token pieces (llama.cpp's token_to_piece): SPM output keeps the leading space
  // that encode added, so decoding token by token streams the same text as decoding at once.
  // Control tokens render as nothing unless render_special.
  std::string decode(std::span<const int32_t> ids, bool render_special = false) const;
  // One token's piece as decode() renders it.
  std::string piece(int32_t id, bool render_special = false) const;
  // The token's text as stored in the vocab ("▁the", "Ġthe", "<0x0A>").
  std::string token_text(int32_t id) const;
  std::optional<int32_t> find_token(std::string_view text) const;
  TokenType token_type(int32_t id) const;

  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t unk() const { return unk_; }
  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  // End of generation: eos, eot, eom, and the end-of-turn tokens llama.cpp recognises by text.
  bool is_eog(int32_t id) const;
  // tokenizer.ggml.add_bos_token (default: true for "llama", false for "gpt2").
  bool add_bos_by_default() const { return add_bos_default_; }
  TokenizerKind kind() const { return kind_; }
  const std::string& pre() const { return pre_; }

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using TextMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;
  struct Fragment {
    int32_t token;  // kNoToken for raw text
    size_t offset;
    size_t length;
  };

  void check_id(int32_t id) const;
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;
  void encode_spm(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
  void bpe_word(std::string_view word, std::vector<int32_t>& out) const;
  int32_t spm_byte_token(uint8_t byte) const;

  std::string path_;
  TokenizerKind kind_ = TokenizerKind::Spm;
  std::string pre_;
  std::vector<std::string> tokens_;  // [vocab]
  std::vector<float> scores_;        // [vocab]
  std::vector<TokenType> types_;     // [vocab]
  TextMap token_ids_;
  TextMap merge_ranks_;            // "left right" -> rank
  std::vector<int32_t> specials_;  // matched inside text, longest text first
  std::vector<int32_t> eog_;
  std::shared_ptr<const PreSplitter> splitter_;
  int32_t bos_ = kNoToken;
  int32_t eos_ = kNoToken;
  int32_t unk_ = kNoToken;
  bool add_bos_default_ = false;
  bool add_space_prefix_ = false;
  bool ignore_merges_ = false;  // llama3: a word that is a token is emitted whole
};

}  // namespace lockstep::engine
