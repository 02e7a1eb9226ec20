#include "engine/generate.h"

#include <chrono>

#include "engine/chat_template.h"
#include "formats/error.h"

namespace lockstep::engine {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the sequence `lead` starts and the valid range of its second byte (which rules
// out overlong forms, surrogates and code points above U+10FFFF); 0 for a byte that cannot
// start a sequence.
struct LeadInfo {
  size_t length;
  unsigned char lo, hi;
};
LeadInfo lead_info(unsigned char c) {
  if (c >= 0xC2 && c <= 0xDF) return {2, 0x80, 0xBF};
  if (c == 0xE0) return {3, 0xA0, 0xBF};
  if (c == 0xED) return {3, 0x80, 0x9F};
  if (c >= 0xE1 && c <= 0xEF) return {3, 0x80, 0xBF};
  if (c == 0xF0) return {4, 0x90, 0xBF};
  if (c >= 0xF1 && c <= 0xF3) return {4, 0x80, 0xBF};
  if (c == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::string Utf8Stream::push(std::string_view bytes) {
  pending_.append(bytes);
  const std::string& p = pending_;
  std::string out;
  size_t i = 0;
  while (i < p.size()) {
    auto c = static_cast<unsigned char>(p[i]);
    if (c < 0x80) {
      out += p[i++];
      continue;
    }
    LeadInfo lead = lead_info(c);
    if (lead.length == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    bool bad = false;
    for (size_t j = 1; j < lead.length && i + j < p.size(); ++j) {
      auto b = static_cast<unsigned char>(p[i + j]);
      unsigned char lo = j == 1 ? lead.lo : 0x80, hi = j == 1 ? lead.hi : 0xBF;
      if (b < lo || b > hi) {
        bad = true;
        break;
      }
    }
    if (bad) {  // the lead alone is replaced; the byte that broke it is looked at afresh
      out += kReplacement;
      ++i;
      continue;
    }
    if (i + lead.length > p.size()) {  // a valid prefix: wait for the rest
      pending_.erase(0, i);
      return out;
    }
    out.append(p, i, lead.length);
    i += lead.length;
  }
  pending_.clear();
  return out;
}

std::string Utf8Stream::flush() {
  std::string out;
  for (size_t i = 0; i < pending_.size(); ++i) out += kReplacement;
  pending_.clear();
  return out;
}

std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, std::string_view prompt, bool chat) {
  if (prompt.empty()) throw Error("the prompt is empty");
  if (chat) {
    ChatMessage user{"user", std::string(prompt)};
    return encode_chatml(tokenizer, std::span(&user, 1));
  }
  return tokenizer.encode(prompt, tokenizer.add_bos_by_default());
}

std::string_view stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::EndOfGeneration:
      return "end of generation";
    case StopReason::MaxTokens:
      return "token limit";
    case StopReason::Cancelled:
      return "cancelled";
  }
  return "?";
}

double GenerateStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0.0 ? double(prompt_tokens) / prefill_seconds : 0.0;
}

double GenerateStats::decode_tokens_per_second() const {
  return decode_seconds > 0.0 ? double(decode_steps) / decode_seconds : 0.0;
}

GenerateResult generate(Lane& lane, const Tokenizer& tokenizer, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const TokenCallback& on_token) {
  if (prompt.empty()) throw Error("generate: the prompt has no tokens");
  if (options.max_tokens < 1)
    throw Error("generate: the token limit must be at least 1, got " +
                std::to_string(options.max_tokens));
  if (options.context > 0 && prompt.size() + uint64_t(options.max_tokens) > options.context)
    throw Error("generate: the prompt (" + std::to_string(prompt.size()) + " tokens) plus " +
                std::to_string(options.max_tokens) + " generated tokens exceeds the model's " +
                "context of " + std::to_string(options.context) + " tokens");

  Sampler sampler(options.sampler);
  Utf8Stream utf8;
  GenerateResult result;
  result.stats.prompt_tokens = prompt.size();
  auto cancelled = [&] { return options.cancel && options.cancel->load(); };

  lane.reset();
  lane.set_last_logits_only(true);
  Trace trace;  // stays empty: nothing is captured
  const CapturePlan none = CapturePlan::none();
  if (cancelled()) {
    result.stop = StopReason::Cancelled;
    return result;
  }

  auto t0 = std::chrono::steady_clock::now();
  Logits logits = lane.forward(prompt, 0, none, trace);
  result.stats.prefill_seconds = seconds_since(t0);
  auto pos = static_cast<uint32_t>(prompt.size());

  for (;;) {
    if (logits.tokens == 0) throw Error("generate: lane " + lane.name() + " returned no logits");
    int32_t next = sampler.sample(logits.last());
    if (tokenizer.is_eog(next) || next == options.extra_stop) {
      result.stop = StopReason::EndOfGeneration;
      break;
    }
    result.tokens.push_back(next);
    ++result.stats.generated_tokens;
    std::string text = utf8.push(tokenizer.piece(next));
    result.text += text;
    if (on_token && !on_token(next, text)) {
      result.stop = StopReason::Cancelled;
      break;
    }
    if (result.tokens.size() >= uint64_t(options.max_tokens)) {
      result.stop = StopReason::MaxTokens;
      break;
    }
    if (cancelled()) {
      result.stop = StopReason::Cancelled;
      break;
    }
    t0 = std::chrono::steady_clock::now();
    logits = lane.forward(std::span(&next, 1), pos++, none, trace);
    result.stats.decode_seconds += seconds_since(t0);
    ++result.stats.decode_steps;
  }

  // A generation that ended inside a multi-byte sequence: its bytes can never complete.
  if (std::string tail = utf8.flush(); !tail.empty()) {
    result.text += tail;
    if (on_token) on_token(Tokenizer::kNoToken, tail);
  }
  return result;
}

}  // namespace lockstep::engine
