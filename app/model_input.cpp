#include "app/model_input.h"

#include "engine/generate.h"
#include "engine/tokenizer.h"
#include "formats/error.h"

namespace lockstep::app {

void add_token_options(CLI::App& sub, TokenArgs& args) {
  sub.add_option("--prompt,-p", args.prompt,
                 "Text to run, encoded with the model's tokenizer (BOS as its metadata says)");
  sub.add_flag("--chat", args.chat, "Wrap --prompt as one ChatML user turn");
  sub.add_option("--tokens", args.tokens, "Token ids to run instead of a prompt: 1,2,3")
      ->delimiter(',')
      ->expected(1, -1);
}

void check_token_args(const std::string& command, const TokenArgs& args) {
  if (args.prompt.empty() == args.tokens.empty())
    throw Error(command + ": give either --prompt TEXT or --tokens IDS (one of them, not both)");
  if (args.chat && args.prompt.empty()) throw Error(command + ": --chat applies to --prompt only");
}

std::vector<int32_t> resolve_tokens(const std::string& command, const engine::Model& model,
                                    const std::string& model_path, const TokenArgs& args) {
  check_token_args(command, args);
  std::vector<int32_t> tokens = args.tokens;
  if (!args.prompt.empty()) {
    if (!model.gguf)
      throw Error(command + ": " + model_path +
                  " is a safetensors model, whose tokenizer lockstep cannot read; give --tokens "
                  "instead of --prompt");
    tokens = engine::encode_prompt(engine::Tokenizer::from_gguf(*model.gguf), args.prompt,
                                   args.chat);
    if (tokens.empty()) throw Error(command + ": the prompt encodes to no tokens");
  }
  for (int32_t id : tokens)
    if (id < 0 || uint64_t(id) >= model.config.vocab)
      throw Error(command + ": token id " + std::to_string(id) + " is outside the vocab (0.." +
                  std::to_string(model.config.vocab - 1) + ")");
  if (model.config.context > 0 && tokens.size() > model.config.context)
    throw Error(command + ": " + std::to_string(tokens.size()) +
                " tokens exceed the model's context of " + std::to_string(model.config.context));
  return tokens;
}

}  // namespace lockstep::app
