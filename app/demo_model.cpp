#include "app/demo_model.h"

#include "engine/family.h"
#include "engine/synthetic_model.h"

namespace lockstep::app {

void write_demo_model(const std::filesystem::path& path, const std::string& family,
                      unsigned threads, const std::atomic<bool>* cancel) {
  engine::SyntheticModelOptions m;
  m.family = family;
  m.hidden = 128;
  m.layers = 4;
  m.heads = 8;
  m.kv_heads = 2;
  m.ffn = 352;
  m.vocab = 384;
  m.context = 512;
  m.seed = 7;
  m.qk_gain = 2.0;  // peaked attention, as trained models have: softmax_no_max overflows
  m.out = path;
  m.threads = threads ? threads : 2;
  const engine::FamilyRegistry families = engine::FamilyRegistry::load();
  engine::write_synthetic_model(m, families, {}, cancel);
}

}  // namespace lockstep::app
