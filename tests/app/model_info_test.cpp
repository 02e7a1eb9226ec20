// The workbench's non-GUI input handling (app/model_info.h): token ids typed as text, the
// recent-models list, the layer range, a model's description, the file browser's listing
// and what a dropped directory is.

#include "app/model_info.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/family.h"
#include "formats/error.h"
#include "formats/gguf.h"
#include "tests/test_util.h"

namespace lockstep::app {
namespace {

namespace fs = std::filesystem;

TEST(ParseTokenIds, TakesCommasSpacesAndNewlines) {
  EXPECT_EQ(parse_token_ids("1,2,3"), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(parse_token_ids(" 7  8\n9 , 10,"), (std::vector<int32_t>{7, 8, 9, 10}));
  EXPECT_EQ(parse_token_ids("0"), (std::vector<int32_t>{0}));
  EXPECT_EQ(parse_token_ids("2147483647"), (std::vector<int32_t>{2147483647}));
}

TEST(ParseTokenIds, RefusesWhatIsNoIdNamingIt) {
  for (const char* bad : {"1, two, 3", "-4", "1.5", "3x", "2147483648"}) {
    try {
      parse_token_ids(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("is not a token id"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(parse_token_ids(""), Error);
  EXPECT_THROW(parse_token_ids(" ,\n "), Error);
}

TEST(PushRecent, MovesToFrontOnceAndKeepsAtMostMax) {
  std::vector<std::string> l;
  l = push_recent(l, "a", 3);
  l = push_recent(l, "b", 3);
  l = push_recent(l, "c", 3);
  EXPECT_EQ(l, (std::vector<std::string>{"c", "b", "a"}));
  l = push_recent(l, "a", 3);  // already there: moves to the front, no duplicate
  EXPECT_EQ(l, (std::vector<std::string>{"a", "c", "b"}));
  l = push_recent(l, "d", 3);  // the oldest falls off
  EXPECT_EQ(l, (std::vector<std::string>{"d", "a", "c"}));
  l = push_recent(l, "d", 3);
  EXPECT_EQ(l, (std::vector<std::string>{"d", "a", "c"}));
}

TEST(ParseLayerRange, AllOneAndRange) {
  const LayerRange all = parse_layer_range("all");
  EXPECT_TRUE(all.contains(0) && all.contains(1000));
  EXPECT_TRUE(parse_layer_range("  ").contains(7));
  const LayerRange one = parse_layer_range("3");
  EXPECT_TRUE(one.contains(3));
  EXPECT_FALSE(one.contains(2) || one.contains(4));
  const LayerRange r = parse_layer_range(" 2-5 ");
  EXPECT_FALSE(r.contains(1));
  EXPECT_TRUE(r.contains(2) && r.contains(5));
  EXPECT_FALSE(r.contains(6));
  for (const char* bad : {"5-2", "a-b", "1-", "-3", "1.5", "first"})
    EXPECT_THROW(parse_layer_range(bad), Error) << bad;
}

TEST(ModelInfo, DescribesTheSharedTinyModel) {
  const fs::path path = fs::path(LOCKSTEP_SHARED_DIR) / "models" / "stories260K.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << path << " is not there";
  const engine::Model model = engine::open_model(path, engine::FamilyRegistry::load());
  const views::ModelInfo m = model_info(path, model);
  EXPECT_EQ(m.kind, "gguf");
  EXPECT_EQ(m.family, model.family.name);
  EXPECT_EQ(m.layers, model.config.layers);
  EXPECT_GT(m.layers, 0u);
  EXPECT_EQ(m.tensors.size(), model.gguf->tensors().size());
  EXPECT_TRUE(m.has_tokenizer);
  bool has_layers = false;
  for (const auto& h : m.hyperparameters) has_layers |= h[0] == "layers";
  EXPECT_TRUE(has_layers);
  // Its default tokens are the demo sentence, encoded: more than the fallback ids 1..8.
  const std::vector<int32_t> t = default_tokens(model);
  EXPECT_FALSE(t.empty());
  for (int32_t id : t) EXPECT_LT(uint64_t(id), model.config.vocab);
}

TEST(ListDir, DirectoriesFirstModelsMarkedHiddenLeftOut) {
  const fs::path dir = test::scratch_dir("list-dir");
  fs::create_directories(dir / "zeta");
  fs::create_directories(dir / "hf");
  std::ofstream(dir / "hf" / "config.json") << "{}";
  std::ofstream(dir / "b.gguf") << "x";
  std::ofstream(dir / "a.txt") << "hello";
  std::ofstream(dir / ".hidden") << "";
  const views::DirListing l = list_dir(dir);
  EXPECT_TRUE(l.error.empty()) << l.error;
  ASSERT_EQ(l.entries.size(), 4u);
  EXPECT_EQ(l.entries[0].name, "hf");
  EXPECT_TRUE(l.entries[0].is_dir && l.entries[0].is_model);
  EXPECT_EQ(l.entries[1].name, "zeta");
  EXPECT_TRUE(l.entries[1].is_dir && !l.entries[1].is_model);
  EXPECT_EQ(l.entries[2].name, "a.txt");
  EXPECT_FALSE(l.entries[2].is_model);
  EXPECT_EQ(l.entries[2].size, "5 B");
  EXPECT_EQ(l.entries[3].name, "b.gguf");
  EXPECT_TRUE(l.entries[3].is_model);
  EXPECT_EQ(l.parent, fs::weakly_canonical(dir).parent_path().string());
  EXPECT_FALSE(list_dir(dir / "missing").error.empty());
  fs::remove_all(dir);
}

TEST(IsDumpDir, ManifestOrCellFilesAtTopOrOneDown) {
  const fs::path dir = test::scratch_dir("dump-dir");
  fs::create_directories(dir / "plain");
  fs::create_directories(dir / "with-manifest");
  std::ofstream(dir / "with-manifest" / "manifest.json") << "{}";
  fs::create_directories(dir / "aprender" / "layer-0");
  std::ofstream(dir / "aprender" / "layer-0" / "attn_norm.npy") << "";
  EXPECT_FALSE(is_dump_dir(dir / "plain"));
  EXPECT_TRUE(is_dump_dir(dir / "with-manifest"));
  EXPECT_TRUE(is_dump_dir(dir / "aprender"));
  EXPECT_FALSE(is_dump_dir(dir / "with-manifest" / "manifest.json"));  // a file
  const std::vector<views::RecentModel> r =
      check_recent({(dir / "with-manifest").string(), (dir / "gone.gguf").string()});
  ASSERT_EQ(r.size(), 2u);
  EXPECT_TRUE(r[0].exists);
  EXPECT_FALSE(r[1].exists);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lockstep::app
