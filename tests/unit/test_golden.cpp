// Parity with Hugging Face transformers (and PEFT) on fixtures written by
// tests/golden/make_golden.py: the checkpoint is loaded with shardtune's own loader, and logits,
// loss and every gradient must match.
//
// Tolerances. The reference ran transformers in float64, but transformers' LlamaRMSNorm casts
// its input to float32 and its rotary cos/sin tables are float32, so the reference itself carries
// float32 rounding (unit roundoff 6e-8) at every norm: shardtune in f64 can agree with it only to
// about 1e-7..1e-6 relative (observed max 6e-7), hence 2e-6. shardtune in f32 must be within the
// issue's 1e-4 (the f32 rounding of 2 layers of GEMMs over K <= 64 is ~1e-6).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "tests/common/test_util.hpp"
#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "io/h5util.hpp"
#include "io/llama_io.hpp"
#include "tests/common/gradcheck.hpp"
#include "tests/common/paths.hpp"

namespace fs = std::filesystem;

namespace st {
namespace {

std::string golden_dir() { return test::repo_root() + "/tests/golden"; }

// An HDF5 dataset as a CPU f64 tensor of the given shape.
Tensor read_f64(hid_t parent, const std::string& name, const Shape& shape, const std::string& where) {
  Tensor t = Tensor::empty(shape, DType::f64);
  const auto dims = h5::dataset_dims(parent, name, where);
  int64_t n = 1;
  for (auto d : dims) n *= static_cast<int64_t>(d);
  if (n != shape.numel()) ADD_FAILURE() << where << ":" << name << " has " << n << " elements, expected " << shape.numel();
  h5::read_dataset(parent, name, H5T_NATIVE_DOUBLE, t.data(), where);
  return t;
}

struct GoldenInputs {
  int64_t B = 0, T = 0;
  std::vector<int64_t> ids, mask, labels;
};

GoldenInputs read_inputs(hid_t f, const std::string& where) {
  GoldenInputs in;
  const auto dims = h5::dataset_dims(f, "input_ids", where);
  in.B = static_cast<int64_t>(dims[0]);
  in.T = static_cast<int64_t>(dims[1]);
  in.ids.resize(static_cast<size_t>(in.B * in.T));
  in.mask.resize(in.ids.size());
  h5::read_dataset(f, "input_ids", H5T_NATIVE_INT64, in.ids.data(), where);
  h5::read_dataset(f, "attention_mask", H5T_NATIVE_INT64, in.mask.data(), where);
  if (h5::exists(f, "labels")) {
    in.labels.resize(in.ids.size());
    h5::read_dataset(f, "labels", H5T_NATIVE_INT64, in.labels.data(), where);
  }
  return in;
}

// transformers' causal-LM loss: position t predicts labels[t+1]; mean over targets.
LlamaBatch make_batch(const GoldenInputs& in) {
  LlamaBatch b;
  b.B = in.B;
  b.T = in.T;
  b.ids = Tensor::empty({in.B * in.T}, DType::i32);
  b.targets = Tensor::empty({in.B * in.T}, DType::i32);
  b.weight = Tensor::empty({in.B * in.T}, DType::f32);
  b.lengths = Tensor::empty({in.B}, DType::i32);
  int64_t n_targets = 0;
  for (int64_t r = 0; r < in.B; ++r) {
    int32_t len = 0;
    for (int64_t t = 0; t < in.T; ++t) len += static_cast<int32_t>(in.mask[static_cast<size_t>(r * in.T + t)]);
    b.lengths.ptr<int32_t>()[r] = len;
    for (int64_t t = 0; t < in.T; ++t) {
      const size_t i = static_cast<size_t>(r * in.T + t);
      b.ids.ptr<int32_t>()[i] = static_cast<int32_t>(in.ids[i]);
      const int64_t next = (t + 1 < in.T && !in.labels.empty()) ? in.labels[i + 1] : -100;
      b.targets.ptr<int32_t>()[i] = next >= 0 ? static_cast<int32_t>(next) : -1;
      n_targets += next >= 0;
    }
  }
  for (int64_t i = 0; i < in.B * in.T; ++i)
    b.weight.ptr<float>()[i] = b.targets.ptr<int32_t>()[i] >= 0 ? 1.0f / static_cast<float>(n_targets) : 0.0f;
  return b;
}

Tensor logits_of(const LlamaActivations& a, int64_t rows) { return a.logits.slice(0, rows); }

// Relative error bound by precision: f64 agrees to rounding, f32 within the 1e-4.
double bound(DType dt) { return dt == DType::f64 ? 2e-6 : 1e-4; }

// Worst relative error seen per test, printed for the record (docs/NOTES.md quotes these).
struct Worst {
  std::string what;
  double logits = 0, loss = 0, grads = 0;
  void report() const {
    std::printf("[golden] %-28s logits %.2e  loss %.2e  gradients (max over tensors) %.2e\n", what.c_str(), logits, loss, grads);
  }
};

class GoldenTiny : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    path = golden_dir() + "/llama_tiny_golden.h5";
    ASSERT_TRUE(fs::exists(path)) << path << " missing: run tests/golden/make_golden.py where PyTorch exists";
    file = h5::open_file_read(path);
    in = read_inputs(file, path);
  }
  std::string path;
  h5::Handle file;
  GoldenInputs in;
};

TEST_P(GoldenTiny, FullModelLogitsLossAndGradients) {
  const DType dt = GetParam();
  LlamaModel m = load_llama(golden_dir() + "/llama_tiny", dt, Device::cpu);
  llama_enable_base_training(m);
  LlamaBatch batch = make_batch(in);
  LlamaActivations acts = llama_activations(m, in.B, in.T, false, true);
  // Logits first (a forward without gradient keeps them), then loss and gradients.
  const double loss_fwd = llama_forward(m, acts, batch, LayerContext{}, false);
  h5::Handle g = h5::open_group(file, "full");
  const Tensor ref_logits = read_f64(g, "logits", {in.B * in.T, m.cfg.vocab_size}, path);
  const double ref_loss = h5::read_attr_double(g, "loss", path);
  Worst w{str("full ", dtype_name(dt))};
  w.logits = test::rel_error(logits_of(acts, in.B * in.T), ref_logits);
  w.loss = std::fabs(loss_fwd - ref_loss) / std::fabs(ref_loss);
  EXPECT_LT(w.logits, bound(dt));
  EXPECT_LT(w.loss, bound(dt));
  for (auto& p : llama_trainable_params(m)) p.grad->zero_();
  const double loss = llama_forward(m, acts, batch, LayerContext{}, true);
  llama_backward(m, acts, batch, LayerContext{});
  EXPECT_NEAR(loss, ref_loss, bound(dt) * std::fabs(ref_loss));
  h5::Handle grads = h5::open_group(g, "grads");
  int checked = 0;
  for (auto& p : llama_trainable_params(m)) {
    const Tensor ref = read_f64(grads, p.name, p.grad->shape(), path);
    const double e = test::rel_error(*p.grad, ref);
    w.grads = std::max(w.grads, e);
    EXPECT_LT(e, bound(dt)) << p.name;
    ++checked;
  }
  w.report();
  EXPECT_EQ(checked, 2 + 2 * 9 + 1);  // embed, lm_head, 9 per layer, final norm
}

TEST_P(GoldenTiny, LoraModelWithNonZeroB) {
  const DType dt = GetParam();
  LlamaModel m = load_llama(golden_dir() + "/llama_tiny", dt, Device::cpu);
  h5::Handle g = h5::open_group(file, "lora");
  LoraConfig lc;
  lc.r = h5::read_attr_int(g, "r", path);
  lc.alpha = h5::read_attr_double(g, "alpha", path);
  ASSERT_EQ(attach_lora(m, lc, in.B * in.T, 1), 2 * 7);
  h5::Handle weights = h5::open_group(g, "weights"), grads = h5::open_group(g, "grads");
  for (Linear* lin : llama_linears(m)) {
    if (!lin->adapter) continue;
    auto* a = static_cast<LoraAdapter*>(lin->adapter.get());
    a->A.copy_from(read_f64(weights, lin->name + ".lora_A", a->A.shape(), path).to_cpu(a->A.dtype()));
    a->B.copy_from(read_f64(weights, lin->name + ".lora_B", a->B.shape(), path).to_cpu(a->B.dtype()));
  }
  LlamaBatch batch = make_batch(in);
  LlamaActivations acts = llama_activations(m, in.B, in.T, true, true);  // with checkpointing
  const double ref_loss = h5::read_attr_double(g, "loss", path);
  llama_forward(m, acts, batch, LayerContext{}, false);
  Worst w{str("lora ", dtype_name(dt))};
  w.logits = test::rel_error(logits_of(acts, in.B * in.T), read_f64(g, "logits", {in.B * in.T, m.cfg.vocab_size}, path));
  EXPECT_LT(w.logits, bound(dt));
  const double loss = llama_forward(m, acts, batch, LayerContext{}, true);
  llama_backward(m, acts, batch, LayerContext{});
  w.loss = std::fabs(loss - ref_loss) / std::fabs(ref_loss);
  EXPECT_LT(w.loss, bound(dt));
  for (Linear* lin : llama_linears(m)) {
    if (!lin->adapter) continue;
    auto* a = static_cast<LoraAdapter*>(lin->adapter.get());
    const double ea = test::rel_error(a->dA, read_f64(grads, lin->name + ".lora_A", a->dA.shape(), path));
    const double eb = test::rel_error(a->dB, read_f64(grads, lin->name + ".lora_B", a->dB.shape(), path));
    w.grads = std::max({w.grads, ea, eb});
    EXPECT_LT(ea, bound(dt)) << lin->name;
    EXPECT_LT(eb, bound(dt)) << lin->name;
  }
  w.report();
}

// The PEFT adapter make_golden.py saved with save_pretrained (tests/golden/llama_tiny_lora_adapter,
// F64 tensors, peft 0.21's full adapter_config.json) loads through shardtune's PEFT reader and
// reproduces the LoRA logits and loss of the golden file.
TEST_P(GoldenTiny, PeftAdapterFixtureReproducesLoraLogits) {
  const DType dt = GetParam();
  const std::string adapter = golden_dir() + "/llama_tiny_lora_adapter";
  LlamaModel m = load_llama(golden_dir() + "/llama_tiny", dt, Device::cpu);
  const PeftConfig p = read_peft_config(adapter, test::peft_names("llama"));
  EXPECT_EQ(p.r, 4);
  EXPECT_EQ(p.alpha, 8);
  const LoraConfig lc = lora_config_from_peft(p, test::peft_names("llama"));
  ASSERT_EQ(attach_lora(m, lc, in.B * in.T, 1), 2 * 7);
  ASSERT_EQ(load_peft_adapter(llama_linears(m), adapter), 2 * 7);
  h5::Handle g = h5::open_group(file, "lora");
  h5::Handle weights = h5::open_group(g, "weights");
  const double exact = dt == DType::f64 ? 0.0 : 1e-7;  // f32: the F64 values rounded once
  for (Linear* lin : llama_linears(m)) {  // the very values make_golden.py recorded
    if (!lin->adapter) continue;
    auto* a = static_cast<LoraAdapter*>(lin->adapter.get());
    EXPECT_LE(test::rel_error(a->A, read_f64(weights, lin->name + ".lora_A", a->A.shape(), path)), exact) << lin->name;
    EXPECT_LE(test::rel_error(a->B, read_f64(weights, lin->name + ".lora_B", a->B.shape(), path)), exact) << lin->name;
  }
  LlamaBatch batch = make_batch(in);
  LlamaActivations acts = llama_activations(m, in.B, in.T, false, false);
  const double loss = llama_forward(m, acts, batch, LayerContext{}, false);
  const double e = test::rel_error(logits_of(acts, in.B * in.T), read_f64(g, "logits", {in.B * in.T, m.cfg.vocab_size}, path));
  EXPECT_LT(e, bound(dt));
  const double ref_loss = h5::read_attr_double(g, "loss", path);
  EXPECT_LT(std::fabs(loss - ref_loss) / std::fabs(ref_loss), bound(dt));
  std::printf("[golden] peft adapter fixture %s: logits rel error %.2e\n", dtype_name(dt), e);
}

INSTANTIATE_TEST_SUITE_P(Precision, GoldenTiny, ::testing::Values(DType::f64, DType::f32),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(GoldenStories260K, LogitsMatchTransformers) {
  const std::string shared = test::shared_data_dir();
  if (shared.empty()) GTEST_SKIP() << "../shared/data is absent: stories260K parity not checked";
  const std::string path = golden_dir() + "/stories260k_golden.h5";
  ASSERT_TRUE(fs::exists(path)) << path << " missing: run tests/golden/make_golden.py where PyTorch exists";
  h5::Handle f = h5::open_file_read(path);
  const GoldenInputs in = read_inputs(f, path);
  for (DType dt : {DType::f64, DType::f32}) {
    LlamaModel m = load_llama(shared + "/models/stories260K", dt, Device::cpu);
    LlamaActivations acts = llama_activations(m, in.B, in.T, false, false);
    LlamaBatch batch = make_batch(in);
    llama_forward(m, acts, batch, LayerContext{}, false);
    // Compare the logits of real (non-pad) positions only.
    const Tensor ref = read_f64(f, "logits", {in.B * in.T, m.cfg.vocab_size}, path);
    const Tensor got = logits_of(acts, in.B * in.T).to_cpu(DType::f64);
    double num = 0, den = 0;
    for (int64_t r = 0; r < in.B * in.T; ++r) {
      if (!in.mask[static_cast<size_t>(r)]) continue;
      for (int64_t v = 0; v < m.cfg.vocab_size; ++v) {
        const double d = got.ptr<double>()[r * m.cfg.vocab_size + v] - ref.ptr<double>()[r * m.cfg.vocab_size + v];
        num += d * d;
        den += ref.ptr<double>()[r * m.cfg.vocab_size + v] * ref.ptr<double>()[r * m.cfg.vocab_size + v];
      }
    }
    const double e = std::sqrt(num / den);
    std::printf("[golden] %-28s logits %.2e\n", str("stories260K ", dtype_name(dt)).c_str(), e);
    EXPECT_LT(e, bound(dt)) << dtype_name(dt);
  }
}

}  // namespace
}  // namespace st
