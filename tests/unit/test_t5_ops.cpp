// T5's building blocks: the relative-position buckets (against values worked out from
// transformers' formula), the relative-bias lookup and its gradient, the gated-GELU and ReLU
// feed-forward activations (finite differences in f64).
#include <gtest/gtest.h>

#include <cmath>

#include <filesystem>

#include "core/error.hpp"
#include "io/h5util.hpp"
#include "model/t5_config.hpp"
#include "ops/activation.hpp"
#include "ops/relbias.hpp"
#include "tests/common/gradcheck.hpp"
#include "tests/common/paths.hpp"

namespace st {
namespace {

using test::check_gradient;
using test::random_f64;
using test::weighted_sum;

#define EXPECT_GRAD_OK_T5(r, what) \
  EXPECT_LT((r).max_rel_err, 1e-7) << what << ": " << (r).worst

// Encoder (bidirectional, 32 buckets, max distance 128): 16 buckets per sign, 8 exact, then
// 8 + floor(log(d / 8) / log(16) * 8) capped at 15; keys after the query use buckets 16..31.
TEST(T5Ops, BidirectionalBuckets) {
  auto b = [](int64_t rel) { return t5_relative_bucket(rel, true, 32, 128); };
  EXPECT_EQ(b(0), 0);
  EXPECT_EQ(b(-1), 1);
  EXPECT_EQ(b(-7), 7);
  EXPECT_EQ(b(1), 17);
  EXPECT_EQ(b(7), 23);
  EXPECT_EQ(b(-8), 8);     // log(1) = 0
  EXPECT_EQ(b(-9), 8);     // log(9/8) / log(16) * 8 = 0.34
  EXPECT_EQ(b(-12), 9);    // 1.17
  EXPECT_EQ(b(-40), 12);   // log(5) / log(16) * 8 = 4.64
  EXPECT_EQ(b(40), 28);
  EXPECT_EQ(b(-127), 15);  // 7.98 -> 15
  EXPECT_EQ(b(-128), 15);  // capped
  EXPECT_EQ(b(-5000), 15);
  EXPECT_EQ(b(5000), 31);
}

// Decoder (causal): only keys in the past are told apart: 32 buckets, 16 exact, then
// 16 + floor(log(d / 16) / log(8) * 16) capped at 31; keys after the query share bucket 0.
TEST(T5Ops, CausalBuckets) {
  auto b = [](int64_t rel) { return t5_relative_bucket(rel, false, 32, 128); };
  EXPECT_EQ(b(0), 0);
  EXPECT_EQ(b(5), 0);
  EXPECT_EQ(b(-5), 5);
  EXPECT_EQ(b(-15), 15);
  EXPECT_EQ(b(-16), 16);
  EXPECT_EQ(b(-20), 17);   // log(1.25) / log(8) * 16 = 1.72
  EXPECT_EQ(b(-64), 26);   // log(4) / log(8) * 16 = 10.67
  EXPECT_EQ(b(-200), 31);
  // The table of every pair for a small case, row q, column k.
  const Tensor t = t5_relative_buckets(3, 4, false, 32, 128, Device::cpu);
  const int32_t want[] = {0, 0, 0, 0, 1, 0, 0, 0, 2, 1, 0, 0};
  for (int i = 0; i < 12; ++i) EXPECT_EQ(t.ptr<int32_t>()[i], want[i]) << i;
}

// transformers' own T5Attention._relative_position_bucket (tests/golden/make_t5_golden.py,
// torch 2.11 / transformers 5.17) for relative positions -400..400: every value must agree,
// including the log-spaced boundaries where f32 rounding decides.
TEST(T5Ops, BucketsEqualTransformers) {
  const std::string path = test::repo_root() + "/tests/golden/t5_golden.h5";
  h5::Handle f = h5::open_file_read(path);
  h5::Handle g = h5::open_group(f, "buckets");
  int cases = 0;
  for (const char* name : {"bidirectional_32_128", "causal_32_128", "bidirectional_8_20", "causal_8_20"}) {
    const std::vector<hsize_t> dims = h5::dataset_dims(g, name, path);
    std::vector<int32_t> want(dims.at(0));
    h5::read_dataset(g, name, H5T_NATIVE_INT32, want.data(), path);
    h5::Handle d(H5Dopen2(g, name, H5P_DEFAULT), h5::Handle::Kind::dataset);
    const bool bidirectional = h5::read_attr_int(d, "bidirectional", path) != 0;
    const int64_t nb = h5::read_attr_int(d, "num_buckets", path), md = h5::read_attr_int(d, "max_distance", path);
    const int64_t first = h5::read_attr_int(d, "first_relative_position", path);
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_EQ(t5_relative_bucket(first + static_cast<int64_t>(i), bidirectional, nb, md), want[i])
          << name << " relative position " << first + static_cast<int64_t>(i);
    ++cases;
  }
  EXPECT_EQ(cases, 4);
}

TEST(T5Ops, RelativeBiasLookupAndGradient) {
  Rng rng(21);
  const int64_t NB = 8, H = 3, Tq = 5, Tk = 7;
  Tensor table = random_f64({NB, H}, rng), W = random_f64({H, Tq, Tk}, rng);
  const Tensor buckets = t5_relative_buckets(Tq, Tk, true, NB, 16, Device::cpu);
  Tensor bias = Tensor::empty({H, Tq, Tk}, DType::f64);
  auto f = [&] { relative_bias_forward(table, buckets, Tq, Tk, bias); return weighted_sum(bias, W); };
  f();
  for (int64_t h = 0; h < H; ++h)
    for (int64_t q = 0; q < Tq; ++q)
      for (int64_t k = 0; k < Tk; ++k)
        ASSERT_EQ(bias.ptr<double>()[(h * Tq + q) * Tk + k],
                  table.ptr<double>()[t5_relative_bucket(k - q, true, NB, 16) * H + h]);
  Tensor dt = Tensor::zeros({NB, H}, DType::f64);
  relative_bias_backward(W, buckets, Tq, Tk, dt);
  EXPECT_GRAD_OK_T5(check_gradient(f, table, dt), "dtable");
  // Accumulates: a second backward doubles it.
  Tensor dt2 = dt.clone(MemCategory::other);
  relative_bias_backward(W, buckets, Tq, Tk, dt2);
  for (int64_t i = 0; i < dt.numel(); ++i) EXPECT_DOUBLE_EQ(dt2.ptr<double>()[i], 2 * dt.ptr<double>()[i]);
}

TEST(T5Ops, GatedGeluAndRelu) {
  Rng rng(22);
  const int64_t N = 41;
  Tensor g = random_f64({N}, rng, 3.0), u = random_f64({N}, rng, 2.0), W = random_f64({N}, rng);
  g.ptr<double>()[0] = 1.0;
  Tensor h = Tensor::empty({N}, DType::f64);
  auto f = [&] { geglu_forward(g, u, h); return weighted_sum(h, W); };
  f();
  // transformers' gelu_new(1.0) = 0.8411919906082768
  EXPECT_NEAR(h.ptr<double>()[0], 0.8411919906082768 * u.ptr<double>()[0], 1e-15);
  Tensor dg = Tensor::zeros({N}, DType::f64), du = Tensor::zeros({N}, DType::f64);
  geglu_backward(W, g, u, dg, du);
  EXPECT_GRAD_OK_T5(check_gradient(f, g, dg), "dgate");
  EXPECT_GRAD_OK_T5(check_gradient(f, u, du), "dup");

  Tensor x = random_f64({N}, rng, 2.0), r = Tensor::empty({N}, DType::f64);
  for (int64_t i = 0; i < N; ++i)  // keep away from the kink for the finite differences
    if (std::abs(x.ptr<double>()[i]) < 1e-3) x.ptr<double>()[i] = 0.5;
  auto fr = [&] { relu_forward(x, r); return weighted_sum(r, W); };
  fr();
  for (int64_t i = 0; i < N; ++i) EXPECT_EQ(r.ptr<double>()[i], std::max(0.0, x.ptr<double>()[i]));
  Tensor dx = Tensor::zeros({N}, DType::f64);
  relu_backward(W, x, dx, false);
  EXPECT_GRAD_OK_T5(check_gradient(fr, x, dx), "relu dx");
}

// google/flan-t5-base's config.json (the fields T5Config reads): its published parameter count
// is 247,577,856.
const char* kFlanT5Base = R"({"model_type": "t5", "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 2048,
  "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12, "relative_attention_num_buckets": 32,
  "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-06, "feed_forward_proj": "gated-gelu",
  "is_encoder_decoder": true, "tie_word_embeddings": false, "decoder_start_token_id": 0, "pad_token_id": 0,
  "eos_token_id": 1})";

TEST(T5Config, ReadsFlanT5BaseAndNamesEveryWeight) {
  const std::string dir = test::make_temp_dir("t5cfg");
  test::write_file(dir + "/config.json", kFlanT5Base);
  const T5Config c = read_t5_config(dir);
  EXPECT_EQ(c.d_model, 768);
  EXPECT_EQ(c.inner_dim(), 768);
  EXPECT_TRUE(c.gated);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.num_parameters(), 247577856);
  const std::vector<T5WeightName> names = t5_weight_names(c);
  int64_t total = 0;
  for (const auto& w : names) {
    int64_t n = 1;
    for (int64_t d : w.shape) n *= d;
    total += n;
  }
  EXPECT_EQ(total, c.num_parameters());
  EXPECT_EQ(names.size(), 282u);  // 1 + 12 x 9 + 1 + 1 + 12 x 14 + 1 + 1 + 1
  EXPECT_EQ(names.front().name, "shared.weight");
  EXPECT_EQ(names[5].name, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
  EXPECT_EQ(names[5].shape, (std::vector<int64_t>{32, 12}));
  EXPECT_EQ(names.back().name, "lm_head.weight");
  bool cross = false;
  for (const auto& w : names) cross |= w.name == "decoder.block.11.layer.1.EncDecAttention.o.weight";
  EXPECT_TRUE(cross);
  std::filesystem::remove_all(dir);
}

TEST(T5Config, RefusesWhatIsNotImplemented) {
  const std::string dir = test::make_temp_dir("t5bad");
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = kFlanT5Base;
    s.replace(s.find(from), from.size(), to);
    test::write_file(dir + "/config.json", s);
  };
  auto message = [&]() -> std::string {
    try {
      read_t5_config(dir);
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  };
  with("\"gated-gelu\"", "\"gated-silu\"");
  EXPECT_NE(message().find("feed_forward_proj"), std::string::npos);
  with("\"model_type\": \"t5\"", "\"model_type\": \"mt5\"");
  EXPECT_NE(message().find("expected \"t5\""), std::string::npos);
  with("\"d_kv\": 64, ", "");
  EXPECT_NE(message().find("'d_kv' is missing"), std::string::npos);
  with("\"decoder_start_token_id\": 0", "\"decoder_start_token_id\": 40000");
  EXPECT_NE(message().find("decoder_start_token_id"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace st
