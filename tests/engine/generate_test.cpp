#include "engine/generate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "engine/lanes.h"
#include "engine/weights.h"
#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

namespace fs = std::filesystem;

const Model& stories() {
  static const std::unique_ptr<Model> m = std::make_unique<Model>(
      open_model(test::shared_models() / "stories260K.gguf", FamilyRegistry::load()));
  return *m;
}

const Tokenizer& stories_tokenizer() {
  static const Tokenizer t = Tokenizer::from_gguf(*stories().gguf);
  return t;
}

// Strict UTF-8 check, written independently of Utf8Stream: shortest forms only, no
// surrogates, nothing above U+10FFFF, nothing cut short.
bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0xFF >> (n + 1));
    for (size_t j = 1; j < n; ++j) {
      auto b = static_cast<unsigned char>(s[i + j]);
      if ((b & 0xC0) != 0x80) return false;
      cp = cp << 6 | (b & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

const std::string kFffd = "\xEF\xBF\xBD";

TEST(Utf8Stream, AnySplitOfValidTextStreamsTheSameTextInValidChunks) {
  const std::string text = "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80 ok \xE4\xB8\xAD";
  // Byte by byte.
  Utf8Stream s;
  std::string joined;
  for (char c : text) {
    std::string chunk = s.push(std::string_view(&c, 1));
    EXPECT_TRUE(valid_utf8(chunk)) << "chunk after byte " << joined.size();
    joined += chunk;
  }
  EXPECT_EQ(s.held(), 0u);
  EXPECT_EQ(joined + s.flush(), text);
  // Every two-way split.
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    Utf8Stream t;
    std::string a = t.push(std::string_view(text).substr(0, cut));
    std::string b = t.push(std::string_view(text).substr(cut));
    EXPECT_TRUE(valid_utf8(a) && valid_utf8(b)) << "cut " << cut;
    EXPECT_EQ(a + b, text) << "cut " << cut;
  }
}

TEST(Utf8Stream, HoldsBackAnUnfinishedSequence) {
  Utf8Stream s;
  EXPECT_EQ(s.push("a\xF0\x9F"), "a");
  EXPECT_EQ(s.held(), 2u);
  EXPECT_EQ(s.push("\x98"), "");
  EXPECT_EQ(s.push("\x80!"), "\xF0\x9F\x98\x80!");
  EXPECT_EQ(s.push("\xE2\x82"), "");
  EXPECT_EQ(s.flush(), kFffd + kFffd);  // cut short for good
  EXPECT_EQ(s.held(), 0u);
}

TEST(Utf8Stream, ReplacesBytesThatCanNeverBeValid) {
  struct Case {
    std::string in, out;
  } cases[] = {
      {"\x80", kFffd},  // stray continuation
      {"\xE2\x82"
       "A",
       kFffd + kFffd + "A"},                                // lead cut short by ASCII
      {"\xC0\xAF", kFffd + kFffd},                          // overlong '/'
      {"\xED\xA0\x80", kFffd + kFffd + kFffd},              // surrogate U+D800
      {"\xF4\x90\x80\x80", kFffd + kFffd + kFffd + kFffd},  // above U+10FFFF
      {"\xFF"
       "b\xC3\xA9",
       kFffd + "b\xC3\xA9"},
  };
  for (const Case& c : cases) {
    Utf8Stream s;
    std::string out = s.push(c.in);
    out += s.flush();
    EXPECT_EQ(out, c.out) << "input of " << c.in.size() << " bytes";
    EXPECT_TRUE(valid_utf8(out));
  }
}

// A lane that plays back a fixed sequence of next tokens (one-hot logits), so that stopping,
// cancelling and text streaming can be tested on exact token sequences.
class ScriptedLane final : public Lane {
 public:
  ScriptedLane(uint64_t vocab, std::vector<int32_t> script)
      : vocab_(vocab), script_(std::move(script)) {}
  std::string name() const override { return "scripted"; }
  void load(const Model&) override {}
  void reset() override {
    step_ = 0;
    ++resets;
  }
  Logits forward(std::span<const int32_t> tokens, uint32_t pos, const CapturePlan&,
                 Trace&) override {
    EXPECT_EQ(pos, expected_pos_) << "forward " << forwards;
    expected_pos_ = pos + static_cast<uint32_t>(tokens.size());
    if (step_ > 0) {  // a decode step is fed the token sampled last
      EXPECT_EQ(tokens.size(), 1u);
      EXPECT_EQ(tokens[0], script_[step_ - 1]);
    }
    ++forwards;
    Logits l;
    l.tokens = 1;
    l.vocab = vocab_;
    l.values.assign(vocab_, -1.0f);
    l.values[static_cast<size_t>(script_.at(step_++))] = 5.0f;
    return l;
  }
  Tensor replay(const Node&, std::span<const Tensor>) override { return {}; }

  int forwards = 0;
  int resets = 0;

 private:
  uint64_t vocab_;
  std::vector<int32_t> script_;
  size_t step_ = 0;
  uint32_t expected_pos_ = 0;
};

int32_t token(const char* text) {
  std::optional<int32_t> id = stories_tokenizer().find_token(text);
  EXPECT_TRUE(id.has_value()) << text;
  return id.value_or(0);
}

TEST(Generate, StreamsMultiByteTextOnlyWhenComplete) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const Tokenizer& tok = stories_tokenizer();
  // "a€" then the first two bytes of an emoji that never finishes.
  std::vector<int32_t> script = {token("▁a"),     token("<0xE2>"), token("<0x82>"),
                                 token("<0xAC>"), token("<0xF0>"), token("<0x9F>")};
  ScriptedLane lane(512, script);
  std::vector<int32_t> prompt = encode_prompt(tok, "Once", false);
  GenerateOptions options;
  options.max_tokens = static_cast<int64_t>(script.size());
  std::vector<std::pair<int32_t, std::string>> chunks;
  GenerateResult r = generate(lane, tok, prompt, options, [&](int32_t id, std::string_view t) {
    chunks.emplace_back(id, std::string(t));
    return true;
  });
  EXPECT_EQ(r.tokens, script);
  EXPECT_EQ(r.stop, StopReason::MaxTokens);
  ASSERT_EQ(chunks.size(), script.size() + 1);
  const std::string expected[] = {" a", "", "", "\xE2\x82\xAC", "", "", kFffd + kFffd};
  std::string joined;
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].first, i < script.size() ? script[i] : Tokenizer::kNoToken);
    EXPECT_EQ(chunks[i].second, expected[i]) << "chunk " << i;
    EXPECT_TRUE(valid_utf8(chunks[i].second));
    joined += chunks[i].second;
  }
  EXPECT_EQ(r.text, joined);
}

TEST(Generate, StopsAtEndOfGenerationAndAtTheExtraStopToken) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const Tokenizer& tok = stories_tokenizer();
  std::vector<int32_t> prompt = encode_prompt(tok, "Once upon a time", false);
  int32_t a = token("▁a"), b = token("▁b");
  {
    ScriptedLane lane(512, {a, b, tok.eos(), a});
    GenerateResult r = generate(lane, tok, prompt, {});
    EXPECT_EQ(r.tokens, (std::vector<int32_t>{a, b}));
    EXPECT_EQ(r.stop, StopReason::EndOfGeneration);
    EXPECT_EQ(r.stats.generated_tokens, 2u);
    EXPECT_EQ(r.stats.decode_steps, 2u);  // b and eos came from decode forwards
    EXPECT_EQ(lane.forwards, 3);
  }
  {
    ScriptedLane lane(512, {a, b, a, b});
    GenerateOptions options;
    options.extra_stop = b;
    GenerateResult r = generate(lane, tok, prompt, options);
    EXPECT_EQ(r.tokens, (std::vector<int32_t>{a}));
    EXPECT_EQ(r.stop, StopReason::EndOfGeneration);
  }
}

TEST(Generate, CallbackAndFlagCancel) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const Tokenizer& tok = stories_tokenizer();
  std::vector<int32_t> prompt = encode_prompt(tok, "Once upon a time", false);
  std::vector<int32_t> script(20, token("▁a"));
  {
    ScriptedLane lane(512, script);
    int calls = 0;
    GenerateResult r =
        generate(lane, tok, prompt, {}, [&](int32_t, std::string_view) { return ++calls < 3; });
    EXPECT_EQ(r.stop, StopReason::Cancelled);
    EXPECT_EQ(r.tokens.size(), 3u);
    EXPECT_EQ(lane.forwards, 3);  // prefill + 2 decodes; the third token is never fed back
  }
  {
    ScriptedLane lane(512, script);
    std::atomic<bool> cancel{false};
    GenerateOptions options;
    options.cancel = &cancel;
    GenerateResult r = generate(lane, tok, prompt, options, [&](int32_t, std::string_view) {
      cancel = true;  // as another thread would
      return true;
    });
    EXPECT_EQ(r.stop, StopReason::Cancelled);
    EXPECT_EQ(r.tokens.size(), 1u);
    EXPECT_EQ(lane.forwards, 1);
  }
  {
    ScriptedLane lane(512, script);
    std::atomic<bool> cancel{true};
    GenerateOptions options;
    options.cancel = &cancel;
    GenerateResult r = generate(lane, tok, prompt, options);
    EXPECT_EQ(r.stop, StopReason::Cancelled);
    EXPECT_TRUE(r.tokens.empty());
    EXPECT_EQ(lane.forwards, 0);
  }
}

TEST(Generate, RefusesBadRequests) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const Tokenizer& tok = stories_tokenizer();
  ScriptedLane lane(512, {1});
  std::vector<int32_t> prompt = encode_prompt(tok, "Once upon a time", false);  // 5 tokens
  GenerateOptions options;
  options.context = 8;
  options.max_tokens = 4;
  Error e = test::expect_error([&] { generate(lane, tok, prompt, options); });
  EXPECT_NE(std::string(e.what()).find("context of 8 tokens"), std::string::npos) << e.what();
  options.max_tokens = 0;
  test::expect_error([&] { generate(lane, tok, prompt, options); });
  test::expect_error([&] { generate(lane, tok, {}, GenerateOptions{}); });
  test::expect_error([&] { encode_prompt(tok, "", false); });
  // stories260K's vocab has no ChatML markers.
  e = test::expect_error([&] { encode_prompt(tok, "hi", true); });
  EXPECT_NE(std::string(e.what()).find("<|im_start|>"), std::string::npos) << e.what();
  EXPECT_EQ(lane.forwards, 0);
}

struct Reference {
  std::vector<int32_t> tokens, generated;
};

Reference stories_reference() {
  nlohmann::json j = nlohmann::json::parse(
      test::read_file(test::shared_models() / "reference/stories260K/llamacpp.json"));
  return {j.at("tokens").get<std::vector<int32_t>>(),
          j.at("generated").get<std::vector<int32_t>>()};
}

TEST(GenerateStories, GreedyContinuationMatchesLlamaCppOnEveryCpuLane) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Reference ref = stories_reference();
  const Tokenizer& tok = stories_tokenizer();
  std::vector<int32_t> prompt = encode_prompt(tok, "Once upon a time", false);
  ASSERT_EQ(prompt, ref.tokens);
  std::string expected =
      test::read_file(test::shared_models() / "reference/stories260K/greedy.txt");
  for (const std::string& name : cpu_lane_names()) {
    SCOPED_TRACE(name);
    std::unique_ptr<Lane> lane = make_cpu_lane(name, {.threads = 1});
    lane->load(stories());
    GenerateOptions options;
    options.max_tokens = static_cast<int64_t>(ref.generated.size());
    options.context = stories().config.context;
    std::string streamed;
    GenerateResult r = generate(*lane, tok, prompt, options, [&](int32_t, std::string_view t) {
      streamed += t;
      return true;
    });
    EXPECT_EQ(r.tokens, ref.generated);
    EXPECT_EQ(r.stop, StopReason::MaxTokens);
    EXPECT_EQ(r.text, streamed);
    EXPECT_EQ(r.text, tok.decode(ref.generated));
    EXPECT_EQ(r.text.substr(0, r.text.find('\n') + 1), expected);
    EXPECT_EQ(r.stats.prompt_tokens, prompt.size());
    EXPECT_EQ(r.stats.generated_tokens, ref.generated.size());
    EXPECT_EQ(r.stats.decode_steps, ref.generated.size() - 1);
    EXPECT_GT(r.stats.prefill_seconds, 0.0);
    EXPECT_GT(r.stats.decode_seconds, 0.0);
    EXPECT_GT(r.stats.decode_tokens_per_second(), 0.0);
    EXPECT_TRUE(lane->last_logits_only());
  }
}

TEST(GenerateStories, SeededSamplingIsReproducibleAndSeedsDiffer) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const Tokenizer& tok = stories_tokenizer();
  std::vector<int32_t> prompt = encode_prompt(tok, "Once upon a time", false);
  std::unique_ptr<Lane> lane = make_cpu_lane("ref");
  lane->load(stories());
  auto run = [&](uint64_t seed) {
    GenerateOptions options;
    options.max_tokens = 40;
    options.sampler = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = seed};
    return generate(*lane, tok, prompt, options).tokens;
  };
  std::vector<int32_t> a = run(7), b = run(7), c = run(8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  Reference ref = stories_reference();
  EXPECT_NE(std::vector<int32_t>(ref.generated.begin(), ref.generated.begin() + 40), a)
      << "temperature 1 sampled exactly the greedy sequence";
}

}  // namespace
}  // namespace lockstep::engine
