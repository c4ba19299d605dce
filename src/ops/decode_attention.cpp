#include "ops/decode_attention.hpp"

#include "core/dryrun.hpp"
#include "core/profile.hpp"
#include "ops/cpu/cpu_kernels.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

void decode_attention(const DecodeAttentionShape& s, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      Tensor& out) {
  ProfileScope prof("attention", q.device());
  check_float_args("decode_attention", {&q, &k_cache, &v_cache, &out});
  if (s.Hq <= 0 || s.Hkv <= 0 || s.D <= 0 || s.Hq % s.Hkv != 0 || s.past < 0)
    ST_THROW("decode_attention: bad shape Hq=", s.Hq, " Hkv=", s.Hkv, " D=", s.D, " past=", s.past);
  const int64_t n = q.ndim() == 2 ? q.dim(0) : -1;
  if (n < 1 || q.dim(1) != s.Hq * s.D) ST_THROW("decode_attention: q ", q.str(), " is not [n, ", s.Hq * s.D, "]");
  check_shape(out, q.shape(), "decode_attention out");
  if (k_cache.ndim() != 2 || k_cache.dim(1) != s.Hkv * s.D || k_cache.dim(0) < s.past + n)
    ST_THROW("decode_attention: k cache ", k_cache.str(), " does not hold ", s.past + n, " rows of ", s.Hkv * s.D);
  check_shape(v_cache, k_cache.shape(), "decode_attention v cache");
  if (dry_run_active()) {
    dry_run_add_flops(4.0 * static_cast<double>(n) * static_cast<double>(s.past + n) * static_cast<double>(s.Hq * s.D));
    return;
  }
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    if (s.D > kDecodeMaxHeadDim)
      ST_THROW("decode_attention: head_dim ", s.D, " exceeds the CUDA kernel's ", kDecodeMaxHeadDim);
    cuda::decode_attention(n, s.past, s.Hq, s.Hkv, s.D, static_cast<float>(s.scale), q, k_cache, v_cache, out);
    return;
#else
    no_cuda_kernel("decode_attention");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(q.dtype(), T,
                        cpu::decode_attention<T>(n, s.past, s.Hq, s.Hkv, s.D, q.ptr<T>(), k_cache.ptr<T>(),
                                                 v_cache.ptr<T>(), static_cast<T>(s.scale), out.ptr<T>()));
}

}  // namespace st
