#include "ops/rope.hpp"

#include <cmath>
#include <vector>

#include "ops/cpu/cpu_kernels.hpp"
#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

// This file is compiled with -ffp-contract=off (Makefile): every f32 operation below rounds on its
// own, as torch's element-wise kernels do.
std::vector<float> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling) {
  const int64_t half = head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // _compute_default_rope_parameters: exponent in f32, power, reciprocal.
    const float expo = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv[static_cast<size_t>(i)] = 1.0f / std::pow(static_cast<float>(theta), expo);
  }
  if (scaling.type == RopeScaling::Type::none) return inv;
  // _compute_llama3_parameters, with torch's f32 semantics for tensor-scalar operations (the
  // Python scalars are rounded to f32; `scalar / tensor` is tensor.reciprocal() * scalar).
  const float factor = static_cast<float>(scaling.factor);
  const double old_len = static_cast<double>(scaling.original_max_position_embeddings);
  const float low_freq_wavelen = static_cast<float>(old_len / scaling.low_freq_factor);
  const float high_freq_wavelen = static_cast<float>(old_len / scaling.high_freq_factor);
  const float two_pi = static_cast<float>(2.0 * M_PI), old_len_f = static_cast<float>(old_len);
  const float low = static_cast<float>(scaling.low_freq_factor);
  const float band = static_cast<float>(scaling.high_freq_factor - scaling.low_freq_factor);
  for (float& f : inv) {
    const float wavelen = (1.0f / f) * two_pi;
    const float llama = wavelen > low_freq_wavelen ? f / factor : f;
    const float smooth = ((1.0f / wavelen) * old_len_f - low) / band;
    const float a = (1.0f - smooth) * llama;
    const float smoothed = a / factor + smooth * llama;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    f = medium ? smoothed : llama;
  }
  return inv;
}

RopeTables rope_tables(int64_t max_positions, int64_t head_dim, double theta, Device device, const RopeScaling& scaling) {
  const int64_t half = head_dim / 2;
  Tensor c = Tensor::empty({max_positions, half}, DType::f32, Device::cpu, MemCategory::workspace);
  Tensor s = Tensor::empty({max_positions, half}, DType::f32, Device::cpu, MemCategory::workspace);
  float* cp = c.ptr<float>();
  float* sp = s.ptr<float>();
  const std::vector<float> freqs = rope_inv_freq(head_dim, theta, scaling);
  for (int64_t i = 0; i < half; ++i) {
    const float inv_freq = freqs[static_cast<size_t>(i)];
    for (int64_t p = 0; p < max_positions; ++p) {
      const float angle = static_cast<float>(p) * inv_freq;
      cp[p * half + i] = std::cos(angle);
      sp[p * half + i] = std::sin(angle);
    }
  }
  RopeTables t;
  t.max_positions = max_positions;
  t.head_dim = head_dim;
  if (device == Device::cpu) {
    t.cos = c;
    t.sin = s;
  } else {
    t.cos = Tensor::empty(c.shape(), DType::f32, device, MemCategory::workspace);
    t.sin = Tensor::empty(s.shape(), DType::f32, device, MemCategory::workspace);
    t.cos.copy_from(c);
    t.sin.copy_from(s);
  }
  return t;
}

int64_t rope_check(const Tensor& x, int64_t B, int64_t T_, const RopeTables& tables, const Tensor& positions) {
  const int64_t D = tables.head_dim;
  if (T_ > tables.max_positions && !positions.defined())
    ST_THROW("rope: sequence length ", T_, " exceeds max_position_embeddings ", tables.max_positions);
  const int64_t H = x.numel() / (B * T_ * D);
  if (H * B * T_ * D != x.numel() || x.dim(-1) % D != 0)
    ST_THROW("rope: tensor ", x.str(), " is not [B=", B, ", T=", T_, ", H, D=", D, "]");
  if (positions.defined()) {
    if (positions.dtype() != DType::i32 || positions.numel() != B * T_ || positions.device() != x.device())
      ST_THROW("rope: positions must be i32 [B*T = ", B * T_, "] on ", device_name(x.device()), ", got ",
               positions.str());
    if (positions.device() == Device::cpu && !dry_run_active())
      for (int64_t n = 0; n < B * T_; ++n) {
        const int32_t p = positions.ptr<int32_t>()[n];
        if (p < 0 || p >= tables.max_positions)
          ST_THROW("rope: position ", p, " of token ", n, " is outside [0, max_position_embeddings = ",
                   tables.max_positions, ")");
      }
  }
  return H;
}

static void rope_apply(Tensor& x, int64_t B, int64_t T_, const RopeTables& tables, const Tensor& positions,
                       bool inverse) {
  ProfileScope prof("rope", x.device());
  const int64_t D = tables.head_dim;
  const int64_t H = rope_check(x, B, T_, tables, positions);
  const TracedOp traced(OpFamily::rope, {&x, &x});
  if (traced.dry()) return;  // the planner: no compute
  const int32_t* pos = positions.defined() ? positions.ptr<int32_t>() : nullptr;
  if (x.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::rope_apply(B, T_, H, D, x, tables.cos, tables.sin, inverse, pos);
    return;
#else
    no_cuda_kernel("rope");
#endif
  }
  if (pos) {
    ST_DISPATCH_CPU_FLOAT(x.dtype(), T,
                          cpu::rope_apply_at<T>(B * T_, H, D, x.ptr<T>(), pos, tables.cos.ptr<float>(),
                                                tables.sin.ptr<float>(), inverse));
  } else {
    ST_DISPATCH_CPU_FLOAT(x.dtype(), T,
                          cpu::rope_apply<T>(B, T_, H, D, x.ptr<T>(), tables.cos.ptr<float>(),
                                             tables.sin.ptr<float>(), inverse));
  }
}

void rope_forward(Tensor& x, int64_t B, int64_t T, const RopeTables& tables, const Tensor& positions) {
  rope_apply(x, B, T, tables, positions, false);
}
void rope_backward(Tensor& dx, int64_t B, int64_t T, const RopeTables& tables, const Tensor& positions) {
  rope_apply(dx, B, T, tables, positions, true);
}

}  // namespace st
