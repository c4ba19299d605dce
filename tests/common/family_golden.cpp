#include "tests/common/family_golden.hpp"

#include <algorithm>
#include <filesystem>

#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "io/h5util.hpp"
#include "io/hf_llama.hpp"
#include "io/hf_mistral.hpp"
#include "io/hf_qwen2.hpp"
#include "io/llama_io.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/test_util.hpp"

namespace fs = std::filesystem;

namespace st::test {

namespace {

std::string root() { return repo_root() + "/tests/golden"; }

LlamaConfig read_config(const std::string& family, const std::string& dir) {
  if (family == "qwen2") return read_qwen2_config(dir);
  if (family == "mistral") return read_mistral_config(dir);
  return read_llama_config(dir);
}

// transformers' causal-LM batch: position t predicts labels[t+1]; the loss is the mean over targets.
LlamaBatch batch_of(hid_t f, const std::string& path, Device device) {
  const auto dims = h5::dataset_dims(f, "input_ids", path);
  const int64_t B = static_cast<int64_t>(dims[0]), T = static_cast<int64_t>(dims[1]);
  std::vector<int64_t> ids(static_cast<size_t>(B * T)), mask(ids.size()), labels(ids.size());
  h5::read_dataset(f, "input_ids", H5T_NATIVE_INT64, ids.data(), path);
  h5::read_dataset(f, "attention_mask", H5T_NATIVE_INT64, mask.data(), path);
  h5::read_dataset(f, "labels", H5T_NATIVE_INT64, labels.data(), path);
  Tensor tid = Tensor::empty({B * T}, DType::i32), tt = Tensor::empty({B * T}, DType::i32);
  Tensor tw = Tensor::empty({B * T}, DType::f32), tl = Tensor::zeros({B}, DType::i32);
  int64_t n = 0;
  for (int64_t i = 0; i < B * T; ++i) {
    tid.ptr<int32_t>()[i] = static_cast<int32_t>(ids[static_cast<size_t>(i)]);
    tl.ptr<int32_t>()[i / T] += static_cast<int32_t>(mask[static_cast<size_t>(i)]);
    const int64_t next = (i % T) + 1 < T ? labels[static_cast<size_t>(i + 1)] : -100;
    tt.ptr<int32_t>()[i] = next >= 0 ? static_cast<int32_t>(next) : -1;
    n += next >= 0;
  }
  for (int64_t i = 0; i < B * T; ++i) tw.ptr<float>()[i] = tt.ptr<int32_t>()[i] >= 0 ? 1.0f / static_cast<float>(n) : 0.0f;
  LlamaBatch b;
  b.B = B;
  b.T = T;
  b.ids = golden_on(tid, device);
  b.targets = golden_on(tt, device);
  b.weight = golden_on(tw, device);
  b.lengths = golden_on(tl, device);
  return b;
}

}  // namespace

const std::vector<std::string>& golden_families() {
  static const std::vector<std::string> f{"llama3", "qwen2", "mistral"};
  return f;
}

std::string family_golden_missing(const std::string& family) {
  for (const std::string& p : {root() + "/" + family + "_tiny/config.json", root() + "/" + family + "_tiny_golden.h5",
                               root() + "/" + family + "_tiny_lora_adapter/adapter_config.json"})
    if (!fs::exists(p))
      return p + " is not there yet: run `python3 tests/golden/make_family_golden.py` where PyTorch, transformers "
                 "and peft exist and commit tests/golden/" + family + "_tiny*";
  return "";
}

FamilyGoldenRun run_family_golden(const std::string& family, GoldenMode mode, DType dtype, Device device,
                                  bool round_weights_to_bf16) {
  const std::string dir = root() + "/" + family + "_tiny", path = dir + "_golden.h5";
  LlamaModel m = load_decoder(dir, read_config(family, dir), dtype, device);
  if (round_weights_to_bf16) bf16_round_in_place(llama_named_weights(m));
  h5::Handle f = h5::open_file_read(path);
  FamilyGoldenRun r;
  r.rope_scaling = m.cfg.rope_scaling;
  r.head_dim = m.cfg.head_dim;
  r.rope_theta = m.cfg.rope_theta;
  r.inv_freq = rope_inv_freq(m.cfg.head_dim, m.cfg.rope_theta, m.cfg.rope_scaling);
  r.ref_inv_freq.resize(static_cast<size_t>(h5::dataset_dims(f, "rope_inv_freq", path).at(0)));
  h5::read_dataset(f, "rope_inv_freq", H5T_NATIVE_DOUBLE, r.ref_inv_freq.data(), path);
  const bool lora = mode != GoldenMode::full;
  h5::Handle g = h5::open_group(f, lora ? "lora" : "full");
  if (lora) {
    LoraConfig lc;
    lc.r = h5::read_attr_int(g, "r", path);
    lc.alpha = h5::read_attr_double(g, "alpha", path);
    const LlamaBatch probe = batch_of(f, path, Device::cpu);
    attach_lora(m, lc, probe.B * probe.T, 1);
    if (mode == GoldenMode::peft_adapter) {
      load_peft_adapter(llama_linears(m), dir + "_lora_adapter");
    } else {
      h5::Handle weights = h5::open_group(g, "weights");
      for (Linear* lin : llama_linears(m)) {
        if (!lin->adapter) continue;
        auto* a = static_cast<LoraAdapter*>(lin->adapter.get());
        for (bool is_a : {true, false}) {
          Tensor& dst = is_a ? a->A : a->B;
          Tensor host = Tensor::empty(dst.shape(), DType::f64);
          h5::read_dataset(weights, lin->name + (is_a ? ".lora_A" : ".lora_B"), H5T_NATIVE_DOUBLE, host.data(), path);
          dst.copy_from(host.to_cpu(dst.dtype()));
        }
        a->sync_working();
      }
    }
  } else {
    llama_enable_base_training(m);
  }
  const LlamaBatch b = batch_of(f, path, device);
  LlamaActivations a = llama_activations(m, b.B, b.T, false, true);
  llama_forward(m, a, b, LayerContext{}, false);
  r.logits_rel = golden_rel_l2(a.logits.slice(0, b.B * b.T), read_golden_floats(g, "logits", path));
  r.logits = a.logits.slice(0, b.B * b.T).to_cpu(DType::f64);
  r.ref_loss = h5::read_attr_double(g, "loss", path);
  r.loss = llama_forward(m, a, b, LayerContext{}, true);
  if (mode == GoldenMode::peft_adapter) return r;
  llama_backward(m, a, b, LayerContext{});
  h5::Handle gg = h5::open_group(g, "grads");
  // PEFT's adapter tensors are named <module>.lora_A / lora_B in the fixture.
  const auto fixture_name = [&](const std::string& name) {
    return lora ? name.substr(0, name.size() - std::string(".weight").size()) : name;
  };
  compare_golden_grads(gg, llama_trainable_params(m), fixture_name, path, r);
  return r;
}

}  // namespace st::test
