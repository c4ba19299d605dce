#include "ops/attention.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/attention.cuh"
#endif

namespace st {

namespace {

#ifdef SHARDTUNE_CUDA
cuda::AttentionArgs cuda_args(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& lengths, const Tensor& out, const Tensor& lse, const Tensor& bias) {
  if (q.dtype() != DType::bf16) ST_THROW("attention on CUDA takes bf16 q, k, v (got ", q.str(), ")");
  cuda::AttentionArgs a;
  a.B = s.B;
  a.T = s.T;
  a.Tk = s.kv_len();
  a.Hq = s.Hq;
  a.Hkv = s.Hkv;
  a.D = s.D;
  a.causal = s.causal;
  a.scale = static_cast<float>(s.scale);
  a.q = q.data();
  a.k = k.data();
  a.v = v.data();
  a.lengths = lengths.defined() ? lengths.ptr<int32_t>() : nullptr;
  a.bias = bias.defined() ? bias.ptr<float>() : nullptr;
  a.out = out.data();
  a.lse = lse.ptr<float>();
  return a;
}
#endif

bool has(const Tensor* t) { return t && t->defined(); }

// Shapes, the optional bias/dbias ([Hq, T, Tk], the dtype of the statistics) and the lengths.
void check_attention(const char* op, const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& out, const Tensor& lse, const Tensor& lengths, const Tensor& bias,
                     const Tensor* dbias) {
  if (s.Hkv <= 0 || s.Hq % s.Hkv != 0) ST_THROW(op, ": Hq=", s.Hq, " is not a multiple of Hkv=", s.Hkv);
  if (s.B < 0 || s.T < 0 || s.Tk < 0 || s.D < 0)
    ST_THROW(op, ": negative size in B=", s.B, " T=", s.T, " Tk=", s.Tk, " D=", s.D);
  const int64_t Tk = s.kv_len();
  if (s.causal && Tk != s.T)
    ST_THROW(op, ": causal attention needs as many keys as queries (T=", s.T, ", Tk=", Tk,
             "); cross-attention (Tk != T) must be non-causal");
  const int64_t BT = s.B * s.T, BTk = s.B * Tk;
  if (q.numel() < BT * s.Hq * s.D || k.numel() < BTk * s.Hkv * s.D || v.numel() < BTk * s.Hkv * s.D ||
      out.numel() < BT * s.Hq * s.D || lse.numel() < BT * s.Hq)
    ST_THROW(op, ": buffers too small for B=", s.B, " T=", s.T, " Tk=", Tk, " Hq=", s.Hq, " Hkv=", s.Hkv, " D=", s.D);
  const int64_t nbias = s.Hq * s.T * Tk;
  if (bias.defined()) {
    check_stat_dtype(str(op, " (bias)").c_str(), q, bias);
    if (bias.numel() < nbias)
      ST_THROW(op, ": bias ", bias.str(), " too small for [Hq=", s.Hq, ", T=", s.T, ", Tk=", Tk, "]");
  }
  if (has(dbias)) {
    check_stat_dtype(str(op, " (dbias)").c_str(), q, *dbias);
    if (dbias->numel() < nbias)
      ST_THROW(op, ": dbias ", dbias->str(), " too small for [Hq=", s.Hq, ", T=", s.T, ", Tk=", Tk, "]");
  }
  if (lengths.defined()) {
    if (lengths.dtype() != DType::i32 || lengths.numel() < s.B || lengths.device() != q.device())
      ST_THROW(op, ": lengths must be i32 [B] on the same device, got ", lengths.str());
    if (lengths.device() == Device::cpu)
      for (int64_t b = 0; b < s.B; ++b) {
        const int32_t len = lengths.ptr<int32_t>()[b];
        if (len < 0 || len > Tk) ST_THROW(op, ": lengths[", b, "] = ", len, " is outside [0, Tk=", Tk, "]");
      }
  }
  if (q.device() == Device::cuda && (bias.defined() || has(dbias)) && s.scale == 0)
    ST_THROW(op, ": attention with a bias on CUDA needs a nonzero scale");
}

// QK^T and PV: 4 B T Tk Hq D, halved when causal (the masked half is skipped).
double attention_flops(const AttentionShape& s) {
  const double f = 4.0 * static_cast<double>(s.B) * static_cast<double>(s.T) * static_cast<double>(s.kv_len()) *
                   static_cast<double>(s.Hq) * static_cast<double>(s.D);
  return s.causal ? f / 2 : f;
}

}  // namespace

void attention_forward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& lengths, Tensor& out, Tensor& lse, const Tensor& bias) {
  ProfileScope prof("attention_forward", q.device());
  check_float_args("attention_forward", {&q, &k, &v, &out});
  check_stat_dtype("attention_forward", q, lse);
  check_attention("attention_forward", s, q, k, v, out, lse, lengths, bias, nullptr);
  if (dry_run_active()) {  // the planner: no compute
    dry_run_add_flops(attention_flops(s));
    return;
  }
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::attention_forward(cuda_args(s, q, k, v, lengths, out, lse, bias));
    return;
#else
    no_cuda_kernel("attention_forward");
#endif
  }
  const int32_t* len = lengths.defined() ? lengths.ptr<int32_t>() : nullptr;
  ST_DISPATCH_CPU_FLOAT(q.dtype(), T,
                        cpu::attention_forward<T>(s.B, s.T, s.kv_len(), s.Hq, s.Hkv, s.D, q.ptr<T>(), k.ptr<T>(),
                                                  v.ptr<T>(), bias.defined() ? bias.ptr<T>() : nullptr, len,
                                                  s.causal, static_cast<T>(s.scale), out.ptr<T>(), lse.ptr<T>()));
}

void attention_backward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Tensor& dout,
                        const Tensor& lengths, Tensor& dq, Tensor& dk, Tensor& dv, bool accumulate,
                        const Tensor& bias, Tensor* dbias) {
  ProfileScope prof("attention_backward", q.device());
  check_float_args("attention_backward", {&q, &k, &v, &out, &dout, &dq, &dk, &dv});
  check_stat_dtype("attention_backward", q, lse);
  check_attention("attention_backward", s, q, k, v, out, lse, lengths, bias, dbias);
  {
    const int64_t nq = s.B * s.T * s.Hq * s.D, nkv = s.B * s.kv_len() * s.Hkv * s.D;
    if (dout.numel() < nq || dq.numel() < nq || dk.numel() < nkv || dv.numel() < nkv)
      ST_THROW("attention_backward: gradient buffers too small (dout ", dout.str(), ", dq ", dq.str(), ", dk ",
               dk.str(), ", dv ", dv.str(), ")");
  }
  if (dry_run_active()) {  // the planner: the backend's scratch (delta and the f32 dQ accumulator)
    dry_run_add_flops(2.5 * attention_flops(s));  // dQ, dK, dV and the recomputed scores
    if (q.device() == Device::cuda) {
      dry_run_scratch("attention delta", attention_scratch_bytes(s, false), Device::cuda, MemCategory::workspace);
      dry_run_scratch("attention dq", attention_scratch_bytes(s, true), Device::cuda, MemCategory::workspace);
    }
    return;
  }
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::attention_backward(cuda_args(s, q, k, v, lengths, out, lse, bias), dout.data(), dq.data(), dk.data(),
                             dv.data(), accumulate, has(dbias) ? dbias->ptr<float>() : nullptr);
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
                        cpu::attention_backward<T>(s.B, s.T, s.kv_len(), s.Hq, s.Hkv, s.D, q.ptr<T>(), k.ptr<T>(),
                                                   v.ptr<T>(), out.ptr<T>(), lse.ptr<T>(), dout.ptr<T>(),
                                                   bias.defined() ? bias.ptr<T>() : nullptr, len, s.causal,
                                                   static_cast<T>(s.scale), dq.ptr<T>(), dk.ptr<T>(), dv.ptr<T>(),
                                                   has(dbias) ? dbias->ptr<T>() : nullptr));
}

}  // namespace st
