// NF4 quantize / dequantize kernels (see src/quant/nf4.hpp for the format). They produce the same
// bits as the CPU reference: every product and sum rounds on its own (__fmul_rn, __fadd_rn).
#pragma once

#include "core/tensor.hpp"
#include "quant/nf4.hpp"

namespace st::cuda {

// w: bf16 or f32 on the device; q: device storage.
void nf4_quantize(const Tensor& w, Nf4Tensor& q);
// out: bf16 or f32 on the device.
void nf4_dequantize(const Nf4Tensor& q, Tensor& out);

}  // namespace st::cuda
