// PEFT adapters under tensor parallelism (every rank of the world in one TP group, 2 or 4 ranks):
// load_peft_adapter gives each rank exactly its part of the one-rank adapter (A's input columns
// in row-parallel layers, B's output rows in column-parallel ones, the rest replicated), and
// save_peft_adapter gathers them back into a file equal, bit for bit, to the one-rank file.
// Llama and T5; f64 masters. Checks are non-fatal so every rank makes the same collective calls.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <functional>

#include "tests/common/layout_compare.hpp"
#include "tests/common/test_util.hpp"
#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "io/safetensors.hpp"
#include "ops/init.hpp"
#include "parallel/runtime.hpp"
#include "parallel/tp_ops.hpp"

namespace fs = std::filesystem;

namespace st {
namespace {

using test::world_tp;

std::string shared_dir(const char* tag) {
  Comm& world = *runtime().world;
  const int pid = static_cast<int>(world.all_reduce_max(static_cast<double>(getpid())));
  return (fs::temp_directory_path() / str("st_peft_tp_", tag, "_", pid)).string();
}

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to_cpu(a.dtype()), y = b.to_cpu(b.dtype());
  return x.numel() == y.numel() && std::memcmp(x.data(), y.data(), x.nbytes()) == 0;
}

// `build(tp)` makes the model with LoRA attached (same seed) and returns its linears.
void check_family(const char* arch, const std::function<std::vector<Linear*>(const TpGroup&)>& build) {
  Comm& world = *runtime().world;
  const TpGroup tp = world_tp();
  const std::string ref_dir = shared_dir("ref"), tp_dir = ref_dir + "_tp";
  // One rank's adapter with a non-zero B, written by rank 0.
  std::vector<Linear*> full = build(TpGroup{});
  uint64_t k = 100;
  for (Linear* lin : full)
    if (auto* a = dynamic_cast<LoraAdapter*>(lin->adapter.get())) {
      fill_uniform(a->B, ++k, -0.5, 0.5);
      a->sync_working();
    }
  if (world.rank() == 0) save_peft_adapter(full, test::peft_names(arch), "", ref_dir);
  world.barrier();

  std::vector<Linear*> part = build(tp);
  EXPECT_GT(load_peft_adapter(part, ref_dir), 0);
  ASSERT_EQ(part.size(), full.size());
  int row = 0, column = 0;
  for (size_t i = 0; i < part.size(); ++i) {
    auto* p = dynamic_cast<LoraAdapter*>(part[i]->adapter.get());
    auto* f = dynamic_cast<LoraAdapter*>(full[i]->adapter.get());
    if (!p || !f) continue;
    row += p->tp_mode == TpMode::row;
    column += p->tp_mode == TpMode::column;
    const Tensor a = p->tp_mode == TpMode::row ? shard_cols(f->A, tp.size, tp.rank) : f->A.to_cpu(f->A.dtype());
    const Tensor b = p->tp_mode == TpMode::column ? shard_rows(f->B, tp.size, tp.rank) : f->B.to_cpu(f->B.dtype());
    EXPECT_TRUE(same_bits(p->A, a)) << part[i]->name << " A on rank " << tp.rank;
    EXPECT_TRUE(same_bits(p->B, b)) << part[i]->name << " B on rank " << tp.rank;
  }
  EXPECT_GT(row, 0);
  EXPECT_GT(column, 0);

  save_peft_adapter(part, test::peft_names(arch), "", tp_dir);  // collective: gathers, rank 0 writes
  world.barrier();
  if (world.rank() == 0) {
    const SafetensorsFile x = SafetensorsFile::open(ref_dir + "/adapter_model.safetensors");
    const SafetensorsFile y = SafetensorsFile::open(tp_dir + "/adapter_model.safetensors");
    ASSERT_EQ(x.entries().size(), y.entries().size());
    for (const auto& e : x.entries()) {
      ASSERT_NE(y.find(e.name), nullptr) << e.name;
      EXPECT_EQ(x.read_raw(e.name), y.read_raw(e.name)) << e.name;
    }
    EXPECT_EQ(read_peft_config(ref_dir, test::peft_names(arch)).target_modules, read_peft_config(tp_dir, test::peft_names(arch)).target_modules);
    fs::remove_all(ref_dir);
    fs::remove_all(tp_dir);
  }
  world.barrier();
}

TEST(PeftTp, LlamaAdapterSlicesAndGathersExactly) {
  LlamaConfig c;
  c.vocab_size = 48;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 4;
  c.head_dim = 8;
  c.max_position_embeddings = 32;
  std::vector<std::unique_ptr<LlamaModel>> keep;
  check_family("llama", [&](const TpGroup& tp) {
    keep.push_back(std::make_unique<LlamaModel>(llama_build(c, DType::f64, Device::cpu, {}, tp)));
    LlamaModel& m = *keep.back();
    llama_init_random(m, 5, 0.1);
    LoraConfig lc;
    lc.r = 4;
    lc.alpha = 8;
    attach_lora(m, lc, 8, 9);
    return llama_linears(m);
  });
}

TEST(PeftTp, T5AdapterSlicesAndGathersExactly) {
  T5Config c;
  c.vocab_size = 24;
  c.d_model = 8;
  c.d_kv = 3;
  c.num_heads = 4;
  c.d_ff = 16;
  c.num_layers = 2;
  c.num_decoder_layers = 2;
  c.relative_attention_num_buckets = 8;
  c.relative_attention_max_distance = 10;
  c.gated = true;
  std::vector<std::unique_ptr<T5Model>> keep;
  check_family("t5", [&](const TpGroup& tp) {
    keep.push_back(std::make_unique<T5Model>(t5_build(c, DType::f64, Device::cpu, {}, tp)));
    T5Model& m = *keep.back();
    t5_init_random(m, 5, 0.1);
    LoraConfig lc;
    lc.r = 2;
    lc.alpha = 4;
    lc.targets = {"q", "k", "v", "o", "wi_0", "wi_1", "wo"};
    attach_lora(m, lc, 8, 9);
    return t5_linears(m);
  });
}

}  // namespace
}  // namespace st
