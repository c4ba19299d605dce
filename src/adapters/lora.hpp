// LoRA (Hu et al. 2021), as PEFT implements it:  y = x W^T + (alpha / r) * dropout(x) A^T B^T
// with A [r, in] Kaiming-uniform (bound 1/sqrt(in), PEFT's kaiming_uniform_(a=sqrt(5))) and
// B [out, r] zero at start, so training starts from the base model exactly.
// Adapters keep master copies in f32 (f64 in reference checks) whatever the base dtype; with a
// bf16 base the GEMMs read bf16 working copies (A_work, B_work), refreshed after each update,
// and the gradients accumulate in f32.
#pragma once

#include <cstdint>
#include <memory>
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
  // Run the adapters of layers that read the same input (the model's input groups: q, k, v;
  // gate, up) together, one pass over x for all of them (lora_join_groups). Off: each on its own
  // (the reference the grouped path is tested against).
  bool share_inputs = true;
  double scale() const { return alpha / static_cast<double>(r); }
};

struct LoraGroup;


class LoraAdapter final : public LinearAdapter {
 public:
  // max_rows: the most rows (B*T) one forward will see; sizes the saved x A^T buffer.
  LoraAdapter(const Linear& base, const LoraConfig& cfg, int64_t max_rows, uint64_t seed);

  bool forward(const Tensor& x, Tensor& y, bool accumulate, const Tensor* residual, const LayerContext& ctx) override;
  bool backward(const Tensor& x, const Tensor& dy, Tensor* dx, bool dx_accumulate, const LayerContext& ctx) override;
  void group_forward(const std::vector<const Linear*>& layers, const Tensor& x, const std::vector<Tensor*>& ys,
                     const LayerContext& ctx, std::vector<bool>& covered, std::vector<bool>* deferred) override;
  void add_rotated(const Tensor& x, Tensor& y, const OutputRope& rope) override;
  LowRankTerm low_rank_term(const Tensor& x) override;
  LowRankTerm left_out_term(const Tensor& x) const override;
  int64_t term_rank() const override { return r; }
  bool needs_scratch() const override { return dropout > 0; }
  LowRankTerm backward_leaving_dx_term(const Tensor& x, const Tensor& dy, const LayerContext& ctx) override;
  bool group_backward(const std::vector<Linear*>& layers, const Tensor& x, const std::vector<const Tensor*>& dys,
                      Tensor* dx, bool dx_accumulate, const LayerContext& ctx, std::vector<bool>& covered) override;
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
  int64_t max_rows = 0;
  // The saved dropout(x) A^T and the workspace of its gradient, base dtype: flat buffers of
  // max_rows * r elements, or of max_rows * R shared by a group of R rows in all, of which this
  // adapter has rows [group_row, group_row + r). A call of M rows uses this adapter's elements
  // [group_row M, (group_row + r) M): as xa [M, r] on its own, as xa^T [r, M] in a group call
  // (the group's x A^T is then one [R, M] product, each member's part contiguous).
  Tensor xa, dxa;
  // Set by lora_join_groups: the group (A, A_work and dA are then row blocks of one [R, in]
  // buffer each, unless a layout such as ZeRO-3's moved them apart) and this adapter's first row.
  std::shared_ptr<LoraGroup> group;
  int64_t group_row = 0;
  // Whether the last group forward left this adapter's term out of its layer's output (for the
  // consumer to add: low_rank_term); the backward's left_out_term reads it.
  bool term_left_out = false;

 private:
  // dropout(x) for this call: x itself without dropout, else written into ctx.scratch.
  Tensor dropped_input(const Tensor& x, const LayerContext& ctx) const;
  // This adapter's part of a flat xa / dxa buffer for a call of M rows ([M * r] elements).
  Tensor part_of(const Tensor& buf, int64_t M) const;
};

// Join the LoRA adapters of each group of layers that read the same input (q, k, v of a block;
// gate and up: a model family's input groups): their A factors become row blocks of one [R, in]
// tensor (R = the sum of their ranks; A_work and dA likewise) and their saved products one
// buffer, so that linear_group_forward/backward compute x A^T once as A_cat x^T, dx once as
// dxa_cat^T A_cat and dA once as dxa_cat x (for calls whose row count is a multiple of 8; others
// run adapter by adapter). Each adapter keeps its own tensors (views now), with
// the same values and names for the optimizer, checkpoints and PEFT files. Joined: at least two
// LoRA adapters of a group with lora_dropout 0 (each module draws its own dropout mask
// otherwise), the same dtypes, device, input width and TP style, not row-parallel (x A^T would
// be a partial sum). Returns the number of groups formed.
int64_t lora_join_groups(const std::vector<std::vector<Linear*>>& groups);

}  // namespace st
