// NF4 on the GPU: bit-equal to the PyTorch re-implementation of bitsandbytes (the golden
// fixture) and to the CPU reference on random shapes (odd sizes, partial blocks, every block
// size, with and without double quantization, bf16 and f32 input).
#include <gtest/gtest.h>

#include <cstring>

#include "quant/nf4.hpp"
#include "tests/common/gradcheck.hpp"
#include "tests/common/nf4_golden.hpp"
#include "tests/gpu/gpu_util.hpp"

namespace st {
namespace {

TEST(CudaNf4, MatchesTheGoldenPyTorchReimplementation) {
  ST_REQUIRE_GPU();
  const test::Nf4Golden g = test::load_nf4_golden();
  for (const auto& c : g.cases) test::check_nf4_golden_case(c, Device::cuda);
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const Tensor h = t.to_cpu(t.dtype());
  std::vector<uint8_t> v(h.nbytes());
  std::memcpy(v.data(), h.data(), h.nbytes());
  return v;
}

TEST(CudaNf4, CodesAndDequantizedValuesEqualTheCpu) {
  ST_REQUIRE_GPU();
  Rng rng(99);
  struct Case { int64_t rows, cols, block; bool dq; DType in; };
  const Case cases[] = {{1, 64, 64, true, DType::bf16},     {3, 7, 64, true, DType::bf16},
                        {77, 129, 64, true, DType::bf16},   {130, 301, 128, false, DType::bf16},
                        {255, 257, 256, true, DType::f32},  {512, 1000, 64, true, DType::f32},
                        {1000, 1023, 64, true, DType::bf16}, {64, 4096, 128, true, DType::bf16}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << c.rows << "x" << c.cols << " block " << c.block << (c.dq ? " dq " : " ")
                                    << dtype_name(c.in));
    Tensor w = test::random_f32({c.rows, c.cols}, rng, 0.05);
    for (int64_t i = 0; i < 20; ++i) w.ptr<float>()[rng.below(static_cast<uint64_t>(w.numel()))] *= 20.0f;
    Tensor w_in = w.to_cpu(c.in);  // the CPU quantizes the same input values (bf16 or f32)
    Tensor w_dev = Tensor::empty(w.shape(), c.in, Device::cuda);
    w_dev.copy_from(w_in);
    Nf4Config cfg;
    cfg.block = c.block;
    cfg.double_quant = c.dq;
    Nf4Tensor qc = nf4_allocate(c.rows, c.cols, cfg, Device::cpu), qg = nf4_allocate(c.rows, c.cols, cfg, Device::cuda);
    nf4_quantize(w_in, qc);
    nf4_quantize(w_dev, qg);
    EXPECT_EQ(bytes_of(qg.codes), bytes_of(qc.codes));
    if (c.dq) {
      EXPECT_EQ(qg.offset, qc.offset);
      EXPECT_EQ(bytes_of(qg.qabsmax), bytes_of(qc.qabsmax));
      EXPECT_EQ(bytes_of(qg.absmax2), bytes_of(qc.absmax2));
    } else {
      EXPECT_EQ(bytes_of(qg.absmax), bytes_of(qc.absmax));
    }
    for (DType out : {DType::bf16, DType::f32}) {
      Tensor oc = Tensor::empty(w.shape(), out), og = Tensor::empty(w.shape(), out, Device::cuda);
      nf4_dequantize(qc, oc);
      nf4_dequantize(qg, og);
      EXPECT_EQ(bytes_of(og), bytes_of(oc)) << "dequantized to " << dtype_name(out);
    }
  }
}

}  // namespace
}  // namespace st
