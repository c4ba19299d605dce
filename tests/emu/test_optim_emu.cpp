// cuda/optim.cu's pure-bf16 AdamW kernel (master_weights = none) on the CPU emulator
// (tests/emu/cuda_emu.hpp), fed the launcher's own table (adamw_bf16_table): its chunking, the
// 4-wide path and its alignment test, the tails, each tensor's stochastic-rounding key (its index
// and first element in the table, the step's key an argument) and decay flag, against the CPU op bit for bit. (The emulator compiles the kernel as host code, so the
// element arithmetic is the CPU's here; the device's spelled-out roundings are equal by
// construction, adamw::update_f32_exact, and checked on a GPU by CudaPureBf16.AdamWMatchesTheCpuBitwise.)
#define ST_CUDA_EMU 1
#include "tests/emu/cuda_emu.hpp"
// clang-format off
#include "cuda/optim.cu"
// clang-format on

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/rng.hpp"

namespace st::cuda {
namespace {

// bf16 values of Normal(0, scale) (|x| for `positive`) in a CPU tensor of n elements.
Tensor bf16_normal(int64_t n, Rng& rng, double scale, bool positive = false) {
  Tensor t = Tensor::empty({n}, DType::bf16);
  for (int64_t i = 0; i < n; ++i) {
    const double x = scale * rng.normal();
    static_cast<uint16_t*>(t.data())[i] = f32_to_bf16(static_cast<float>(positive ? std::fabs(x) : x));
  }
  return t;
}

TEST(EmuOptim, PureBf16AdamWKernelEqualsTheCpuOp) {
  Rng rng(61);
  struct Case { int64_t n, offset; bool decay; };  // offset: elements before the view (4-wide needs 8-byte alignment)
  const std::vector<Case> cases = {{1, 0, true}, {7, 1, false}, {8192, 0, true}, {8195, 4, true}, {20001, 2, false}, {0, 0, true}};
  struct Parts { Tensor p, g, m, v; };
  std::vector<Parts> kern, ref;
  for (const Case& c : cases) {
    const int64_t len = c.offset + c.n + 1;  // a guard after the view
    Parts a{bf16_normal(len, rng, 1.0), bf16_normal(len, rng, 0.1), bf16_normal(len, rng, 0.01),
            bf16_normal(len, rng, 0.01, true)};
    ref.push_back(Parts{a.p.clone(MemCategory::other), a.g.clone(MemCategory::other), a.m.clone(MemCategory::other),
                        a.v.clone(MemCategory::other)});
    kern.push_back(std::move(a));
  }
  auto views = [&](std::vector<Parts>& side, std::vector<Tensor>& keep) {
    std::vector<AdamWTensors> list;
    keep.clear();
    keep.reserve(4 * cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      for (Tensor* t : {&side[i].p, &side[i].g, &side[i].m, &side[i].v})
        keep.push_back(t->slice(cases[i].offset, cases[i].offset + cases[i].n));
      Tensor* t = &keep[keep.size() - 4];
      list.push_back(AdamWTensors{t, t + 1, t + 2, t + 3, nullptr, cases[i].decay, 3 + i, (i % 2) * 7919 * i});
    }
    return list;
  };
  std::vector<Tensor> keep_k, keep_r;
  std::vector<AdamWBf16Tensor> first_table;
  for (int64_t step = 1; step <= 2; ++step) {
    AdamWHyper h{1e-3, 0.9, 0.999, 1e-8, 0.01, step, step == 2 ? 0.5 : 1.0, 17};
    const std::vector<AdamWTensors> lk = views(kern, keep_k), lr = views(ref, keep_r);
    std::vector<const AdamWTensors*> pk;
    for (const AdamWTensors& t : lk) pk.push_back(&t);
    int64_t blocks = 0;
    const std::vector<AdamWBf16Tensor> table = adamw_bf16_table(pk, blocks);
    ASSERT_EQ(table.size(), cases.size() - 1);  // the empty tensor has no entry
    EXPECT_EQ(table[2].vec4, 1);
    EXPECT_EQ(table[4].vec4, 0);  // a 4-byte offset: element by element
    // Nothing of the step in the table: device_table uploads it once for the run.
    if (step == 1) first_table = table;
    ASSERT_EQ(table.size(), first_table.size());
    EXPECT_EQ(std::memcmp(table.data(), first_table.data(), table.size() * sizeof(AdamWBf16Tensor)), 0);
    const Coef c = coef(h, h.weight_decay);
    emu::launch(dim3(static_cast<unsigned>(blocks)), dim3(kAdamThreads),
                [&] { adamw_bf16_multi_kernel(table.data(), static_cast<int>(table.size()), c, step_key(h)); });
    st::adamw_update_multi(lr, h);  // the CPU op
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("n = " + std::to_string(cases[i].n) + ", offset " + std::to_string(cases[i].offset));
    for (const auto& [a, b] : {std::pair{&kern[i].p, &ref[i].p}, {&kern[i].m, &ref[i].m}, {&kern[i].v, &ref[i].v}})
      EXPECT_EQ(std::memcmp(a->data(), b->data(), a->nbytes()), 0);  // views and guards
  }
}

}  // namespace
}  // namespace st::cuda
