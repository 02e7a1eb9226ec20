#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "app/commands.h"
#include "engine/tokenizer.h"
#include "formats/error.h"
#include "formats/gguf.h"

namespace lockstep::app {
namespace {

struct TokenizeArgs {
  std::string model;
  std::string text;
  std::vector<int32_t> decode;
  bool json = false;
  bool no_bos = false;
  bool special = false;
};

int cmd_tokenize(const TokenizeArgs& a) {
  engine::Tokenizer tok = engine::Tokenizer::from_gguf(formats::GgufFile::open(a.model));
  std::vector<int32_t> ids;
  if (!a.decode.empty()) {
    if (!a.text.empty()) throw Error("tokenize: give either TEXT or --decode IDS, not both");
    ids = a.decode;
    for (int32_t id : ids) tok.token_text(id);  // names the first id outside the vocab
    if (!a.json) {
      std::cout << tok.decode(ids, a.special) << "\n";
      return kExitOk;
    }
  } else {
    ids = tok.encode(a.text, tok.add_bos_by_default() && !a.no_bos, a.special);
  }
  if (a.json) {
    nlohmann::json report = {{"ids", ids}, {"tokens", nlohmann::json::array()}};
    for (int32_t id : ids) report["tokens"].push_back(tok.token_text(id));
    if (!a.decode.empty()) report["text"] = tok.decode(ids, a.special);
    // Token bytes need not be valid UTF-8 (byte-fallback pieces); replace rather than fail.
    std::cout << report.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return kExitOk;
  }
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::cout << line << "\n";
  return kExitOk;
}

}  // namespace

Command add_tokenize_command(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* sub = app.add_subcommand(
      "tokenize", "Turn text into token ids with a GGUF model's tokenizer, or ids back into text");
  sub->add_option("model", args->model, "A .gguf file holding tokenizer.ggml.* metadata")
      ->required();
  sub->add_option("text", args->text, "The text to encode");
  sub->add_option("--decode", args->decode, "Token ids to decode instead of encoding text")
      ->expected(1, -1);
  sub->add_flag("--json", args->json, R"(Print {"ids": [...], "tokens": ["..."]})");
  sub->add_flag("--no-bos", args->no_bos,
                "Do not prepend BOS (by default it is added when the model asks for it)");
  sub->add_flag("--special", args->special,
                "Parse special tokens such as <|im_start|> in TEXT; with --decode, print them");
  return {sub, [args] { return cmd_tokenize(*args); }};
}

}  // namespace lockstep::app
