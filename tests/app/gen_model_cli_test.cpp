// `lockstep gen-model`, run as a user would: a model that opens, determinism, and one-line
// errors with exit code 2 for bad options.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>

#include "engine/weights.h"
#include "tests/app/cli_run.h"
#include "tests/test_util.h"

namespace lockstep {
namespace {

namespace fs = std::filesystem;

test::CliResult gen_model(const std::string& args) {
  return test::run_lockstep("gen-model " + args);
}

const std::string kShape = "--hidden 256 --layers 2 --heads 4 --kv-heads 2 --ffn 512 --vocab 300";

TEST(GenModelCli, WritesAModelThatOpens) {
  test::ScratchDir scratch("gen-model-cli");
  fs::path dir = scratch.path;
  fs::path out = dir / "m.gguf";
  test::CliResult r = gen_model("--family qwen2 " + kShape +
                                " --type Q4_K_M --seed 3 --context 512 --out " + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote " + out.string() + ": "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("MB/s"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("/"), std::string::npos) << "no progress on stderr";
  engine::Model m = engine::open_model(out, engine::FamilyRegistry::load());
  EXPECT_EQ(m.config.architecture, "qwen2");
  EXPECT_EQ(m.config.context, 512u);
  EXPECT_EQ(m.gguf->find_tensor("blk.1.attn_v.weight")->type, formats::GgmlType::Q6_K);

  fs::path again = dir / "again.gguf";
  r = gen_model("--family qwen2 " + kShape +
                " --type q4_k_m --seed 3 --context 512 --quiet --out " + again.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(test::read_file(out), test::read_file(again));
}

TEST(GenModelCli, MistralIsWrittenAsLlamaWithHeadDim) {
  test::ScratchDir scratch("gen-model-cli-mistral");
  fs::path dir = scratch.path;
  fs::path out = dir / "m.gguf";
  test::CliResult r = gen_model(
      "--family mistral --hidden 96 --layers 1 --heads 3 --kv-heads 1 --ffn 64 "
      "--vocab 260 --head-dim 32 --type F16 --tie-embeddings --quiet --out " +
      out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  engine::Model m = engine::open_model(out, engine::FamilyRegistry::load());
  EXPECT_EQ(m.config.architecture, "llama");
  EXPECT_EQ(m.config.head_dim, 32u);
  EXPECT_TRUE(m.config.tied_embeddings);
  EXPECT_EQ(m.gguf->find_tensor("output.weight"), nullptr);
}

struct BadCase {
  const char* name;
  std::string args;
  const char* message;
};

TEST(GenModelCli, BadOptionsExitTwoWithOneLine) {
  test::ScratchDir scratch("gen-model-cli-bad");
  fs::path dir = scratch.path;
  std::string out = " --out " + (dir / "m.gguf").string();
  const BadCase cases[] = {
      {"family", "--family gptj " + kShape + out, "unknown --family \"gptj\""},
      {"type", "--family llama " + kShape + " --type Q7_K" + out, "unknown --type \"Q7_K\""},
      {"heads",
       "--family llama --hidden 256 --layers 2 --heads 3 --kv-heads 1 --ffn 512 "
       "--vocab 300" +
           out,
       "--hidden 256 is not a multiple of --heads 3"},
      {"kv-heads",
       "--family llama --hidden 256 --layers 2 --heads 4 --kv-heads 3 --ffn 512 "
       "--vocab 300" +
           out,
       "--heads 4 is not a multiple of --kv-heads 3"},
      {"vocab", "--family llama --hidden 256 --layers 2 --heads 4 --ffn 512 --vocab 100" + out,
       "too small"},
      {"missing", "--family llama --hidden 256" + out, "required"},
  };
  for (const BadCase& c : cases) {
    test::CliResult r = gen_model(c.args);
    EXPECT_EQ(r.code, 2) << c.name;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.name << ": " << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << c.name << ": not one line: " << r.err;
    EXPECT_FALSE(fs::exists(dir / "m.gguf")) << c.name;
  }
  // A borrowed tokenizer fixes the vocab size.
  fs::path donor = dir / "donor.gguf";
  ASSERT_EQ(gen_model("--family llama " + kShape + " --quiet --out " + donor.string()).code, 0);
  test::CliResult r = gen_model(
      "--family llama --hidden 256 --layers 2 --heads 4 --ffn 512 --vocab 301 "
      "--tokenizer " +
      donor.string() + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--vocab 301 does not match the 300 tokens"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
}

}  // namespace
}  // namespace lockstep
