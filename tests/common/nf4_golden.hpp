// The NF4 golden fixture (tests/golden/nf4_golden.h5, written by make_nf4_golden.py from a
// PyTorch re-implementation of bitsandbytes' NF4) and the check that shardtune's quantizer on a
// given device reproduces its codes, absmax layout and dequantized values bit for bit.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.hpp"

namespace st::test {

struct Nf4GoldenCase {
  std::string name;
  int64_t rows = 0, cols = 0, block = 0;
  bool double_quant = false;
  std::vector<uint16_t> w_bf16, dequantized_bf16;
  std::vector<uint8_t> codes, qabsmax;
  std::vector<float> absmax, absmax2;
  float offset = 0;
};

struct Nf4Golden {
  std::string path;
  std::vector<float> dynamic_map;
  std::vector<Nf4GoldenCase> cases;
};

// The fixture's path; loading throws if it is missing or malformed.
std::string nf4_golden_path();
Nf4Golden load_nf4_golden();
// Quantize the case's bf16 weight on `device` (input dtype bf16, as bitsandbytes quantizes a
// bf16 checkpoint) and EXPECT: the codes (and absmax without double quantization) bit-equal to
// the fixture; with double quantization, the offset within nf4_offset_tolerance of the fixture's
// and of the exact mean (two f32 sums in different orders), the second level bit-equal to the
// fixture's given the fixture's offset, and to the CPU's given this device's; the dequantized
// bf16 weight of the fixture's quantized state bit-equal to the fixture's.
void check_nf4_golden_case(const Nf4GoldenCase& c, Device device);
// The largest difference between two f32 means of n values >= 0 (summed in any of the orders
// described in nf4_golden.cpp) and the exact mean `mean`.
double nf4_offset_tolerance(int64_t n, double mean);

}  // namespace st::test
