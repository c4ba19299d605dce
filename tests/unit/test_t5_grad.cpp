// The T5 model's hand-written backward against central differences in f64, for every parameter
// (the relative-bias tables, cross-attention and both feed-forward kinds included), with padded
// encoder rows, ignored targets, and tied and untied heads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <cstring>

#include "io/t5_io.hpp"
#include "adapters/lora.hpp"
#include "model/t5.hpp"
#include "ops/init.hpp"
#include "io/h5util.hpp"
#include "tests/common/gradcheck.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/t5_golden.hpp"
#include "tests/common/test_util.hpp"

namespace st {
namespace {

T5Config tiny(bool gated, bool tied) {
  T5Config c;
  c.vocab_size = 23;
  c.d_model = 8;
  c.d_kv = 4;
  c.num_heads = 2;
  c.d_ff = 12;
  c.num_layers = 2;
  c.num_decoder_layers = 2;
  c.relative_attention_num_buckets = 8;
  c.relative_attention_max_distance = 10;
  c.gated = gated;
  c.tie_word_embeddings = tied;
  c.scale_decoder_outputs = tied;
  return c;
}

bool contains_name(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

T5Batch make_batch(int64_t B, int64_t Te, int64_t Td, int64_t V) {
  std::vector<int32_t> ids(static_cast<size_t>(B * Te)), lengths(static_cast<size_t>(B)), labels(static_cast<size_t>(B * Td));
  for (int64_t i = 0; i < B * Te; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % V);
  for (int64_t r = 0; r < B; ++r) lengths[static_cast<size_t>(r)] = static_cast<int32_t>(r == 1 ? Te - 2 : Te);  // a padded row
  for (int64_t i = 0; i < B * Td; ++i)
    labels[static_cast<size_t>(i)] = i % 5 == 4 ? -1 : static_cast<int32_t>((i * 11 + 1) % V);
  return test::t5_batch_of(B, Te, Td, ids, lengths, labels, 0, 0);
}

void check_model(bool gated, bool tied) {
  SCOPED_TRACE(std::string(gated ? "gated-gelu" : "relu") + (tied ? ", tied" : ", untied"));
  T5Model m = t5_build(tiny(gated, tied), DType::f64, Device::cpu);
  t5_init_random(m, 5, 0.5);
  t5_enable_base_training(m);
  const T5Batch batch = make_batch(2, 5, 4, m.cfg.vocab_size);
  T5Activations a = t5_activations(m, 2, 5, 4, true);
  t5_forward(m, a, batch, true);
  t5_backward(m, a, batch);
  T5Activations ev = t5_activations(m, 2, 5, 4, false);
  auto f = [&] { return t5_forward(m, ev, batch, false); };
  int checked = 0;
  for (const ParamRef& p : t5_trainable_params(m)) {
    const test::GradCheckResult r = test::check_gradient(f, *p.value, *p.grad, 12);
    EXPECT_LT(r.max_rel_err, 1e-6) << p.name << ": " << r.worst;
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(t5_named_weights(m).size()));
}

TEST(T5Grad, GatedGeluUntiedHead) { check_model(true, false); }
TEST(T5Grad, ReluTiedHead) { check_model(false, true); }

// A micro-batch smaller than the activations (fewer rows, shorter encoder and decoder) is laid
// out compactly and must give exactly what activations of its own size give; then a batch of
// another shape (new bucket tables), then the first again.
TEST(T5Grad, SmallerBatchesInLargerActivationsEqualExactOnes) {
  T5Model m = t5_build(tiny(true, false), DType::f64, Device::cpu);
  t5_init_random(m, 5, 0.5);
  t5_enable_base_training(m);
  T5Activations big = t5_activations(m, 3, 9, 7, true);
  for (auto [B, Te, Td] : {std::tuple<int64_t, int64_t, int64_t>{2, 5, 4}, {3, 9, 7}, {1, 3, 6}, {2, 5, 4}}) {
    SCOPED_TRACE(std::to_string(B) + " x " + std::to_string(Te) + " / " + std::to_string(Td));
    const T5Batch batch = make_batch(B, Te, Td, m.cfg.vocab_size);
    T5Activations exact = t5_activations(m, B, Te, Td, true);
    std::vector<Tensor> want;
    for (const ParamRef& p : t5_trainable_params(m)) p.grad->zero_();
    const double l_exact = t5_forward(m, exact, batch, true);
    t5_backward(m, exact, batch);
    for (const ParamRef& p : t5_trainable_params(m)) want.push_back(p.grad->clone(MemCategory::other));
    for (const ParamRef& p : t5_trainable_params(m)) p.grad->zero_();
    const double l_big = t5_forward(m, big, batch, true);
    t5_backward(m, big, batch);
    EXPECT_EQ(l_big, l_exact);
    size_t i = 0;
    for (const ParamRef& p : t5_trainable_params(m)) {
      const Tensor g = p.grad->to_cpu(DType::f64), w = want[i++].to_cpu(DType::f64);
      double worst = 0;
      for (int64_t k = 0; k < g.numel(); ++k) worst = std::max(worst, std::fabs(g.ptr<double>()[k] - w.ptr<double>()[k]));
      EXPECT_EQ(worst, 0.0) << p.name;
    }
  }
  const T5Batch too_long = make_batch(2, 10, 4, m.cfg.vocab_size);
  EXPECT_THROW(t5_forward(m, big, too_long, true), Error);
}

// Activation checkpointing (one shared set of block internals, each block recomputed before its
// backward) gives exactly the gradients of keeping every block's internals: base weights and
// LoRA adapters with dropout (the recompute reuses the adapters' saved state and the seed).
TEST(T5Grad, CheckpointingGivesExactlyTheSameGradients) {
  for (bool gated : {true, false}) {
    SCOPED_TRACE(gated ? "gated-gelu" : "relu");
    T5Model m = t5_build(tiny(gated, false), DType::f64, Device::cpu);
    t5_init_random(m, 5, 0.5);
    t5_enable_base_training(m);
    LoraConfig lc;
    lc.r = 2;
    lc.dropout = 0.25;
    lc.targets = {"q", "v", "o", gated ? "wi_1" : "wi", "wo"};
    for (Linear* lin : t5_linears(m))
      if (contains_name(lc.targets, t5_module_short_name(lin->name)))
        lin->adapter = std::make_unique<LoraAdapter>(*lin, lc, 2 * 6, 3);
    for (const ParamRef& p : t5_trainable_params(m))  // B non-zero, so the adapters matter
      if (p.name.find("lora_B") != std::string::npos) fill_normal(*p.value, 11, 0.0, 0.3);
    const T5Batch batch = make_batch(2, 6, 5, m.cfg.vocab_size);
    LayerContext ctx;
    ctx.training = true;
    ctx.dropout_seed = 77;
    std::vector<std::vector<double>> grads[5];
    double loss[5];
    // ck: 0 none, 1 every block, 2..4: the first 1..3 of the 2 encoder + 2 decoder blocks.
    for (int ck = 0; ck < 5; ++ck) {
      T5Activations a = ck < 2 ? t5_activations(m, 2, 6, 5, true, ck == 1) : t5_activations(m, 2, 6, 5, true, Checkpointed{ck - 1});
      const size_t n = ck == 0 ? 0 : ck == 1 ? 4 : static_cast<size_t>(ck - 1);
      EXPECT_EQ(a.enc.size(), n >= 2 ? 1u : 2u);
      EXPECT_EQ(a.dec.size(), n >= 4 ? 1u : 2u);
      for (const ParamRef& p : t5_trainable_params(m)) p.grad->zero_();
      loss[ck] = t5_forward(m, a, batch, true, ctx);
      t5_backward(m, a, batch, ctx);
      for (const ParamRef& p : t5_trainable_params(m)) {
        const Tensor g = p.grad->to_cpu(DType::f64);
        grads[ck].emplace_back(g.ptr<double>(), g.ptr<double>() + g.numel());
      }
    }
    for (int ck = 1; ck < 5; ++ck) {
      SCOPED_TRACE(ck);
      EXPECT_EQ(loss[0], loss[ck]);
      ASSERT_EQ(grads[0].size(), grads[ck].size());
      for (size_t i = 0; i < grads[0].size(); ++i) EXPECT_EQ(grads[0][i], grads[ck][i]) << t5_trainable_params(m)[i].name;
    }
  }
}

TEST(T5Grad, ShiftRight) {
  const std::vector<int32_t> labels{5, 6, -1, 7, 8, 9};
  const std::vector<int32_t> want{0, 5, 6, 0, 7, 8};
  EXPECT_EQ(t5_shift_right(labels, 2, 3, 0, 0), want);
}

}  // namespace
}  // namespace st

// Parity with transformers' T5ForConditionalGeneration (tests/golden/make_t5_golden.py, torch
// 2.11 / transformers 5.17, f32 on CPU): two tiny random models saved with save_pretrained and
// loaded with load_t5 (FlanT5-style gated-gelu with an unscaled head; original-T5-style relu
// with the head scaled by d_model^-0.5; both heads tied to `shared` as transformers 5 writes
// them), one batch with a padded encoder row and ignored labels: logits, loss and the gradient
// of every parameter. f32 through ~20 dependent ops: 1e-4 relative.
namespace st {
namespace {

void check_golden(const std::string& name) {
  SCOPED_TRACE(name);
  const test::T5GoldenRun r = test::run_t5_golden(name, DType::f32, Device::cpu);
  EXPECT_LT(r.logits_rel, 1e-5) << "logits";
  EXPECT_NEAR(r.loss, r.ref_loss, 1e-5 * r.ref_loss);
  for (const auto& [p, e] : r.grad_rel) EXPECT_LT(e, 1e-4) << p;
  EXPECT_TRUE(r.same_parameter_set) << "every parameter transformers has, and no other";
  std::printf("[golden t5 %s] logits %.2e  loss %.7f vs %.7f  gradients of %zu tensors, worst %.2e (%s)\n", name.c_str(),
              r.logits_rel, r.loss, r.ref_loss, r.grad_rel.size(), r.worst_grad(), r.worst_grad_name().c_str());
}

// The bf16 rounding floor of the fixture (what the GPU test's bound against transformers adds
// to the kernels' own error): rounding the weights to bf16 and computing in f32 moves the logits
// by a few percent, not more. A regression in the rounding helper would show here.
TEST(T5Golden, Bf16RoundedWeightsStayNearTheFixture) {
  for (const char* name : {"flan", "t5"}) {
    const test::T5GoldenRun r = test::run_t5_golden(name, DType::f32, Device::cpu, true);
    EXPECT_GT(r.logits_rel, 1e-3) << name << ": the weights were not rounded";
    EXPECT_LT(r.logits_rel, 1e-1) << name;
    std::printf("[golden t5 %s] bf16-rounded weights in f32: logits %.2e, worst gradient %.2e (%s)\n", name, r.logits_rel,
                r.worst_grad(), r.worst_grad_name().c_str());
  }
}

TEST(T5Golden, FlanStyleEqualsTransformers) { check_golden("flan"); }
TEST(T5Golden, OriginalT5StyleEqualsTransformers) { check_golden("t5"); }

}  // namespace
}  // namespace st

// The unit hooks (model/hooks.hpp) that ZeRO-3 and DDP rely on: forward runs units 0..N-1 and
// backward N-1..0, each once, and a unit's backward changes only the gradients of its own
// parameters (t5_params_by_unit), plus `shared` in the tied head's backward.
namespace st {
namespace {

class Recorder final : public ModelHooks {
 public:
  explicit Recorder(T5Model& m) : by_unit_(t5_params_by_unit(m)), tied_(m.cfg.tie_word_embeddings) {
    for (const ParamRef& p : t5_trainable_params(m)) all_.push_back(p);
  }
  std::vector<int> forward, backward;
  int foreign_changes = 0;
  void before_forward(int u) override { forward.push_back(u); }
  void after_forward(int) override {}
  void before_backward(int u) override {
    backward.push_back(u);
    snapshot_.clear();
    for (const ParamRef& p : all_) snapshot_.push_back(p.grad->clone(MemCategory::other));
  }
  void after_backward(int u) override {
    const int head = static_cast<int>(by_unit_.size()) - 1;
    for (size_t i = 0; i < all_.size(); ++i) {
      bool mine = false;
      for (const ParamRef& q : by_unit_[static_cast<size_t>(u)]) mine = mine || q.grad == all_[i].grad;
      if (u == head && tied_ && all_[i].name == "shared.weight") mine = true;
      const Tensor& before = snapshot_[i];
      bool changed = false;
      for (int64_t k = 0; k < before.numel() && !changed; ++k) changed = before.ptr<double>()[k] != all_[i].grad->ptr<double>()[k];
      if (changed && !mine) {
        ++foreign_changes;
        ADD_FAILURE() << "unit " << u << " changed the gradient of " << all_[i].name;
      }
    }
  }

 private:
  std::vector<std::vector<ParamRef>> by_unit_;
  bool tied_;
  std::vector<ParamRef> all_;
  std::vector<Tensor> snapshot_;
};

TEST(T5Units, HooksRunInOrderAndEachBackwardTouchesOnlyItsUnit) {
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    T5Model m = t5_build(tiny(!tied, tied), DType::f64, Device::cpu);
    t5_init_random(m, 5, 0.5);
    t5_enable_base_training(m);
    const int N = t5_num_units(m);
    EXPECT_EQ(N, 2 + 2 + 3);
    Recorder rec(m);
    m.hooks = &rec;
    const T5Batch batch = make_batch(2, 5, 4, m.cfg.vocab_size);
    T5Activations a = t5_activations(m, 2, 5, 4, true);
    t5_forward(m, a, batch, true);
    t5_backward(m, a, batch);
    m.hooks = nullptr;
    std::vector<int> up(static_cast<size_t>(N)), down(static_cast<size_t>(N));
    for (int u = 0; u < N; ++u) {
      up[static_cast<size_t>(u)] = u;
      down[static_cast<size_t>(u)] = N - 1 - u;
    }
    EXPECT_EQ(rec.forward, up);
    EXPECT_EQ(rec.backward, down);
    EXPECT_EQ(rec.foreign_changes, 0);
    // Every parameter in exactly one unit: the relative-bias tables with `shared` in unit 0.
    const auto by_unit = t5_params_by_unit(m);
    size_t n = 0;
    for (const auto& u : by_unit) n += u.size();
    EXPECT_EQ(n, t5_trainable_params(m).size());
    EXPECT_EQ(by_unit[0].size(), 3u);
    EXPECT_EQ(by_unit[3].size(), 1u);  // encoder final norm
    EXPECT_EQ(by_unit.back().size(), tied ? 1u : 2u);
  }
}

TEST(T5Io, SaveThenLoadGivesTheSameModel) {
  for (bool tied : {false, true}) {
    T5Model m = t5_build(tiny(tied, tied), DType::f32, Device::cpu);
    t5_init_random(m, 8, 0.3);
    const test::TempDir tmp("t5_save");
    const std::string dir = tmp.path + "/model";
    save_t5(m, dir);
    T5Model back = load_t5(dir, DType::f32, Device::cpu);
    EXPECT_EQ(back.cfg.summary(), m.cfg.summary());
    const auto a = t5_named_weights(m), b = t5_named_weights(back);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_EQ(std::memcmp(a[i].second->data(), b[i].second->data(), a[i].second->nbytes()), 0) << a[i].first;
    }
  }
}

TEST(T5Quant, Nf4LayersStoreCodesAndRefuseBaseTraining) {
  T5Quant q;
  q.modules = {"q", "v", "wi_0", "wo"};
  T5Model m = t5_build(tiny(true, false), DType::f32, Device::cpu, q);
  t5_init_random(m, 3, 0.5);
  const T5WeightBytes b = t5_weight_bytes(m);
  EXPECT_EQ(b.quantized_layers, 2u * (2 + 2) + 2u * (4 + 2));  // encoder: q v wi_0 wo; decoder: also cross q v
  EXPECT_LT(b.stored, b.dense);
  EXPECT_THROW(t5_named_weights(m), Error);
  EXPECT_THROW(t5_enable_base_training(m), InputError);
  const T5Batch batch = make_batch(2, 5, 4, m.cfg.vocab_size);
  T5Activations a = t5_activations(m, 2, 5, 4, false);
  const double loss = t5_forward(m, a, batch, false);
  t5_dequantize(m);
  EXPECT_EQ(t5_weight_bytes(m).quantized_layers, 0u);
  T5Activations a2 = t5_activations(m, 2, 5, 4, false);
  EXPECT_EQ(t5_forward(m, a2, batch, false), loss);  // the dequantized weights are what NF4 computed with
  T5Quant bad;
  bad.modules = {"wi"};
  EXPECT_THROW(t5_build(tiny(true, false), DType::f32, Device::cpu, bad), InputError);
  bad.modules = {"gate"};
  EXPECT_THROW(t5_build(tiny(true, false), DType::f32, Device::cpu, bad), InputError);
  EXPECT_EQ(t5_module_short_name("decoder.block.1.layer.1.EncDecAttention.k"), "k");
  EXPECT_EQ(t5_module_short_name("encoder.block.0.layer.1.DenseReluDense.wi"), "wi");
  EXPECT_EQ(t5_module_short_name("lm_head"), "");
}

TEST(T5Flops, CountsEveryMatmulOnItsRows) {
  T5Model m = t5_build(tiny(true, false), DType::f32, Device::cpu);
  const T5Config& c = m.cfg;
  const double C = 8, HD = 8, F = 12, V = 23, Te = 6, Td = 3;
  const double enc = 2 * (4 * C * HD + 3 * C * F), dec_td = 2 * (6 * C * HD + 3 * C * F) + V * C;  // self 4, cross q o
  const double cross_kv = 2 * 2 * C * HD;
  const double macs = Te * (enc + cross_kv) + Td * dec_td;
  const double attn = 3 * 4 * HD * (Te * Te * 2 + 2 * (Td * Td / 2 + Td * Te));
  EXPECT_DOUBLE_EQ(t5_flops_per_token(m, 6, 3), (4 * macs + attn) / (Te + Td));
  t5_enable_base_training(m);
  EXPECT_DOUBLE_EQ(t5_flops_per_token(m, 6, 3), (6 * macs + attn) / (Te + Td));
  EXPECT_EQ(t5_num_trainable(m), c.num_parameters());
}

}  // namespace
}  // namespace st
