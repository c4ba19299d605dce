// FP8 frozen base weights (issue 20; deck key base_precision = fp8, LoRA and QLoRA).
//
// The frozen base of an adapted linear enters two GEMMs only: the forward y = x W^T and the
// input gradient dx = dy W. With base_precision = fp8 both run in FP8 E4M3 (ops/fp8.hpp:
// cuBLASLt on sm_89+, f32 accumulation, output in the compute dtype; the CPU reference does the
// same quantize / dequantize arithmetic in f32):
//   * weights: per-tensor scale (current scaling of W: 448 / amax). LoRA keeps W8 [out, in] and
//     its transpose W8^T [in, out] (fp8_transpose moves the codes, so the backward multiplies by
//     exactly the forward's weight values) and no dense weight: 2 bytes per parameter, as bf16
//     (fp8_transpose = per_step: W8 only, 1 byte). A run quantizes each layer as it is loaded or
//     drawn (materialize_params, set_weight), so the dense model is never held whole; a model
//     built dense is converted by fp8_convert_base. QLoRA keeps NF4 and, before each GEMM,
//     dequantizes into the shared dense buffer and quantizes that into shared W8 (and W8^T)
//     buffers of the largest layer.
//   * activations: current scaling per tensor (x before the forward GEMM, dy before the
//     input-gradient GEMM), into one shared code buffer of rows x the widest input or output.
//     Current scaling rather than delayed (amax history): exact for each tensor, no state to
//     checkpoint, and no saturation on a step whose activations outgrow the history; it costs one
//     extra read of the activation.
// Adapters (in the compute dtype, reading the unquantized x), norms, attention, the loss and the
// optimizer are unchanged; so are linears without an adapter (lm_head).
// Error: each E4M3 value carries a relative error <= 2^-4 (normal range); a dot product of K
// terms of x and W therefore has |error| <= (2 * 2^-4 + 2^-8) sum_k |x_k w_k| (+ the f32
// accumulation's K 2^-24 sum |x w|), for the forward and (with dy) the input gradient alike.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "ops/fp8.hpp"

namespace st {

struct Linear;

// Buffers every FP8 linear of a model shares.
struct Fp8Shared {
  int64_t act_capacity = 0;  // elements of act_codes
  Tensor act_codes;          // u8 [rows x widest in/out]: x or dy quantized
  Tensor act_scale_inv, act_amax;  // f32 [1]
  Fp8Tensor w_tmp;   // QLoRA: the current layer's W8 (largest NF4 layer's size)
  Fp8Tensor wt_tmp;  // QLoRA or fp8_transpose = per_step: the current layer's W8^T (largest layer's size)
};

// A LoRA base is allocated when the model is built (fp8_allocate_base from materialize_params,
// filled by set_weight as each tensor is loaded or drawn) or, for a model built dense, by
// fp8_convert_base from the dense weight; fp8_convert_base gives it `shared` in both cases. A
// QLoRA base (from_nf4) is made by fp8_convert_base.
struct Fp8Base {
  Fp8Tensor w, wt;  // W8 [out, in], W8^T [in, out]; undefined when from_nf4 (wt: also per_step)
  bool from_nf4 = false;
  DType dtype = DType::f32;  // the compute dtype (of x, y and the adapters)
  std::shared_ptr<Fp8Shared> shared;
};

// A LoRA base for `l` (this rank's in and out) before its values exist: W8 [out, in] and, when
// keep_transpose, W8^T [in, out], per-tensor scales, MemCategory::weights; no dense weight.
// InputError (naming `where`) when in or out is not a multiple of 16.
std::shared_ptr<Fp8Base> fp8_allocate_base(const Linear& l, DType dtype, Device device, bool keep_transpose,
                                           const std::string& where);
// W8 = quantize(w) (w [out, in] in the compute dtype; current scaling per tensor), then W8^T =
// its transpose where stored.
void fp8_set_base(Fp8Base& b, const Tensor& w);

// Hold the frozen base of every linear with an adapter among `linears` in FP8, for batches of up
// to `rows` rows; returns how many. A dense base is quantized (and its dense weight dropped); one
// that holds its FP8 base since the build keeps it (the same codes: set_weight quantized the
// same values); an NF4 one is quantized before each GEMM. Every one gets the shared buffers.
// InputError (naming `where`) when a layer's in or out is not a multiple of 16 (cuBLASLt's FP8
// GEMM needs 16-byte aligned rows; the CPU refuses the same) or a base weight trains; Error when
// a linear holds an FP8 base but has no adapter, or was built with (without) W8^T against
// keep_transpose. keep_transpose = false (deck key fp8_transpose = per_step): no stored W8^T;
// each input-gradient GEMM first transposes W8 into the shared buffer of the largest layer (the
// same codes and scale, so the same products).
int64_t fp8_convert_base(const std::vector<Linear*>& linears, int64_t rows, const std::string& where,
                         bool keep_transpose = true);
// Bytes a linear's FP8 base holds (W8, and W8^T where stored, with their scales; 0 for an NF4 base).
size_t fp8_stored_bytes(const Linear& l);

// y = x W^T (beta 0) or y = c_in + x W^T (beta 1; c_in null: y itself), W the FP8 base.
void fp8_linear_forward(const Linear& l, const Tensor& x, Tensor& y, double beta, const Tensor* c_in);
// dx (+)= dy W with the FP8 base.
void fp8_linear_backward_input(const Linear& l, const Tensor& dy, Tensor& dx, bool accumulate);

}  // namespace st
