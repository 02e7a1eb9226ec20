// The lockstep executable, run as a user would: exit codes, help, and `inspect` output.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "formats/dump_dir.h"
#include "formats/ggml_codec.h"
#include "formats/gguf.h"
#include "formats/npy.h"
#include "tests/app/cli_run.h"
#include "tests/test_util.h"

namespace lockstep {
namespace {

namespace fs = std::filesystem;

TEST(Cli, HelpListsSubcommandsAndExitsZero) {
  test::CliResult r = test::run_lockstep("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("inspect"), std::string::npos) << r.out;
  test::CliResult sub = test::run_lockstep("inspect --help");
  EXPECT_EQ(sub.code, 0);
  EXPECT_NE(sub.out.find("--npy"), std::string::npos) << sub.out;
  EXPECT_NE(sub.out.find("--json"), std::string::npos) << sub.out;
}

TEST(Cli, VersionNamesBuildFeatures) {
  test::CliResult r = test::run_lockstep("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("lockstep "), std::string::npos);
  EXPECT_NE(r.out.find("CUDA lanes"), std::string::npos);
  EXPECT_NE(r.out.find("GUI: "), std::string::npos);
}

TEST(Cli, UsageErrorsExitTwoWithOneLine) {
  for (const char* args : {"--no-such-option", "inspect", "no-such-command",
                           "inspect a.gguf --bogus", "inspect a.gguf b.gguf"}) {
    test::CliResult r = test::run_lockstep(args);
    EXPECT_EQ(r.code, 2) << args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << ": " << r.err;
    EXPECT_EQ(r.err.rfind("lockstep: ", 0), 0u) << r.err;
    EXPECT_TRUE(r.out.empty()) << args;
  }
}

TEST(Cli, BadInputExitsTwoNamingTheFile) {
  fs::path dir = test::scratch_dir("cli-bad");
  test::CliResult r = test::run_lockstep("inspect " + test::shell_quote(dir / "nope.gguf"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("nope.gguf"), std::string::npos) << r.err;

  test::write_file(dir / "trunc.gguf", std::string("GGUF\x03\0\0\0\x05", 9));
  r = test::run_lockstep("inspect " + test::shell_quote(dir / "trunc.gguf"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("trunc.gguf: at offset 8: expected"), std::string::npos) << r.err;

  test::write_file(dir / "junk.bin", "hello world");
  r = test::run_lockstep("inspect " + test::shell_quote(dir / "junk.bin"));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("junk.bin"), std::string::npos) << r.err;

  r = test::run_lockstep("inspect " + test::shell_quote(dir / "junk.bin") + " --tensor x");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--npy"), std::string::npos) << r.err;
}

TEST(Cli, InspectStoriesShowsHyperparametersAndTensors) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  fs::path model = test::shared_models() / "stories260K.gguf";
  test::CliResult r = test::run_lockstep("inspect " + test::shell_quote(model));
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* needle :
       {"hidden (dim)    64", "layers          5", "heads           8", "kv heads        4",
        "vocab           512", "llama (SentencePiece), 512 tokens", "bos 1 \"<s>\"",
        "blk.4.ffn_down.weight", "48 tensors"})
    EXPECT_NE(r.out.find(needle), std::string::npos) << needle << "\n" << r.out;

  test::CliResult j = test::run_lockstep("inspect --json " + test::shell_quote(model));
  ASSERT_EQ(j.code, 0) << j.err;
  auto report = nlohmann::json::parse(j.out);
  const auto& h = report["model"]["hyperparameters"];
  EXPECT_EQ(h["hidden"], 64);
  EXPECT_EQ(h["layers"], 5);
  EXPECT_EQ(h["heads"], 8);
  EXPECT_EQ(h["kv_heads"], 4);
  EXPECT_EQ(h["vocab"], 512);
  EXPECT_EQ(h["ffn"], 172);
  EXPECT_EQ(report["tensors"].size(), 48u);
  EXPECT_EQ(report["tokenizer"]["tokens"], 512);
}

TEST(Cli, TensorExportToNpyIsTheDequantizedTensor) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  fs::path model = test::shared_models() / "quant-ref" / "ref-llama-Q4_K_M.gguf";
  fs::path out = test::scratch_dir("cli-npy") / "w.npy";
  test::CliResult r =
      test::run_lockstep("inspect " + test::shell_quote(model) +
                         " --tensor blk.1.ffn_down.weight --npy " + test::shell_quote(out));
  ASSERT_EQ(r.code, 0) << r.err;
  formats::NpyArray a = formats::read_npy(out);
  formats::GgufFile f = formats::GgufFile::open(model.string());
  const auto* t = f.find_tensor("blk.1.ffn_down.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(a.shape, (std::vector<uint64_t>{t->dims[1], t->dims[0]}));
  std::vector<float> want(t->elements);
  formats::dequantize(t->type, f.tensor_data(*t), want);
  ASSERT_EQ(a.values.size(), want.size());
  EXPECT_EQ(std::memcmp(a.values.data(), want.data(), want.size() * 4), 0);

  test::CliResult bad = test::run_lockstep("inspect " + test::shell_quote(model) +
                                           " --tensor no.such --npy " + test::shell_quote(out));
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("no.such"), std::string::npos);
}

TEST(Cli, InspectDumpListsCellsAndIssues) {
  fs::path dump = test::scratch_dir("cli-dump") / "dump";
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> v(2 * 8);
  for (float& x : v) x = nd(rng);
  {
    formats::DumpWriter w(dump);
    w.write("attn_norm", 0, v, {2, 8});
    w.write("attn_norm", 1, v, {2, 8});
    w.write("lm_head", std::nullopt, v, {2, 8});
    w.commit();
  }
  test::write_file(dump / "notes.txt", "stray");
  test::CliResult r = test::run_lockstep("inspect " + test::shell_quote(dump));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("3 in 2 layers"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("lm_head"), std::string::npos);
  EXPECT_NE(r.out.find("[2, 8]"), std::string::npos);
  EXPECT_NE(r.out.find("notes.txt"), std::string::npos) << r.out;

  fs::path out = dump.parent_path() / "cell.npy";
  r = test::run_lockstep("inspect " + test::shell_quote(dump) +
                         " --tensor layer-1/attn_norm --npy " + test::shell_quote(out));
  ASSERT_EQ(r.code, 0) << r.err;
  formats::NpyArray a = formats::read_npy(out);
  EXPECT_EQ(a.shape, (std::vector<uint64_t>{2, 8}));
  EXPECT_EQ(a.values, v);
}

}  // namespace
}  // namespace lockstep

namespace lockstep {
namespace {

// Metadata strings need not be valid UTF-8; inspect must still print them, in both forms.
TEST(Cli, InspectSurvivesInvalidUtf8Metadata) {
  fs::path model = test::scratch_dir("cli-utf8") / "bad-utf8.gguf";
  {
    formats::GgufWriter w(model.string());
    w.set("general.architecture", formats::GgufValue::str("llama"));
    w.set("general.name", formats::GgufValue::str("bad \xff\xfe name"));
    w.set("tokenizer.ggml.model", formats::GgufValue::str("llama"));
    w.set("tokenizer.ggml.tokens", formats::GgufValue::array(formats::GgufValueType::String,
                                                             {formats::GgufValue::str("\xc3"),
                                                              formats::GgufValue::str("ok")}));
    w.set("tokenizer.ggml.bos_token_id", formats::GgufValue::u32(0));
    w.finish();
  }
  test::CliResult text = test::run_lockstep("inspect " + test::shell_quote(model));
  EXPECT_EQ(text.code, 0) << text.err;
  EXPECT_NE(text.out.find("bos 0"), std::string::npos) << text.out;
  test::CliResult j = test::run_lockstep("inspect --json " + test::shell_quote(model));
  ASSERT_EQ(j.code, 0) << j.err;
  auto report = nlohmann::json::parse(j.out);
  EXPECT_EQ(report["tokenizer"]["tokens"], 2);
}

}  // namespace
}  // namespace lockstep
