// NF4 storage (src/quant/nf4.*): the code book and the dynamic map, round-trip error bounds,
// nibble order and absmax layout on hand-built blocks, double quantization, a QLoRA layer's
// gradients against finite differences on its dequantized weight, and a QLoRA model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "adapters/apply.hpp"
#include "core/rng.hpp"
#include "model/llama.hpp"
#include "ops/matmul.hpp"
#include "quant/nf4.hpp"
#include "tests/common/gradcheck.hpp"
#include "tests/common/nf4_golden.hpp"

namespace st {
namespace {

Nf4Config plain(int64_t block) {
  Nf4Config c;
  c.block = block;
  c.double_quant = false;
  return c;
}

std::vector<float> dequant_f32(const Nf4Tensor& q) {
  Tensor out = Tensor::empty({q.rows, q.cols}, DType::f32);
  nf4_dequantize(q, out);
  return std::vector<float>(out.ptr<float>(), out.ptr<float>() + out.numel());
}

uint8_t code_at(const Nf4Tensor& q, int64_t i) {
  const uint8_t b = q.codes.ptr<uint8_t>()[i / 2];
  return (i & 1) ? (b & 0x0F) : (b >> 4);
}

TEST(Nf4, CodeBookIsSortedSymmetricInRangeWithExactZero) {
  const auto& v = nf4_code_values();
  EXPECT_EQ(v.front(), -1.0f);
  EXPECT_EQ(v.back(), 1.0f);
  EXPECT_EQ(v[7], 0.0f);
  for (size_t i = 1; i < v.size(); ++i) EXPECT_LT(v[i - 1], v[i]);
  // The encoder sends each code value to itself and each midpoint-neighbourhood to its side.
  for (int i = 0; i < 16; ++i) EXPECT_EQ(nf4_encode(v[static_cast<size_t>(i)]), i);
  for (int i = 0; i < 15; ++i) {
    const float mid = static_cast<float>((double(v[static_cast<size_t>(i)]) + double(v[static_cast<size_t>(i) + 1])) / 2);
    EXPECT_EQ(nf4_encode(mid), i) << "a value on the midpoint goes to the lower code";
    EXPECT_EQ(nf4_encode(std::nextafter(mid, 2.0f)), i + 1);
  }
  EXPECT_EQ(nf4_encode(-5.0f), 0);
  EXPECT_EQ(nf4_encode(5.0f), 15);
}

TEST(Nf4, DynamicMapHasBitsandbytesShape) {
  const auto& m = dynamic_map_signed();
  for (size_t i = 1; i < m.size(); ++i) EXPECT_LE(m[i - 1], m[i]) << i;
  EXPECT_EQ(m[127], 0.0f);
  EXPECT_EQ(m[255], 1.0f);
  // Largest magnitude below 1: the mean of the last two points of linspace(0.1, 1, 65).
  EXPECT_NEAR(m[0], -(1.0 + (1.0 - 0.9 / 64)) / 2, 1e-6);
  EXPECT_NEAR(m[254], (1.0 + (1.0 - 0.9 / 64)) / 2, 1e-6);
  // Smallest magnitude: 1e-6 * (0.1 + 1) / 2.
  EXPECT_NEAR(m[128], 0.55e-6, 1e-12);
  EXPECT_NEAR(m[126], -0.55e-6, 1e-12);
  // Every value round-trips through the 8-bit encoder.
  for (int i = 0; i < 256; ++i) {
    if (i == 126 && m[126] == m[127]) continue;
    EXPECT_EQ(dynamic_encode(m.data(), m[static_cast<size_t>(i)]), i) << m[static_cast<size_t>(i)];
  }
}

TEST(Nf4, CodeBookValuesRoundTripExactly) {
  // A block holding every code value times an absmax (f32 products): codes are the indices and
  // dequantization gives back the very same floats.
  for (float a : {1.0f, 0.25f, 3.7f, 0.0123f}) {
    Tensor w = Tensor::empty({2, 32}, DType::f32);
    const auto& v = nf4_code_values();
    for (int64_t i = 0; i < 64; ++i) w.ptr<float>()[i] = v[static_cast<size_t>(i % 16)] * a;
    Nf4Tensor q = nf4_allocate(2, 32, plain(64), Device::cpu);
    nf4_quantize(w, q);
    EXPECT_EQ(q.absmax.ptr<float>()[0], a);
    const std::vector<float> d = dequant_f32(q);
    for (int64_t i = 0; i < 64; ++i) {
      EXPECT_EQ(code_at(q, i), i % 16) << "absmax " << a << " i " << i;
      EXPECT_EQ(d[static_cast<size_t>(i)], w.ptr<float>()[i]) << "absmax " << a << " i " << i;
    }
  }
}

TEST(Nf4, RoundTripErrorIsAtMostHalfTheGapTimesAbsmax) {
  Rng rng(3);
  for (int64_t block : {64, 128, 256}) {
    const int64_t rows = 37, cols = 50;  // 1850 values: a partial last block
    Tensor w = test::random_f32({rows, cols}, rng, 2.0);
    for (int64_t i = 0; i < 40; ++i) w.ptr<float>()[rng.below(rows * cols)] *= 10.0f;  // outliers
    Nf4Tensor q = nf4_allocate(rows, cols, plain(block), Device::cpu);
    nf4_quantize(w, q);
    const std::vector<float> d = dequant_f32(q);
    const auto& v = nf4_code_values();
    ASSERT_EQ(q.absmax.numel(), (rows * cols + block - 1) / block);
    for (int64_t i = 0; i < rows * cols; ++i) {
      const float x = w.ptr<float>()[i];
      const float a = q.absmax.ptr<float>()[i / block];
      const int c = code_at(q, i);
      // The code is the nearest code value to x / absmax (ties and the last ulp aside) ...
      const double xn = double(x) / double(a);
      for (int j = 0; j < 16; ++j)
        ASSERT_LE(std::fabs(xn - v[static_cast<size_t>(c)]), std::fabs(xn - v[static_cast<size_t>(j)]) + 1e-6)
            << "block " << block << " i " << i;
      // ... so the error is at most half the widest gap next to it, times absmax.
      const double gap = std::max(c > 0 ? v[static_cast<size_t>(c)] - v[static_cast<size_t>(c) - 1] : 0.0f,
                                  c < 15 ? v[static_cast<size_t>(c) + 1] - v[static_cast<size_t>(c)] : 0.0f);
      ASSERT_LE(std::fabs(double(d[static_cast<size_t>(i)]) - x), 0.5 * gap * a * (1 + 1e-6) + 1e-7)
          << "block " << block << " i " << i;
    }
  }
}

TEST(Nf4, NibbleOrderAndAbsmaxLayout) {
  // Two blocks of 64: the first with absmax 2, the second with absmax 0.5.
  Tensor w = Tensor::zeros({2, 64}, DType::f32);
  float* p = w.ptr<float>();
  p[0] = -2.0f;  // code 0  (high nibble of byte 0)
  p[1] = 2.0f;   // code 15 (low nibble of byte 0)
  p[2] = 0.0f;   // code 7
  p[3] = nf4_code_values()[8] * 2.0f;  // code 8
  p[64] = 0.5f;                         // block 1: code 15, absmax 0.5
  p[65] = nf4_code_values()[3] * 0.5f;  // code 3
  p[127] = -0.5f;                       // code 0, low nibble of the last byte
  Nf4Tensor q = nf4_allocate(2, 64, plain(64), Device::cpu);
  nf4_quantize(w, q);
  const uint8_t* c = q.codes.ptr<uint8_t>();
  EXPECT_EQ(q.codes.numel(), 64);
  EXPECT_EQ(c[0], 0x0F);
  EXPECT_EQ(c[1], 0x78);
  EXPECT_EQ(c[2], 0x77);  // zeros in a block with absmax 2
  EXPECT_EQ(c[32], 0xF3);
  EXPECT_EQ(c[63], 0x70);
  ASSERT_EQ(q.absmax.numel(), 2);
  EXPECT_EQ(q.absmax.ptr<float>()[0], 2.0f);
  EXPECT_EQ(q.absmax.ptr<float>()[1], 0.5f);
  EXPECT_EQ(q.nbytes(), 64u + 2 * sizeof(float));
}

TEST(Nf4, AllZeroBlockDequantizesToZero) {
  Tensor w = Tensor::zeros({1, 64}, DType::f32);
  Nf4Tensor q = nf4_allocate(1, 64, Nf4Config{}, Device::cpu);
  nf4_quantize(w, q);
  for (float x : dequant_f32(q)) EXPECT_EQ(x, 0.0f);
}

TEST(Nf4, DoubleQuantizationBounds) {
  Rng rng(11);
  const int64_t rows = 96, cols = 640;  // 960 blocks of 64: 4 second-level blocks, the last partial
  Tensor w = test::random_f32({rows, cols}, rng, 1.0);
  for (int64_t r = 0; r < rows; ++r)  // rows of different scales, as in real weights
    for (int64_t j = 0; j < cols; ++j) w.ptr<float>()[r * cols + j] *= 0.02f * float(1 + r % 7);
  Nf4Tensor plain_q = nf4_allocate(rows, cols, plain(64), Device::cpu);
  Nf4Tensor dq = nf4_allocate(rows, cols, Nf4Config{}, Device::cpu);
  nf4_quantize(w, plain_q);
  nf4_quantize(w, dq);
  // The 4-bit codes do not depend on how absmax is stored.
  for (int64_t i = 0; i < dq.codes.numel(); ++i) ASSERT_EQ(dq.codes.ptr<uint8_t>()[i], plain_q.codes.ptr<uint8_t>()[i]);
  const int64_t nb = dq.nblocks();
  ASSERT_EQ(nb, 960);
  ASSERT_EQ(dq.qabsmax.numel(), 960);
  ASSERT_EQ(dq.absmax2.numel(), 4);
  const float* a = plain_q.absmax.ptr<float>();
  double mean = 0;
  for (int64_t b = 0; b < nb; ++b) mean += a[b];
  mean /= static_cast<double>(nb);
  // An f32 sum of nb values >= 0 whose longest chain of additions has d = ceil(nb / 256) + 8
  // roundings (256 lanes, then a tree) is within gamma_d = d u / (1 - d u) of the exact sum,
  // u = 2^-24 (Higham, Accuracy and Stability, 4.2); the product with the f32 reciprocal of nb
  // adds u (half an ulp each).
  const double u = std::ldexp(1.0, -24), depth = std::ceil(static_cast<double>(nb) / 256) + 8;
  EXPECT_NEAR(dq.offset, mean, (depth * u / (1 - depth * u) + u) * mean);
  // Each absmax is recovered to within half the largest gap of the dynamic map (0.9/64 / 2 near
  // +-1) times its block's second-level absmax.
  const Tensor eff = nf4_effective_absmax(dq);
  for (int64_t b = 0; b < nb; ++b) {
    const double a2 = dq.absmax2.ptr<float>()[b / 256];
    EXPECT_LE(std::fabs(eff.ptr<float>()[b] - a[b]), 0.5 * 0.9 / 64 * a2 + 1e-7) << b;
  }
  // Storage: 4 bits per value + 1 byte per block + 4 bytes per 256 blocks + the offset.
  EXPECT_EQ(dq.nbytes(), static_cast<size_t>(rows * cols / 2 + nb + 4 * 4 + 4));
  // And the dequantized weights stay within the NF4 bound computed with the stored absmax.
  const std::vector<float> d = dequant_f32(dq);
  for (int64_t i = 0; i < rows * cols; ++i)
    ASSERT_LE(std::fabs(d[static_cast<size_t>(i)] - w.ptr<float>()[i]),
              0.5 * 0.3039 * eff.ptr<float>()[i / 64] + std::fabs(eff.ptr<float>()[i / 64] - a[i / 64]) + 1e-7);
}

// Against the PyTorch re-implementation of bitsandbytes' NF4 (tests/golden/make_nf4_golden.py):
// the dynamic map as torch computes it, and every code, absmax and dequantized value.
TEST(Nf4, MatchesTheGoldenPyTorchReimplementationBitForBit) {
  const test::Nf4Golden g = test::load_nf4_golden();
  ASSERT_EQ(g.dynamic_map.size(), 256u);
  for (size_t i = 0; i < 256; ++i) EXPECT_EQ(dynamic_map_signed()[i], g.dynamic_map[i]) << "dynamic map " << i;
  ASSERT_EQ(g.cases.size(), 4u);
  for (const auto& c : g.cases) test::check_nf4_golden_case(c, Device::cpu);
}

TEST(Nf4, FixedOrderMeanMatchesTheSum) {
  std::vector<float> x(1000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.001f * static_cast<float>(i);
  EXPECT_FLOAT_EQ(nf4_fixed_order_mean(x.data(), 1000), 0.4995f);
  EXPECT_FLOAT_EQ(nf4_fixed_order_mean(x.data(), 1), 0.0f);
}

TEST(Nf4, BadBlockSizeIsAnInputError) {
  Nf4Config c;
  c.block = 32;
  EXPECT_THROW(nf4_allocate(4, 16, c, Device::cpu), InputError);
}

LlamaConfig tiny_config() {
  LlamaConfig c;
  c.vocab_size = 13;
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

TEST(Qlora, LayerGradientsMatchFiniteDifferencesOnTheDequantizedWeight) {
  // A q_proj of a tiny f64 model in NF4 with a LoRA adapter (non-zero B): the objective
  // sum(G * y(x)) with y = x W_nf4^T + s x A^T B^T; input, A and B gradients checked.
  LlamaQuant quant;
  quant.modules = {"q", "down"};
  LlamaModel m = llama_build(tiny_config(), DType::f64, Device::cpu, quant);
  llama_init_random(m, 5, 0.5);
  LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.targets = {"q", "down"};
  ASSERT_EQ(attach_lora(m, lc, 6, 9), 4);
  Linear& lin = m.blocks[0].q;
  ASSERT_TRUE(lin.quantized());
  ASSERT_FALSE(lin.weight.defined());
  auto* ad = static_cast<LoraAdapter*>(lin.adapter.get());
  Rng rng(21);
  ad->B.copy_from(test::random_f64(ad->B.shape(), rng, 0.3));
  Tensor x = test::random_f64({6, lin.in}, rng, 1.0);
  Tensor G = test::random_f64({6, lin.out}, rng, 1.0);
  Tensor y = Tensor::empty({6, lin.out}, DType::f64);
  LayerContext ctx;
  ctx.training = true;
  auto f = [&] {
    linear_layer_forward(lin, x, y, false, ctx);
    return test::weighted_sum(y, G);
  };
  f();
  Tensor dx = Tensor::zeros(x.shape(), DType::f64);
  ad->dA.zero_();
  ad->dB.zero_();
  linear_layer_backward(lin, x, G, &dx, ctx);
  for (auto [name, param, grad] : {std::tuple<const char*, Tensor*, Tensor*>{"x", &x, &dx},
                                   {"A", &ad->A, &ad->dA}, {"B", &ad->B, &ad->dB}}) {
    const auto r = test::check_gradient(f, *param, grad->clone(MemCategory::other), 48);
    EXPECT_LT(r.max_rel_err, 1e-7) << name << ": " << r.worst;
  }
  // The forward used the dequantized weight: y equals x W_deq^T + LoRA computed densely.
  Tensor Wd = Tensor::empty({lin.out, lin.in}, DType::f64);
  nf4_dequantize(*lin.nf4, Wd);
  Tensor y_ref = Tensor::zeros({6, lin.out}, DType::f64);
  matmul(y_ref, x, false, Wd, true);
  Tensor xa = Tensor::zeros({6, lc.r}, DType::f64);
  matmul(xa, x, false, ad->A, true);
  matmul(y_ref, xa, false, ad->B, true, lc.scale(), 1.0);
  f();
  EXPECT_LT(test::rel_error(y, y_ref), 1e-14);
}

TEST(Qlora, ModelStoresOnlyNf4AndStartsFromTheQuantizedDenseModel) {
  LlamaQuant quant;
  quant.modules = llama_module_names();
  LlamaModel dense = llama_build(tiny_config(), DType::f32, Device::cpu);
  llama_init_random(dense, 17, 0.1);
  LlamaModel q = llama_build(tiny_config(), DType::f32, Device::cpu, quant);
  llama_init_random(q, 17, 0.1);
  const LlamaWeightBytes wb = llama_weight_bytes(q);
  EXPECT_EQ(wb.quantized_layers, 14u);
  EXPECT_EQ(wb.dense, llama_weight_bytes(dense).stored);
  EXPECT_LT(wb.stored, wb.dense / 2);
  EXPECT_THROW(llama_named_weights(q), Error);
  EXPECT_THROW(llama_enable_base_training(q), InputError);
  // Each NF4 layer holds exactly the codes of the dense model's weight.
  const auto slots_d = llama_weight_slots(dense);
  const auto slots_q = llama_weight_slots(q);
  ASSERT_EQ(slots_d.size(), slots_q.size());
  for (size_t i = 0; i < slots_d.size(); ++i) {
    if (!slots_q[i].linear) continue;
    Nf4Tensor ref = nf4_allocate(slots_d[i].shape[0], slots_d[i].shape[1], quant.nf4, Device::cpu);
    nf4_quantize(*slots_d[i].tensor, ref);
    const Nf4Tensor& got = *slots_q[i].linear->nf4;
    ASSERT_EQ(std::memcmp(ref.codes.data(), got.codes.data(), ref.codes.nbytes()), 0) << slots_q[i].name;
    ASSERT_EQ(std::memcmp(ref.qabsmax.data(), got.qabsmax.data(), ref.qabsmax.nbytes()), 0) << slots_q[i].name;
    ASSERT_EQ(ref.offset, got.offset);
  }
  // Dequantizing gives a dense model again, close to the original (NF4 error ~ absmax / 10).
  llama_dequantize(q);
  EXPECT_EQ(llama_weight_bytes(q).quantized_layers, 0u);
  const auto named_d = llama_named_weights(dense);
  const auto named_q = llama_named_weights(q);
  for (size_t i = 0; i < named_d.size(); ++i) {
    const double e = test::rel_error(*named_q[i].second, *named_d[i].second);
    if (named_d[i].first.find("proj") != std::string::npos) {
      EXPECT_GT(e, 0.0) << named_d[i].first;
      EXPECT_LT(e, 0.15) << named_d[i].first;
    } else {
      EXPECT_EQ(e, 0.0) << named_d[i].first;
    }
  }
}

}  // namespace
}  // namespace st
