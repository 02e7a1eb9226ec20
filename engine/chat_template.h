#pragma once
// ChatML prompts: "<|im_start|>role\ncontent<|im_end|>\n" per message, then
// "<|im_start|>assistant\n" so the model writes the reply. Qwen2's templates and many others
// are ChatML; its markers are special tokens, so the prompt is encoded with parse_special.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace lockstep::engine {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

// The prompt text; add_generation_prompt appends the opening of the assistant's turn.
std::string apply_chatml(std::span<const ChatMessage> messages, bool add_generation_prompt = true);

// The prompt's token ids, "<|im_start|>" and "<|im_end|>" as their special ids (BOS first when
// the vocab asks for it, tokenizer.ggml.add_bos_token). Throws lockstep::Error when the vocab
// lacks either marker as a special token, since the model would then see them spelled out.
std::vector<int32_t> encode_chatml(const Tokenizer& tokenizer,
                                   std::span<const ChatMessage> messages,
                                   bool add_generation_prompt = true);

}  // namespace lockstep::engine
