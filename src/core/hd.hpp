// ST_HD: a function the CUDA kernels and the host code share (one definition, the same
// arithmetic on both sides): __host__ __device__ under nvcc, plain inline elsewhere.
#pragma once

#if defined(__CUDACC__)
#define ST_HD __host__ __device__ __forceinline__
#else
#define ST_HD inline
#endif
