// ChatML prompt text and its encoding with the markers as special tokens.
#include "engine/chat_template.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "engine/tokenizer.h"
#include "formats/gguf.h"
#include "tests/test_util.h"

namespace lockstep {
namespace {

using engine::ChatMessage;
using engine::Tokenizer;

Tokenizer vocab(const std::string& name) {
  return Tokenizer::from_gguf(formats::GgufFile::open(
      (test::shared_models() / "vocab" / ("ggml-vocab-" + name + ".gguf")).string()));
}

TEST(ChatTemplate, ChatMLText) {
  std::vector<ChatMessage> msgs = {{"system", "You are terse."}, {"user", "Hi!\nTwo lines."}};
  EXPECT_EQ(engine::apply_chatml(msgs),
            "<|im_start|>system\nYou are terse.<|im_end|>\n"
            "<|im_start|>user\nHi!\nTwo lines.<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(engine::apply_chatml(msgs, false),
            "<|im_start|>system\nYou are terse.<|im_end|>\n"
            "<|im_start|>user\nHi!\nTwo lines.<|im_end|>\n");
  EXPECT_EQ(engine::apply_chatml({}), "<|im_start|>assistant\n");
}

TEST(ChatTemplate, MarkersBecomeSpecialIds) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Tokenizer tok = vocab("qwen2");
  int32_t start = *tok.find_token("<|im_start|>");
  int32_t end = *tok.find_token("<|im_end|>");
  std::mt19937 rng(std::random_device{}());
  std::string content = "word" + std::to_string(rng() % 100000) + " and more";
  std::vector<ChatMessage> msgs = {{"user", content}};
  std::vector<int32_t> ids = engine::encode_chatml(tok, msgs);
  // <|im_start|> user \n content <|im_end|> \n <|im_start|> assistant \n
  EXPECT_EQ(std::count(ids.begin(), ids.end(), start), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), end), 1);
  EXPECT_EQ(ids.front(), start);
  EXPECT_EQ(tok.decode(ids, true), engine::apply_chatml(msgs));
  // The content between the markers is tokenized as plain text.
  std::vector<int32_t> body = tok.encode(content, false);
  EXPECT_NE(std::search(ids.begin(), ids.end(), body.begin(), body.end()), ids.end());
}

TEST(ChatTemplate, VocabWithoutChatMLIsAnError) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Tokenizer tok = vocab("llama-spm");
  std::vector<ChatMessage> msgs = {{"user", "hi"}};
  Error e = test::expect_error([&] { engine::encode_chatml(tok, msgs); });
  EXPECT_NE(std::string(e.what()).find("<|im_start|>"), std::string::npos) << e.what();
}

}  // namespace
}  // namespace lockstep
