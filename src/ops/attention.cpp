#include "ops/attention.hpp"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "ops/cpu/cpu_kernels.hpp"
#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "core/env.hpp"
#include "core/op_trace.hpp"
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

// Varlen: the flattened stream as one sequence of N tokens (B = 1, T = Tk = N; lse [Hq, N]) cut
// by the tile table.
cuda::AttentionArgs cuda_varlen_args(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                                     const AttentionSegments& seg, const Tensor& out, const Tensor& lse) {
  AttentionShape one = s;
  one.B = 1;
  one.T = seg.tokens;
  one.Tk = 0;
  one.causal = true;
  cuda::AttentionArgs a = cuda_args(one, q, k, v, Tensor(), out, lse, Tensor());
  if (!seg.tiles.defined() || seg.tiles.device() != Device::cuda || seg.tiles.numel() < 4 * seg.n_tiles)
    ST_THROW("attention (varlen) on CUDA needs the segments' tile table on the device (attention_segments_finish)");
  if (reinterpret_cast<uintptr_t>(seg.tiles.data()) % 16 != 0)
    ST_THROW("attention (varlen): the tile table must be 16-byte aligned (its entries are read as int4)");
  a.tiles = seg.tiles.ptr<int32_t>();
  a.n_tiles = seg.n_tiles;
  return a;
}
#endif

bool has(const Tensor* t) { return t && t->defined(); }

// The op trace's key of a batched attention call (its exact shape, for device profiles).
TraceEvent::AttentionKey trace_key(const AttentionShape& s, const Tensor& bias, const Tensor* dbias) {
  TraceEvent::AttentionKey k;
  k.B = s.B;
  k.T = s.T;
  k.Tk = s.kv_len();
  k.Hq = s.Hq;
  k.Hkv = s.Hkv;
  k.D = s.D;
  k.causal = s.causal;
  k.bias = bias.defined();
  k.dbias = has(dbias);
  return k;
}

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
  if (q.device() == Device::cuda && !(s.scale > 0))
    ST_THROW(op, ": attention on CUDA needs a positive scale, got ", s.scale);
}

// QK^T and PV: 4 B T Tk Hq D, halved when causal (the masked half is skipped).
double attention_flops(const AttentionShape& s) {
  const double f = 4.0 * static_cast<double>(s.B) * static_cast<double>(s.T) * static_cast<double>(s.kv_len()) *
                   static_cast<double>(s.Hq) * static_cast<double>(s.D);
  return s.causal ? f / 2 : f;
}

// The backward's gradient buffers hold nq (dout, dq) and nkv (dk, dv) elements.
void check_gradient_buffers(const char* op, int64_t nq, int64_t nkv, const Tensor& dout, const Tensor& dq,
                            const Tensor& dk, const Tensor& dv) {
  if (dout.numel() < nq || dq.numel() < nq || dk.numel() < nkv || dv.numel() < nkv)
    ST_THROW(op, ": gradient buffers too small (dout ", dout.str(), ", dq ", dq.str(), ", dk ", dk.str(), ", dv ",
             dv.str(), ")");
}

// The planner's backward: 2.5 x the forward's FLOPs (dQ, dK, dV and the recomputed scores) and
// the CUDA backend's scratch (delta, the f32 dQ accumulator and, split, the dK and dV sums).
void dry_run_backward(const AttentionShape& s, Device device, double forward_flops, bool bias) {
  dry_run_add_flops(2.5 * forward_flops);
  if (device == Device::cuda) {
    dry_run_scratch("attention delta", attention_scratch_bytes(s, false), Device::cuda, MemCategory::workspace);
    dry_run_scratch("attention dq", attention_scratch_bytes(s, true, bias), Device::cuda, MemCategory::workspace);
  }
}

}  // namespace

bool attention_head_split_on() {
  static const bool on = env_switch("SHARDTUNE_ATTN_HEAD_SPLIT", "0", "1", true);
  return on;
}

void attention_forward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& lengths, Tensor& out, Tensor& lse, const Tensor& bias) {
  ProfileScope prof("attention_forward", q.device());
  check_float_args("attention_forward", {&q, &k, &v, &out});
  check_stat_dtype("attention_forward", q, lse);
  check_attention("attention_forward", s, q, k, v, out, lse, lengths, bias, nullptr);
  const TracedOp traced =
      TracedOp::attention(OpFamily::attention, {&q, &k, &v, &out, &lse}, attention_flops(s), trace_key(s, bias, nullptr));
  if (traced.dry()) {  // the planner: no compute
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

namespace {

// Whether the CUDA kernels rotate dq and dk themselves (AttentionRope; checked by check_rope):
// head dims of the kernels' own sizes, overwritten gradients, and dq / dk aligned for their 8- /
// 4-byte stores.
bool rope_fused(const AttentionShape& s, const Tensor& q, const Tensor& dq, const Tensor& dk, bool accumulate,
                const AttentionRope* rope) {
  return rope && q.device() == Device::cuda && !accumulate && (s.D == 16 || s.D == 32 || s.D == 64 || s.D == 128) &&
         reinterpret_cast<uintptr_t>(dq.data()) % 8 == 0 && reinterpret_cast<uintptr_t>(dk.data()) % 4 == 0;
}

void check_rope(const char* op, const AttentionShape& s, const Tensor& dq, const Tensor& dk, const AttentionRope& rope) {
  if (!rope.tables) ST_THROW(op, ": rope without tables");
  if (rope.tables->head_dim != s.D)
    ST_THROW(op, ": rope tables of head_dim ", rope.tables->head_dim, " for attention of head_dim ", s.D);
  if (s.kv_len() != s.T) ST_THROW(op, ": rope needs self-attention (T = ", s.T, ", Tk = ", s.kv_len(), ")");
  rope_check(dq, s.B, s.T, *rope.tables, rope.positions);
  rope_check(dk, s.B, s.T, *rope.tables, rope.positions);
}

#ifdef SHARDTUNE_CUDA
void set_rope_args(cuda::AttentionArgs& a, const AttentionShape& s, const AttentionRope& rope) {
  a.rope_T = s.T;  // the rows' length (varlen's arguments make the stream one row)
  a.rope_cos = rope.tables->cos.ptr<float>();
  a.rope_sin = rope.tables->sin.ptr<float>();
  a.rope_pos = rope.positions.defined() ? rope.positions.ptr<int32_t>() : nullptr;
}
#endif

// The attention backward; with `fused` (rope_fused) the CUDA kernels also rotate dq and dk.
void backward_impl(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Tensor& lse, const Tensor& dout, const Tensor& lengths, Tensor& dq, Tensor& dk, Tensor& dv,
                   bool accumulate, const Tensor& bias, Tensor* dbias, const AttentionRope* fused) {
  check_float_args("attention_backward", {&q, &k, &v, &out, &dout, &dq, &dk, &dv});
  check_stat_dtype("attention_backward", q, lse);
  check_attention("attention_backward", s, q, k, v, out, lse, lengths, bias, dbias);
  check_gradient_buffers("attention_backward", s.B * s.T * s.Hq * s.D, s.B * s.kv_len() * s.Hkv * s.D, dout, dq, dk,
                         dv);
  const TracedOp traced = TracedOp::attention(OpFamily::attention_backward, {&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv},
                                              2.5 * attention_flops(s), trace_key(s, bias, dbias));
  if (traced.dry()) {  // the planner
    // (CUDA takes the bias kernels, which never split, for a bias or a requested dbias.)
    dry_run_backward(s, q.device(), attention_flops(s), bias.defined() || has(dbias));
    return;
  }
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::AttentionArgs a = cuda_args(s, q, k, v, lengths, out, lse, bias);
    if (fused) set_rope_args(a, s, *fused);
    a.head_split = attention_head_split(s, bias.defined() || has(dbias));
    cuda::attention_backward(a, dout.data(), dq.data(), dk.data(), dv.data(), accumulate,
                             has(dbias) ? dbias->ptr<float>() : nullptr);
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

}  // namespace

void attention_backward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Tensor& dout,
                        const Tensor& lengths, Tensor& dq, Tensor& dk, Tensor& dv, bool accumulate,
                        const Tensor& bias, Tensor* dbias, const AttentionRope* rope) {
  {
    ProfileScope prof("attention_backward", q.device());
    if (s.B * s.T == 0) rope = nullptr;  // nothing to rotate (and no rows to check)
    if (rope) check_rope("attention_backward", s, dq, dk, *rope);
    const bool fused = rope_fused(s, q, dq, dk, accumulate, rope);
    backward_impl(s, q, k, v, out, lse, dout, lengths, dq, dk, dv, accumulate, bias, dbias, fused ? rope : nullptr);
    if (fused || !rope) return;
  }
  rope_backward(dq, s.B, s.T, *rope->tables, rope->positions);
  rope_backward(dk, s.B, s.T, *rope->tables, rope->positions);
}

namespace {

// Shapes of a varlen call: N = B*T tokens in the segments, buffers large enough, causal, no bias.
void check_varlen(const char* op, const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                  const Tensor& out, const Tensor& lse, const AttentionSegments& seg) {
  if (s.Hkv <= 0 || s.Hq % s.Hkv != 0) ST_THROW(op, ": Hq=", s.Hq, " is not a multiple of Hkv=", s.Hkv);
  if (!s.causal || s.Tk != 0) ST_THROW(op, ": variable-length attention is causal self-attention");
  const int64_t N = seg.tokens;
  if (N != s.B * s.T) ST_THROW(op, ": the segments hold ", N, " tokens, the batch [", s.B, ", ", s.T, "] ", s.B * s.T);
  if (!seg.cu_seqlens.defined() || seg.cu_seqlens.device() != Device::cpu || seg.cu_seqlens.numel() < seg.count + 1 ||
      !seg.keys.defined() || seg.keys.numel() < seg.count)
    ST_THROW(op, ": segments without host cu_seqlens [S + 1] and keys [S] (attention_segments_finish)");
  if (q.numel() < N * s.Hq * s.D || k.numel() < N * s.Hkv * s.D || v.numel() < N * s.Hkv * s.D ||
      out.numel() < N * s.Hq * s.D || lse.numel() < N * s.Hq)
    ST_THROW(op, ": buffers too small for N=", N, " Hq=", s.Hq, " Hkv=", s.Hkv, " D=", s.D);
}

// QK^T and PV over the visible (query, key) pairs.
double varlen_flops(const AttentionShape& s, const AttentionSegments& seg) {
  return 4.0 * seg.pairs * static_cast<double>(s.Hq) * static_cast<double>(s.D);
}

}  // namespace

void attention_segments_finish(AttentionSegments& s, const Tensor& cu_seqlens, const Tensor& keys,
                               const Tensor& tiles_host) {
  if (cu_seqlens.dtype() != DType::i32 || keys.dtype() != DType::i32 || cu_seqlens.device() != Device::cpu ||
      keys.device() != Device::cpu || cu_seqlens.numel() < 1 || keys.numel() != cu_seqlens.numel() - 1)
    ST_THROW("attention segments: cu_seqlens must be i32 [S + 1] and keys i32 [S] on the CPU, got ", cu_seqlens.str(),
             " and ", keys.str());
  const int64_t S = keys.numel();
  const int32_t* cu = cu_seqlens.ptr<int32_t>();
  const int32_t* kv = keys.ptr<int32_t>();
  if (cu[0] != 0) ST_THROW("attention segments: cu_seqlens[0] = ", cu[0], ", not 0");
  s.cu_seqlens = cu_seqlens;
  s.keys = keys;
  s.count = S;
  s.tokens = cu[S];
  s.max_len = 0;
  s.pairs = 0;
  for (int64_t i = 0; i < S; ++i) {
    const int64_t len = cu[i + 1] - cu[i], nk = kv[i];
    if (len < 0) ST_THROW("attention segments: cu_seqlens decreases at segment ", i, " (", cu[i], " then ", cu[i + 1], ")");
    if (nk < 0 || nk > len)
      ST_THROW("attention segments: keys[", i, "] = ", nk, " is outside [0, the segment's length ", len, "]");
    s.max_len = std::max(s.max_len, len);
    // Query i sees min(i + 1, nk) keys: nk (nk + 1) / 2 for the first nk queries, nk for the rest.
    s.pairs += static_cast<double>(nk) * static_cast<double>(nk + 1) / 2 + static_cast<double>(nk) * static_cast<double>(len - nk);
  }
  s.n_tiles = 0;
  if (!tiles_host.defined()) return;
  if (tiles_host.dtype() != DType::i32 || tiles_host.device() != Device::cpu ||
      tiles_host.numel() < 4 * attention_max_tiles(s.tokens, S))
    ST_THROW("attention segments: the tile table buffer ", tiles_host.str(), " is not i32 [>= ",
             4 * attention_max_tiles(s.tokens, S), "] on the CPU");
  int32_t* t = tiles_host.ptr<int32_t>();
  for (int64_t i = 0; i < S; ++i)
    for (int64_t r = cu[i]; r < cu[i + 1]; r += kAttentionTile) {
      int32_t* e = t + 4 * s.n_tiles++;
      e[0] = cu[i];
      e[1] = cu[i + 1];
      e[2] = cu[i] + kv[i];
      e[3] = static_cast<int32_t>(r);
    }
}

void attention_varlen_forward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttentionSegments& seg, Tensor& out, Tensor& lse) {
  ProfileScope prof("attention_forward", q.device());
  check_float_args("attention_varlen_forward", {&q, &k, &v, &out});
  check_stat_dtype("attention_varlen_forward", q, lse);
  check_varlen("attention_varlen_forward", s, q, k, v, out, lse, seg);
  const TracedOp traced(OpFamily::attention, {&q, &k, &v, &out, &lse}, varlen_flops(s, seg));
  if (traced.dry()) {
    dry_run_add_flops(varlen_flops(s, seg));
    return;
  }
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::attention_forward(cuda_varlen_args(s, q, k, v, seg, out, lse));
    return;
#else
    no_cuda_kernel("attention_varlen_forward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(q.dtype(), T,
                        cpu::attention_varlen_forward<T>(seg.count, seg.cu_seqlens.ptr<int32_t>(), seg.keys.ptr<int32_t>(),
                                                         seg.tokens, seg.max_len, s.Hq, s.Hkv, s.D, q.ptr<T>(), k.ptr<T>(),
                                                         v.ptr<T>(), static_cast<T>(s.scale), out.ptr<T>(), lse.ptr<T>()));
}

namespace {

void varlen_backward_impl(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& lse, const Tensor& dout, const AttentionSegments& seg, Tensor& dq, Tensor& dk,
                          Tensor& dv, bool accumulate, const AttentionRope* fused) {
  check_float_args("attention_varlen_backward", {&q, &k, &v, &out, &dout, &dq, &dk, &dv});
  check_stat_dtype("attention_varlen_backward", q, lse);
  check_varlen("attention_varlen_backward", s, q, k, v, out, lse, seg);
  check_gradient_buffers("attention_varlen_backward", seg.tokens * s.Hq * s.D, seg.tokens * s.Hkv * s.D, dout, dq,
                         dk, dv);
  const TracedOp traced(OpFamily::attention_backward, {&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv}, 2.5 * varlen_flops(s, seg));
  if (traced.dry()) {  // the planner, as attention_backward
    dry_run_backward(s, q.device(), varlen_flops(s, seg), false);
    return;
  }
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::AttentionArgs a = cuda_varlen_args(s, q, k, v, seg, out, lse);
    if (fused) set_rope_args(a, s, *fused);
    a.head_split = attention_head_split(s, false);
    cuda::attention_backward(a, dout.data(), dq.data(), dk.data(), dv.data(), accumulate);
    return;
#else
    no_cuda_kernel("attention_varlen_backward");
#endif
  }
  if (!accumulate) {
    dq.zero_();
    dk.zero_();
    dv.zero_();
  }
  ST_DISPATCH_CPU_FLOAT(q.dtype(), T,
                        cpu::attention_varlen_backward<T>(seg.count, seg.cu_seqlens.ptr<int32_t>(), seg.keys.ptr<int32_t>(),
                                                          seg.tokens, seg.max_len, s.Hq, s.Hkv, s.D, q.ptr<T>(),
                                                          k.ptr<T>(), v.ptr<T>(), out.ptr<T>(), lse.ptr<T>(),
                                                          dout.ptr<T>(), static_cast<T>(s.scale), dq.ptr<T>(),
                                                          dk.ptr<T>(), dv.ptr<T>()));
}

}  // namespace

void attention_varlen_backward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& out, const Tensor& lse, const Tensor& dout, const AttentionSegments& seg,
                               Tensor& dq, Tensor& dk, Tensor& dv, bool accumulate, const AttentionRope* rope) {
  {
    ProfileScope prof("attention_backward", q.device());
    if (s.B * s.T == 0) rope = nullptr;  // nothing to rotate (and no rows to check)
    if (rope) check_rope("attention_varlen_backward", s, dq, dk, *rope);
    const bool fused = rope_fused(s, q, dq, dk, accumulate, rope);
    varlen_backward_impl(s, q, k, v, out, lse, dout, seg, dq, dk, dv, accumulate, fused ? rope : nullptr);
    if (fused || !rope) return;
  }
  rope_backward(dq, s.B, s.T, *rope->tables, rope->positions);
  rope_backward(dk, s.B, s.T, *rope->tables, rope->positions);
}

}  // namespace st
