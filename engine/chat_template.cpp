#include "engine/chat_template.h"

#include <optional>

#include "engine/tokenizer.h"
#include "formats/error.h"

namespace lockstep::engine {

namespace {
constexpr const char* kStart = "<|im_start|>";
constexpr const char* kEnd = "<|im_end|>";
}  // namespace

std::string apply_chatml(std::span<const ChatMessage> messages, bool add_generation_prompt) {
  std::string out;
  for (const ChatMessage& m : messages)
    out += std::string(kStart) + m.role + "\n" + m.content + kEnd + "\n";
  if (add_generation_prompt) out += std::string(kStart) + "assistant\n";
  return out;
}

std::vector<int32_t> encode_chatml(const Tokenizer& tokenizer,
                                   std::span<const ChatMessage> messages,
                                   bool add_generation_prompt) {
  for (const char* marker : {kStart, kEnd}) {
    std::optional<int32_t> id = tokenizer.find_token(marker);
    TokenType type = id ? tokenizer.token_type(*id) : TokenType::Normal;
    if (!id || (type != TokenType::Control && type != TokenType::UserDefined))
      throw Error("ChatML template: the vocab has no special token " + std::string(marker) +
                  (id ? " (it is a plain token)" : "") +
                  "; this model does not use ChatML, so pass a raw prompt instead");
  }
  return tokenizer.encode(apply_chatml(messages, add_generation_prompt),
                          tokenizer.add_bos_by_default(), /*parse_special=*/true);
}

}  // namespace lockstep::engine
