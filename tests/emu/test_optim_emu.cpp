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

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
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

// The f32-master kernel (every training run's AdamW): the launcher's table builder (chunk_table,
// as adamw_update_multi fills it), the 4-wide path and its alignment test, tails, decay flags and
// the bf16 working copy, against the CPU op (to f32 rounding: the two translation units may
// contract multiply-adds differently) and the copy against the kernel's own values, bit for bit.
TEST(EmuOptim, F32MasterAdamWKernelEqualsTheCpuOp) {
  Rng rng(62);
  struct Case { int64_t n, offset; bool decay, working; };  // offset in floats (16-byte alignment: multiples of 4)
  const std::vector<Case> cases = {{1, 0, true, true},     {7, 1, false, false}, {8192, 0, true, true},
                                   {8195, 4, true, false}, {20001, 2, false, true}, {0, 0, true, true}};
  auto f32_normal = [&](int64_t n, double scale, bool positive) {
    Tensor t = Tensor::empty({n}, DType::f32);
    for (int64_t i = 0; i < n; ++i) {
      const double x = scale * rng.normal();
      t.ptr<float>()[i] = static_cast<float>(positive ? std::fabs(x) : x);
    }
    return t;
  };
  struct Parts { Tensor p, g, m, v, w; };
  std::vector<Parts> kern, ref;
  for (const Case& c : cases) {
    const int64_t len = c.offset + c.n + 1;
    Parts a{f32_normal(len, 1.0, false), f32_normal(len, 0.1, false), f32_normal(len, 0.01, false),
            f32_normal(len, 0.01, true), Tensor::zeros({len}, DType::bf16)};
    ref.push_back(Parts{a.p.clone(MemCategory::other), a.g.clone(MemCategory::other), a.m.clone(MemCategory::other),
                        a.v.clone(MemCategory::other), a.w.clone(MemCategory::other)});
    kern.push_back(std::move(a));
  }
  std::vector<Tensor> keep_k, keep_r;
  auto views = [&](std::vector<Parts>& side, std::vector<Tensor>& keep) {
    std::vector<AdamWTensors> list;
    keep.clear();
    keep.reserve(5 * cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      for (Tensor* t : {&side[i].p, &side[i].g, &side[i].m, &side[i].v, &side[i].w})
        keep.push_back(t->slice(cases[i].offset, cases[i].offset + cases[i].n));
      Tensor* t = &keep[keep.size() - 5];
      list.push_back(AdamWTensors{t, t + 1, t + 2, t + 3, cases[i].working ? t + 4 : nullptr, cases[i].decay, i});
    }
    return list;
  };
  for (int64_t step = 1; step <= 2; ++step) {
    const AdamWHyper h{1e-3, 0.9, 0.999, 1e-8, 0.01, step, step == 2 ? 0.5 : 1.0, 0};
    const std::vector<AdamWTensors> lk = views(kern, keep_k), lr = views(ref, keep_r);
    std::vector<const AdamWTensors*> pk;
    for (const AdamWTensors& t : lk) pk.push_back(&t);
    int64_t blocks = 0;
    const std::vector<AdamWTensor> table =
        chunk_table<AdamWTensor>(pk, blocks, [](const AdamWTensors& t, int64_t n, int64_t first) {
          AdamWTensor e{t.param->ptr<float>(), t.grad->ptr<float>(), t.m->ptr<float>(), t.v->ptr<float>(),
                        t.working ? static_cast<__nv_bfloat16*>(t.working->data()) : nullptr, n, first,
                        t.weight_decay ? 1 : 0, 0};
          e.vec4 = aligned(e.p, 16) && aligned(e.g, 16) && aligned(e.m, 16) && aligned(e.v, 16) && aligned(e.working, 8);
          return e;
        });
    ASSERT_EQ(table.size(), cases.size() - 1);  // the empty tensor has no entry
    EXPECT_EQ(table[2].vec4, 1);
    EXPECT_EQ(table[4].vec4, 0);  // an 8-byte offset: element by element
    const Coef c = coef(h, h.weight_decay);
    emu::launch(dim3(static_cast<unsigned>(blocks)), dim3(kAdamThreads),
                [&] { adamw_multi_kernel(table.data(), static_cast<int>(table.size()), c); });
    st::adamw_update_multi(lr, h);  // the CPU op (its working copy converted after it)
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("n = " + std::to_string(cases[i].n) + ", offset " + std::to_string(cases[i].offset));
    const int64_t len = cases[i].offset + cases[i].n + 1;
    // Each within a few f32 roundings of its terms' size (m = 0.9 m + 0.1 g cancels: the terms
    // are ~0.1 when m is 1e-5): p ~1, m ~ g ~ 0.1, v ~ g^2 ~ 0.01; an element of another index or
    // step would be off by about the terms themselves.
    const std::tuple<const Tensor*, const Tensor*, double> arrays[] = {
        {&kern[i].p, &ref[i].p, 1.0}, {&kern[i].m, &ref[i].m, 0.1}, {&kern[i].v, &ref[i].v, 0.01}};
    for (const auto& [a, b, terms] : arrays)
      for (int64_t j = 0; j < len; ++j) {
        const float x = a->ptr<float>()[j], y = b->ptr<float>()[j];
        ASSERT_NEAR(x, y, 1e-6 * (std::fabs(y) + terms)) << j;  // guards (outside the view) equal too
      }
    const uint16_t* w = static_cast<const uint16_t*>(kern[i].w.data());
    for (int64_t j = 0; j < len; ++j) {
      const bool inside = j >= cases[i].offset && j < cases[i].offset + cases[i].n;
      const uint16_t want = inside && cases[i].working ? f32_to_bf16(kern[i].p.ptr<float>()[j]) : 0;
      ASSERT_EQ(w[j], want) << j;
    }
  }
}

}  // namespace
}  // namespace st::cuda
