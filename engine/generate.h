#pragma once
// A generation session over one Lane: prefill the prompt (last logits only), then decode one
// token per forward until end of generation, the token limit, or a cancel. Text is streamed
// per token as valid UTF-8 only: a token that ends inside a multi-byte sequence (SPM byte
// fallback, byte-level BPE) is held back until the sequence completes.

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/lane.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

namespace lockstep::engine {

// Turns a byte stream into chunks of valid UTF-8. Complete sequences pass through at once; an
// incomplete sequence at the end of the input so far is held until more bytes arrive; bytes
// that can never be valid (a stray continuation byte, an overlong or surrogate form, a lead
// byte cut short by a non-continuation) become U+FFFD, one per byte.
class Utf8Stream {
 public:
  // The text that is complete after appending `bytes`.
  std::string push(std::string_view bytes);
  // Whatever is still held (an unfinished sequence), as U+FFFD per byte; the stream is then empty.
  std::string flush();
  size_t held() const { return pending_.size(); }

 private:
  std::string pending_;
};

// The prompt's token ids: the raw text with BOS as the tokenizer's metadata asks
// (tokenizer.ggml.add_bos_token), or with `chat` one ChatML user turn plus the opening of the
// assistant's (engine/chat_template.h). Throws lockstep::Error for an empty prompt.
std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, std::string_view prompt, bool chat);

struct GenerateOptions {
  int64_t max_tokens = 64;  // tokens to generate at most; >= 1
  SamplerConfig sampler;    // greedy by default
  // The model's context length (ModelConfig::context); prompt + max_tokens must fit. 0: no
  // limit known.
  uint64_t context = 0;
  // Also stop at this token (ChatML's <|im_end|>, which a vocab may not list as end of
  // generation). Tokenizer::is_eog tokens always stop.
  int32_t extra_stop = Tokenizer::kNoToken;
  // Checked before every forward; set from another thread to stop early.
  const std::atomic<bool>* cancel = nullptr;
};

enum class StopReason { EndOfGeneration, MaxTokens, Cancelled };
std::string_view stop_reason_name(StopReason r);

struct GenerateStats {
  uint64_t prompt_tokens = 0;
  double prefill_seconds = 0.0;  // the prompt's forward
  // Tokens sampled (the stop token is not counted; a cancel after sampling counts the token).
  uint64_t generated_tokens = 0;
  // One-token forwards after the prefill and their time: the first generated token comes from
  // the prefill's logits and the last one is never fed back, so steps are usually
  // generated_tokens - 1.
  uint64_t decode_steps = 0;
  double decode_seconds = 0.0;

  double prefill_tokens_per_second() const;  // 0 when nothing was timed
  double decode_tokens_per_second() const;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids, without the stop token
  std::string text;             // their text, valid UTF-8 (what the callback received, joined)
  StopReason stop = StopReason::MaxTokens;
  GenerateStats stats;
};

// Called once per generated token with its id and the text that became complete with it
// (possibly empty: a control token, or a byte held back). Return false to stop. When the
// generation ends inside an unfinished sequence, it is called once more with
// Tokenizer::kNoToken and the held bytes as U+FFFD (its return value is then ignored).
using TokenCallback = std::function<bool(int32_t token, std::string_view text)>;

// Runs a generation on `lane`, which must already have the model loaded. Resets the lane
// first and leaves set_last_logits_only(true). Throws lockstep::Error for an empty prompt,
// max_tokens < 1, a prompt that does not fit the context, or a lane error.
GenerateResult generate(Lane& lane, const Tokenizer& tokenizer, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const TokenCallback& on_token = {});

}  // namespace lockstep::engine
