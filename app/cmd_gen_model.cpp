#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "app/commands.h"
#include "engine/synthetic_model.h"
#include "formats/error.h"

namespace lockstep::app {
namespace {

struct GenModelArgs {
  engine::SyntheticModelOptions opts;
  std::string type = "F32";
  std::string tokenizer;
  std::string out;
  std::optional<bool> tied;
  bool quiet = false;
};

// Set by SIGINT; the writer polls it between row chunks and removes its temporary file.
std::atomic<bool> g_cancel{false};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void on_sigint(int) {
  g_cancel.store(true);
}

int cmd_gen_model(GenModelArgs& a) {
  auto mix = engine::parse_quant_mix(a.type);
  if (!mix) {
    std::string names;
    for (const std::string& n : engine::quant_mix_names()) names += (names.empty() ? "" : ", ") + n;
    throw Error("gen-model: unknown --type \"" + a.type + "\" (supported: " + names + ")");
  }
  a.opts.mix = *mix;
  a.opts.tokenizer_from = a.tokenizer;
  a.opts.out = a.out;
  a.opts.tied_embeddings = a.tied;
  engine::FamilyRegistry families = engine::FamilyRegistry::load();

  g_cancel.store(false);
  auto previous = std::signal(SIGINT, on_sigint);
  struct Restore {
    decltype(previous) handler;
    ~Restore() { std::signal(SIGINT, handler); }
  } restore{previous};

  engine::SyntheticProgressFn progress;
  if (!a.quiet)
    progress = [](const engine::SyntheticProgress& p) {
      std::fprintf(stderr, "\r[%zu/%zu] %.1f / %.1f MB  %-40.40s", p.tensor, p.tensors,
                   static_cast<double>(p.bytes_done) / 1e6,
                   static_cast<double>(p.bytes_total) / 1e6, std::string(p.name).c_str());
      if (p.tensor == p.tensors) std::fputc('\n', stderr);
    };
  engine::SyntheticSummary s = engine::write_synthetic_model(a.opts, families, progress, &g_cancel);
  double mb = static_cast<double>(s.file_bytes) / 1e6;
  std::printf("wrote %s: %zu tensors, %.1f MB in %.2f s (%.1f MB/s)\n", a.out.c_str(), s.tensors,
              mb, s.seconds, s.seconds > 0 ? mb / s.seconds : 0.0);
  return kExitOk;
}

}  // namespace

Command add_gen_model_command(CLI::App& app) {
  auto args = std::make_shared<GenModelArgs>();
  engine::SyntheticModelOptions& o = args->opts;
  CLI::App* sub = app.add_subcommand(
      "gen-model", "Write a random-weight GGUF model of any family, shape and quant mix");
  sub->add_option("--family", o.family, "llama, qwen2, qwen3, mistral, granite or starcoder2")
      ->required();
  sub->add_option("--hidden", o.hidden, "Hidden size")->required();
  sub->add_option("--layers", o.layers, "Number of layers")->required();
  sub->add_option("--heads", o.heads, "Attention heads")->required();
  sub->add_option("--kv-heads", o.kv_heads, "Key/value heads (default: --heads)");
  sub->add_option("--ffn", o.ffn, "Feed-forward width")->required();
  sub->add_option("--vocab", o.vocab,
                  "Vocabulary size (default with --tokenizer: the tokenizer's size)");
  sub->add_option("--type", args->type,
                  "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K(_S), Q4_K_S, "
                  "Q4_K_M, Q5_K_S, Q5_K_M or Q6_K (llama.cpp's mixes)")
      ->capture_default_str();
  sub->add_option("--out", args->out, "Output .gguf path")->required();
  sub->add_option("--seed", o.seed, "Random seed (same arguments and seed: same bytes)")
      ->capture_default_str();
  sub->add_option("--tokenizer", args->tokenizer,
                  "Copy the tokenizer from this GGUF (default: a synthetic byte vocab)");
  sub->add_option("--context", o.context, "Context length")->capture_default_str();
  sub->add_option("--head-dim", o.head_dim, "Head size (default: hidden / heads)");
  sub->add_option("--qk-gain", o.qk_gain,
                  "Scale attn_q and attn_k by this: attention scores grow by its square "
                  "(sharper attention, as trained models have)")
      ->capture_default_str();
  sub->add_option("--threads", o.threads, "Generation threads")->capture_default_str();
  sub->add_flag("--tie-embeddings,!--untie-embeddings", args->tied,
                "lm_head reads token_embd (no output.weight); default: the family's usual");
  sub->add_flag("--quiet", args->quiet, "No progress on stderr");
  return {sub, [args] {
            if (args->opts.kv_heads == 0) args->opts.kv_heads = args->opts.heads;
            return cmd_gen_model(*args);
          }};
}

}  // namespace lockstep::app
