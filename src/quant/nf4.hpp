// 4-bit NormalFloat (NF4) storage of frozen weights, bit-compatible with bitsandbytes'
// quantize_4bit(quant_type="nf4") (Dettmers et al. 2023, QLoRA):
//
//  * the weight is read as one flat array in row-major order (W [out, in] -> n = out*in values)
//    and cut into blocks of `block` consecutive values (64 by default; 64, 128 or 256);
//  * per block, absmax = max |w| (f32) and every value becomes the index of the nearest of the 16
//    NF4 code values after scaling by 1/absmax (x * (1/absmax), as the bitsandbytes kernel does:
//    a reciprocal, then a product); nearest = compare against the midpoints between neighbouring
//    code values, a value exactly on a midpoint goes to the lower code;
//  * two codes per byte, the first (even-index) value in the high nibble;
//  * double quantization (on by default): the per-block absmax values have their mean subtracted
//    (offset, one f32 per tensor) and are stored as 8-bit indices into bitsandbytes' signed
//    dynamic map (256 values), blockwise with block 256 and an f32 absmax per 256 absmax values
//    (the same reciprocal scaling, the same binary search with midpoint rounding);
//  * dequantization: absmax_b = dynamic[qabsmax_b] * absmax2_{b/256} + offset (two roundings,
//    no fused multiply-add), w = nf4[code] * absmax_b in f32, then rounded to the target dtype.
//
// CPU (reference) and CUDA kernels produce the same bits. The one place where shardtune differs
// from bitsandbytes is the offset: the mean of the absmax values is summed in double in a fixed
// order (so that CPU and GPU agree exactly) where bitsandbytes takes torch's f32 mean; the two
// can differ in the last bit of the offset.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "core/tensor.hpp"

namespace st {

struct Nf4Config {
  int64_t block = 64;        // values per absmax: 64, 128 or 256
  bool double_quant = true;  // 8-bit absmax values (block 256) around their mean
  static constexpr int64_t kBlock2 = 256;  // absmax values per second-level absmax
  void validate(const std::string& what) const;
};

// The 16 NF4 code values (ascending; index = code), and the signed dynamic map of 256 values
// (bitsandbytes' create_dynamic_map(signed=True), ascending; index = 8-bit code).
const std::array<float, 16>& nf4_code_values();
const std::array<float, 256>& dynamic_map_signed();

// A quantized weight of `numel` values (logical shape [rows, cols]) on one device.
struct Nf4Tensor {
  int64_t rows = 0, cols = 0;
  Nf4Config cfg;
  Tensor codes;    // u8 [ceil(numel / 2)]
  Tensor absmax;   // f32 [nblocks]              (without double quantization)
  Tensor qabsmax;  // u8  [nblocks]              (with double quantization)
  Tensor absmax2;  // f32 [ceil(nblocks / 256)]  (with double quantization)
  float offset = 0;  // mean of the absmax values (with double quantization)

  int64_t numel() const { return rows * cols; }
  int64_t nblocks() const { return (numel() + cfg.block - 1) / cfg.block; }
  Device device() const { return codes.device(); }
  size_t nbytes() const;  // codes + absmax (or qabsmax + absmax2 + offset)
};

// Storage for a [rows, cols] weight on `device` (MemCategory::weights), contents undefined.
Nf4Tensor nf4_allocate(int64_t rows, int64_t cols, const Nf4Config& cfg, Device device);
// Quantize w (f32, f64 or bf16; same device; numel == q.numel()) into q. f64 values are first
// rounded to f32, as bitsandbytes casts its input to float.
void nf4_quantize(const Tensor& w, Nf4Tensor& q);
// out (f32, f64 or bf16, same device, numel == q.numel()) = dequantized q.
void nf4_dequantize(const Nf4Tensor& q, Tensor& out);
// The absmax values as dequantization uses them (f32, on the CPU): with double quantization
// dynamic[qabsmax] * absmax2 + offset, else a copy of absmax.
Tensor nf4_effective_absmax(const Nf4Tensor& q);

// Scalar pieces, exposed for the tests and shared by the CPU kernels.
uint8_t nf4_encode(float x);                             // x already scaled to [-1, 1]
uint8_t dynamic_encode(const float* code256, float x);   // bitsandbytes' dQuantize<0>
// The double-quantization offset: the mean of n f32 values as bitsandbytes computes it (an f32
// sum times the f32 reciprocal of n, as torch.mean on the GPU), the sum in a fixed order the
// CUDA kernel repeats bit for bit (torch's own order differs by rounding; see nf4.cpp).
float nf4_fixed_order_mean(const float* x, int64_t n);
// The second level of double quantization (CPU): absmax - offset quantized blockwise (256) with
// the signed dynamic map into qabsmax [nb] and absmax2 [ceil(nb / 256)].
void nf4_double_quantize(const float* absmax, int64_t nb, float offset, uint8_t* qabsmax, float* absmax2);
constexpr int kMeanLanes = 256;

}  // namespace st
