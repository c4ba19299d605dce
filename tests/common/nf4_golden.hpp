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
// bf16 checkpoint), dequantize to bf16, and EXPECT every byte and float equal to the fixture.
void check_nf4_golden_case(const Nf4GoldenCase& c, Device device);

}  // namespace st::test
