// A linear layer y = x W^T (+ b) with an extension point for adapters, and the layers around it
// that tensor parallelism splits (the vocabulary-parallel embedding and loss).
//
// The model code calls linear_layer_forward/backward (linear_group_forward/backward for layers
// that read the same input) and never knows whether an adapter (LoRA, QLoRA) is attached:
// adapters implement LinearAdapter (src/adapters/) and are attached from outside, after the
// model is built. Nor does it know the layer's place in a TP plan: a row-parallel layer
// completes its sum over the group inside linear_layer_forward (Megatron's g); the one
// collective the model calls itself is f, tp_sum_partials on the input gradient of a
// column-parallel region (after every layer reading that input has added its part, so q, k and v
// share one all-reduce).
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "ops/activation.hpp"
#include "ops/rope.hpp"
#include "model/tp_plan.hpp"

namespace st {

struct Nf4Tensor;
struct Fp8Base;
struct Linear;

// A trainable parameter as the optimizer sees it.
// `value` is what the optimizer updates and `grad` its gradient (same dtype, or f32 for a bf16
// value: the optimizer then keeps an f32 master copy and writes the rounded result back).
// `working`, when set, is a lower-precision copy the kernels read (e.g. bf16 LoRA weights next to
// their f32 masters), refreshed after every update.
struct ParamRef {
  std::string name;
  Tensor* value = nullptr;
  Tensor* grad = nullptr;
  bool weight_decay = true;  // false for norms (1-D weights)
  Tensor* working = nullptr;
  // Tensor parallelism: true when each TP rank holds its own part of the parameter (its squared
  // norm is summed over the group); false when every TP rank holds the same values.
  bool tp_sharded = false;
  // Another handle of value's own buffer that kernels read (e.g. LoRA's A_work when it aliases
  // A): whoever moves the parameter's storage (ZeRO-3) must repoint it too.
  Tensor* alias = nullptr;
  // Pure bf16 (master_weights = none): the element number of value's element 0 in its stochastic
  // rounding's stream. A ZeRO-3 shard starts at rank x shard of its group's buffer, so every
  // element draws the same bits whatever the number of ranks.
  uint64_t first_element = 0;
};

// Per-call context: what changes from step to step.
struct LayerContext {
  bool training = false;       // dropout on, saved activations kept for backward
  bool recompute = false;      // activation-checkpointing recompute: saved adapter state is still valid
  uint64_t dropout_seed = 0;   // the same seed in forward, recompute and backward of one micro-batch
  Tensor* scratch = nullptr;   // workspace of at least rows * max(in, out) elements
};

struct OutputRope;

class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  // Adapters run before the base GEMM, which then adds into what they wrote (beta = 1, read in
  // the epilogue of a compute-bound GEMM): a rank-r update writes its output once rather than
  // reading and rewriting the base's output afterwards.
  // y [M, out] = adapter's contribution for x [M, in] (+ y's prior content when accumulate; with
  // residual, + residual instead); saves what backward needs. Returns false when it left y
  // untouched (the base GEMM then writes y as if there were no adapter).
  virtual bool forward(const Tensor& x, Tensor& y, bool accumulate, const Tensor* residual,
                       const LayerContext& ctx) = 0;
  // dx [M, in] (+)= its input gradient (overwritten when dx_accumulate is false; dx may be null);
  // accumulates its own parameter gradients. Returns whether it wrote dx.
  virtual bool backward(const Tensor& x, const Tensor& dy, Tensor* dx, bool dx_accumulate,
                        const LayerContext& ctx) = 0;
  // Optional group hooks, for layers that read the same input (linear_group_forward/backward):
  // an adapter that shares work with the adapters of other layers of `layers` (e.g. one pass
  // over x for all of them) does the adapter part of each layer it takes on and sets covered[i]
  // for it; the default takes on none (each layer then runs as linear_layer_forward/backward
  // would run it). Forward: ys[i] = layer i's adapter term for x, overwritten, on every TP rank.
  // Backward: dx (+)= the covered layers' input gradients (overwritten when dx_accumulate is
  // false; dx may be null), and their parameter gradients; returns whether it wrote dx.
  // deferred (may be null): the layers whose adapter term comes after their base GEMM (outputs
  // that RoPE rotates next, see OutputRope) or is left out for the consumer (low_rank_term); the
  // adapter sets covered[i] for such a layer it takes on without writing ys[i]. add_rotated or
  // low_rank_term then give the term.
  virtual void group_forward(const std::vector<const Linear*>& layers, const Tensor& x, const std::vector<Tensor*>& ys,
                             const LayerContext& ctx, std::vector<bool>& covered, std::vector<bool>* deferred) {
    (void)layers, (void)x, (void)ys, (void)ctx, (void)covered, (void)deferred;
  }
  // A deferred layer's term after its base GEMM wrote y: y = rope_forward(y + term) (see
  // matmul_add_rope). Only called where group_forward deferred this adapter's layer.
  virtual void add_rotated(const Tensor& x, Tensor& y, const OutputRope& rope);
  // A deferred layer's term itself, left out of its output (valid until the adapter's next
  // forward); the same term again from its backward's side (left_out_term): undefined unless this
  // adapter's last forward left it out.
  virtual LowRankTerm low_rank_term(const Tensor& x);
  // The rank of the terms it can leave out (0: none).
  virtual int64_t term_rank() const { return 0; }
  // Whether its training calls use LayerContext::scratch (LoRA dropout).
  virtual bool needs_scratch() const { return false; }
  virtual LowRankTerm left_out_term(const Tensor& x) const;
  // backward without the input gradient: the parameter gradients as backward's, and the term it
  // would have added into dx returned instead (for dx's consumer to add). Undefined, with nothing
  // done, where the adapter cannot leave it out (the caller then runs backward).
  virtual LowRankTerm backward_leaving_dx_term(const Tensor& x, const Tensor& dy, const LayerContext& ctx);
  virtual bool group_backward(const std::vector<Linear*>& layers, const Tensor& x, const std::vector<const Tensor*>& dys,
                              Tensor* dx, bool dx_accumulate, const LayerContext& ctx, std::vector<bool>& covered) {
    (void)layers, (void)x, (void)dys, (void)dx, (void)dx_accumulate, (void)ctx, (void)covered;
    return false;
  }
  virtual void collect_params(std::vector<ParamRef>& out) = 0;
  virtual int64_t num_parameters() const = 0;
  // The dense update this adapter represents (for merging into W): W += delta. f32/f64 CPU.
  virtual void add_delta_to(Tensor& W) const = 0;
};

struct Linear {
  std::string name;  // Hugging Face module name, e.g. "model.layers.0.self_attn.q_proj"
  int64_t in = 0, out = 0;  // this rank's shape (the full one divided by the TP size along the split)
  // Its style in the family's TP plan (none on one rank):
  //   column: W [out, in] by output rows, rank i holds W_i [out/p, in] (and its bias rows); x is
  //           replicated, y is this rank's columns of the output (q, k, v, gate, up, lm_head).
  //   row:    by input columns, rank i holds W_i [out, in/p]; x is this rank's columns of the
  //           input; the forward sums the partial outputs over the group (o, down).
  TpMode tp_mode = TpMode::none;
  TpGroup tp;
  int64_t full_in() const { return tp_mode == TpMode::row ? in * tp.size : in; }
  int64_t full_out() const { return tp_mode == TpMode::column ? out * tp.size : out; }
  Tensor weight;     // [out, in]; undefined when the base is stored quantized (nf4, or fp8 without nf4)
  Tensor grad;       // [out, in]; defined only when the base weight trains
  Tensor bias;       // [out] (this rank's rows); undefined for a layer without bias
  Tensor bias_grad;  // [out]; defined only when the base trains
  std::unique_ptr<LinearAdapter> adapter;
  // QLoRA: the frozen base in NF4. Every forward and backward dequantizes it into `dequant`, a
  // buffer of one layer's worth shared by all quantized layers of the model, right before the GEMM.
  std::shared_ptr<Nf4Tensor> nf4;
  std::shared_ptr<Tensor> dequant;
  // base_precision = fp8 (model/fp8_base.hpp): the frozen base's forward and input-gradient GEMMs
  // in FP8; `weight` is then undefined unless the base is NF4. Under LoRA it holds W8 (and W8^T)
  // from the build on (materialize_params) or from fp8_convert_base.
  std::shared_ptr<Fp8Base> fp8;

  bool quantized() const { return nf4 != nullptr; }
  // LoRA's FP8 base: W8 (and W8^T) in place of the dense weight (not a QLoRA one, which is NF4 or,
  // once dequantized, dense again).
  bool fp8_stored() const;
  DType dtype() const;    // the compute dtype (of weight, or of the dequantized weight)
  Device device() const;
  // The dense [out, in] weight: `weight` itself, or the NF4 base dequantized into the shared
  // buffer (valid until the next quantized layer dequantizes).
  Tensor dense_weight() const;
};

// Bytes of a model's base weights as stored (NF4 layers at their packed size) and as they would
// be dense in the compute dtype (param_bytes in model/param_table.hpp).
struct WeightBytes {
  size_t stored = 0, dense = 0, quantized_layers = 0;
};
// One dequantize buffer (of the largest NF4 layer) shared by every NF4 layer among `linears`;
// null when none is quantized.
std::shared_ptr<Tensor> share_dequant_buffer(const std::vector<Linear*>& linears, DType dtype, Device device);
// Replace every NF4 base among `linears` by its dequantized dense weight in `dtype`.
void dequantize_linears(const std::vector<Linear*>& linears, DType dtype);

// y (+)= x W^T + b + adapter; with residual, y = residual + x W^T + b + adapter. A row-parallel
// layer adds y's prior content, the residual and the bias once (on TP rank 0) and leaves the sum
// over the group in y on every rank.
void linear_layer_forward(const Linear& l, const Tensor& x, Tensor& y, bool accumulate, const LayerContext& ctx,
                          const Tensor* residual = nullptr);
// dx may be null (no input gradient wanted); dx accumulates, or is overwritten when
// dx_accumulate is false (the first contribution, saving the zeroing of dx). For a
// column-parallel layer dx is this rank's partial sum: the caller completes it with
// tp_sum_partials once every layer reading the same input has added to it. The bias gradient is
// the column sum of dy (accumulated when it trains).
// dx_term (may be null): the adapter's input-gradient term is left out of dx where the adapter
// can (backward_leaving_dx_term) and returned there for dx's consumer to add; else undefined.
void linear_layer_backward(Linear& l, const Tensor& x, const Tensor& dy, Tensor* dx, const LayerContext& ctx,
                           bool dx_accumulate = true, LowRankTerm* dx_term = nullptr);

// A group of layers that read the same input x (q, k and v of a block; gate and up), each with
// its own output: ys[i] = x W_i^T + b_i + adapter_i, overwritten. The same results as one
// linear_layer_forward per layer (accumulate false, no residual); adapters that implement the
// group hooks run together (LoRA: one pass over x for all of them).
// RoPE on some outputs of a group (Llama's q and k): rope_forward(ys[i], B, T, *tables,
// positions) for each i with rotate[i], after the layer's forward. A LoRA group runs those
// layers base first, then adds its rank-r term and rotates in one pass (matmul_add_rope).
struct OutputRope {
  const RopeTables* tables = nullptr;
  int64_t B = 0, T = 0;
  Tensor positions;
  std::vector<bool> rotate;  // one flag per layer of the group
};
// terms (may be null; one entry per layer): adapter terms are left out of the outputs of the
// layers a group hook takes on (base GEMM only) and returned there for the consumer to add
// (swiglu_lora_forward); the other entries stay undefined (their outputs are complete).
void linear_group_forward(std::initializer_list<const Linear*> layers, const Tensor& x,
                          std::initializer_list<Tensor*> ys, const LayerContext& ctx,
                          const OutputRope* rope = nullptr, std::vector<LowRankTerm>* terms = nullptr);
// The terms the layers' last group forward left out (undefined where it did not): for the
// backward of the consumer that added them.
std::vector<LowRankTerm> linear_left_out_terms(std::initializer_list<const Linear*> layers, const Tensor& x);
// Tests: run RoPE-rotated group outputs in the deferred order (base GEMM first, then the adapter's
// term and the rotation) on the CPU too. Off by default.
bool& lora_rotated_after_base_on_cpu();
// Its backward: dx (+)= sum_i dys[i] W_i + the adapters' input gradients (overwritten first when
// dx_accumulate is false; dx may be null), as linear_layer_backward on each layer in turn would
// leave it; for a column-parallel group dx is this rank's partial sum (tp_sum_partials after).
void linear_group_backward(std::initializer_list<Linear*> layers, const Tensor& x,
                           std::initializer_list<const Tensor*> dys, Tensor* dx, const LayerContext& ctx,
                           bool dx_accumulate = true);

size_t nf4_stored_bytes(const Linear& l);  // the NF4 base's packed bytes

// out [N, C] = table[ids]: with the table split by vocabulary rows over tp (this rank holds rows
// [rank V/p, (rank+1) V/p)), each rank looks up its own ids (zeros elsewhere) and the rows are
// summed over the group.
void embedding_layer_forward(const Tensor& ids, const Tensor& table, const TpGroup& tp, Tensor& out);
// dtable += scatter of dout [N, C] by ids (this rank's rows only under TP).
void embedding_layer_backward(const Tensor& ids, const Tensor& dout, const TpGroup& tp, Tensor& dtable);
// The language-model objective sum_n weight_n * loss_n over logits [N, V] (this rank's
// vocabulary columns under TP: the vocabulary-parallel cross-entropy), per-position losses into
// `losses`; with grad the logits become d(objective)/d(logits). Summed on the host in double in
// row order; the same value on every TP rank.
double lm_cross_entropy(Tensor& logits, const Tensor& targets, const Tensor& weight, Tensor& losses, bool grad,
                        const TpGroup& tp);
// sum_n weight_n * losses_n on the host in double (one device synchronisation): lm_cross_entropy's
// objective from the rows' losses.
double weighted_loss_sum(const Tensor& losses, const Tensor& weight);

}  // namespace st
