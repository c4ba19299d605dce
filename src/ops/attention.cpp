#include "ops/attention.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "core/profile.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/attention.cuh"
#endif

namespace st {

#ifdef SHARDTUNE_CUDA
static cuda::AttentionArgs cuda_args(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& lengths, const Tensor& out, const Tensor& lse) {
  if (q.dtype() != DType::bf16) ST_THROW("attention on CUDA takes bf16 q, k, v (got ", q.str(), ")");
  cuda::AttentionArgs a;
  a.B = s.B;
  a.T = s.T;
  a.Hq = s.Hq;
  a.Hkv = s.Hkv;
  a.D = s.D;
  a.causal = s.causal;
  a.scale = static_cast<float>(s.scale);
  a.q = q.data();
  a.k = k.data();
  a.v = v.data();
  a.lengths = lengths.defined() ? lengths.ptr<int32_t>() : nullptr;
  a.out = out.data();
  a.lse = lse.ptr<float>();
  return a;
}
#endif

static void check_attention(const char* op, const AttentionShape& s, const Tensor& q,
                            const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                            const Tensor& lengths) {
  if (s.Hkv <= 0 || s.Hq % s.Hkv != 0) ST_THROW(op, ": Hq=", s.Hq, " is not a multiple of Hkv=", s.Hkv);
  const int64_t BT = s.B * s.T;
  if (q.numel() < BT * s.Hq * s.D || k.numel() < BT * s.Hkv * s.D || v.numel() < BT * s.Hkv * s.D ||
      out.numel() < BT * s.Hq * s.D || lse.numel() < BT * s.Hq)
    ST_THROW(op, ": buffers too small for B=", s.B, " T=", s.T, " Hq=", s.Hq, " Hkv=", s.Hkv, " D=", s.D);
  if (lengths.defined() && (lengths.dtype() != DType::i32 || lengths.numel() < s.B || lengths.device() != q.device()))
    ST_THROW(op, ": lengths must be i32 [B] on the same device, got ", lengths.str());
}

void attention_forward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& lengths, Tensor& out, Tensor& lse) {
  ProfileScope prof("attention_forward", q.device());
  check_float_args("attention_forward", {&q, &k, &v, &out});
  check_stat_dtype("attention_forward", q, lse);
  check_attention("attention_forward", s, q, k, v, out, lse, lengths);
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::attention_forward(cuda_args(s, q, k, v, lengths, out, lse));
    return;
#else
    no_cuda_kernel("attention_forward");
#endif
  }
  const int32_t* len = lengths.defined() ? lengths.ptr<int32_t>() : nullptr;
  ST_DISPATCH_CPU_FLOAT(q.dtype(), T,
                        cpu::attention_forward<T>(s.B, s.T, s.Hq, s.Hkv, s.D, q.ptr<T>(), k.ptr<T>(),
                                                  v.ptr<T>(), len, s.causal, static_cast<T>(s.scale),
                                                  out.ptr<T>(), lse.ptr<T>()));
}

void attention_backward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Tensor& dout,
                        const Tensor& lengths, Tensor& dq, Tensor& dk, Tensor& dv, bool accumulate) {
  ProfileScope prof("attention_backward", q.device());
  check_float_args("attention_backward", {&q, &k, &v, &out, &dout, &dq, &dk, &dv});
  check_stat_dtype("attention_backward", q, lse);
  check_attention("attention_backward", s, q, k, v, out, lse, lengths);
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::attention_backward(cuda_args(s, q, k, v, lengths, out, lse), dout.data(), dq.data(), dk.data(), dv.data(),
                             accumulate);
    return;
#else
    no_cuda_kernel("attention_backward");
#endif
  }
  const int32_t* len = lengths.defined() ? lengths.ptr<int32_t>() : nullptr;
  if (!accumulate) {
    dq.zero_();
    dk.zero_();
    dv.zero_();
  }
  ST_DISPATCH_CPU_FLOAT(q.dtype(), T,
                        cpu::attention_backward<T>(s.B, s.T, s.Hq, s.Hkv, s.D, q.ptr<T>(), k.ptr<T>(),
                                                   v.ptr<T>(), out.ptr<T>(), lse.ptr<T>(), dout.ptr<T>(),
                                                   len, s.causal, static_cast<T>(s.scale), dq.ptr<T>(),
                                                   dk.ptr<T>(), dv.ptr<T>()));
}

}  // namespace st
