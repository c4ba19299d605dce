// SwiGLU, gated GELU (T5), ReLU and counter-based dropout, elementwise.
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {

using bf16 = __nv_bfloat16;

#define ST_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename T>
__global__ void swiglu_forward_kernel(const T* g, const T* u, T* h, int64_t n) {
  ST_GRID_STRIDE(i, n) {
    const float gv = dev::to_f(g[i]);
    h[i] = dev::from_f<T>(gv / (1.0f + __expf(-gv)) * dev::to_f(u[i]));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* dh, const T* g, const T* u, T* dg, T* du, int64_t n, bool accumulate) {
  ST_GRID_STRIDE(i, n) {
    const float gv = dev::to_f(g[i]), uv = dev::to_f(u[i]), d = dev::to_f(dh[i]);
    const float s = 1.0f / (1.0f + __expf(-gv));
    dg[i] = dev::from_f<T>((accumulate ? dev::to_f(dg[i]) : 0.0f) + d * uv * (s + gv * s * (1.0f - s)));
    du[i] = dev::from_f<T>((accumulate ? dev::to_f(du[i]) : 0.0f) + d * gv * s);
  }
}

// Eight bf16 per thread through 16-byte loads.
union Vec8 {
  uint4 u;
  __nv_bfloat162 h[4];
};

__global__ void swiglu_forward_vec8(const uint4* g, const uint4* u, uint4* h, int64_t n8) {
  ST_GRID_STRIDE(i, n8) {
    Vec8 gv, uv, hv;
    gv.u = g[i];
    uv.u = u[i];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 gf = __bfloat1622float2(gv.h[k]), uf = __bfloat1622float2(uv.h[k]);
      hv.h[k] = __floats2bfloat162_rn(gf.x / (1.0f + __expf(-gf.x)) * uf.x, gf.y / (1.0f + __expf(-gf.y)) * uf.y);
    }
    h[i] = hv.u;
  }
}

__global__ void swiglu_backward_vec8(const uint4* dh, const uint4* g, const uint4* u, uint4* dg, uint4* du, int64_t n8,
                                     bool accumulate) {
  ST_GRID_STRIDE(i, n8) {
    Vec8 dhv, gv, uv, dgv, duv;
    dhv.u = dh[i];
    gv.u = g[i];
    uv.u = u[i];
    dgv.u = accumulate ? dg[i] : make_uint4(0, 0, 0, 0);
    duv.u = accumulate ? du[i] : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 d = __bfloat1622float2(dhv.h[k]), gf = __bfloat1622float2(gv.h[k]), uf = __bfloat1622float2(uv.h[k]);
      const float2 dg0 = __bfloat1622float2(dgv.h[k]), du0 = __bfloat1622float2(duv.h[k]);
      const float sx = 1.0f / (1.0f + __expf(-gf.x)), sy = 1.0f / (1.0f + __expf(-gf.y));
      dgv.h[k] = __floats2bfloat162_rn(dg0.x + d.x * uf.x * (sx + gf.x * sx * (1.0f - sx)),
                                       dg0.y + d.y * uf.y * (sy + gf.y * sy * (1.0f - sy)));
      duv.h[k] = __floats2bfloat162_rn(du0.x + d.x * gf.x * sx, du0.y + d.y * gf.y * sy);
    }
    dg[i] = dgv.u;
    du[i] = duv.u;
  }
}

bool vec8_ok(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % 8 != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

template <typename T>
__global__ void dropout_kernel(const T* x, T* out, int64_t n, float p, float keep_scale, uint64_t key, bool accumulate) {
  ST_GRID_STRIDE(i, n) {
    const float v = dev::counter_uniform_keyed(key, static_cast<uint64_t>(i)) >= p ? dev::to_f(x[i]) * keep_scale : 0.0f;
    out[i] = dev::from_f<T>(accumulate ? dev::to_f(out[i]) + v : v);
  }
}

}  // namespace

void swiglu_forward(const Tensor& g, const Tensor& u, Tensor& h) {
  const int64_t n = h.numel();
  if (n == 0) return;
  if (h.dtype() == DType::bf16 && vec8_ok(n, {g.data(), u.data(), h.data()}))
    swiglu_forward_vec8<<<grid_1d(n / 8, 256), 256, 0, stream()>>>(static_cast<const uint4*>(g.data()),
                                                                     static_cast<const uint4*>(u.data()),
                                                                     static_cast<uint4*>(h.data()), n / 8);
  else if (h.dtype() == DType::bf16)
    swiglu_forward_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(static_cast<const bf16*>(g.data()), static_cast<const bf16*>(u.data()),
                                                                   static_cast<bf16*>(h.data()), n);
  else
    swiglu_forward_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(g.ptr<float>(), u.ptr<float>(), h.ptr<float>(), n);
  ST_CUDA_LAUNCH_CHECK("swiglu_forward");
}

void swiglu_backward(const Tensor& dh, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du, bool accumulate) {
  const int64_t n = dh.numel();
  if (n == 0) return;
  if (dh.dtype() == DType::bf16 && vec8_ok(n, {dh.data(), g.data(), u.data(), dg.data(), du.data()}))
    swiglu_backward_vec8<<<grid_1d(n / 8, 256), 256, 0, stream()>>>(
        static_cast<const uint4*>(dh.data()), static_cast<const uint4*>(g.data()), static_cast<const uint4*>(u.data()),
        static_cast<uint4*>(dg.data()), static_cast<uint4*>(du.data()), n / 8, accumulate);
  else if (dh.dtype() == DType::bf16)
    swiglu_backward_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(
        static_cast<const bf16*>(dh.data()), static_cast<const bf16*>(g.data()), static_cast<const bf16*>(u.data()),
        static_cast<bf16*>(dg.data()), static_cast<bf16*>(du.data()), n, accumulate);
  else
    swiglu_backward_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(dh.ptr<float>(), g.ptr<float>(), u.ptr<float>(),
                                                                    dg.ptr<float>(), du.ptr<float>(), n, accumulate);
  ST_CUDA_LAUNCH_CHECK("swiglu_backward");
}

namespace {
__device__ __forceinline__ void gelu_tanh(float x, float* v, float* d) {
  const float k = 0.7978845608028654f, c = 0.044715f;
  const float t = tanhf(k * (x + c * x * x * x));
  *v = 0.5f * x * (1.0f + t);
  *d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * c * x * x);
}

template <typename T>
__global__ void geglu_forward_kernel(const T* g, const T* u, T* h, int64_t n) {
  ST_GRID_STRIDE(i, n) {
    float v, d;
    gelu_tanh(dev::to_f(g[i]), &v, &d);
    h[i] = dev::from_f<T>(v * dev::to_f(u[i]));
  }
}

template <typename T>
__global__ void geglu_backward_kernel(const T* dh, const T* g, const T* u, T* dg, T* du, int64_t n, bool accumulate) {
  ST_GRID_STRIDE(i, n) {
    float v, d;
    gelu_tanh(dev::to_f(g[i]), &v, &d);
    const float dhv = dev::to_f(dh[i]);
    dg[i] = dev::from_f<T>((accumulate ? dev::to_f(dg[i]) : 0.0f) + dhv * dev::to_f(u[i]) * d);
    du[i] = dev::from_f<T>((accumulate ? dev::to_f(du[i]) : 0.0f) + dhv * v);
  }
}

template <typename T>
__global__ void relu_forward_kernel(const T* x, T* h, int64_t n) {
  ST_GRID_STRIDE(i, n) h[i] = dev::from_f<T>(fmaxf(dev::to_f(x[i]), 0.0f));
}

template <typename T>
__global__ void relu_backward_kernel(const T* dh, const T* x, T* dx, int64_t n, bool accumulate) {
  ST_GRID_STRIDE(i, n) {
    const float d = dev::to_f(x[i]) > 0.0f ? dev::to_f(dh[i]) : 0.0f;
    dx[i] = dev::from_f<T>((accumulate ? dev::to_f(dx[i]) : 0.0f) + d);
  }
}

// Runs f with the tensors' element pointers typed as bf16 or float.
template <typename F>
void typed(DType dt, F f) {
  if (dt == DType::bf16) f(static_cast<bf16*>(nullptr));
  else if (dt == DType::f32) f(static_cast<float*>(nullptr));
  else ST_THROW("CUDA activation: unsupported dtype ", dtype_name(dt));
}
template <typename T>
T* as(const Tensor& t) { return static_cast<T*>(t.data()); }
}  // namespace

void geglu_forward(const Tensor& g, const Tensor& u, Tensor& h) {
  const int64_t n = h.numel();
  if (n == 0) return;
  typed(h.dtype(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    geglu_forward_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(as<T>(g), as<T>(u), as<T>(h), n);
  });
  ST_CUDA_LAUNCH_CHECK("geglu_forward");
}

void geglu_backward(const Tensor& dh, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du, bool accumulate) {
  const int64_t n = dh.numel();
  if (n == 0) return;
  typed(dh.dtype(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    geglu_backward_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(as<T>(dh), as<T>(g), as<T>(u), as<T>(dg), as<T>(du), n,
                                                                   accumulate);
  });
  ST_CUDA_LAUNCH_CHECK("geglu_backward");
}

void relu_forward(const Tensor& x, Tensor& h) {
  const int64_t n = h.numel();
  if (n == 0) return;
  typed(h.dtype(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    relu_forward_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(as<T>(x), as<T>(h), n);
  });
  ST_CUDA_LAUNCH_CHECK("relu_forward");
}

void relu_backward(const Tensor& dh, const Tensor& x, Tensor& dx, bool accumulate) {
  const int64_t n = dh.numel();
  if (n == 0) return;
  typed(dh.dtype(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    relu_backward_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(as<T>(dh), as<T>(x), as<T>(dx), n, accumulate);
  });
  ST_CUDA_LAUNCH_CHECK("relu_backward");
}

void dropout_apply(const Tensor& x, Tensor& out, double p, uint64_t key, bool accumulate) {
  const int64_t n = x.numel();
  if (n == 0) return;
  const float keep_scale = static_cast<float>(1.0 / (1.0 - p));
  if (x.dtype() == DType::bf16)
    dropout_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(static_cast<const bf16*>(x.data()), static_cast<bf16*>(out.data()), n,
                                                            static_cast<float>(p), keep_scale, key, accumulate);
  else
    dropout_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(x.ptr<float>(), out.ptr<float>(), n, static_cast<float>(p),
                                                            keep_scale, key, accumulate);
  ST_CUDA_LAUNCH_CHECK("dropout_apply");
}

}  // namespace st::cuda
