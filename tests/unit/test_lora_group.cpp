// LoRA adapters of layers that read the same input, run as one group (lora_join_groups with
// linear_group_forward/backward: one x A^T, one dx and one dA GEMM per group), against the same
// adapters run one by one (LoraConfig::share_inputs off), on the CPU.
//
// What may differ and why: the CPU GEMM sums each element's K terms in order (in one pass, or in
// blocks of 256 for products above 16384 multiply-adds: the same for K <= 256, as in these
// tests), and the group's x A^T, dxa, dB and dA products have the per-module products' K, so
// their elements are the same sums in the same order. dx is not: the group adds all members'
// adapter terms in one GEMM (K = the summed rank) before the base GEMMs, where one by one each
// adapter's term and base term alternate. So the loss and the adapters' values are bitwise equal
// (checked), and every gradient upstream of a group's dx differs by the rounding of sums taken in
// another order: a few ulp of the tensor's largest element (checked at 1e-12 in f64, 1e-5 in f32,
// i.e. ~100 ulp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "core/op_trace.hpp"
#include "core/rng.hpp"
#include "model/fp8_base.hpp"
#include "model/llama.hpp"
#include "model/t5.hpp"
#include "ops/init.hpp"
#include "tests/common/llama_batch.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/t5_golden.hpp"
#include "tests/common/test_util.hpp"

namespace st {
namespace {

namespace fs = std::filesystem;

LlamaConfig llama_cfg() {
  LlamaConfig c;
  c.vocab_size = 29;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 16;
  c.tie_word_embeddings = false;
  return c;
}

LlamaBatch llama_batch(int64_t B, int64_t T, uint64_t seed) {
  return test::random_llama_batch(B, T, seed, 29, 0.05f);
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to_cpu(DType::f64), y = b.to_cpu(DType::f64);
  if (x.numel() != y.numel()) return INFINITY;
  double d = 0;
  for (int64_t i = 0; i < x.numel(); ++i) d = std::max(d, std::fabs(x.ptr<double>()[i] - y.ptr<double>()[i]));
  return d;
}

LoraAdapter* lora_of(const Linear& l) { return dynamic_cast<LoraAdapter*>(l.adapter.get()); }

// B starts at zero: draw every B from its module's name (the same values in every model), so
// the adapters carry gradient to x and A.
void randomize_b(const std::vector<Linear*>& linears) {
  for (Linear* lin : linears)
    if (LoraAdapter* a = lora_of(*lin)) {
      fill_normal(a->B, name_hash(lin->name), 0.0, 0.3);
      a->sync_working();
    }
}

// What ZeRO-3 does to a group: every member's A_work and dA in a place of its own (the group then
// stacks A into its stage and adds dA from there).
void move_apart(const std::vector<Linear*>& linears) {
  for (Linear* lin : linears) {
    LoraAdapter* a = lora_of(*lin);
    if (!a || !a->group) continue;
    const bool alias = a->A_work.data() == a->A.data();
    a->A_work = a->A_work.clone(MemCategory::weights);
    a->A = alias ? a->A_work : a->A.clone(MemCategory::weights);
    a->dA = a->dA.clone(MemCategory::gradients);
  }
}

int64_t grouped_adapters(const std::vector<Linear*>& linears) {
  int64_t n = 0;
  for (Linear* lin : linears) n += lora_of(*lin) && lora_of(*lin)->group;
  return n;
}

struct Result {
  std::vector<double> losses;
  std::vector<std::string> names;
  std::vector<Tensor> values, grads;  // f64 CPU copies
  int64_t grouped = 0;
  int64_t stacked_gemms = 0;  // GEMMs A_cat x^T of a q, k, v group: the grouped path ran
  int64_t rotated_after_term = 0;  // RoPE right after a rank-r GEMM: an output rotated after its LoRA term
  int64_t swiglu_after_term = 0;   // SwiGLU (forward or backward) right after a rank-r GEMM: terms formed for it
  int64_t swiglu_after_3_terms = 0;  // ... after three: gate's, up's and down's dx term (backward)
};

// Activations right after at least `run` rank-r GEMMs in a row (copies between them ignored).
int64_t activations_after_rank_gemms(const OpTraceRecorder& rec, int64_t r, int run = 1) {
  int64_t n = 0;
  int streak = 0;
  for (const TraceEvent& e : rec.events()) {
    if (e.kind != TraceEvent::Kind::op || e.family == OpFamily::copy) continue;
    n += e.family == OpFamily::activation && streak >= run;
    streak = e.family == OpFamily::gemm && e.k == r ? streak + 1 : 0;
  }
  return n;
}

int64_t rotations_after_rank_gemm(const OpTraceRecorder& rec, int64_t r) {
  int64_t n = 0;
  const TraceEvent* prev = nullptr;
  for (const TraceEvent& e : rec.events()) {
    if (e.kind != TraceEvent::Kind::op) continue;
    n += e.family == OpFamily::rope && prev && prev->family == OpFamily::gemm && prev->k == r;
    prev = &e;
  }
  return n;
}

// The x A^T GEMMs of stacked q, k, v adapters (R = 3 r rows, K = the model width) in a trace.
int64_t stacked_gemms(const OpTraceRecorder& rec, int64_t r, int64_t width) {
  int64_t n = 0;
  for (const TraceEvent& e : rec.events())
    n += e.kind == TraceEvent::Kind::op && e.family == OpFamily::gemm && !e.trans_a && e.trans_b && e.m == 3 * r &&
         e.k == width;
  return n;
}

void collect(Result& r, const std::vector<ParamRef>& ps) {
  for (const ParamRef& p : ps) {
    r.names.push_back(p.name);
    r.values.push_back(p.value->to_cpu(DType::f64));
    r.grads.push_back(p.grad->to_cpu(DType::f64));
  }
}

struct Options {
  DType dtype = DType::f64;
  bool share = true, qlora = false, apart = false, fp8 = false;
  std::vector<std::string> targets = LoraConfig{}.targets;
  Checkpointed ck = Checkpointed::none();
};

// Two micro-batches, gradients accumulated, of a tiny Llama with LoRA r 3: 24 rows (grouped
// calls) then 15 (not a multiple of 8: the members run one by one, on the same buffers).
Result run_llama(const Options& o) {
  LlamaQuant quant;
  if (o.qlora) quant.modules = llama_module_names();
  LlamaModel m = llama_build(llama_cfg(), o.dtype, Device::cpu, quant);
  llama_init_random(m, 5, 0.3);
  LoraConfig lc;
  lc.r = 3;
  lc.alpha = 6;
  lc.targets = o.targets;
  lc.share_inputs = o.share;
  const int64_t B = 3, T = 8;
  attach_lora(m, lc, B * T, 9);
  randomize_b(llama_linears(m));
  if (o.apart) move_apart(llama_linears(m));
  if (o.fp8) {
    EXPECT_EQ(fp8_convert_base(llama_linears(m), B * T, "test"), 2 * 7);
  }
  Result r;
  r.grouped = grouped_adapters(llama_linears(m));
  LlamaActivations acts = llama_activations(m, B, T, o.ck, true);
  LayerContext ctx;
  ctx.training = true;
  ctx.dropout_seed = 3;
  OpTraceRecorder rec;
  for (int64_t t : {T, T - 3}) {
    const LlamaBatch batch = llama_batch(B, t, 40 + static_cast<uint64_t>(t));
    r.losses.push_back(llama_forward(m, acts, batch, ctx, true));
    llama_backward(m, acts, batch, ctx);
  }
  r.stacked_gemms = stacked_gemms(rec, lc.r, m.cfg.hidden_size);
  r.rotated_after_term = rotations_after_rank_gemm(rec, lc.r);
  r.swiglu_after_term = activations_after_rank_gemms(rec, lc.r);
  r.swiglu_after_3_terms = activations_after_rank_gemms(rec, lc.r, 3);
  collect(r, llama_trainable_params(m));
  return r;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(t.ptr<double>()[i]));
  return m;
}

// got against ref: the same names, values and losses exactly; gradients exactly when `tol` is 0,
// else within tol times the tensor's largest element.
void expect_same(const Result& ref, const Result& got, double tol) {
  ASSERT_EQ(ref.names, got.names);
  ASSERT_EQ(ref.losses.size(), got.losses.size());
  for (size_t i = 0; i < ref.losses.size(); ++i) EXPECT_EQ(ref.losses[i], got.losses[i]) << "loss of micro-batch " << i;
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < ref.names.size(); ++i) {
    const Tensor &rv = ref.values[i], &gv = got.values[i], &rg = ref.grads[i], &gg = got.grads[i];
    for (int64_t k = 0; k < rv.numel(); ++k) ASSERT_EQ(rv.ptr<double>()[k], gv.ptr<double>()[k]) << ref.names[i];
    const double scale = max_abs(rg);
    EXPECT_GT(scale, 0.0) << ref.names[i] << ": no gradient";
    double d = 0;
    for (int64_t k = 0; k < rg.numel(); ++k) d = std::max(d, std::fabs(rg.ptr<double>()[k] - gg.ptr<double>()[k]));
    EXPECT_LE(d, tol * scale) << ref.names[i];
    if (scale > 0 && d / scale > worst) {
      worst = d / scale;
      worst_name = ref.names[i];
    }
  }
  std::printf("[lora group] worst gradient difference %.2e of the tensor's largest element (%s)\n", worst,
              worst_name.empty() ? "none" : worst_name.c_str());
}

double tol_of(DType dt) { return dt == DType::f64 ? 1e-12 : 1e-5; }

TEST(LoraGroup, JoinsTheInputGroupsWithAdjacentFactors) {
  LlamaModel m = llama_build(llama_cfg(), DType::f32, Device::cpu);
  llama_init_random(m, 5, 0.3);
  LlamaModel ref = llama_build(llama_cfg(), DType::f32, Device::cpu);
  llama_init_random(ref, 5, 0.3);
  LoraConfig lc;
  lc.r = 3;
  attach_lora(m, lc, 16, 9);
  lc.share_inputs = false;
  attach_lora(ref, lc, 16, 9);
  EXPECT_EQ(grouped_adapters(llama_linears(ref)), 0);
  EXPECT_EQ(grouped_adapters(llama_linears(m)), 2 * 5);  // q, k, v, gate, up of 2 blocks
  for (size_t l = 0; l < m.blocks.size(); ++l) {
    LlamaBlock& b = m.blocks[l];
    for (const auto& members : {std::vector<Linear*>{&b.q, &b.k, &b.v}, std::vector<Linear*>{&b.gate, &b.up}}) {
      std::vector<const Tensor*> a, da, w;
      int64_t row = 0;
      for (Linear* lin : members) {
        LoraAdapter& ad = *lora_of(*lin);
        EXPECT_EQ(ad.group, lora_of(*members.front())->group);
        EXPECT_EQ(ad.group_row, row);
        row += ad.r;
        a.push_back(&ad.A);
        da.push_back(&ad.dA);
        w.push_back(&ad.A_work);
        EXPECT_EQ(ad.xa.data(), lora_of(*members.front())->xa.data());  // one buffer of saved products
        EXPECT_EQ(ad.xa.numel(), 16 * 3 * static_cast<int64_t>(members.size()));
      }
      EXPECT_TRUE(Tensor::adjacent_rows(a).defined());
      EXPECT_TRUE(Tensor::adjacent_rows(da).defined());
      EXPECT_TRUE(Tensor::adjacent_rows(w).defined());
    }
    EXPECT_FALSE(lora_of(b.o)->group);
    EXPECT_FALSE(lora_of(b.down)->group);
  }
  // Each A as drawn for its own module name; the same names for the optimizer.
  const std::vector<ParamRef> pm = llama_trainable_params(m), pr = llama_trainable_params(ref);
  ASSERT_EQ(pm.size(), pr.size());
  for (size_t i = 0; i < pm.size(); ++i) {
    EXPECT_EQ(pm[i].name, pr[i].name);
    EXPECT_EQ(pm[i].value->shape(), pr[i].value->shape());
    EXPECT_EQ(max_abs_diff(*pm[i].value, *pr[i].value), 0.0) << pm[i].name;
  }
}

TEST(LoraGroup, WhichAdaptersJoin) {
  auto grouped = [](std::vector<std::string> targets, double dropout) {
    LlamaModel m = llama_build(llama_cfg(), DType::f32, Device::cpu);
    LoraConfig lc;
    lc.targets = std::move(targets);
    lc.dropout = dropout;
    attach_lora(m, lc, 16, 9);
    return grouped_adapters(llama_linears(m));
  };
  EXPECT_EQ(grouped({"q", "v"}, 0.0), 2 * 2);          // q and v share x (k has no adapter)
  EXPECT_EQ(grouped({"q", "o", "up"}, 0.0), 0);        // no two adapters read the same input
  EXPECT_EQ(grouped({"q", "k", "v", "gate", "up"}, 0.1), 0);  // dropout: a mask per module
}

TEST(LoraGroup, LlamaGroupedEqualsPerModule) {
  for (DType dt : {DType::f64, DType::f32}) {
    for (const auto& targets : {LoraConfig{}.targets, std::vector<std::string>{"q", "v", "up", "down"}}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + ", " + std::to_string(targets.size()) + " targets");
      Options o;
      o.dtype = dt;
      o.targets = targets;
      o.share = false;
      const Result ref = run_llama(o);
      o.share = true;
      const Result got = run_llama(o);
      EXPECT_EQ(ref.grouped, 0);
      EXPECT_EQ(got.grouped, targets.size() == 7 ? 10 : 4);
      EXPECT_EQ(ref.stacked_gemms, 0);
      EXPECT_EQ(got.stacked_gemms, targets.size() == 7 ? 2 : 0);  // each block's q, k, v, first micro-batch only
      expect_same(ref, got, tol_of(dt));
    }
  }
}

TEST(LoraGroup, QloraGroupedEqualsPerModule) {
  for (DType dt : {DType::f64, DType::f32}) {
    SCOPED_TRACE(dtype_name(dt));
    Options o;
    o.dtype = dt;
    o.qlora = true;
    o.share = false;
    const Result ref = run_llama(o);
    o.share = true;
    const Result got = run_llama(o);
    EXPECT_EQ(got.grouped, 10);
    EXPECT_EQ(got.stacked_gemms, 2);
    expect_same(ref, got, tol_of(dt));
  }
}

// base_precision = fp8: the base GEMMs in FP8 after the group's adapters, as after each adapter.
// (The group's dx rounds differently; where that moved an activation gradient across an E4M3
// rounding boundary the next FP8 quantization would differ by a code. These inputs cross none.)
TEST(LoraGroup, Fp8BaseGroupedEqualsPerModule) {
  Options o;
  o.fp8 = true;
  o.share = false;
  const Result ref = run_llama(o);
  o.share = true;
  const Result got = run_llama(o);
  EXPECT_EQ(got.stacked_gemms, 2);
  expect_same(ref, got, tol_of(DType::f64));
}

// The variants the CPU-order tests below run: f64 and f32 with LoRA, QLoRA, the FP8 base (f64)
// and checkpointing (variant 0..3).
Options order_variant(DType dt, int variant) {
  Options o;
  o.dtype = dt;
  o.qlora = variant == 1;
  o.fp8 = variant == 2 && dt == DType::f64;
  if (variant == 3) o.ck = Checkpointed::all();
  return o;
}

// run_llama with a CPU test switch set for the call (cleared after, also on a failure).
Result run_with_switch(bool& on, const Options& o) {
  struct Switch {
    bool& b;
    explicit Switch(bool& v) : b(v) { b = true; }
    ~Switch() { b = false; }
  } sw(on);
  return run_llama(o);
}

// q and k in the CUDA order (linear_group_forward with OutputRope: base GEMM first, then the
// LoRA term added and RoPE applied by matmul_add_rope), run on the CPU: the two terms of each
// element are the same rounded values added in the other order, so the step is the same to the
// bit (f64 and f32, with and without checkpointing, LoRA, QLoRA and the FP8 base); the second
// micro-batch (15 rows) runs member by member in either order.
TEST(LoraGroup, RotatedOutputsAfterTheBaseGiveTheSameStep) {
  for (DType dt : {DType::f64, DType::f32})
    for (int variant = 0; variant < 4; ++variant) {
      SCOPED_TRACE(str(dtype_name(dt), " variant ", variant));
      const Options o = order_variant(dt, variant);
      const Result ref = run_llama(o);
      const Result got = run_with_switch(lora_rotated_after_base_on_cpu(), o);
      EXPECT_EQ(got.stacked_gemms, 2);
      // q and k of both blocks in the grouped micro-batch took the other order (and again in the
      // recompute of the first block with checkpointing: the last checkpointed block keeps its
      // internals, checkpoint_recomputes); none did by default.
      EXPECT_EQ(ref.rotated_after_term, 0);
      EXPECT_EQ(got.rotated_after_term, variant == 3 ? 6 : 4);
      expect_same(ref, got, 0.0);
    }
}

// gate and up in the order CUDA takes with SHARDTUNE_SKINNY's swiglu kind: base GEMMs only into
// gate and up, their LoRA terms returned by linear_group_forward and added by swiglu_lora_forward
// and again by swiglu_lora_backward, which also adds down's input-gradient term dxa A left out
// of dh (on the CPU: each sum formed, then SwiGLU). The same step up
// to the rounding of the two terms' sum (each element's two terms are added in the other order
// and rounded once more); LoRA, QLoRA and the FP8 base, with and without checkpointing.
TEST(LoraGroup, TermsLeftToSwigluGiveTheSameStep) {
  for (DType dt : {DType::f64, DType::f32})
    for (int variant = 0; variant < 4; ++variant) {
      SCOPED_TRACE(str(dtype_name(dt), " variant ", variant));
      const Options o = order_variant(dt, variant);
      const Result ref = run_llama(o);
      const Result got = run_with_switch(lora_terms_to_swiglu_on_cpu(), o);
      EXPECT_EQ(got.stacked_gemms, 2);
      // Both blocks' forward and backward in the grouped micro-batch (and the recompute of the
      // first block with checkpointing); none by default, nor in the 15-row micro-batch.
      EXPECT_EQ(ref.swiglu_after_term, 0);
      EXPECT_EQ(got.swiglu_after_term, variant == 3 ? 5 : 4);
      EXPECT_EQ(got.swiglu_after_3_terms, 2);  // both blocks' backward took down's dx term too
      expect_same(ref, got, tol_of(dt));
    }
}

// The stage (members' factors apart, as under ZeRO-3) gives exactly the adjacent layout's
// results: A copied as is; dA = dxa^T x into the stage then added, the same sum as the GEMM's
// accumulation into dA (one K block: M <= 256 rows).
TEST(LoraGroup, FactorsApartGiveExactlyTheAdjacentResults) {
  for (bool qlora : {false, true}) {
    SCOPED_TRACE(qlora ? "qlora" : "lora");
    Options o;
    o.qlora = qlora;
    const Result ref = run_llama(o);
    o.apart = true;
    const Result got = run_llama(o);
    expect_same(ref, got, 0.0);
  }
}

// Activation checkpointing: the recompute keeps the saved x A^T of the group (no dropout) and
// redoes only the outputs: exactly the gradients of keeping everything.
TEST(LoraGroup, CheckpointingGivesExactlyTheSameGradients) {
  Options o;
  const Result ref = run_llama(o);
  for (int64_t n : {int64_t{1}, Checkpointed::kAll}) {
    SCOPED_TRACE(n);
    o.ck = Checkpointed{n};
    expect_same(ref, run_llama(o), 0.0);
  }
}

// ---------------------------------------------------------------- T5

T5Config t5_cfg(bool gated) {
  T5Config c;
  c.vocab_size = 23;
  c.d_model = 16;
  c.d_kv = 4;
  c.num_heads = 2;
  c.d_ff = 24;
  c.num_layers = 2;
  c.num_decoder_layers = 2;
  c.relative_attention_num_buckets = 8;
  c.relative_attention_max_distance = 10;
  c.gated = gated;
  c.tie_word_embeddings = false;
  return c;
}

T5Batch t5_batch(int64_t B, int64_t Te, int64_t Td, int64_t V) {
  std::vector<int32_t> ids(static_cast<size_t>(B * Te)), lengths(static_cast<size_t>(B)), labels(static_cast<size_t>(B * Td));
  for (int64_t i = 0; i < B * Te; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % V);
  for (int64_t r = 0; r < B; ++r) lengths[static_cast<size_t>(r)] = static_cast<int32_t>(r == 1 ? Te - 2 : Te);
  for (int64_t i = 0; i < B * Td; ++i) labels[static_cast<size_t>(i)] = i % 5 == 4 ? -1 : static_cast<int32_t>((i * 11 + 1) % V);
  return test::t5_batch_of(B, Te, Td, ids, lengths, labels, 0, 0);
}

Result run_t5(bool gated, bool share, bool apart) {
  T5Model m = t5_build(t5_cfg(gated), DType::f64, Device::cpu);
  t5_init_random(m, 5, 0.5);
  LoraConfig lc;
  lc.r = 2;
  lc.alpha = 4;
  lc.targets = gated ? std::vector<std::string>{"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
                     : std::vector<std::string>{"q", "k", "v", "o", "wi", "wo"};
  lc.share_inputs = share;
  attach_lora(m, lc, 2 * 8, 3);
  randomize_b(t5_linears(m));
  if (apart) move_apart(t5_linears(m));
  Result r;
  r.grouped = grouped_adapters(t5_linears(m));
  T5Activations a = t5_activations(m, 2, 8, 4, true);
  const T5Batch batch = t5_batch(2, 8, 4, m.cfg.vocab_size);  // 16 and 8 rows: grouped calls
  LayerContext ctx;
  ctx.training = true;
  OpTraceRecorder rec;
  r.losses.push_back(t5_forward(m, a, batch, true, ctx));
  t5_backward(m, a, batch, ctx);
  r.stacked_gemms = stacked_gemms(rec, lc.r, m.cfg.d_model);
  collect(r, t5_trainable_params(m));
  return r;
}

TEST(LoraGroup, T5GroupedEqualsPerModule) {
  for (bool gated : {true, false}) {
    SCOPED_TRACE(gated ? "gated-gelu" : "relu");
    const Result ref = run_t5(gated, false, false), got = run_t5(gated, true, false);
    // Encoder: self q, k, v (+ wi_0, wi_1); decoder: self q, k, v, cross k, v (+ wi_0, wi_1).
    EXPECT_EQ(got.grouped, 2 * (3 + (gated ? 2 : 0)) + 2 * (3 + 2 + (gated ? 2 : 0)));
    EXPECT_EQ(got.stacked_gemms, 4);  // self-attention q, k, v of 2 encoder and 2 decoder blocks
    expect_same(ref, got, tol_of(DType::f64));
    expect_same(got, run_t5(gated, true, true), 0.0);
  }
}

// ---------------------------------------------------------------- PEFT files

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// The adapter a grouped model saves is the file the same adapters save one by one, and it loads
// into a grouped model (into the members' rows of the stacked A) as into an ungrouped one.
TEST(LoraGroup, PeftFilesAreTheSameAndLoadIntoGroups) {
  auto make = [](bool share) {
    LlamaModel m = llama_build(llama_cfg(), DType::f32, Device::cpu);
    llama_init_random(m, 5, 0.3);
    LoraConfig lc;
    lc.r = 3;
    lc.share_inputs = share;
    attach_lora(m, lc, 16, 9);
    randomize_b(llama_linears(m));
    return m;
  };
  const std::string dir = test::make_temp_dir("lora_group_peft");
  LlamaModel grouped = make(true), single = make(false);
  const PeftNames names = test::peft_names("llama");
  EXPECT_EQ(save_peft_adapter(llama_linears(grouped), names, "base", dir + "/g"), 14);
  EXPECT_EQ(save_peft_adapter(llama_linears(single), names, "base", dir + "/s"), 14);
  const std::string file = "/adapter_model.safetensors";
  EXPECT_EQ(file_bytes(dir + "/g" + file), file_bytes(dir + "/s" + file));
  // Loaded into grouped models: their stacked A hold the file's factors.
  LlamaModel back = llama_build(llama_cfg(), DType::f32, Device::cpu);
  llama_init_random(back, 5, 0.3);
  LoraConfig lc;
  lc.r = 3;
  attach_lora(back, lc, 16, 99);  // another seed: the file's values must replace it
  EXPECT_EQ(load_peft_adapter(llama_linears(back), dir + "/s"), 14);
  const std::vector<ParamRef> pb = llama_trainable_params(back), pg = llama_trainable_params(grouped);
  ASSERT_EQ(pb.size(), pg.size());
  for (size_t i = 0; i < pb.size(); ++i) EXPECT_EQ(max_abs_diff(*pb[i].value, *pg[i].value), 0.0) << pb[i].name;
  EXPECT_EQ(grouped_adapters(llama_linears(back)), 10);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace st
