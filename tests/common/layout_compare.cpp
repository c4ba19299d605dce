#include "tests/common/layout_compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "adapters/lora.hpp"
#include "train/optimizer.hpp"

namespace st::test {

double max_rel_diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  const Tensor a64 = a.to_cpu(DType::f64), b64 = b.to_cpu(DType::f64);
  double diff = 0, ref = 0;
  for (int64_t i = 0; i < a64.numel(); ++i) {
    const double x = a64.ptr<double>()[i], y = b64.ptr<double>()[i];
    if (std::isnan(x) != std::isnan(y)) return INFINITY;
    diff = std::max(diff, std::fabs(x - y));
    ref = std::max(ref, std::fabs(y));
  }
  return ref == 0 ? diff : diff / ref;
}

TpGroup world_tp() {
  Runtime& rt = runtime();
  return TpGroup{rt.world.get(), rt.world_size, rt.world_rank};
}

Runtime world_grid(int tp) {
  Runtime grid;
  grid.world_rank = runtime().world_rank;
  grid.world_size = runtime().world_size;
  runtime_make_grid(grid, tp);
  return grid;
}

TpGroup grid_tp(const Runtime& grid) { return TpGroup{grid.tp_comm.get(), grid.tp, grid.tp_rank}; }

void expect_adamw_steps_match(const std::vector<ParamRef>& ref, const std::vector<ParamRef>& got, Comm& dp,
                              const std::function<double(int)>& ref_loss, const std::function<double(int)>& local_loss,
                              double tol) {
  const double lr = 1e-2;
  AdamW ref_opt(ref, 0.9, 0.999, 1e-8, 0.1), opt(got, 0.9, 0.999, 1e-8, 0.1);
  for (int step = 0; step < 2; ++step) {
    ref_opt.zero_grad();
    const double want = ref_loss(step);
    ref_opt.step(lr);
    opt.zero_grad();
    const double loss = dp.all_reduce_sum(local_loss(step));
    opt.step(lr);
    EXPECT_LT(std::fabs(loss - want), tol * std::fabs(want)) << "step " << step << ": " << loss << " vs " << want;
  }
}

double expect_gathered_grads_match(const std::vector<WeightSlot>& ref, const std::vector<WeightSlot>& got,
                                   const TpGroup& tp, double tol) {
  EXPECT_EQ(ref.size(), got.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(ref.size(), got.size()); ++i) {
    EXPECT_EQ(got[i].name, ref[i].name);
    EXPECT_EQ(max_rel_diff(gather_full(tp, got[i], DType::f64), *ref[i].tensor), 0.0) << ref[i].name;
    const double e = max_rel_diff(tp_gather_full(*got[i].grad, got[i].split, tp, DType::f64), *ref[i].grad);
    EXPECT_LT(e, tol) << ref[i].name;
    worst = std::max(worst, e);
  }
  return worst;
}

double expect_weights_match(const std::vector<WeightSlot>& ref, const std::vector<WeightSlot>& got, const TpGroup& tp,
                            double tol) {
  EXPECT_EQ(ref.size(), got.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(ref.size(), got.size()); ++i) {
    const double e = max_rel_diff(gather_full(tp, got[i], DType::f64), *ref[i].tensor);
    EXPECT_LT(e, tol) << ref[i].name;
    worst = std::max(worst, e);
  }
  return worst;
}

void attach_test_lora(const std::vector<Linear*>& linears, const std::vector<std::vector<Linear*>>& input_groups) {
  LoraConfig lc;
  lc.r = 2;
  lc.alpha = 4;
  for (Linear* lin : linears)
    if (lin->name != "lm_head") lin->adapter = std::make_unique<LoraAdapter>(*lin, lc, 64, 3);
  lora_join_groups(input_groups);
}

double expect_lora_match(const std::vector<Linear*>& ref, const std::vector<Linear*>& got, const TpGroup& tp,
                         LoraPart part, double tol) {
  const bool masters = part == LoraPart::masters;
  const char* suffix = masters ? "" : " grad";
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!ref[i]->adapter) continue;
    auto* ra = dynamic_cast<LoraAdapter*>(ref[i]->adapter.get());
    auto* ma = dynamic_cast<LoraAdapter*>(got[i]->adapter.get());
    const TpMode a_split = got[i]->tp_mode == TpMode::row ? TpMode::row : TpMode::none;
    const TpMode b_split = got[i]->tp_mode == TpMode::column ? TpMode::column : TpMode::none;
    const double ea = max_rel_diff(tp_gather_full(masters ? ma->A : ma->dA, a_split, tp, DType::f64), masters ? ra->A : ra->dA);
    const double eb = max_rel_diff(tp_gather_full(masters ? ma->B : ma->dB, b_split, tp, DType::f64), masters ? ra->B : ra->dB);
    EXPECT_LT(ea, tol) << ref[i]->name << " lora_A" << suffix;
    EXPECT_LT(eb, tol) << ref[i]->name << " lora_B" << suffix;
    if (masters) {
      EXPECT_GT(max_rel_diff(ra->B, Tensor::zeros(ra->B.shape(), DType::f64)), 0.0) << "B trained";
    }
    worst = std::max({worst, ea, eb});
  }
  return worst;
}

}  // namespace st::test
