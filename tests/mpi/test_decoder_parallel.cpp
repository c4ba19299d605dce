// The decoder families' new features under tensor parallelism and ZeRO-3, on 2 and 4 CPU ranks in
// f64, against the same model on one rank (computed on every rank): Qwen2's q, k, v biases (split
// with their output rows under TP, trained in full fine-tuning, frozen in ZeRO-3's frozen buffers
// under LoRA), a tied head (vocabulary-parallel with the embedding), and Llama 3's rotary
// scaling. Layouts change only the order of floating-point sums: 1e-10 relative, as in
// test_t5_parallel.cpp.
//
// Checks are non-fatal (EXPECT_*) so that every rank makes the same collective calls whatever
// fails; mpi_main.cpp fails the job when any rank had a failure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "adapters/lora.hpp"
#include "core/rng.hpp"
#include "model/llama.hpp"
#include "parallel/runtime.hpp"
#include "parallel/zero3.hpp"
#include "train/optimizer.hpp"

namespace st {
namespace {

constexpr double kTol = 1e-10;

struct Variant {
  bool qkv_bias, tied, llama3;
  std::string str() const {
    return std::string(qkv_bias ? "qkv biases" : "no biases") + (tied ? ", tied" : ", untied") + (llama3 ? ", llama3 rope" : "");
  }
};
const Variant kQwen2{true, true, false}, kLlama3{false, false, true}, kBoth{true, false, true};

LlamaConfig tiny(const Variant& v) {
  LlamaConfig c;
  c.vocab_size = 20;
  c.hidden_size = 12;
  c.intermediate_size = 8;
  c.num_layers = 2;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 2;
  c.max_position_embeddings = 16;
  c.qkv_bias = v.qkv_bias;
  c.tie_word_embeddings = v.tied;
  if (v.llama3) {
    c.rope_scaling.type = RopeScaling::Type::llama3;
    c.rope_scaling.factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 6;
  }
  return c;
}

// The model for `tp` (one rank when tp is empty), with non-zero biases drawn whole and cut.
LlamaModel make_model(const Variant& v, const TpGroup& tp = {}) {
  LlamaModel m = llama_build(tiny(v), DType::f64, Device::cpu, {}, tp);
  llama_init_random(m, 5, 0.5);
  for (size_t l = 0; l < m.blocks.size(); ++l)
    for (Linear* lin : {&m.blocks[l].q, &m.blocks[l].k, &m.blocks[l].v}) {
      if (!lin->bias.defined()) continue;
      Tensor full = Tensor::empty({lin->full_out()}, DType::f64);
      Rng rng(100 + l * 7 + static_cast<size_t>(lin->full_out()));
      for (int64_t i = 0; i < full.numel(); ++i) full.ptr<double>()[i] = rng.uniform(-0.5, 0.5);
      lin->bias.copy_from(tp_shard_of(full, lin->tp_mode, m.tp));
    }
  return m;
}

// Rows [first, first + count) of a global batch of B rows of T tokens (row 1 padded), every target
// weighted 1 / (targets of the whole batch).
LlamaBatch batch_of(int64_t B, int64_t T, int64_t first, int64_t count, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(B * T)), lengths(static_cast<size_t>(B));
  int64_t targets = 0;
  for (int64_t b = 0; b < B; ++b) {
    lengths[static_cast<size_t>(b)] = static_cast<int32_t>(b % 3 == 1 ? T - 2 : T);
    targets += lengths[static_cast<size_t>(b)] - 1;
    for (int64_t t = 0; t < T; ++t)
      ids[static_cast<size_t>(b * T + t)] = static_cast<int32_t>(counter_key(seed, static_cast<uint64_t>(b * T + t)) % 20);
  }
  LlamaBatch out;
  out.B = count;
  out.T = T;
  out.ids = Tensor::empty({count * T}, DType::i32);
  out.targets = Tensor::empty({count * T}, DType::i32);
  out.weight = Tensor::empty({count * T}, DType::f32);
  out.lengths = Tensor::empty({count}, DType::i32);
  for (int64_t b = 0; b < count; ++b) {
    const int64_t r = first + b, len = lengths[static_cast<size_t>(r)];
    out.lengths.ptr<int32_t>()[b] = static_cast<int32_t>(len);
    for (int64_t t = 0; t < T; ++t) {
      const size_t g = static_cast<size_t>(r * T + t), o = static_cast<size_t>(b * T + t);
      out.ids.ptr<int32_t>()[o] = ids[g];
      const bool target = t + 1 < len;
      out.targets.ptr<int32_t>()[o] = target ? ids[g + 1] : -1;
      out.weight.ptr<float>()[o] = target ? static_cast<float>(1.0 / static_cast<double>(targets)) : 0.0f;
    }
  }
  return out;
}

double forward_backward(LlamaModel& m, const LlamaBatch& b) {
  LlamaActivations a = llama_activations(m, b.B, b.T, false, true);
  const double loss = llama_forward(m, a, b, LayerContext{}, true);
  llama_backward(m, a, b, LayerContext{});
  return loss;
}

double max_rel_diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  const Tensor a64 = a.to_cpu(DType::f64), b64 = b.to_cpu(DType::f64);
  double diff = 0, ref = 0;
  for (int64_t i = 0; i < a64.numel(); ++i) {
    diff = std::max(diff, std::fabs(a64.ptr<double>()[i] - b64.ptr<double>()[i]));
    ref = std::max(ref, std::fabs(b64.ptr<double>()[i]));
  }
  return ref == 0 ? diff : diff / ref;
}

TpGroup world_tp() {
  Runtime& rt = runtime();
  return TpGroup{rt.world.get(), rt.world_size, rt.world_rank};
}

TEST(DecoderParallel, TensorParallelBiasesTiedHeadAndLlama3RopeEqualOneRank) {
  const TpGroup tp = world_tp();
  const LlamaBatch batch = batch_of(3, 7, 0, 3, 11);
  for (const Variant& v : {kQwen2, kLlama3}) {
    SCOPED_TRACE(v.str() + ", tp " + std::to_string(tp.size));
    LlamaModel ref = make_model(v);
    llama_enable_base_training(ref);
    const double want = forward_backward(ref, batch);
    LlamaModel m = make_model(v, tp);
    llama_enable_base_training(m);
    if (v.qkv_bias) {
      EXPECT_EQ(m.blocks[0].k.bias.numel() * tp.size, m.cfg.kv_dim());
    }
    const double got = forward_backward(m, batch);
    EXPECT_LT(std::fabs(got - want), kTol * std::fabs(want)) << got << " vs " << want;
    const std::vector<LlamaWeightSlot> rs = llama_weight_slots(ref), ms = llama_weight_slots(m);
    ASSERT_EQ(rs.size(), ms.size());
    double worst = 0;
    for (size_t i = 0; i < rs.size(); ++i) {
      EXPECT_EQ(ms[i].name, rs[i].name);
      EXPECT_EQ(max_rel_diff(gather_full(m.tp, ms[i], DType::f64), *rs[i].tensor), 0.0) << rs[i].name;
      const double e = max_rel_diff(tp_gather_full(*ms[i].grad, ms[i].split, m.tp, DType::f64), *rs[i].grad);
      EXPECT_LT(e, kTol) << rs[i].name;
      worst = std::max(worst, e);
    }
    for (const ParamRef& p : llama_trainable_params(m)) {  // biases split with their columns
      const bool norm = p.name.find("layernorm") != std::string::npos || p.name.find("model.norm") != std::string::npos;
      EXPECT_EQ(p.tp_sharded, !norm) << p.name;
    }
    if (tp.rank == 0) std::printf("[decoder tp %d %s] loss %.12f, worst gathered gradient %.1e\n", tp.size, v.str().c_str(), got, worst);
  }
}

// Two AdamW steps of the one-rank model on the whole batch and of ZeRO-3 (over `dp`, with TP
// `tp` inside) on this rank's rows: losses and final weights (biases included) compared.
void check_zero3_steps(const Variant& v, const TpGroup& tp, Comm& dp, bool with_lora) {
  SCOPED_TRACE(v.str() + ", tp " + std::to_string(tp.size) + " x dp " + std::to_string(dp.size()) +
               (with_lora ? ", LoRA (biases frozen)" : ", full fine-tuning"));
  const int64_t per_rank = 2, B = per_rank * dp.size(), T = 6;
  auto prepare = [&](LlamaModel& m) {
    if (!with_lora) {
      llama_enable_base_training(m);
      return;
    }
    LoraConfig lc;
    lc.r = 2;
    lc.alpha = 4;
    for (Linear* lin : llama_linears(m))
      if (lin->name != "lm_head") lin->adapter = std::make_unique<LoraAdapter>(*lin, lc, 64, 3);
  };
  LlamaModel ref = make_model(v);
  prepare(ref);
  AdamW ref_opt(llama_trainable_params(ref), 0.9, 0.999, 1e-8, 0.1);
  LlamaModel m = make_model(v, tp);
  prepare(m);
  Zero3 zero(llama_param_table(m), dp, true);
  AdamW opt(zero.params(), 0.9, 0.999, 1e-8, 0.1);
  for (int step = 0; step < 2; ++step) {
    ref_opt.zero_grad();
    const double want = forward_backward(ref, batch_of(B, T, 0, B, 23 + step));
    ref_opt.step(1e-2);
    opt.zero_grad();
    const double got = dp.all_reduce_sum(forward_backward(m, batch_of(B, T, per_rank * dp.rank(), per_rank, 23 + step)));
    opt.step(1e-2);
    EXPECT_LT(std::fabs(got - want), kTol * std::fabs(want)) << "step " << step << ": " << got << " vs " << want;
  }
  zero.gather_all_for_save();
  const std::vector<LlamaWeightSlot> rs = llama_weight_slots(ref), ms = llama_weight_slots(m);
  double worst = 0;
  for (size_t i = 0; i < rs.size(); ++i) {
    const double e = max_rel_diff(gather_full(m.tp, ms[i], DType::f64), *rs[i].tensor);
    EXPECT_LT(e, kTol) << rs[i].name;
    worst = std::max(worst, e);
  }
  if (with_lora) {  // the adapters' masters, gathered over TP by their sharding
    const std::vector<Linear*> rl = llama_linears(ref), ml = llama_linears(m);
    for (size_t i = 0; i < rl.size(); ++i) {
      if (!rl[i]->adapter) continue;
      auto* ra = dynamic_cast<LoraAdapter*>(rl[i]->adapter.get());
      auto* ma = dynamic_cast<LoraAdapter*>(ml[i]->adapter.get());
      const TpMode a_split = ml[i]->tp_mode == TpMode::row ? TpMode::row : TpMode::none;
      const TpMode b_split = ml[i]->tp_mode == TpMode::column ? TpMode::column : TpMode::none;
      const double ea = max_rel_diff(tp_gather_full(ma->A, a_split, m.tp, DType::f64), ra->A);
      const double eb = max_rel_diff(tp_gather_full(ma->B, b_split, m.tp, DType::f64), ra->B);
      EXPECT_LT(ea, kTol) << rl[i]->name << " lora_A";
      EXPECT_LT(eb, kTol) << rl[i]->name << " lora_B";
      EXPECT_GT(max_rel_diff(ra->B, Tensor::zeros(ra->B.shape(), DType::f64)), 0.0) << "B trained";
      worst = std::max({worst, ea, eb});
    }
  }
  if (runtime().world_rank == 0)
    std::printf("[decoder zero3 tp %d x dp %d %s%s] worst final weight %.1e\n", tp.size, dp.size(), v.str().c_str(),
                with_lora ? " lora" : "", worst);
}

TEST(DecoderParallel, Zero3WithBiasesAndATiedHeadEqualsOneRank) {
  Comm& world = *runtime().world;
  check_zero3_steps(kQwen2, TpGroup{}, world, false);
  check_zero3_steps(kQwen2, TpGroup{}, world, true);
}

TEST(DecoderParallel, TensorParallelTimesZero3WithBiasesEqualsOneRank) {
  Runtime& rt = runtime();
  if (rt.world_size < 4 || rt.world_size % 2 != 0) GTEST_SKIP() << "needs 4 ranks or more (tp 2 x dp 2)";
  Runtime grid;
  grid.world_rank = rt.world_rank;
  grid.world_size = rt.world_size;
  runtime_make_grid(grid, 2);
  const TpGroup tp{grid.tp_comm.get(), grid.tp, grid.tp_rank};
  check_zero3_steps(kQwen2, tp, *grid.dp_comm, false);
  check_zero3_steps(kBoth, tp, *grid.dp_comm, true);
}

}  // namespace
}  // namespace st
