// ZeRO-3 with master_weights = none (pure bf16), run under mpirun -np 2 and 4: the engine keeps
// bf16 gradient shards and no master, reduce-scatters bf16, and AdamW's stochastic rounding draws
// each element's bits by its place in its group's buffer. So ZeRO-3 over the world and ZeRO-3 on
// one rank (fed the summed gradients) end with the same bits. The gradients are small multiples of
// 2^-4, whose sums over ranks and micro-batches are exact in bf16, so any difference is the
// engine's or the rounding's, not the arithmetic's. (The CPU trains f32 models, where
// master_weights = none changes nothing: this drives the engine on bf16 tensors directly.)
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/rng.hpp"
#include "model/param_table.hpp"
#include "parallel/comm.hpp"
#include "parallel/runtime.hpp"
#include "parallel/zero3.hpp"
#include "train/optimizer.hpp"

namespace st {
namespace {

// An embedding, a layer (a matrix, a norm and a bias: decay and no-decay groups) and a head, in
// bf16 on the CPU, with bf16 gradients: what enable_base_training makes under master_weights = none.
struct Bf16Model {
  struct Spec {
    const char* name;
    Shape shape;
    int unit;
    bool decay;
  };
  static constexpr int kN = 5;
  const Spec specs[kN] = {{"embed.weight", {37, 24}, 0, true},
                          {"layers.0.w", {20, 24}, 1, true},
                          {"layers.0.norm", {24}, 1, false},
                          {"layers.0.bias", {20}, 1, false},
                          {"head.weight", {37, 24}, 2, true}};
  Tensor values[kN], grads[kN];
  ModelHooks* hooks = nullptr;
  ParamTable table;

  Bf16Model() {
    table.num_units = 3;
    table.unit_names = {"embed", "layers.0", "head"};
    table.embed_unit = 0;
    table.head_unit = 2;
    table.base_trainable = true;
    table.hooks = &hooks;
    table.dtype = DType::bf16;
    table.device = Device::cpu;
    for (int i = 0; i < kN; ++i) {
      values[i] = Tensor::empty(specs[i].shape, DType::bf16);
      Rng rng(100 + static_cast<uint64_t>(i));  // the same model on every rank
      uint16_t* v = static_cast<uint16_t*>(values[i].data());
      for (int64_t k = 0; k < values[i].numel(); ++k) v[k] = f32_to_bf16(static_cast<float>(0.5 * rng.normal()));
      grads[i] = Tensor::zeros(specs[i].shape, DType::bf16);
      ParamEntry e;
      e.name = specs[i].name;
      e.tensor = &values[i];
      e.grad = &grads[i];
      e.full_shape = specs[i].shape;
      e.unit = specs[i].unit;
      e.decay = specs[i].decay;
      table.params.push_back(e);
    }
  }
};

// Rank r's gradient of tensor t, element k, in micro-batch `mb` of step `step`: (0..8 - 4) / 16.
float grad_of(int r, int t, int64_t k, int mb, int step) {
  const uint64_t h = splitmix64(counter_key(static_cast<uint64_t>(step * 8 + mb), static_cast<uint64_t>(r * 16 + t)) +
                                static_cast<uint64_t>(k));
  return static_cast<float>(static_cast<int>(h % 9) - 4) / 16.0f;
}

// One backward of the model through the engine's hooks (head first, as the trainer runs it):
// each unit's gradients are written into the slots the engine binds (rank `me`'s contribution,
// or with `ranks` > 1 the sum over that many ranks).
void backward(Zero3& zero, Bf16Model& m, int me, int ranks, int mb, int step) {
  for (int u = 2; u >= 0; --u) {
    zero.before_backward(u);
    for (int t = 0; t < Bf16Model::kN; ++t) {
      if (m.specs[t].unit != u) continue;
      Tensor& g = m.grads[t];
      ASSERT_TRUE(g.defined()) << m.specs[t].name;
      ASSERT_EQ(g.dtype(), DType::bf16);
      uint16_t* p = static_cast<uint16_t*>(g.data());
      for (int64_t k = 0; k < g.numel(); ++k) {
        float s = 0;
        for (int r = 0; r < ranks; ++r) s += grad_of(ranks > 1 ? r : me, t, k, mb, step);
        p[k] = f32_to_bf16(s);  // exact: a multiple of 1/16 below 16 in magnitude
      }
    }
    zero.after_backward(u);
  }
}

TEST(Zero3PureBf16, ShardsTrainToTheBitsOfOneRank) {
  Runtime& rt = runtime();
  Comm& world = *rt.world;
  const std::unique_ptr<Comm> self = make_mpi_comm(MPI_COMM_SELF, "self");
  const int P = world.size(), me = world.rank();
  Bf16Model a, b;  // a: ZeRO-3 over the world; b: ZeRO-3 on this rank alone, with the summed gradients
  const std::vector<uint16_t> before(static_cast<const uint16_t*>(a.values[1].data()),
                                     static_cast<const uint16_t*>(a.values[1].data()) + a.values[1].numel());
  Zero3 za(a.table, world, true), zb(b.table, *self, true);
  // No master, bf16 gradient shards.
  EXPECT_EQ(za.bytes().master, 0u);
  EXPECT_EQ(za.bytes().grads, za.bytes().working);
  const std::vector<ParamRef> pa = za.params(), pb = zb.params();
  ASSERT_EQ(pa.size(), pb.size());
  ASSERT_EQ(pa.size(), 4u);  // embed; layer decay and no decay; head
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].name, pb[i].name);
    EXPECT_EQ(pa[i].grad->dtype(), DType::bf16) << pa[i].name;
    EXPECT_EQ(pa[i].working, nullptr) << pa[i].name;
    EXPECT_EQ(pa[i].first_element, static_cast<uint64_t>(me * pa[i].value->numel())) << pa[i].name;
    EXPECT_EQ(pb[i].first_element, 0u);
  }
  AdamW oa(pa, 0.9, 0.999, 1e-8, 0.1, 77), ob(pb, 0.9, 0.999, 1e-8, 0.1, 77);
  for (const auto& [name, t] : oa.state_tensors()) {
    EXPECT_EQ(name.find(".master"), std::string::npos) << name;
    EXPECT_EQ(t->dtype(), DType::bf16) << name;
  }
  for (int step = 1; step <= 3; ++step) {
    oa.zero_grad();
    ob.zero_grad();
    for (int mb = 0; mb < 2; ++mb) {  // two micro-batches: the shards add in bf16
      backward(za, a, me, 1, mb, step);
      backward(zb, b, me, P, mb, step);
    }
    // The summed gradient shard equals the one-rank gradient's slice, bit for bit.
    for (size_t i = 0; i < pa.size(); ++i) {
      const int64_t n = pa[i].grad->numel();
      const uint16_t* ga = static_cast<const uint16_t*>(pa[i].grad->data());
      const uint16_t* gb = static_cast<const uint16_t*>(pb[i].grad->data()) + me * n;
      const int64_t have = std::min<int64_t>(n, pb[i].grad->numel() - me * n);  // b's padding is shorter
      EXPECT_EQ(std::memcmp(ga, gb, static_cast<size_t>(std::max<int64_t>(have, 0)) * 2), 0)
          << pa[i].name << " step " << step;
    }
    oa.step(1e-2);
    ob.step(1e-2);
  }
  za.gather_all_for_save();
  zb.gather_all_for_save();
  for (int t = 0; t < Bf16Model::kN; ++t) {
    ASSERT_EQ(a.values[t].dtype(), DType::bf16);
    EXPECT_EQ(std::memcmp(a.values[t].data(), b.values[t].data(), a.values[t].nbytes()), 0) << a.specs[t].name;
  }
  const uint16_t* after = static_cast<const uint16_t*>(a.values[1].data());
  int64_t moved = 0;
  for (size_t k = 0; k < before.size(); ++k) moved += after[k] != before[k];
  EXPECT_GT(moved, static_cast<int64_t>(before.size()) / 2);  // it trained
  if (me == 0) std::printf("[zero3 pure bf16 dp %d] %lld of %zu layer weights moved, every tensor equal to one rank's\n",
                           P, static_cast<long long>(moved), before.size());
}

}  // namespace
}  // namespace st
