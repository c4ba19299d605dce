// The decoder families' new features under tensor parallelism and ZeRO-3, on 2 and 4 CPU ranks in
// f64, against the same model on one rank (computed on every rank): Qwen2's q, k, v biases (split
// with their output rows under TP, trained in full fine-tuning, frozen in ZeRO-3's frozen buffers
// under LoRA), a tied head (vocabulary-parallel with the embedding), and Llama 3's rotary
// scaling. Layouts change only the order of floating-point sums: 1e-10 relative, as in
// test_t5_parallel.cpp. And the FP8 base (base_precision = fp8) of a TP rank, held from the
// build, against its converted dense shard: bit for bit.
//
// Checks are non-fatal (EXPECT_*) so that every rank makes the same collective calls whatever
// fails; mpi_main.cpp fails the job when any rank had a failure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "adapters/apply.hpp"
#include "adapters/lora.hpp"
#include "core/rng.hpp"
#include "model/fp8_base.hpp"
#include "model/llama.hpp"
#include "ops/init.hpp"
#include "parallel/tp_ops.hpp"
#include "parallel/runtime.hpp"
#include "parallel/zero3.hpp"
#include "tests/common/layout_compare.hpp"

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

double forward_backward(LlamaModel& m, const LlamaBatch& b, bool checkpointing = false) {
  LlamaActivations a = llama_activations(m, b.B, b.T, checkpointing, true);
  const double loss = llama_forward(m, a, b, LayerContext{}, true);
  llama_backward(m, a, b, LayerContext{});
  return loss;
}

TEST(DecoderParallel, TensorParallelBiasesTiedHeadAndLlama3RopeEqualOneRank) {
  const TpGroup tp = test::world_tp();
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
    const double worst = test::expect_gathered_grads_match(llama_weight_slots(ref), llama_weight_slots(m), m.tp, kTol);
    for (const ParamRef& p : llama_trainable_params(m)) {  // biases split with their columns
      const bool norm = p.name.find("layernorm") != std::string::npos || p.name.find("model.norm") != std::string::npos;
      EXPECT_EQ(p.tp_sharded, !norm) << p.name;
    }
    if (tp.rank == 0) std::printf("[decoder tp %d %s] loss %.12f, worst gathered gradient %.1e\n", tp.size, v.str().c_str(), got, worst);
  }
}

// Activation checkpointing under TP: block 0's recompute redoes its forward up to the MLP's
// activation (the row-parallel down projection and its all-reduce are not redone: the backward
// does not read the block output), so loss and gathered gradients equal the one-rank run that
// keeps every activation.
TEST(DecoderParallel, TensorParallelCheckpointedEqualsOneRankWithoutCheckpointing) {
  const TpGroup tp = test::world_tp();
  const LlamaBatch batch = batch_of(3, 7, 0, 3, 13);
  LlamaModel ref = make_model(kBoth);
  llama_enable_base_training(ref);
  const double want = forward_backward(ref, batch);
  LlamaModel m = make_model(kBoth, tp);
  llama_enable_base_training(m);
  const double got = forward_backward(m, batch, true);
  EXPECT_LT(std::fabs(got - want), kTol * std::fabs(want)) << got << " vs " << want;
  const double worst = test::expect_gathered_grads_match(llama_weight_slots(ref), llama_weight_slots(m), m.tp, kTol);
  if (tp.rank == 0) std::printf("[decoder tp %d checkpointed] loss %.12f, worst gathered gradient %.1e\n", tp.size, got, worst);
}

// LoRA with non-zero B (drawn whole from each module's name, then cut) under TP over the world,
// the adapters of q, k, v and gate, up grouped (one sum of dxa over the TP group per group),
// against the one-rank model with every adapter on its own: loss and every adapter gradient.
TEST(DecoderParallel, TensorParallelGroupedLoraEqualsOneRankPerModule) {
  const TpGroup tp = test::world_tp();
  const LlamaBatch batch = batch_of(4, 6, 0, 4, 13);  // 24 rows: a multiple of 8, so the groups run as groups
  for (const Variant& v : {kQwen2, kLlama3}) {
    SCOPED_TRACE(v.str() + ", tp " + std::to_string(tp.size));
    LlamaModel ref = make_model(v), m = make_model(v, tp);
    test::attach_test_lora(llama_linears(ref));
    test::attach_test_lora(llama_linears(m), llama_input_groups(m));
    const std::vector<Linear*> rl = llama_linears(ref), ml = llama_linears(m);
    for (size_t i = 0; i < rl.size(); ++i) {
      auto* ra = dynamic_cast<LoraAdapter*>(rl[i]->adapter.get());
      auto* ma = dynamic_cast<LoraAdapter*>(ml[i]->adapter.get());
      if (!ra) continue;
      fill_normal(ra->B, counter_key(9, name_hash(rl[i]->name)), 0.0, 0.3);
      ma->B.copy_from(tp_shard_of(ra->B, ml[i]->tp_mode == TpMode::column ? TpMode::column : TpMode::none, tp));
      ra->sync_working();
      ma->sync_working();
    }
    EXPECT_TRUE(dynamic_cast<LoraAdapter*>(m.blocks[0].v.adapter.get())->group);
    const double want = forward_backward(ref, batch), got = forward_backward(m, batch);
    EXPECT_LT(std::fabs(got - want), kTol * std::fabs(want)) << got << " vs " << want;
    const double worst = test::expect_lora_match(rl, ml, tp, test::LoraPart::gradients, kTol);
    if (tp.rank == 0)
      std::printf("[decoder tp %d %s grouped lora] loss %.12f, worst adapter gradient %.1e\n", tp.size, v.str().c_str(),
                  got, worst);
  }
}

// Two AdamW steps of the one-rank model on the whole batch and of ZeRO-3 (over `dp`, with TP
// `tp` inside) on this rank's rows: losses and final weights (biases included) compared.
void check_zero3_steps(const Variant& v, const TpGroup& tp, Comm& dp, bool with_lora) {
  SCOPED_TRACE(v.str() + ", tp " + std::to_string(tp.size) + " x dp " + std::to_string(dp.size()) +
               (with_lora ? ", LoRA (biases frozen)" : ", full fine-tuning"));
  const int64_t per_rank = 2, B = per_rank * dp.size(), T = 8;  // 16 rows per rank: grouped LoRA calls
  // LoRA: the layout's adapters grouped by input, the one-rank model's each on its own.
  auto prepare = [&](LlamaModel& m, bool grouped) {
    if (with_lora) test::attach_test_lora(llama_linears(m), grouped ? llama_input_groups(m) : std::vector<std::vector<Linear*>>{});
    else llama_enable_base_training(m);
  };
  LlamaModel ref = make_model(v);
  prepare(ref, false);
  LlamaModel m = make_model(v, tp);
  prepare(m, true);
  Zero3 zero(llama_param_table(m), dp, true);
  test::expect_adamw_steps_match(
      llama_trainable_params(ref), zero.params(), dp,
      [&](int step) { return forward_backward(ref, batch_of(B, T, 0, B, 23 + step)); },
      [&](int step) { return forward_backward(m, batch_of(B, T, per_rank * dp.rank(), per_rank, 23 + step)); }, kTol);
  zero.gather_all_for_save();
  double worst = test::expect_weights_match(llama_weight_slots(ref), llama_weight_slots(m), m.tp, kTol);
  if (with_lora)
    worst = std::max(worst, test::expect_lora_match(llama_linears(ref), llama_linears(m), m.tp, test::LoraPart::masters, kTol));
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
  const Runtime grid = test::world_grid(2);
  const TpGroup tp = test::grid_tp(grid);
  check_zero3_steps(kQwen2, tp, *grid.dp_comm, false);
  check_zero3_steps(kBoth, tp, *grid.dp_comm, true);
}

// base_precision = fp8 under TP: each rank quantizes its own shard of an adapted layer with the
// shard's per-tensor scale. Held from the build, init draws the full tensor, cuts this rank's
// shard and quantizes it (set_weight); converted, the dense shard is quantized after the
// adapters are attached: the same W8 and W8^T, codes, scale and amax, on every rank.
TEST(DecoderParallel, TensorParallelFp8BaseHeldFromTheBuildEqualsTheConvertedShard) {
  const TpGroup tp = test::world_tp();
  LlamaConfig c;  // every projection's shard a multiple of 16 for up to 4 ranks
  c.vocab_size = 32;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 4;
  c.head_dim = 16;
  c.max_position_embeddings = 16;
  if (64 % (16 * tp.size) != 0) GTEST_SKIP() << "needs shards of a multiple of 16 rows and columns (1, 2 or 4 ranks)";
  LlamaQuant q;
  q.fp8_modules = llama_module_names();
  LlamaModel dense = llama_build(c, DType::f32, Device::cpu, {}, tp), held = llama_build(c, DType::f32, Device::cpu, q, tp);
  llama_init_random(dense, 7, 0.05);
  llama_init_random(held, 7, 0.05);
  LoraConfig lc;
  lc.r = 4;
  EXPECT_EQ(attach_lora(dense, lc, 8, 3), 2 * 7);
  EXPECT_EQ(attach_lora(held, lc, 8, 3), 2 * 7);
  const std::vector<Linear*> dl = llama_linears(dense), hl = llama_linears(held);
  EXPECT_EQ(fp8_convert_base(dl, 8, "test"), 2 * 7);
  EXPECT_EQ(fp8_convert_base(hl, 8, "test"), 2 * 7);
  const auto same = [](const Tensor& a, const Tensor& b) {
    return a.defined() && b.defined() && a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
  };
  int compared = 0;
  for (size_t i = 0; i < hl.size(); ++i) {
    if (!hl[i]->fp8_stored()) continue;
    const Fp8Base &h = *hl[i]->fp8, &d = *dl[i]->fp8;
    EXPECT_EQ(h.w.rows * h.w.cols * tp.size, hl[i]->full_out() * hl[i]->full_in()) << hl[i]->name;  // this rank's shard
    for (const auto& [got, want] : {std::pair{&h.w, &d.w}, std::pair{&h.wt, &d.wt}}) {
      EXPECT_TRUE(same(got->codes, want->codes)) << hl[i]->name;
      EXPECT_TRUE(same(got->scale_inv, want->scale_inv)) << hl[i]->name;
      EXPECT_TRUE(same(got->amax, want->amax)) << hl[i]->name;
    }
    ++compared;
  }
  EXPECT_EQ(compared, 2 * 7);
  EXPECT_TRUE(held.lm_head.weight.defined());
}

}  // namespace
}  // namespace st
