// base_precision = fp8 on the CPU (src/model/fp8_base.*): the frozen base of an adapted linear
// held in FP8 E4M3 (LoRA: W8 and W8^T; QLoRA: NF4 -> FP8 before each GEMM), activations quantized
// with current scaling. The forward and input-gradient GEMMs are checked against f64 on the
// exact inputs within the bound E4M3's rounding gives; a LoRA step of a small Llama with an FP8
// base against the same step with the f32 base; and the refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include "adapters/apply.hpp"
#include "adapters/lora.hpp"
#include "config/run_config.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "model/fp8_base.hpp"
#include "model/linear.hpp"
#include "model/llama.hpp"
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
// the adapters are attached (e.g. to hold the base in FP8). The loss and every trainable gradient.
struct LoraStep {
  double loss = 0;
  std::vector<std::vector<double>> grads;
};
constexpr int64_t kStepRows = 2 * 8;
LoraStep small_lora_step(uint64_t seed, const std::function<void(LlamaModel&)>& prepare) {
  LlamaModel m = llama_build(small_config(), DType::f32, Device::cpu);
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
