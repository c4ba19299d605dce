// LoRA (Hu et al. 2021), as PEFT implements it:  y = x W^T + (alpha / r) * dropout(x) A^T B^T
// with A [r, in] Kaiming-uniform (bound 1/sqrt(in), PEFT's kaiming_uniform_(a=sqrt(5))) and
// B [out, r] zero at start, so training starts from the base model exactly.
// Adapters keep master copies in f32 (f64 in reference checks) whatever the base dtype; with a
// bf16 base the GEMMs read bf16 working copies (A_work, B_work), refreshed after each update,
// and the gradients accumulate in f32.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/linear.hpp"
#include "model/llama.hpp"

namespace st {

struct LoraConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0;
  std::vector<std::string> targets{"q", "k", "v", "o", "gate", "up", "down"};
  double scale() const { return alpha / static_cast<double>(r); }
};

class LoraAdapter final : public LinearAdapter {
 public:
  // max_rows: the most rows (B*T) one forward will see; sizes the saved x A^T buffer.
  LoraAdapter(const Linear& base, const LoraConfig& cfg, int64_t max_rows, uint64_t seed);

  bool forward(const Tensor& x, Tensor& y, bool accumulate, const Tensor* residual, const LayerContext& ctx) override;
  bool backward(const Tensor& x, const Tensor& dy, Tensor* dx, bool dx_accumulate, const LayerContext& ctx) override;
  void collect_params(std::vector<ParamRef>& out) override;
  int64_t num_parameters() const override { return A.numel() + B.numel(); }
  void add_delta_to(Tensor& W) const override;
  // Refresh A_work and B_work from the masters (after loading weights into A and B).
  void sync_working();

  std::string name;  // base module name
  int64_t r = 0;
  double scale = 0, dropout = 0;
  uint64_t stream = 0;  // dropout stream id (hash of the module name)
  // Under tensor parallelism (Megatron + LoRA): a column-parallel base keeps A [r, in]
  // replicated and B [out/p, r] sharded by output; a row-parallel base keeps A [r, in/p] sharded
  // by input and B [out, r] replicated. Forward all-reduces x A^T of a row-parallel layer;
  // backward all-reduces dy B of a column-parallel layer; so replicated factors get identical
  // gradients on every rank. (With lora_dropout > 0 a row-parallel layer draws its mask over its
  // own input columns: same distribution as one rank, not the same mask.)
  TpMode tp_mode = TpMode::none;
  TpGroup tp;
  Tensor A, B;          // [r, in], [out, r]  masters (f32, or f64 in reference checks)
  Tensor A_work, B_work;  // the same in the base's dtype (alias A, B when the dtypes agree)
  Tensor dA, dB;        // gradients, master dtype
  Tensor xa;            // [max_rows, r] saved dropout(x) A^T, base dtype
  Tensor dxa;           // [max_rows, r] workspace, base dtype

 private:
  // dropout(x) for this call: x itself without dropout, else written into ctx.scratch.
  Tensor dropped_input(const Tensor& x, const LayerContext& ctx) const;
};

}  // namespace st
