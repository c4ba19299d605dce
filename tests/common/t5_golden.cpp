#include "tests/common/t5_golden.hpp"

#include <algorithm>

#include "io/h5util.hpp"
#include "tests/common/paths.hpp"

namespace st::test {

namespace {

std::vector<int32_t> read_i32(hid_t g, const char* name, const std::string& where) {
  std::vector<int32_t> v(h5::dataset_dims(g, name, where).at(0) * h5::dataset_dims(g, name, where).at(1));
  h5::read_dataset(g, name, H5T_NATIVE_INT32, v.data(), where);
  return v;
}

Tensor i32_tensor(const std::vector<int32_t>& v, Device device) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
  std::copy(v.begin(), v.end(), t.ptr<int32_t>());
  return golden_on(t, device);
}

}  // namespace

T5Batch t5_batch_of(int64_t B, int64_t Te, int64_t Td, const std::vector<int32_t>& ids,
                    const std::vector<int32_t>& lengths, const std::vector<int32_t>& labels, int64_t start, int64_t pad,
                    Device device) {
  T5Batch b;
  b.B = B;
  b.Te = Te;
  b.Td = Td;
  b.enc_ids = i32_tensor(ids, device);
  b.enc_lengths = i32_tensor(lengths, device);
  b.dec_lengths = i32_tensor(std::vector<int32_t>(static_cast<size_t>(B), static_cast<int32_t>(Td)), device);
  b.dec_targets = i32_tensor(labels, device);
  b.dec_ids = i32_tensor(t5_shift_right(labels, B, Td, start, pad), device);
  int64_t count = 0;
  for (int32_t l : labels) count += l >= 0;
  Tensor w = Tensor::empty({B * Td}, DType::f32);
  for (int64_t i = 0; i < B * Td; ++i)
    w.ptr<float>()[i] = labels[static_cast<size_t>(i)] >= 0 ? 1.0f / static_cast<float>(count) : 0.0f;
  b.dec_weight = golden_on(w, device);
  return b;
}

T5GoldenRun run_t5_golden(const std::string& name, DType dtype, Device device, bool round_weights_to_bf16) {
  const std::string root = repo_root() + "/tests/golden";
  const std::string path = root + "/t5_golden.h5";
  T5Model m = load_t5(root + "/t5_" + name, dtype, device);
  if (round_weights_to_bf16) bf16_round_in_place(t5_named_weights(m));
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
  const T5Batch b = t5_batch_of(B, Te, Td, ids, lengths, lab, m.cfg.decoder_start_token_id, m.cfg.pad_token_id, device);

  T5GoldenRun r;
  T5Activations a = t5_activations(m, B, Te, Td, false);
  t5_forward(m, a, b, false);
  r.logits_rel = golden_rel_l2(a.logits, read_golden_floats(g, "logits", path));
  r.logits = a.logits.to_cpu(DType::f64);
  T5Activations t = t5_activations(m, B, Te, Td, true);
  r.loss = t5_forward(m, t, b, true);
  h5::read_dataset(g, "loss", H5T_NATIVE_DOUBLE, &r.ref_loss, path);
  t5_backward(m, t, b);
  h5::Handle gg = h5::open_group(g, "grads");
  compare_golden_grads(gg, t5_trainable_params(m), [](const std::string& n) { return n; }, path, r);
  return r;
}

}  // namespace st::test
