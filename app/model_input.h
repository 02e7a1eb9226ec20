#pragma once
// What the lane-running commands (dump, bisect) share about their input: a prompt encoded with
// the model's tokenizer, or token ids given directly, checked against the model.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/weights.h"

namespace lockstep::app {

struct TokenArgs {
  std::string prompt;
  bool chat = false;
  std::vector<int32_t> tokens;
};

// --prompt/-p, --chat and --tokens.
void add_token_options(CLI::App& sub, TokenArgs& args);
// Usage errors that need no model: neither or both of --prompt and --tokens, --chat without a
// prompt. `command` prefixes the message.
void check_token_args(const std::string& command, const TokenArgs& args);
// The ids to run: the encoded prompt, or --tokens; each inside the vocab, all within the
// model's context. Throws lockstep::Error naming the problem.
std::vector<int32_t> resolve_tokens(const std::string& command, const engine::Model& model,
                                    const std::string& model_path, const TokenArgs& args);

}  // namespace lockstep::app
