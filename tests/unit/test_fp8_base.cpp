// base_precision = fp8 on the CPU (src/model/fp8_base.*): the frozen base of an adapted linear
// held in FP8 E4M3 (LoRA: W8 and W8^T; QLoRA: NF4 -> FP8 before each GEMM), activations quantized
// with current scaling. The forward and input-gradient GEMMs are checked against f64 on the
// exact inputs within the bound E4M3's rounding gives; a LoRA step of a small Llama with an FP8
// base against the same step with the f32 base; the FP8 base held from the build (quantized as
// each tensor is loaded or drawn) against the conversion of the dense model: the same codes,
// the same step, and a load peak of the FP8 model plus one dense layer; and the refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "adapters/apply.hpp"
#include "adapters/lora.hpp"
#include "config/run_config.hpp"
#include "core/allocator.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "model/fp8_base.hpp"
#include "model/linear.hpp"
#include "model/llama.hpp"
#include "model/t5.hpp"
#include "ops/init.hpp"
#include "quant/nf4.hpp"
#include "tests/common/llama_batch.hpp"

namespace st {
namespace {

constexpr double kE4M3Rel = 1.0 / 16;       // 2^-4: relative rounding error of an E4M3 normal value
constexpr double kE4M3SubAbs = 1.0 / 1024;  // 2^-10: absolute error below the normal range (x scale_inv)
constexpr double kF32 = 1.0 / (1 << 24);

std::vector<double> host(const Tensor& t) {
  const Tensor h = t.to_cpu(DType::f64);
  return {h.ptr<double>(), h.ptr<double>() + h.numel()};
}

double amax_of(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Checks out [M, N] against a [M, K] x b [N, K]^T in f64 where both operands are quantized per
// tensor: |error| <= sum_k (ea_k |b_k| + |a_k| eb_k + ea_k eb_k) + (K + 1) 2^-24 sum_k |a_k b_k|
// (ea = 2^-4 |a| + 2^-10 amax_a / 448, the round trip's bound; f32 accumulation and output).
void expect_fp8_product(const std::vector<double>& out, const std::vector<double>& a, const std::vector<double>& b,
                        int64_t M, int64_t N, int64_t K, const std::vector<double>* c_in = nullptr) {
  const double sa = amax_of(a) / 448, sb = amax_of(b) / 448;
  double worst = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double exact = c_in ? (*c_in)[static_cast<size_t>(m * N + n)] : 0.0, bound = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double x = a[static_cast<size_t>(m * K + k)], w = b[static_cast<size_t>(n * K + k)];
        const double ex = kE4M3Rel * std::fabs(x) + kE4M3SubAbs * sa, ew = kE4M3Rel * std::fabs(w) + kE4M3SubAbs * sb;
        exact += x * w;
        bound += ex * std::fabs(w) + std::fabs(x) * ew + ex * ew;
        mag += std::fabs(x * w);
      }
      bound += static_cast<double>(K + 2) * kF32 * (mag + (c_in ? std::fabs(exact) : 0.0)) * 1.5;
      const double err = std::fabs(out[static_cast<size_t>(m * N + n)] - exact);
      worst = std::max(worst, err / bound);
      ASSERT_LE(err, bound) << "[" << m << ", " << n << "] exact " << exact;
    }
  // FP8 is really used: the error is a visible fraction of the bound somewhere.
  EXPECT_GT(worst, 1e-3);
}

std::vector<double> transpose(const std::vector<double>& w, int64_t rows, int64_t cols) {
  std::vector<double> t(w.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[static_cast<size_t>(c * rows + r)] = w[static_cast<size_t>(r * cols + c)];
  return t;
}

struct Layer {
  Linear lin;
  std::vector<double> w;  // the dense base the FP8 one was made from
};

// An adapted f32 linear [out, in] with random weights; nf4: the base stored in NF4.
std::unique_ptr<Layer> make_layer(int64_t out, int64_t in, bool nf4, int64_t rows) {
  auto L = std::make_unique<Layer>();
  Linear& l = L->lin;
  l.name = "layers.0.mlp.up_proj";
  l.in = in;
  l.out = out;
  Tensor w = Tensor::empty({out, in}, DType::f32);
  fill_normal(w, 3, 0.0, 0.5);
  if (nf4) {
    l.nf4 = std::make_shared<Nf4Tensor>(nf4_allocate(out, in, Nf4Config{}, Device::cpu));
    nf4_quantize(w, *l.nf4);
    l.dequant = share_dequant_buffer({&l}, DType::f32, Device::cpu);
    L->w = host(l.dense_weight());
  } else {
    l.weight = w;
    L->w = host(w);
  }
  LoraConfig lc;
  lc.r = 4;
  l.adapter = std::make_unique<LoraAdapter>(l, lc, rows, 5);  // B = 0: adds nothing
  EXPECT_EQ(fp8_convert_base({&l}, rows, "test"), 1);
  return L;
}

TEST(Fp8Base, ForwardAndInputGradientWithinE4M3Bounds) {
  const int64_t M = 7, in = 48, out = 32;
  for (bool nf4 : {false, true}) {
    SCOPED_TRACE(nf4 ? "qlora (nf4 -> fp8)" : "lora");
    auto L = make_layer(out, in, nf4, M);
    Linear& l = L->lin;
    ASSERT_TRUE(l.fp8);
    EXPECT_EQ(l.weight.defined(), false);
    EXPECT_EQ(fp8_stored_bytes(l), nf4 ? 0u : static_cast<size_t>(2 * out * in + 2 * 8));
    EXPECT_EQ(l.dtype(), DType::f32);
    Tensor x = Tensor::empty({M, in}, DType::f32), y = Tensor::empty({M, out}, DType::f32);
    fill_normal(x, 7, 0.0, 1.0);
    x.ptr<float>()[5] = 1e-4f;  // a value in E4M3's subnormal range after scaling
    LayerContext ctx;
    linear_layer_forward(l, x, y, false, ctx);
    expect_fp8_product(host(y), host(x), L->w, M, out, in);
    // Accumulate (y += x W^T) and residual (y = r + x W^T).
    const std::vector<double> y0 = host(y);
    linear_layer_forward(l, x, y, true, ctx);
    std::vector<double> twice = host(y);
    expect_fp8_product(twice, host(x), L->w, M, out, in, &y0);
    Tensor r = Tensor::empty({M, out}, DType::f32);
    fill_normal(r, 8, 0.0, 1.0);
    linear_layer_forward(l, x, y, false, ctx, &r);
    const std::vector<double> rh = host(r);
    expect_fp8_product(host(y), host(x), L->w, M, out, in, &rh);
    // dx = dy W: dy [M, out] times W^T [in, out]^T; overwrite, then accumulate.
    Tensor dy = Tensor::empty({M, out}, DType::f32), dx = Tensor::empty({M, in}, DType::f32);
    fill_normal(dy, 9, 0.0, 0.1);
    linear_layer_backward(l, x, dy, &dx, ctx, false);
    const std::vector<double> wt = transpose(L->w, out, in), dx0 = host(dx);
    expect_fp8_product(dx0, host(dy), wt, M, in, out);
    linear_layer_backward(l, x, dy, &dx, ctx, true);
    expect_fp8_product(host(dx), host(dy), wt, M, in, out, &dx0);
  }
}

TEST(Fp8Base, RefusesWhatItCannotDo) {
  Linear l;
  l.name = "odd";
  l.in = 24;  // not a multiple of 16
  l.out = 32;
  l.weight = Tensor::zeros({32, 24}, DType::f32);
  LoraConfig lc;
  l.adapter = std::make_unique<LoraAdapter>(l, lc, 4, 1);
  try {
    fp8_convert_base({&l}, 4, "deck.cfg");
    ADD_FAILURE() << "no refusal";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("deck.cfg: base_precision = fp8: odd is [32, 24]"), std::string::npos) << e.what();
  }
  Linear plain;  // no adapter: left alone
  plain.in = plain.out = 16;
  plain.weight = Tensor::zeros({16, 16}, DType::f32);
  EXPECT_EQ(fp8_convert_base({&plain}, 4, "x"), 0);
  EXPECT_TRUE(plain.weight.defined() && !plain.fp8);
}

LlamaConfig small_config() {
  LlamaConfig c;
  c.vocab_size = 40;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 16;
  c.max_position_embeddings = 16;
  return c;
}

LlamaBatch batch_of(int64_t B, int64_t T, uint64_t seed) {
  return test::random_llama_batch(B, T, seed, 40, 1.0f, /*padded_row=*/-1);
}

// One LoRA forward + backward of the small Llama (init seed `seed`, std 0.05; every block
// projection adapted with r 4, B drawn non-zero), batch 2 x 8; `prepare` runs on the model after
// the adapters are attached (e.g. to hold the base in FP8); `quant`: the model's build (e.g. the
// FP8 base from the build on). The loss and every trainable gradient.
struct LoraStep {
  double loss = 0;
  std::vector<std::vector<double>> grads;
};
constexpr int64_t kStepRows = 2 * 8;
LoraStep small_lora_step(uint64_t seed, const std::function<void(LlamaModel&)>& prepare, const LlamaQuant& quant = {}) {
  LlamaModel m = llama_build(small_config(), DType::f32, Device::cpu, quant);
  llama_init_random(m, seed, 0.05);
  LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  EXPECT_EQ(attach_lora(m, lc, kStepRows, 5), 2 * 7);
  for (Linear* lin : llama_linears(m))
    if (lin->adapter) fill_normal(static_cast<LoraAdapter*>(lin->adapter.get())->B, 100 + lin->out, 0.0, 0.2);
  prepare(m);
  LlamaActivations acts = llama_activations(m, 2, 8, false, true);
  const LlamaBatch batch = batch_of(2, 8, 4);
  LoraStep out;
  out.loss = llama_forward(m, acts, batch, LayerContext{}, true);
  llama_backward(m, acts, batch, LayerContext{});
  for (const ParamRef& p : llama_trainable_params(m)) out.grads.push_back(host(*p.grad));
  return out;
}

// One LoRA forward + backward of a small Llama (every block projection adapted, B non-zero)
// with the FP8 base against the f32 base. Each base GEMM's output is within
// (2 2^-4 + 2^-8) sum |x w| of the exact one (above); through a network in its ordinary regime
// (init std 0.05: attention not saturated) the loss and the adapters' gradients move by the same
// relative order, so both are checked at 2^-3 relative (and must differ: the FP8 path is really
// taken). With init std 0.3 the random model is chaotic (near one-hot attention) and the
// gradients are not comparable at any precision.
TEST(Fp8Base, LoraStepWithAnFp8BaseFollowsTheF32Base) {
  double loss[2];
  std::vector<std::vector<double>> grads[2];
  for (int fp8 = 0; fp8 < 2; ++fp8) {
    LoraStep step = small_lora_step(21, [&](LlamaModel& m) {
      if (fp8) {
        EXPECT_EQ(fp8_convert_base(llama_linears(m), kStepRows, "test"), 2 * 7);
      }
    });
    loss[fp8] = step.loss;
    grads[fp8] = std::move(step.grads);
  }
  std::printf("[fp8 step] loss f32 %.8f fp8 %.8f (relative %.2e)\n", loss[0], loss[1], std::fabs(loss[1] / loss[0] - 1));
  EXPECT_NE(loss[0], loss[1]);
  EXPECT_LE(std::fabs(loss[1] - loss[0]), 0.125 * std::fabs(loss[0])) << loss[0] << " vs " << loss[1];
  ASSERT_EQ(grads[0].size(), grads[1].size());
  double worst = 0;
  for (size_t i = 0; i < grads[0].size(); ++i) {
    double d2 = 0, n2 = 0;
    for (size_t j = 0; j < grads[0][i].size(); ++j) {
      d2 += (grads[1][i][j] - grads[0][i][j]) * (grads[1][i][j] - grads[0][i][j]);
      n2 += grads[0][i][j] * grads[0][i][j];
    }
    EXPECT_LE(std::sqrt(d2), 0.125 * std::sqrt(n2)) << "parameter " << i;
    worst = std::max(worst, std::sqrt(d2 / n2));
  }
  std::printf("[fp8 step] worst adapter gradient relative difference %.3e\n", worst);
}

// fp8_transpose = per_step: the input gradient's W8^T is transposed from W8 before each GEMM
// instead of stored: the same codes and scale, so the same step to the bit, with half the bytes.
TEST(Fp8Base, PerStepTransposeEqualsTheStoredOne) {
  double loss[2];
  std::vector<std::vector<double>> grads[2];
  size_t stored[2] = {0, 0}, dense = 0;
  for (int per_step = 0; per_step < 2; ++per_step) {
    LoraStep step = small_lora_step(23, [&](LlamaModel& m) {
      if (per_step == 0)
        for (Linear* lin : llama_linears(m))
          if (lin->adapter) dense += static_cast<size_t>(lin->out * lin->in);
      EXPECT_EQ(fp8_convert_base(llama_linears(m), kStepRows, "test", per_step == 0), 2 * 7);
      for (Linear* lin : llama_linears(m))
        if (lin->fp8) {
          EXPECT_EQ(lin->fp8->wt.codes.defined(), per_step == 0) << lin->name;
          stored[per_step] += fp8_stored_bytes(*lin);
        }
    });
    loss[per_step] = step.loss;
    grads[per_step] = std::move(step.grads);
  }
  EXPECT_EQ(loss[0], loss[1]);
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (size_t i = 0; i < grads[0].size(); ++i) EXPECT_EQ(grads[0][i], grads[1][i]) << "parameter " << i;
  // W8 and W8^T: 2 bytes a parameter plus 8 bytes of scales each; W8 alone: 1 byte a parameter.
  EXPECT_EQ(stored[0], 2 * dense + 14 * 16);
  EXPECT_EQ(stored[1], dense + 14 * 8);
}

// ---------------------------------------------------------------- the FP8 base from the build on
// base_precision = fp8 with method = lora: materialize_params gives the adapted layers W8 (and
// W8^T) instead of a dense weight, and set_weight (a load, or init's dense draw) quantizes each
// value as it arrives. The codes must be those fp8_convert_base makes of the dense model.

LlamaQuant fp8_at_build(std::vector<std::string> modules, bool keep_transpose) {
  LlamaQuant q;
  q.fp8_modules = std::move(modules);
  q.fp8_keep_transpose = keep_transpose;
  q.fp8_where = "deck.cfg:7";
  return q;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.defined() && b.defined() && a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// Codes, scale and amax bit for bit.
void expect_same_fp8(const Fp8Tensor& got, const Fp8Tensor& want, const std::string& what) {
  EXPECT_EQ(got.rows, want.rows) << what;
  EXPECT_EQ(got.cols, want.cols) << what;
  EXPECT_TRUE(same_bytes(got.codes, want.codes)) << what << ": codes";
  EXPECT_TRUE(same_bytes(got.scale_inv, want.scale_inv)) << what << ": scale_inv";
  EXPECT_TRUE(same_bytes(got.amax, want.amax)) << what << ": amax";
}

bool contains(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

// Some projections adapted (q, v, gate, down), the others (k, o, up) and lm_head dense: the held
// model's adapted layers have no dense weight, the others theirs; after the adapters and
// fp8_convert_base both models hold the same W8 (and W8^T) to the bit and the same dense tensors.
TEST(Fp8Base, HeldFromTheBuildEqualsTheConvertedDenseModel) {
  const std::vector<std::string> targets = {"q", "v", "gate", "down"};
  for (bool keep : {true, false}) {
    SCOPED_TRACE(keep ? "fp8_transpose = stored" : "fp8_transpose = per_step");
    LlamaModel dense = llama_build(small_config(), DType::f32, Device::cpu);
    llama_init_random(dense, 31, 0.05);
    LlamaModel held = llama_build(small_config(), DType::f32, Device::cpu, fp8_at_build(targets, keep));
    llama_init_random(held, 31, 0.05);
    const std::vector<Linear*> dl = llama_linears(dense), hl = llama_linears(held);
    ASSERT_EQ(dl.size(), hl.size());
    int64_t adapted = 0;
    for (const Linear* l : hl) {
      const bool target = contains(targets, llama_module_short_name(l->name));
      EXPECT_EQ(l->weight.defined(), !target) << l->name;
      EXPECT_EQ(l->fp8_stored(), target) << l->name;
      if (target) {
        EXPECT_EQ(l->fp8->wt.codes.defined(), keep) << l->name;
      }
      adapted += target;
    }
    EXPECT_EQ(adapted, 2 * 4);
    EXPECT_TRUE(held.lm_head.weight.defined());
    EXPECT_FALSE(held.lm_head.fp8);
    // Until fp8_convert_base the held layers have their codes but no shared buffers.
    EXPECT_FALSE(held.blocks[0].q.fp8->shared);
    LoraConfig lc;
    lc.r = 4;
    lc.targets = targets;
    EXPECT_EQ(attach_lora(dense, lc, kStepRows, 5), adapted);
    EXPECT_EQ(attach_lora(held, lc, kStepRows, 5), adapted);
    EXPECT_EQ(fp8_convert_base(dl, kStepRows, "test", keep), adapted);
    EXPECT_EQ(fp8_convert_base(hl, kStepRows, "test", keep), adapted);
    for (size_t i = 0; i < dl.size(); ++i) {
      ASSERT_EQ(dl[i]->fp8_stored(), hl[i]->fp8_stored()) << hl[i]->name;
      if (!hl[i]->fp8_stored()) {
        EXPECT_TRUE(same_bytes(hl[i]->weight, dl[i]->weight)) << hl[i]->name;
        continue;
      }
      ASSERT_TRUE(hl[i]->fp8->shared);
      EXPECT_EQ(hl[i]->fp8->shared, hl[0]->fp8->shared);  // one set of buffers for the model
      EXPECT_EQ(hl[i]->fp8->dtype, DType::f32);
      expect_same_fp8(hl[i]->fp8->w, dl[i]->fp8->w, hl[i]->name + " W8");
      if (keep) expect_same_fp8(hl[i]->fp8->wt, dl[i]->fp8->wt, hl[i]->name + " W8^T");
    }
    for (const auto& [name, t] : std::vector<std::pair<std::string, const Tensor*>>{
             {"embed", &held.embed}, {"final_norm", &held.final_norm}}) {
      const Tensor& d = name == "embed" ? dense.embed : dense.final_norm;
      EXPECT_TRUE(same_bytes(*t, d)) << name;
    }
    // Stored bytes: W8 (+ W8^T) with 8 bytes of scale and amax each, the rest dense; the same
    // figures as the converted model's. Not NF4 layers.
    const LlamaWeightBytes hb = llama_weight_bytes(held), db = llama_weight_bytes(dense);
    EXPECT_EQ(hb.stored, db.stored);
    EXPECT_EQ(hb.dense, db.dense);
    EXPECT_EQ(hb.quantized_layers, 0u);
    const LlamaConfig c = small_config();
    const size_t C = 32, I = 64, q = 2 * 16, kv = 16, per_block_fp8 = q * C + kv * C + I * C + C * I;
    const size_t dense_rest = 4 * (2 * 40 * C + (2 * 2 + 1) * C + 2 * (kv * C + C * q + I * C));
    ASSERT_EQ(c.hidden_size, 32);
    EXPECT_EQ(hb.stored, dense_rest + 2 * ((keep ? 2 : 1) * per_block_fp8 + (keep ? 16 : 8) * 4));
    // Savers see the FP8 slots as what they are.
    try {
      llama_named_weights(held);
      ADD_FAILURE() << "no refusal";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.q_proj.weight is stored in FP8 (base_precision = fp8)"),
                std::string::npos) << e.what();
    }
    int fp8_slots = 0;
    for (const LlamaWeightSlot& s : llama_weight_slots(held)) {
      EXPECT_FALSE(s.nf4()) << s.name;
      fp8_slots += s.fp8();
    }
    EXPECT_EQ(fp8_slots, adapted);
  }
}

// A LoRA step on the held model is the step on the converted one, to the bit (the same codes, the
// same kernels), with W8^T stored or transposed per step.
TEST(Fp8Base, LoraStepWithTheBaseHeldFromTheBuildEqualsTheConvertedOne) {
  for (bool keep : {true, false}) {
    SCOPED_TRACE(keep ? "fp8_transpose = stored" : "fp8_transpose = per_step");
    const auto convert = [&](LlamaModel& m) { EXPECT_EQ(fp8_convert_base(llama_linears(m), kStepRows, "test", keep), 2 * 7); };
    const LoraStep converted = small_lora_step(29, convert);
    const LoraStep held = small_lora_step(29, convert, fp8_at_build(llama_module_names(), keep));
    EXPECT_EQ(held.loss, converted.loss);
    ASSERT_EQ(held.grads.size(), converted.grads.size());
    ASSERT_EQ(held.grads.size(), 2u * 7 * 2);  // A and B of 14 adapters
    for (size_t i = 0; i < held.grads.size(); ++i) EXPECT_EQ(held.grads[i], converted.grads[i]) << "parameter " << i;
  }
}

// set_weight rounds a value to the compute dtype before quantizing it, as storing it in the
// dense model did: f32 values loaded into a bf16 model give the codes of the bf16 weight, not
// those of the f32 values (which differ here: the scale comes from a rounded amax).
TEST(Fp8Base, SetWeightQuantizesTheValueRoundedToTheComputeDtype) {
  LlamaModel dense = llama_build(small_config(), DType::bf16, Device::cpu);
  LlamaModel held = llama_build(small_config(), DType::bf16, Device::cpu, fp8_at_build({"up"}, true));
  const std::vector<LlamaWeightSlot> ds = llama_weight_slots(dense), hs = llama_weight_slots(held);
  ASSERT_EQ(ds.size(), hs.size());
  int checked = 0, differs = 0;
  for (size_t i = 0; i < hs.size(); ++i) {
    Tensor v = Tensor::empty(hs[i].shape, DType::f32);
    fill_normal(v, counter_key(17, name_hash(hs[i].name)), 0.0, 0.05);
    llama_set_weight(ds[i], v);
    llama_set_weight(hs[i], v);
    if (!hs[i].fp8()) continue;
    ASSERT_FALSE(ds[i].linear);
    const Linear& l = *hs[i].linear;
    std::shared_ptr<Fp8Base> want = fp8_allocate_base(l, DType::bf16, Device::cpu, true, "test");
    fp8_set_base(*want, *ds[i].tensor);  // what fp8_convert_base does with the dense bf16 weight
    expect_same_fp8(l.fp8->w, want->w, hs[i].name + " W8");
    expect_same_fp8(l.fp8->wt, want->wt, hs[i].name + " W8^T");
    Fp8Tensor direct = fp8_allocate(l.out, l.in, Fp8Scaling::per_tensor, Device::cpu);
    fp8_quantize(v, direct);
    differs += !same_bytes(direct.codes, want->w.codes) || !same_bytes(direct.scale_inv, want->w.scale_inv);
    ++checked;
  }
  EXPECT_EQ(checked, 2);
  EXPECT_EQ(differs, checked) << "quantizing the f32 values directly gives the same codes: the test cannot tell";
}

// The load with the FP8 base held from the build, on the CPU allocator by bytes. llama_build
// allocates every tensor (the adapted layers' W8 and W8^T, everything else dense), then
// llama_init_random draws each adapted layer densely into a temporary of its shape and quantizes
// it, one at a time: the peak is the held model plus the largest adapted layer in f32, and the
// dense base never exists. The dense build's peak is the dense model.
TEST(Fp8Base, LoadPeakIsTheFp8ModelPlusOneDenseLayer) {
  Allocator& a = allocator_for(Device::cpu);
  const LlamaConfig c = small_config();
  const size_t V = 40, C = 32, I = 64, L = 2, q = 2 * 16, kv = 16;
  ASSERT_EQ(static_cast<size_t>(c.vocab_size * c.hidden_size * c.intermediate_size * c.num_layers * c.q_dim() * c.kv_dim()),
            V * C * I * L * q * kv);
  const size_t adapted = L * (q * C + 2 * kv * C + C * q + 3 * I * C);  // every block projection
  const size_t rest = 4 * (2 * V * C + (2 * L + 1) * C);                 // embedding, lm_head, norms (f32)
  const size_t largest = 4 * I * C;                                      // gate, up, down in f32
  auto load = [&](const LlamaQuant& quant, size_t* held, size_t* peak, size_t* rope) {
    const size_t base = a.stats().total_current;
    a.reset_peak();
    LlamaModel m = llama_build(c, DType::f32, Device::cpu, quant);
    llama_init_random(m, 3, 0.05);
    *held = a.stats().total_current - base;
    *peak = a.stats().total_peak - base;
    *rope = m.rope.cos.nbytes() + m.rope.sin.nbytes();
  };
  size_t held = 0, peak = 0, rope = 0;
  load(LlamaQuant{}, &held, &peak, &rope);
  EXPECT_EQ(held, rest + 4 * adapted + rope);
  EXPECT_EQ(peak, held);
  const size_t dense_peak = peak;
  for (bool keep : {true, false}) {
    SCOPED_TRACE(keep ? "fp8_transpose = stored" : "fp8_transpose = per_step");
    load(fp8_at_build(llama_module_names(), keep), &held, &peak, &rope);
    const size_t fp8 = (keep ? 2 : 1) * (adapted + 8 * 7 * L);  // codes + 4-byte scale_inv and amax per tensor
    EXPECT_EQ(held, rest + fp8 + rope);
    EXPECT_EQ(peak, held + largest);
    EXPECT_LT(peak, dense_peak);
  }
}

// T5 takes the same path (materialize_params, set_weight): the held encoder-decoder's codes are
// those of its converted dense twin.
TEST(Fp8Base, T5HeldFromTheBuildEqualsTheConvertedDenseModel) {
  T5Config c;
  c.vocab_size = 40;
  c.d_model = 32;
  c.d_kv = 16;
  c.num_heads = 2;
  c.d_ff = 64;
  c.num_layers = 1;
  c.num_decoder_layers = 1;
  c.relative_attention_num_buckets = 8;
  c.relative_attention_max_distance = 10;
  c.gated = true;
  const std::vector<std::string> targets = {"q", "k", "v", "o", "wi_0", "wi_1", "wo"};
  T5Quant quant;
  quant.fp8_modules = targets;
  T5Model dense = t5_build(c, DType::f32, Device::cpu), held = t5_build(c, DType::f32, Device::cpu, quant);
  t5_init_random(dense, 41, 0.05);
  t5_init_random(held, 41, 0.05);
  LoraConfig lc;
  lc.r = 4;
  lc.targets = targets;
  const int64_t n = 7 + 4 + 4 + 3;  // encoder q k v o wi_0 wi_1 wo; decoder self- and cross-attention q k v o, FFN
  EXPECT_EQ(attach_lora(dense, lc, 16, 5), n);
  EXPECT_EQ(attach_lora(held, lc, 16, 5), n);
  const std::vector<Linear*> dl = t5_linears(dense), hl = t5_linears(held);
  for (const Linear* l : hl) EXPECT_EQ(l->weight.defined(), !l->fp8_stored()) << l->name;
  EXPECT_EQ(fp8_convert_base(dl, 16, "test"), n);
  EXPECT_EQ(fp8_convert_base(hl, 16, "test"), n);
  int compared = 0;
  for (size_t i = 0; i < dl.size(); ++i) {
    if (!hl[i]->fp8_stored()) continue;
    expect_same_fp8(hl[i]->fp8->w, dl[i]->fp8->w, hl[i]->name + " W8");
    expect_same_fp8(hl[i]->fp8->wt, dl[i]->fp8->wt, hl[i]->name + " W8^T");
    ++compared;
  }
  EXPECT_EQ(compared, n);
  EXPECT_EQ(t5_weight_bytes(held).stored, t5_weight_bytes(dense).stored);
}

// What the build and the conversion refuse: a layer that is not a multiple of 16 before anything
// is loaded (naming the deck key), a held base without an adapter, and a held base whose W8^T
// disagrees with fp8_transpose.
TEST(Fp8Base, HeldBaseRefusals) {
  LlamaConfig odd = small_config();
  odd.intermediate_size = 40;
  try {
    llama_build(odd, DType::f32, Device::cpu, fp8_at_build({"up"}, true));
    ADD_FAILURE() << "no refusal";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("deck.cfg:7: base_precision = fp8: model.layers.0.mlp.up_proj is [40, 32] on this "
                                         "rank; FP8 GEMMs need both dimensions to be multiples of 16"),
              std::string::npos) << e.what();
  }
  EXPECT_THROW(llama_build(small_config(), DType::f32, Device::cpu, fp8_at_build({"lm_head"}, true)), InputError);
  {
    LlamaModel m = llama_build(small_config(), DType::f32, Device::cpu, fp8_at_build({"q", "k"}, true));
    LoraConfig lc;
    lc.targets = {"q"};  // k holds an FP8 base nothing adapts
    attach_lora(m, lc, 4, 1);
    try {
      fp8_convert_base(llama_linears(m), 4, "test");
      ADD_FAILURE() << "no refusal";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.k_proj holds an FP8 base but has no adapter"),
                std::string::npos) << e.what();
    }
  }
  {
    LlamaModel m = llama_build(small_config(), DType::f32, Device::cpu, fp8_at_build({"q"}, true));
    LoraConfig lc;
    lc.targets = {"q"};
    attach_lora(m, lc, 4, 1);
    EXPECT_THROW(fp8_convert_base(llama_linears(m), 4, "test", /*keep_transpose=*/false), Error);
    EXPECT_FALSE(m.blocks[0].q.fp8->shared);
    EXPECT_THROW(llama_enable_base_training(m), InputError);
  }
}

RunConfig parse(std::vector<std::string> args) {
  args.insert(args.begin(), {"train", "--data", "placeholder"});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  RunConfig c;
  parse_run_config(static_cast<int>(argv.size()), argv.data(), "train", c);
  return c;
}

TEST(Fp8Base, DeckRefusals) {
  EXPECT_EQ(parse({"--method", "lora", "--base_precision", "fp8"}).base_precision, "fp8");
  EXPECT_EQ(parse({"--method", "qlora", "--base_precision", "fp8"}).base_precision, "fp8");
  EXPECT_EQ(parse({"--method", "lora", "--base_precision", "fp8", "--fp8_transpose", "per_step"}).fp8_transpose, "per_step");
  const std::vector<std::pair<std::vector<std::string>, std::string>> bad = {
      {{"--method", "full", "--base_precision", "fp8"}, "needs method = lora or qlora"},
      {{"--method", "lora", "--base_precision", "fp16"}, "base_precision = 'fp16' is not one of: bf16 | fp8"},
      {{"--method", "lora", "--base_precision", "fp8", "--parallel", "zero3"}, "ZeRO-3"},
      {{"--method", "lora", "--base_precision", "fp8", "--save_model", "true"}, "the bf16 base is not kept"},
      {{"--method", "lora", "--fp8_transpose", "per_step"}, "fp8_transpose = per_step needs base_precision = fp8"},
      {{"--method", "lora", "--base_precision", "fp8", "--fp8_transpose", "never"},
       "fp8_transpose = 'never' is not one of: stored | per_step"}};
  for (const auto& [args, want] : bad) {
    try {
      parse(args);
      ADD_FAILURE() << want << ": no refusal";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace st
