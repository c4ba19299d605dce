#include "ops/attention.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "ops/dispatch.hpp"

namespace st {

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
  check_float_args("attention_forward", {&q, &k, &v, &out, &lse});
  check_attention("attention_forward", s, q, k, v, out, lse, lengths);
  if (q.device() == Device::cuda) no_cuda_kernel("attention_forward");
  const int32_t* len = lengths.defined() ? lengths.ptr<int32_t>() : nullptr;
  ST_DISPATCH_CPU_FLOAT(q.dtype(), T,
                        cpu::attention_forward<T>(s.B, s.T, s.Hq, s.Hkv, s.D, q.ptr<T>(), k.ptr<T>(),
                                                  v.ptr<T>(), len, s.causal, static_cast<T>(s.scale),
                                                  out.ptr<T>(), lse.ptr<T>()));
}

void attention_backward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Tensor& dout,
                        const Tensor& lengths, Tensor& dq, Tensor& dk, Tensor& dv) {
  check_float_args("attention_backward", {&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv});
  check_attention("attention_backward", s, q, k, v, out, lse, lengths);
  if (q.device() == Device::cuda) no_cuda_kernel("attention_backward");
  const int32_t* len = lengths.defined() ? lengths.ptr<int32_t>() : nullptr;
  ST_DISPATCH_CPU_FLOAT(q.dtype(), T,
                        cpu::attention_backward<T>(s.B, s.T, s.Hq, s.Hkv, s.D, q.ptr<T>(), k.ptr<T>(),
                                                   v.ptr<T>(), out.ptr<T>(), lse.ptr<T>(), dout.ptr<T>(),
                                                   len, s.causal, static_cast<T>(s.scale), dq.ptr<T>(),
                                                   dk.ptr<T>(), dv.ptr<T>()));
}

}  // namespace st
