// The T5 model's hand-written backward against central differences in f64, for every parameter
// (the relative-bias tables, cross-attention and both feed-forward kinds included), with padded
// encoder rows, ignored targets, and tied and untied heads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "model/t5.hpp"
#include "io/h5util.hpp"
#include "tests/common/gradcheck.hpp"
#include "tests/common/paths.hpp"

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

// A batch from encoder ids [B, Te], encoder lengths [B] and labels [B, Td] (-1: ignored): the
// decoder inputs shifted right, the loss weights 1 / (number of targets).
T5Batch batch_of(int64_t B, int64_t Te, int64_t Td, const std::vector<int32_t>& ids, const std::vector<int32_t>& lengths,
                 const std::vector<int32_t>& labels, int64_t start, int64_t pad) {
  T5Batch b;
  b.B = B;
  b.Te = Te;
  b.Td = Td;
  auto i32 = [](const std::vector<int32_t>& v) {
    Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
    std::copy(v.begin(), v.end(), t.ptr<int32_t>());
    return t;
  };
  b.enc_ids = i32(ids);
  b.enc_lengths = i32(lengths);
  b.dec_lengths = i32(std::vector<int32_t>(static_cast<size_t>(B), static_cast<int32_t>(Td)));
  b.dec_targets = i32(labels);
  b.dec_ids = i32(t5_shift_right(labels, B, Td, start, pad));
  int64_t count = 0;
  for (int32_t l : labels) count += l >= 0;
  b.dec_weight = Tensor::empty({B * Td}, DType::f32);
  for (int64_t i = 0; i < B * Td; ++i)
    b.dec_weight.ptr<float>()[i] = labels[static_cast<size_t>(i)] >= 0 ? 1.0f / static_cast<float>(count) : 0.0f;
  return b;
}

T5Batch make_batch(int64_t B, int64_t Te, int64_t Td, int64_t V) {
  std::vector<int32_t> ids(static_cast<size_t>(B * Te)), lengths(static_cast<size_t>(B)), labels(static_cast<size_t>(B * Td));
  for (int64_t i = 0; i < B * Te; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % V);
  for (int64_t r = 0; r < B; ++r) lengths[static_cast<size_t>(r)] = static_cast<int32_t>(r == 1 ? Te - 2 : Te);  // a padded row
  for (int64_t i = 0; i < B * Td; ++i)
    labels[static_cast<size_t>(i)] = i % 5 == 4 ? -1 : static_cast<int32_t>((i * 11 + 1) % V);
  return batch_of(B, Te, Td, ids, lengths, labels, 0, 0);
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

// Parity with transformers' T5ForConditionalGeneration (tests/golden/make_t5_golden.py, torch
// 2.11 / transformers 5.17, f32 on CPU): two tiny random models saved with save_pretrained and
// loaded with load_t5 (FlanT5-style gated-gelu with an unscaled head; original-T5-style relu
// with the head scaled by d_model^-0.5; both heads tied to `shared` as transformers 5 writes
// them), one batch with a padded encoder row and ignored labels: logits, loss and the gradient
// of every parameter. f32 through ~20 dependent ops: 1e-4 relative.
namespace st {
namespace {

std::vector<int32_t> read_i32(hid_t g, const char* name, const std::string& where) {
  std::vector<int32_t> v(h5::dataset_dims(g, name, where).at(0) * h5::dataset_dims(g, name, where).at(1));
  h5::read_dataset(g, name, H5T_NATIVE_INT32, v.data(), where);
  return v;
}

double rel_to(const Tensor& a, const std::vector<float>& ref) {
  const Tensor h = a.to_cpu(DType::f64);
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = h.ptr<double>()[i] - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

void check_golden(const std::string& name) {
  SCOPED_TRACE(name);
  const std::string root = test::repo_root() + "/tests/golden";
  const std::string path = root + "/t5_golden.h5";
  T5Model m = load_t5(root + "/t5_" + name, DType::f32, Device::cpu);
  t5_enable_base_training(m);
  h5::Handle f = h5::open_file_read(path);
  h5::Handle g = h5::open_group(f, name);
  const std::vector<int32_t> ids = read_i32(g, "input_ids", path), mask = read_i32(g, "attention_mask", path),
                             labels = read_i32(g, "labels", path);
  const int64_t B = 2, Te = static_cast<int64_t>(ids.size()) / B, Td = static_cast<int64_t>(labels.size()) / B;
  std::vector<int32_t> lengths(static_cast<size_t>(B), 0), lab(labels.size());
  for (int64_t r = 0; r < B; ++r)
    for (int64_t t = 0; t < Te; ++t) lengths[static_cast<size_t>(r)] += mask[static_cast<size_t>(r * Te + t)];
  for (size_t i = 0; i < labels.size(); ++i) lab[i] = labels[i] < 0 ? -1 : labels[i];  // transformers' -100
  const T5Batch b = batch_of(B, Te, Td, ids, lengths, lab, m.cfg.decoder_start_token_id, m.cfg.pad_token_id);

  T5Activations a = t5_activations(m, B, Te, Td, false);
  t5_forward(m, a, b, false);
  std::vector<float> ref_logits(static_cast<size_t>(B * Td * m.cfg.vocab_size));
  h5::read_dataset(g, "logits", H5T_NATIVE_FLOAT, ref_logits.data(), path);
  const double le = rel_to(a.logits, ref_logits);
  EXPECT_LT(le, 1e-5) << "logits";
  T5Activations t = t5_activations(m, B, Te, Td, true);
  const double loss = t5_forward(m, t, b, true);
  double ref_loss = 0;
  h5::read_dataset(g, "loss", H5T_NATIVE_DOUBLE, &ref_loss, path);
  EXPECT_NEAR(loss, ref_loss, 1e-5 * ref_loss);
  t5_backward(m, t, b);
  h5::Handle gg = h5::open_group(g, "grads");
  double worst = 0;
  std::string worst_name;
  int n = 0;
  for (const ParamRef& p : t5_trainable_params(m)) {
    std::vector<float> ref(static_cast<size_t>(p.grad->numel()));
    h5::read_dataset(gg, p.name, H5T_NATIVE_FLOAT, ref.data(), path);
    const double e = rel_to(*p.grad, ref);
    EXPECT_LT(e, 1e-4) << p.name;
    if (e > worst) {
      worst = e;
      worst_name = p.name;
    }
    ++n;
  }
  H5G_info_t info;
  H5Gget_info(gg, &info);
  EXPECT_EQ(static_cast<hsize_t>(n), info.nlinks) << "every parameter transformers has, and no other";
  std::printf("[golden t5 %s] logits %.2e  loss %.7f vs %.7f  gradients of %d tensors, worst %.2e (%s)\n", name.c_str(), le,
              loss, ref_loss, n, worst, worst_name.c_str());
}

TEST(T5Golden, FlanStyleEqualsTransformers) { check_golden("flan"); }
TEST(T5Golden, OriginalT5StyleEqualsTransformers) { check_golden("t5"); }

}  // namespace
}  // namespace st
