// CUDA runtime glue: error checking through the one fatal path, the device allocator (with
// the same per-category accounting and cap as the CPU one), and device memory primitives.
#pragma once

#include <cuda_runtime.h>

#include "core/error.hpp"

#define ST_CUDA_CHECK(call)                                                                   \
  do {                                                                                        \
    cudaError_t st_err_ = (call);                                                             \
    if (st_err_ != cudaSuccess)                                                               \
      ST_THROW("CUDA error ", cudaGetErrorName(st_err_), " (", cudaGetErrorString(st_err_),   \
               ") in ", #call);                                                               \
  } while (0)

namespace st::cuda {

// Number of visible CUDA devices (0 when there is no driver or no GPU; never throws).
int device_count();
// Select the device for this process (local rank modulo device count) and report it.
void select_device(int local_rank);

}  // namespace st::cuda
