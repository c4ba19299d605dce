// T5 under tensor parallelism (Megatron), ZeRO-3, both at once, NF4 (QLoRA) and DDP, on 2 and 4
// CPU ranks in f64, against the same model on one rank (computed on every rank): a tiny
// encoder-decoder (heads, d_ff and vocabulary divisible by 4), gated-GELU and ReLU FFNs, tied
// and untied heads. Layouts change only the order of floating-point sums, so losses, gathered
// gradients and trained weights agree to 1e-10 relative (f64 rounding is ~1e-16; the models
// have tens of dependent ops, and AdamW's first steps divide g by |g|, which keeps relative
// errors of the order of those of the gradients).
//
// Checks are non-fatal (EXPECT_*) so that every rank makes the same collective calls whatever
// fails; mpi_main.cpp fails the job when any rank had a failure.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>

#include "adapters/lora.hpp"
#include "core/rng.hpp"
#include "io/t5_io.hpp"
#include "model/t5.hpp"
#include "ops/init.hpp"
#include "parallel/ddp.hpp"
#include "parallel/runtime.hpp"
#include "parallel/tp_ops.hpp"
#include "parallel/zero3.hpp"
#include "tests/common/layout_compare.hpp"

namespace st {
namespace {

using test::max_rel_diff;

constexpr double kTol = 1e-10;

T5Config tiny(bool gated, bool tied) {
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
  c.gated = gated;
  c.tie_word_embeddings = tied;
  c.scale_decoder_outputs = tied;
  return c;
}

struct Variant {
  bool gated, tied;
  std::string str() const { return std::string(gated ? "gated-gelu" : "relu") + (tied ? ", tied" : ", untied"); }
};
const Variant kVariants[] = {{true, false}, {false, true}, {true, true}, {false, false}};

// A global batch of B rows: encoder ids [B, Te] with some padded rows, labels [B, Td] with ignored
// positions; the loss weight of every target is 1 / (targets of the whole batch).
struct Rows {
  int64_t B = 0, Te = 0, Td = 0, V = 0;
  std::vector<int32_t> ids, lengths, labels;
  int64_t targets() const {
    return std::count_if(labels.begin(), labels.end(), [](int32_t l) { return l >= 0; });
  }
};

Rows make_rows(int64_t B, int64_t Te, int64_t Td, int64_t V, uint64_t seed) {
  Rows r;
  r.B = B;
  r.Te = Te;
  r.Td = Td;
  r.V = V;
  for (int64_t i = 0; i < B * Te; ++i)
    r.ids.push_back(static_cast<int32_t>(counter_key(seed, static_cast<uint64_t>(i)) % static_cast<uint64_t>(V)));
  for (int64_t b = 0; b < B; ++b) r.lengths.push_back(static_cast<int32_t>(b % 3 == 1 ? Te - 2 : Te));
  for (int64_t i = 0; i < B * Td; ++i)
    r.labels.push_back(i % 5 == 4 ? -1 : static_cast<int32_t>(counter_key(seed + 1, static_cast<uint64_t>(i)) % static_cast<uint64_t>(V)));
  return r;
}

Tensor i32(const std::vector<int32_t>& v, size_t first, size_t count) {
  Tensor t = Tensor::empty({static_cast<int64_t>(count)}, DType::i32);
  std::copy(v.begin() + static_cast<std::ptrdiff_t>(first), v.begin() + static_cast<std::ptrdiff_t>(first + count), t.ptr<int32_t>());
  return t;
}

// Rows [first, first + count) of the global batch, weights 1 / (the global batch's targets).
T5Batch batch_of(const Rows& r, int64_t first, int64_t count) {
  T5Batch b;
  b.B = count;
  b.Te = r.Te;
  b.Td = r.Td;
  const auto fe = static_cast<size_t>(first * r.Te), fd = static_cast<size_t>(first * r.Td);
  const auto ne = static_cast<size_t>(count * r.Te), nd = static_cast<size_t>(count * r.Td);
  b.enc_ids = i32(r.ids, fe, ne);
  b.enc_lengths = i32(r.lengths, static_cast<size_t>(first), static_cast<size_t>(count));
  b.dec_lengths = i32(std::vector<int32_t>(static_cast<size_t>(count), static_cast<int32_t>(r.Td)), 0, static_cast<size_t>(count));
  const std::vector<int32_t> labels(r.labels.begin() + static_cast<std::ptrdiff_t>(fd),
                                    r.labels.begin() + static_cast<std::ptrdiff_t>(fd + nd));
  b.dec_targets = i32(labels, 0, nd);
  b.dec_ids = i32(t5_shift_right(labels, count, r.Td, 0, 0), 0, nd);
  b.dec_weight = Tensor::empty({count * r.Td}, DType::f32);
  const double w = 1.0 / static_cast<double>(r.targets());
  for (size_t i = 0; i < nd; ++i) b.dec_weight.ptr<float>()[i] = labels[i] >= 0 ? static_cast<float>(w) : 0.0f;
  return b;
}

T5Model make_model(const Variant& v, const TpGroup& tp = {}, const T5Quant& quant = {}) {
  T5Model m = t5_build(tiny(v.gated, v.tied), DType::f64, Device::cpu, quant, tp);
  t5_init_random(m, 5, 0.5);
  return m;
}

// One forward and backward; returns the objective.
double forward_backward(T5Model& m, const T5Batch& b) {
  T5Activations a = t5_activations(m, b.B, b.Te, b.Td, true);
  const double loss = t5_forward(m, a, b, true);
  t5_backward(m, a, b);
  return loss;
}

// ---------------------------------------------------------------- (a) tensor parallelism

TEST(T5Parallel, TensorParallelLossAndEveryGradientEqualOneRank) {
  const TpGroup tp = test::world_tp();
  const Rows rows = make_rows(3, 6, 5, 24, 11);
  const T5Batch batch = batch_of(rows, 0, rows.B);
  for (const Variant& v : kVariants) {
    SCOPED_TRACE(v.str() + ", tp " + std::to_string(tp.size));
    T5Model ref = make_model(v);
    t5_enable_base_training(ref);
    const double want = forward_backward(ref, batch);
    T5Model m = make_model(v, tp);
    t5_enable_base_training(m);
    const T5LocalDims ld = t5_local_dims(m);
    EXPECT_EQ(ld.heads * tp.size, m.cfg.num_heads);
    EXPECT_EQ(ld.vocab_offset, ld.vocab * tp.rank);
    EXPECT_EQ(m.shared.dim(0), m.cfg.vocab_size / tp.size);
    EXPECT_EQ(m.enc_rel.dim(1), m.cfg.num_heads / tp.size);
    const double got = forward_backward(m, batch);
    EXPECT_LT(std::fabs(got - want), kTol * std::fabs(want)) << got << " vs " << want;
    // The same full weights for any p, and every gradient once gathered.
    const double worst = test::expect_gathered_grads_match(t5_weight_slots(ref), t5_weight_slots(m), m.tp, kTol);
    // Trainable parameters flag exactly the split tensors as TP-sharded.
    for (const ParamRef& p : t5_trainable_params(m)) {
      const bool split = tp.size > 1 && p.name.find("layer_norm") == std::string::npos;
      EXPECT_EQ(p.tp_sharded, split) << p.name;
    }
    if (tp.rank == 0) std::printf("[t5 tp %d %s] loss %.12f, worst gathered gradient %.1e\n", tp.size, v.str().c_str(), got, worst);
  }
}

TEST(T5Parallel, CheckTpNamesTheConfigKey) {
  T5Config c = tiny(true, false);
  c.num_heads = 6;
  try {
    t5_check_tp(c, 4);
    ADD_FAILURE() << "num_heads 6 accepted with tp 4";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("num_heads"), std::string::npos) << e.what();
  }
  c = tiny(true, false);
  c.d_ff = 18;
  EXPECT_THROW(t5_check_tp(c, 4), InputError);
  c = tiny(true, false);
  c.vocab_size = 26;
  EXPECT_THROW(t5_check_tp(c, 4), InputError);
  EXPECT_NO_THROW(t5_check_tp(tiny(true, false), 4));
}

// save_t5 under TP gathers the shards (rank 0 writes); load_t5 slices them again.
TEST(T5Parallel, SaveGathersAndLoadShardsUnderTensorParallelism) {
  const TpGroup tp = test::world_tp();
  Comm& world = *runtime().world;
  const Variant v{true, false};
  T5Model m = make_model(v, tp);
  const int tag = static_cast<int>(world.all_reduce_max(static_cast<double>(getpid())));  // rank 0's choice, any rank's
  const std::string dir = (std::filesystem::temp_directory_path() / ("st_t5_tp_save_" + std::to_string(tag))).string();
  save_t5(m, dir);
  world.barrier();
  T5Model whole = load_t5(dir, DType::f64, Device::cpu);
  T5Model ref = make_model(v);
  T5Model again = load_t5(dir, DType::f64, Device::cpu, {}, tp);
  const std::vector<T5WeightSlot> ws = t5_weight_slots(whole), rs = t5_weight_slots(ref), as = t5_weight_slots(again),
                                  ms = t5_weight_slots(m);
  for (size_t i = 0; i < rs.size(); ++i) {
    // Written in f32: the f64 values rounded once.
    EXPECT_EQ(max_rel_diff(*ws[i].tensor, rs[i].tensor->to_cpu(DType::f32)), 0.0) << rs[i].name;
    EXPECT_EQ(max_rel_diff(*as[i].tensor, ms[i].tensor->to_cpu(DType::f32)), 0.0) << rs[i].name;
  }
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------- (b, c) ZeRO-3, and TP x ZeRO-3

// Two training steps (forward, backward, AdamW) of the one-rank model on the whole batch, and of
// the layout under test on rank `dp_rank`'s share of the rows; losses and final weights compared.
void check_zero3_steps(const Variant& v, const TpGroup& tp, Comm& dp, bool with_lora) {
  SCOPED_TRACE(v.str() + ", tp " + std::to_string(tp.size) + " x dp " + std::to_string(dp.size()) +
               (with_lora ? ", LoRA on a frozen base" : ", full fine-tuning"));
  const int P = dp.size();
  const int64_t per_rank = 2;
  const Rows rows = make_rows(per_rank * P, 8, 4, 24, 23);  // 16 and 8 rows per rank: grouped LoRA calls
  // LoRA: the layout's adapters grouped by input, the one-rank model's each on its own.
  auto prepare = [&](T5Model& m, bool grouped) {
    if (with_lora) test::attach_test_lora(t5_linears(m), grouped ? t5_input_groups(m) : std::vector<std::vector<Linear*>>{});
    else t5_enable_base_training(m);
  };
  T5Model ref = make_model(v);
  prepare(ref, false);
  T5Model m = make_model(v, tp);
  prepare(m, true);
  Zero3 zero(t5_param_table(m), dp, true);
  EXPECT_EQ(zero.num_units(), t5_num_units(m));
  const T5Batch all = batch_of(rows, 0, rows.B), mine = batch_of(rows, per_rank * dp.rank(), per_rank);
  test::expect_adamw_steps_match(
      t5_trainable_params(ref), zero.params(), dp, [&](int) { return forward_backward(ref, all); },
      [&](int) { return forward_backward(m, mine); }, kTol);
  zero.gather_all_for_save();
  double worst = test::expect_weights_match(t5_weight_slots(ref), t5_weight_slots(m), m.tp, kTol);
  if (with_lora)
    worst = std::max(worst, test::expect_lora_match(t5_linears(ref), t5_linears(m), m.tp, test::LoraPart::masters, kTol));
  if (runtime().world_rank == 0)
    std::printf("[t5 zero3 tp %d x dp %d %s%s] worst final weight %.1e\n", tp.size, P, v.str().c_str(),
                with_lora ? " lora" : "", worst);
}

TEST(T5Parallel, Zero3TwoStepsEqualOneRankWithTheBatchSplit) {
  Comm& world = *runtime().world;
  for (const Variant& v : kVariants) check_zero3_steps(v, TpGroup{}, world, false);
  check_zero3_steps({true, false}, TpGroup{}, world, true);
}

TEST(T5Parallel, TensorParallelTimesZero3EqualsOneRank) {
  Runtime& rt = runtime();
  if (rt.world_size < 4 || rt.world_size % 2 != 0) GTEST_SKIP() << "needs 4 ranks or more (tp 2 x dp 2)";
  const Runtime grid = test::world_grid(2);
  const TpGroup tp = test::grid_tp(grid);
  for (const Variant& v : {Variant{true, false}, Variant{false, true}}) check_zero3_steps(v, tp, *grid.dp_comm, false);
  check_zero3_steps({true, true}, tp, *grid.dp_comm, true);
}

// ---------------------------------------------------------------- (d) NF4 under TP

// Under TP each rank quantizes its own shard, so the codes (and the double-quantized absmax
// means) are not those of the full weight's quantization: the exact statement is that the TP-NF4
// model computes the model whose weights are the per-shard dequantized values. The one-rank
// reference is built from those (gathered) weights; LoRA adapters (B made non-zero) train on the
// frozen NF4 base, and the loss and every adapter gradient must agree to 1e-10.
TEST(T5Parallel, Nf4UnderTensorParallelismComputesTheDequantizedShards) {
  const TpGroup tp = test::world_tp();
  const Rows rows = make_rows(4, 6, 4, 24, 31);  // 24 and 16 rows: grouped LoRA calls (multiples of 8)
  const T5Batch batch = batch_of(rows, 0, rows.B);
  for (const Variant& v : {Variant{true, false}, Variant{false, true}}) {
    SCOPED_TRACE(v.str());
    T5Quant quant;
    quant.modules = v.gated ? std::vector<std::string>{"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
                            : std::vector<std::string>{"q", "k", "v", "o", "wi", "wo"};
    T5Model m = make_model(v, tp, quant);
    const T5WeightBytes wb = t5_weight_bytes(m);
    EXPECT_EQ(wb.quantized_layers, static_cast<size_t>(v.gated ? 7 * 2 + 11 * 2 : 6 * 2 + 10 * 2));
    EXPECT_LT(wb.stored, wb.dense);
    T5Model ref = make_model(v);
    const std::vector<T5WeightSlot> ms = t5_weight_slots(m), rs = t5_weight_slots(ref);
    int quantized = 0;
    double nf4_change = 0;
    for (size_t i = 0; i < ms.size(); ++i) {
      Tensor full;
      if (ms[i].linear) {
        Tensor local = Tensor::empty(ms[i].shape, DType::f64);
        nf4_dequantize(*ms[i].linear->nf4, local);
        full = tp_gather_full(local, ms[i].split, tp, DType::f64);
        nf4_change = std::max(nf4_change, max_rel_diff(full, *rs[i].tensor));
        ++quantized;
      } else {
        full = t5_gather_full(m, ms[i], DType::f64);
      }
      t5_set_weight(rs[i], full);
    }
    EXPECT_EQ(quantized, static_cast<int>(wb.quantized_layers));
    EXPECT_GT(nf4_change, 1e-3) << "NF4 changes the weights (4-bit codes)";
    LoraConfig lc;
    lc.r = 2;
    lc.alpha = 4;
    const std::vector<Linear*> rl = t5_linears(ref), ml = t5_linears(m);
    for (size_t i = 0; i < rl.size(); ++i) {
      if (rl[i]->name == "lm_head") continue;
      auto ra = std::make_unique<LoraAdapter>(*rl[i], lc, 64, 7);
      auto ma = std::make_unique<LoraAdapter>(*ml[i], lc, 64, 7);
      fill_normal(ra->B, counter_key(9, name_hash(rl[i]->name)), 0.0, 0.3);
      ma->B.copy_from(tp_shard_of(ra->B, ml[i]->tp_mode == TpMode::column ? TpMode::column : TpMode::none, tp));
      ra->sync_working();
      ma->sync_working();
      rl[i]->adapter = std::move(ra);
      ml[i]->adapter = std::move(ma);
    }
    lora_join_groups(t5_input_groups(m));  // the layout's adapters grouped by input, the reference's not
    const double want = forward_backward(ref, batch), got = forward_backward(m, batch);
    EXPECT_LT(std::fabs(got - want), kTol * std::fabs(want)) << got << " vs " << want;
    const double worst = test::expect_lora_match(rl, ml, tp, test::LoraPart::gradients, kTol);
    if (tp.rank == 0)
      std::printf("[t5 nf4 tp %d %s] loss %.12f, %d NF4 layers (weights moved by up to %.2f), worst adapter gradient %.1e\n",
                  tp.size, v.str().c_str(), got, quantized, nf4_change, worst);
  }
}

// ---------------------------------------------------------------- DDP over t5_params_by_unit

// GradAllReduce buckets the gradients by unit, starting each bucket's all-reduce when the backward
// has finished its units: every rank a different micro-batch, the sums must equal the one-rank
// gradients of the whole batch (a bucket started before its unit's gradients were final would not).
TEST(T5Parallel, DdpByUnitEqualsOneRank) {
  Comm& world = *runtime().world;
  const int P = world.size();
  const Rows rows = make_rows(2 * P, 5, 4, 24, 41);
  for (const Variant& v : {Variant{true, false}, Variant{false, true}}) {
    SCOPED_TRACE(v.str());
    T5Model ref = make_model(v);
    t5_enable_base_training(ref);
    const double want = forward_backward(ref, batch_of(rows, 0, rows.B));
    T5Model m = make_model(v);
    t5_enable_base_training(m);
    const std::vector<std::vector<ParamRef>> by_unit = t5_params_by_unit(m);
    ASSERT_EQ(static_cast<int>(by_unit.size()), t5_num_units(m));
    size_t n = 0;
    for (const auto& u : by_unit) n += u.size();
    EXPECT_EQ(n, t5_trainable_params(m).size());
    GradAllReduce ddp(by_unit, world, 512);  // small buckets: several per unit
    m.hooks = &ddp;
    ddp.arm();
    const double got = world.all_reduce_sum(forward_backward(m, batch_of(rows, 2 * world.rank(), 2)));
    ddp.sync();
    m.hooks = nullptr;
    EXPECT_GT(ddp.overlapped_buckets(), 0u);
    EXPECT_LT(std::fabs(got - want), kTol * std::fabs(want));
    const std::vector<T5WeightSlot> rs = t5_weight_slots(ref), ms = t5_weight_slots(m);
    for (size_t i = 0; i < rs.size(); ++i) EXPECT_LT(max_rel_diff(*ms[i].grad, *rs[i].grad), kTol) << rs[i].name;
  }
}

}  // namespace
}  // namespace st
