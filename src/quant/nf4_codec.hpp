// The scalar encoders of NF4 and of the 8-bit dynamic map, shared by the CPU reference
// (src/quant/nf4.cpp) and the CUDA kernels (cuda/nf4.cu), so both make the same decisions. No
// expression here has the a * b + c shape a compiler could contract into an FMA.
#pragma once

#include <cstdint>

#include "core/hd.hpp"

namespace st::nf4 {

// The NF4 code of x (already scaled by 1 / absmax): the number of the 15 ascending midpoints
// `mid` that lie strictly below x. A value on a midpoint goes to the lower code; NaN (a block of
// zeros: 0 * (1/0)) compares false everywhere and gives code 0, as in bitsandbytes.
ST_HD uint8_t encode(const float* mid, float x) {
  int lo = 0;
  for (int step = 8; step > 0; step >>= 1)
    if (x > mid[lo + step - 1]) lo += step;
  return static_cast<uint8_t>(lo);
}

// bitsandbytes' dQuantize<STOCHASTIC = 0> over a 256-value ascending map: a 7-step binary
// search from the middle, then the nearer neighbour by the midpoint.
ST_HD uint8_t dynamic_encode(const float* code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) {
    const float mid = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > mid ? upper_pivot : pivot);
  }
  const float mid = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < mid ? lower_pivot : pivot);
}

}  // namespace st::nf4

