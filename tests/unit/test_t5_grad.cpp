// The T5 model's hand-written backward against central differences in f64, for every parameter
// (the relative-bias tables, cross-attention and both feed-forward kinds included), with padded
// encoder rows, ignored targets, and tied and untied heads.
#include <gtest/gtest.h>

#include <cmath>

#include "model/t5.hpp"
#include "tests/common/gradcheck.hpp"

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
  return c;
}

T5Batch make_batch(int64_t B, int64_t Te, int64_t Td, int64_t V) {
  T5Batch b;
  b.B = B;
  b.Te = Te;
  b.Td = Td;
  b.enc_ids = Tensor::empty({B * Te}, DType::i32);
  b.enc_lengths = Tensor::empty({B}, DType::i32);
  b.dec_lengths = Tensor::empty({B}, DType::i32);
  b.dec_targets = Tensor::empty({B * Td}, DType::i32);
  b.dec_weight = Tensor::empty({B * Td}, DType::f32);
  std::vector<int32_t> labels(static_cast<size_t>(B * Td));
  for (int64_t i = 0; i < B * Te; ++i) b.enc_ids.ptr<int32_t>()[i] = static_cast<int32_t>((i * 7 + 3) % V);
  for (int64_t r = 0; r < B; ++r) {
    b.enc_lengths.ptr<int32_t>()[r] = static_cast<int32_t>(r == 1 ? Te - 2 : Te);  // a padded row
    b.dec_lengths.ptr<int32_t>()[r] = static_cast<int32_t>(Td);
  }
  int64_t count = 0;
  for (int64_t i = 0; i < B * Td; ++i) {
    labels[static_cast<size_t>(i)] = i % 5 == 4 ? -1 : static_cast<int32_t>((i * 11 + 1) % V);
    count += labels[static_cast<size_t>(i)] >= 0;
  }
  for (int64_t i = 0; i < B * Td; ++i) {
    b.dec_targets.ptr<int32_t>()[i] = labels[static_cast<size_t>(i)];
    b.dec_weight.ptr<float>()[i] = labels[static_cast<size_t>(i)] >= 0 ? 1.0f / static_cast<float>(count) : 0.0f;
  }
  const std::vector<int32_t> dec = t5_shift_right(labels, B, Td, 0, 0);
  b.dec_ids = Tensor::empty({B * Td}, DType::i32);
  for (int64_t i = 0; i < B * Td; ++i) b.dec_ids.ptr<int32_t>()[i] = dec[static_cast<size_t>(i)];
  return b;
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

TEST(T5Grad, ShiftRight) {
  const std::vector<int32_t> labels{5, 6, -1, 7, 8, 9};
  const std::vector<int32_t> want{0, 5, 6, 0, 7, 8};
  EXPECT_EQ(t5_shift_right(labels, 2, 3, 0, 0), want);
}

}  // namespace
}  // namespace st
