// Element types and devices.
//
// f32 is the CPU compute type; f64 is the test-only reference precision (finite-difference
// gradient checks run the same kernels in double); bf16 is the GPU compute type; f16 and bf16
// also appear in checkpoints; i32 holds token ids; u8 holds masks and packed NF4 codes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/hd.hpp"

namespace st {

enum class DType : uint8_t { f32, f64, bf16, f16, i32, i64, u8 };
enum class Device : uint8_t { cpu, cuda };

size_t dtype_size(DType t);
// The precision of what must not be rounded to a 16-bit type: norm statistics, log-sum-exp,
// losses, gradients of trainable parameters, master weights and optimizer state.
inline DType master_dtype(DType compute) {
  return compute == DType::bf16 || compute == DType::f16 ? DType::f32 : compute;
}
// master_weights (deck key): f32 master weights beside 16-bit values, or none: a bf16 parameter
// trains in pure bf16 (no master; gradient and AdamW moments bf16; stochastic rounding of the
// update: train/optimizer.hpp). Values in f32 or f64 are their own master either way.
enum class MasterWeights { f32, none };
// The dtype of a trainable parameter's gradient and AdamW moments for a value of dtype `value`.
inline DType grad_dtype(DType value, MasterWeights mw) {
  return mw == MasterWeights::none && value == DType::bf16 ? DType::bf16 : master_dtype(value);
}
const char* dtype_name(DType t);
const char* device_name(Device d);
bool is_float(DType t);

// bf16 <-> f32: round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
ST_HD float bf16_to_f32(uint16_t h) {  // exact; host and device (the pure-bf16 AdamW element)
  const uint32_t u = static_cast<uint32_t>(h) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
// IEEE half -> f32 (all cases, subnormals included) and f32 -> half (round to nearest even).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace st
