// master_weights = none (pure bf16): the stochastic rounding, the bf16 AdamW update against an
// f64 reference, its unbiasedness over many small steps, its determinism, the optimizer's state
// (no master, bf16 moments), a toy regression trained in pure bf16, and a checkpoint round trip
// with the refusal of a checkpoint written with the other setting. Tolerances follow from the
// precision: bf16 keeps 8 significant bits (an ulp of 2^-7 relative at most), the f32 update
// rounds a few times at 2^-24 each.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/op_trace.hpp"
#include "core/rng.hpp"
#include "data/prepare.hpp"
#include "ops/adamw_element.hpp"
#include "ops/optim.hpp"
#include "tests/common/test_util.hpp"
#include "train/checkpoint.hpp"
#include "train/optimizer.hpp"

namespace st {
namespace {

using test::TempDir;

uint16_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return static_cast<uint16_t>(u >> 16);
}
// The bf16 values either side of an f32 x (equal when x is a bf16 value): truncation, and the
// next bf16 away from zero.
std::pair<double, double> bracket(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const double lo = bf16_to_f32(static_cast<uint16_t>(u >> 16));
  const double hi = (u & 0xffffu) ? bf16_to_f32(static_cast<uint16_t>((u >> 16) + 1)) : lo;
  return {lo, hi};
}
const uint16_t* bits(const Tensor& t) { return static_cast<const uint16_t*>(t.data()); }
double at(const Tensor& t, int64_t i) { return bf16_to_f32(bits(t)[i]); }

// A bf16 CPU tensor of Normal(0, scale) values (|x| for `positive`), from the seed.
Tensor bf16_random(int64_t n, uint64_t seed, double scale, bool positive = false) {
  Rng rng(seed);
  Tensor t = Tensor::empty({n}, DType::bf16);
  uint16_t* p = static_cast<uint16_t*>(t.data());
  for (int64_t i = 0; i < n; ++i) {
    const double x = scale * rng.normal();
    p[i] = f32_to_bf16(static_cast<float>(positive ? std::fabs(x) : x));
  }
  return t;
}
Tensor bf16_filled(int64_t n, float x) {
  Tensor t = Tensor::empty({n}, DType::bf16);
  for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(t.data())[i] = f32_to_bf16(x);
  return t;
}

// The rounding itself: a bf16 value is kept whatever the random bits; otherwise the result is
// one of the two bf16 neighbours, and over all 2^16 values of r it rounds away from zero exactly
// (dropped bits) times: the expectation is x, exactly. NaN stays NaN, infinities stay.
TEST(PureBf16, StochasticRoundingIsExactlyUnbiased) {
  Rng rng(3);
  for (int k = 0; k < 200; ++k) {
    const float x = static_cast<float>(std::ldexp(rng.normal(), static_cast<int>(rng.below(40)) - 20));
    uint32_t u;
    std::memcpy(&u, &x, 4);
    const auto [lo, hi] = bracket(x);
    int64_t up = 0;
    double sum = 0;
    for (uint32_t r = 0; r < 65536; ++r) {
      const double y = bf16_to_f32(adamw::f32_to_bf16_stochastic(x, r));
      ASSERT_TRUE(y == lo || y == hi) << x << " r " << r << " -> " << y;
      up += y != lo;
      sum += y;
    }
    EXPECT_EQ(up, static_cast<int64_t>(u & 0xffffu)) << x;
    EXPECT_EQ(sum / 65536.0, static_cast<double>(x)) << x;  // exact: every term is a multiple of x's f32 ulp
    const float b = bf16_to_f32(bits_of(x));                // a bf16 value: kept
    EXPECT_EQ(adamw::f32_to_bf16_stochastic(b, 0xffffu), bits_of(b));
  }
  EXPECT_TRUE(std::isnan(bf16_to_f32(adamw::f32_to_bf16_stochastic(std::nanf(""), 0xffffu))));
  EXPECT_EQ(bf16_to_f32(adamw::f32_to_bf16_stochastic(INFINITY, 0xffffu)), INFINITY);
  EXPECT_EQ(bf16_to_f32(adamw::f32_to_bf16_stochastic(-INFINITY, 0xffffu)), -INFINITY);
}

// One update of random bf16 values against the torch.optim.AdamW formula evaluated in f64 (with
// the coefficients as the kernels round them to f32: beta1, beta2, lr / bc1, ...): value, m and v
// each land on a bf16 neighbour of the f64 result within the f32 arithmetic's own error, and
// exactly on one of the two neighbours of the f32 result (adamw::update_f32_exact, which the
// kernels compute); both neighbours occur. The f32 error, in units u = 2^-24 of the terms: m
// rounds gs, m b1 and the fma (3u); v rounds gs (twice through gs^2), (1 - b2) gs, v b2 and the
// fma (5u); the value adds sqrt (half of v's), the scaling by 1/sqrt(bc2), the fma with eps,
// m * step, the division (m's 3u) and the subtraction from p decay (itself 1u): under 12u of
// |p decay| + |update|. The bounds below are those plus a third.
TEST(PureBf16, UpdateLandsInTheRoundingBracketOfTheF64Update) {
  const int64_t n = 20000;
  Tensor p = bf16_random(n, 1, 1.0), g = bf16_random(n, 2, 0.1), m = bf16_random(n, 3, 0.05),
         v = bf16_random(n, 4, 0.01, true);
  const Tensor p0 = p.clone(MemCategory::other), m0 = m.clone(MemCategory::other), v0 = v.clone(MemCategory::other);
  const AdamWHyper h{1e-3, 0.9, 0.999, 1e-8, 0.1, 3, 0.5, 77};
  adamw_update_multi({AdamWTensors{&p, &g, &m, &v, nullptr, true, 5}}, h);
  const adamw::Coef<float> c = adamw::coefficients<float>(h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.step,
                                                          h.grad_scale);
  const double u = std::ldexp(1.0, -24), b1 = c.b1, b2 = c.b2;
  int64_t ups = 0;
  for (int64_t i = 0; i < n; ++i) {
    // f64: the formula.
    const double gs = at(g, i) * c.grad_scale, pd = at(p0, i) * c.decay;
    const double mm = b1 * at(m0, i) + (1 - b1) * gs, vv = b2 * at(v0, i) + (1 - b2) * gs * gs;
    const double upd = mm * static_cast<double>(c.step_size) / (std::sqrt(vv) * c.inv_bc2_sqrt + c.eps);
    const double want[] = {pd - upd, mm, vv};
    const double tol[] = {16 * u * (std::fabs(pd) + std::fabs(upd)), 4 * u * (std::fabs(b1 * at(m0, i)) + std::fabs(gs)),
                          7 * u * (b2 * at(v0, i) + gs * gs)};
    // f32: the kernels' arithmetic.
    float mf = static_cast<float>(at(m0, i)), vf = static_cast<float>(at(v0, i));
    const float pf = adamw::update_f32_exact(static_cast<float>(at(p0, i)), static_cast<float>(at(g, i)), mf, vf,
                                             c.decay, c);
    const float f32s[] = {pf, mf, vf};
    const double got[] = {at(p, i), at(m, i), at(v, i)};
    for (int k = 0; k < 3; ++k) {
      const auto [lo, hi] = bracket(f32s[k]);
      ASSERT_TRUE(got[k] == lo || got[k] == hi) << "part " << k << " [" << i << "]: " << got[k] << " from " << f32s[k];
      ASSERT_LE(std::fabs(f32s[k] - want[k]), tol[k]) << "part " << k << " [" << i << "]";
      if (k == 0) ups += got[k] != lo;
    }
  }
  EXPECT_GT(ups, n / 10);
  EXPECT_LT(ups, n - n / 10);
}

// Updates of 0.3 bf16 ulp each, 40 steps on 4096 values of 1.0: round-to-nearest would never move
// them; stochastic rounding moves their mean as the f64 update does. Each step adds a rounding
// error of mean 0 and variance at most ulp^2 / 4 per value (independent across values and steps),
// so the mean's error has standard deviation at most ulp sqrt(K / 4 / N); the bound is 6 of those.
TEST(PureBf16, SmallUpdatesAccumulateWithoutBias) {
  const int64_t N = 4096, K = 40;
  const double ulp = std::ldexp(1.0, -8);  // bf16 spacing in [0.5, 1)
  const double lr = 0.3 * ulp, g = 1e-3;
  Tensor p = bf16_filled(N, 1.0f), grad = bf16_filled(N, static_cast<float>(g)), m = bf16_filled(N, 0.0f),
         v = bf16_filled(N, 0.0f);
  double ref = 1.0, mr = 0, vr = 0;
  const double gb = at(grad, 0);
  for (int64_t s = 1; s <= K; ++s) {
    const AdamWHyper h{lr, 0.9, 0.999, 1e-8, 0.0, s, 1.0, 11};
    adamw_update_multi({AdamWTensors{&p, &grad, &m, &v, nullptr, false, 0}}, h);
    mr = 0.9 * mr + 0.1 * gb;
    vr = 0.999 * vr + 0.001 * gb * gb;
    ref -= lr / (1 - std::pow(0.9, static_cast<double>(s))) * mr /
           (std::sqrt(vr / (1 - std::pow(0.999, static_cast<double>(s)))) + 1e-8);
  }
  double mean = 0, lo = 2, hi = 0;
  for (int64_t i = 0; i < N; ++i) {
    mean += at(p, i) / N;
    lo = std::min(lo, at(p, i));
    hi = std::max(hi, at(p, i));
  }
  const double sigma = ulp * std::sqrt(static_cast<double>(K) / 4.0 / static_cast<double>(N));
  // The moments are rounded stochastically too: m / sqrt(v) carries relative noise ~2^-8 per step
  // (mean zero to first order; its second-order bias, ~2^-16 of the update, is far below sigma).
  EXPECT_NEAR(mean, ref, 6 * sigma) << "moved " << 1.0 - mean << ", f64 " << 1.0 - ref;
  EXPECT_LT(ref, 1.0 - 10 * ulp);  // the test means something: round-to-nearest stays at 1.0
  EXPECT_GT(hi - lo, ulp / 2);     // the values spread (random bits per element)
}

// A run is a pure function of (seed, step, parameter index, element): the same bits from two
// runs and any thread count; another seed, or another index for the same data, other bits.
TEST(PureBf16, RoundingIsKeyedBySeedStepTensorAndElement) {
  auto run = [](uint64_t seed, int threads) {
    const int before = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<Tensor> out;
    Tensor a = bf16_random(100003, 5, 1.0), b = a.clone(MemCategory::other);  // same data, two parameters
    Tensor ga = bf16_random(100003, 6, 0.1), gb = ga.clone(MemCategory::other);
    Tensor ma = bf16_filled(100003, 0.f), va = ma.clone(MemCategory::other), mb = ma.clone(MemCategory::other),
           vb = ma.clone(MemCategory::other);
    ParamRef pa{"a", &a, &ga, true}, pb{"b", &b, &gb, true};
    AdamW opt({pa, pb}, 0.9, 0.999, 1e-8, 0.01, seed);
    for (int s = 0; s < 3; ++s) opt.step(1e-3);
    omp_set_num_threads(before);
    return std::vector<Tensor>{a, b};
  };
  const auto r1 = run(9, 1), r2 = run(9, 4), r3 = run(10, 2);
  auto same = [](const Tensor& x, const Tensor& y) { return std::memcmp(x.data(), y.data(), x.nbytes()) == 0; };
  EXPECT_TRUE(same(r1[0], r2[0]));
  EXPECT_TRUE(same(r1[1], r2[1]));
  EXPECT_FALSE(same(r1[0], r3[0]));  // another seed
  EXPECT_FALSE(same(r1[0], r1[1]));  // another parameter index, same data
}

// A tensor updated in two pieces, the second with first_element = its offset (as ZeRO-3's shards
// are), gets the bits of the whole tensor updated at once; with first_element 0 it does not.
TEST(PureBf16, FirstElementContinuesTheTensorsStream) {
  const int64_t n = 5000, cut = 1931;
  const Tensor p0 = bf16_random(n, 31, 1.0), g = bf16_random(n, 32, 0.1), m0 = bf16_random(n, 33, 0.01),
               v0 = bf16_random(n, 34, 0.01, true);
  auto run = [&](bool pieces, uint64_t second_first) {
    Tensor p = p0.clone(MemCategory::other), m = m0.clone(MemCategory::other), v = v0.clone(MemCategory::other);
    AdamWHyper h{1e-3, 0.9, 0.999, 1e-8, 0.01, 3, 1.0, 5};
    if (!pieces) {
      adamw_update_multi({AdamWTensors{&p, &g, &m, &v, nullptr, true, 2, 0}}, h);
      return p;
    }
    Tensor pa = p.slice(0, cut), pb = p.slice(cut, n), ga = g.slice(0, cut), gb = g.slice(cut, n);
    Tensor ma = m.slice(0, cut), mb = m.slice(cut, n), va = v.slice(0, cut), vb = v.slice(cut, n);
    adamw_update_multi({AdamWTensors{&pa, &ga, &ma, &va, nullptr, true, 2, 0},
                        AdamWTensors{&pb, &gb, &mb, &vb, nullptr, true, 2, second_first}},
                       h);
    return p;
  };
  const Tensor whole = run(false, 0), split = run(true, cut), restarted = run(true, 0);
  EXPECT_EQ(std::memcmp(whole.data(), split.data(), whole.nbytes()), 0);
  EXPECT_NE(std::memcmp(whole.data(), restarted.data(), whole.nbytes()), 0);
}

// The optimizer's pure-bf16 state: no master part, m and v bf16 (4 bytes a parameter), one op a
// step, equal to adamw_update_multi with each parameter's index; a bf16 value with an f32
// gradient still gets its f32 master (master_weights = f32).
TEST(PureBf16, AdamWKeepsNoMasterAndBf16Moments) {
  const int64_t n = 1000;
  Tensor w = bf16_random(n, 7, 1.0), g = bf16_random(n, 8, 0.1), x = bf16_random(10, 9, 1.0), gx = bf16_random(10, 10, 0.1);
  Tensor w_ref = w.clone(MemCategory::other), x_ref = x.clone(MemCategory::other);
  Tensor m[2] = {bf16_filled(n, 0.f), bf16_filled(10, 0.f)}, v[2] = {bf16_filled(n, 0.f), bf16_filled(10, 0.f)};
  ParamRef pw{"w", &w, &g, true}, px{"x", &x, &gx, false};
  AdamW opt({pw, px}, 0.9, 0.95, 1e-8, 0.1, 21);
  std::vector<std::string> names;
  for (const auto& [name, t] : opt.state_tensors()) {
    names.push_back(name);
    EXPECT_EQ(t->dtype(), DType::bf16) << name;
  }
  EXPECT_EQ(names, (std::vector<std::string>{"0.w.value", "0.w.m", "0.w.v", "1.x.value", "1.x.m", "1.x.v"}));
  OpTraceRecorder rec;
  opt.step(1e-2);
  ASSERT_EQ(rec.events().size(), 1u);
  EXPECT_EQ(rec.events()[0].family, OpFamily::optimizer);
  EXPECT_EQ(rec.events()[0].bytes, 7.0 * 2 * static_cast<double>(n + 10));
  AdamWHyper h{1e-2, 0.9, 0.95, 1e-8, 0.1, 1, 1.0, 21};
  adamw_update_multi({AdamWTensors{&w_ref, &g, &m[0], &v[0], nullptr, true, 0},
                      AdamWTensors{&x_ref, &gx, &m[1], &v[1], nullptr, false, 1}},
                     h);
  EXPECT_EQ(std::memcmp(w.data(), w_ref.data(), w.nbytes()), 0);
  EXPECT_EQ(std::memcmp(x.data(), x_ref.data(), x.nbytes()), 0);
  // f32 gradient: the f32-master path, unchanged.
  Tensor g32 = g.to_cpu(DType::f32);
  AdamW masters({ParamRef{"w", &w, &g32, true}}, 0.9, 0.95, 1e-8, 0.1);
  names.clear();
  for (const auto& [name, t] : masters.state_tensors()) names.push_back(name + ":" + dtype_name(t->dtype()));
  EXPECT_EQ(names, (std::vector<std::string>{"0.w.value:bf16", "0.w.master:f32", "0.w.m:f32", "0.w.v:f32"}));
  // The single-tensor op has no list index to key the rounding by: it refuses a bf16 value
  // (on CUDA too: the check comes before the device's dispatch).
  const Tensor before = w.clone(MemCategory::other);
  EXPECT_THROW(adamw_update(w, g, m[0], v[0], h), Error);
  EXPECT_EQ(std::memcmp(w.data(), before.data(), w.nbytes()), 0);
}

// Linear regression y = X w* with bf16 weights trained in pure bf16 (gradients rounded to bf16,
// as the GPU's GEMMs write them) reaches the loss that f32 masters reach: the loss falls by 100x
// and ends within 2x of the f32-master run's (the bf16 weights' own resolution sets the floor).
TEST(PureBf16, ToyRegressionTrainsLikeF32Masters) {
  const int64_t R = 256, D = 32;
  Rng rng(12);
  std::vector<double> X(static_cast<size_t>(R * D)), y(static_cast<size_t>(R)), wstar(static_cast<size_t>(D));
  for (double& a : wstar) a = rng.normal();
  for (double& a : X) a = rng.normal() / std::sqrt(static_cast<double>(D));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t d = 0; d < D; ++d) y[static_cast<size_t>(r)] += X[static_cast<size_t>(r * D + d)] * wstar[static_cast<size_t>(d)];
  auto train = [&](DType grad_dtype) {
    Tensor w = bf16_filled(D, 0.f), grad = Tensor::zeros({D}, grad_dtype);
    AdamW opt({ParamRef{"w", &w, &grad, false}}, 0.9, 0.999, 1e-8, 0.0, 3);
    std::vector<double> losses;
    for (int s = 0; s < 300; ++s) {
      std::vector<double> gd(static_cast<size_t>(D), 0.0);
      double loss = 0;
      for (int64_t r = 0; r < R; ++r) {
        double e = -y[static_cast<size_t>(r)];
        for (int64_t d = 0; d < D; ++d) e += X[static_cast<size_t>(r * D + d)] * at(w, d);
        loss += e * e / R;
        for (int64_t d = 0; d < D; ++d) gd[static_cast<size_t>(d)] += 2 * e * X[static_cast<size_t>(r * D + d)] / R;
      }
      losses.push_back(loss);
      for (int64_t d = 0; d < D; ++d) {
        if (grad_dtype == DType::bf16) static_cast<uint16_t*>(grad.data())[d] = f32_to_bf16(static_cast<float>(gd[static_cast<size_t>(d)]));
        else grad.ptr<float>()[d] = static_cast<float>(gd[static_cast<size_t>(d)]);
      }
      opt.step(s < 200 ? 3e-2 : 3e-3);
    }
    return losses;
  };
  const std::vector<double> pure = train(DType::bf16), masters = train(DType::f32);
  EXPECT_LT(pure.back(), pure.front() / 100) << pure.front() << " -> " << pure.back();
  EXPECT_LT(pure.back(), 2 * masters.back() + 1e-4) << "pure " << pure.back() << ", f32 masters " << masters.back();
}

// A checkpoint of a pure-bf16 optimizer restores its bf16 state and step count, and the resumed
// steps equal the uninterrupted ones bit for bit (the rounding is keyed by the step); a run with
// master_weights = f32 is refused naming the key, and so, tensor by tensor, is an optimizer of
// the other kind under the same options (never a silent mix of f32 and bf16 state).
TEST(PureBf16, CheckpointRoundTripAndRefusalOfTheOtherSetting) {
  TempDir dir("pure-bf16-ckpt");
  RandomShardOptions ro;
  ro.output_dir = dir.path + "/data";
  ro.rows = 8;
  ro.seq_len = 8;
  ro.vocab = 16;
  write_random_shards(ro);
  auto config = [&](const std::string& mw) {
    RunConfig c;
    c.data = ro.output_dir;
    c.output_dir = dir.path;
    c.run_id = "r";
    c.master_weights = mw;
    c.origin["master_weights"] = "test deck";
    return c;
  };
  const RunConfig none = config("none");
  auto world = make_dry_comm(1, 0, Device::cpu, "world");
  CheckpointLayout layout;
  layout.parallel = ParallelLayout::make(Strategy::none, 1, 1);
  struct Model {
    Tensor w = bf16_random(777, 31, 1.0), g = bf16_random(777, 32, 0.1);
    AdamW opt{{ParamRef{"w", &w, &g, true}}, 0.9, 0.999, 1e-8, 0.1, 5};
  };
  Model a, b;
  for (int s = 0; s < 2; ++s) a.opt.step(1e-3);
  // The trainer's state as the trainer writes it (train/trainer.cpp; checked on load, unused here).
  const nlohmann::json trainer = {
      {"step", 2},          {"step_in_epoch", 2},    {"epochs_done", 0},     {"train_tokens", 0},
      {"epoch_targets", 0}, {"epoch_steps", 2},      {"epoch", 1},           {"last_eval_step", -1},
      {"step_time_sum", 0u}, {"epoch_loss_sum", 0u}, {"epoch_elapsed", 0u},  {"epoch_eval_time", 0u},
      {"finished", false},  {"have_initial_eval", false}, {"epoch_times", nlohmann::json::array()},
      {"last_eval", {{"loss", 0u}, {"accuracy", 0u}, {"seconds", 0u}, {"tokens", 0}, {"rows", 0}}}};
  write_checkpoint(none, layout, 2, a.opt, trainer, *world);
  const std::string ck = checkpoint_step_dir(checkpoint_root(none), 2);
  load_checkpoint(none, layout, ck, b.opt);
  EXPECT_EQ(b.opt.steps_taken(), 2);
  for (int s = 0; s < 2; ++s) {
    a.opt.step(1e-3);
    b.opt.step(1e-3);
  }
  EXPECT_EQ(std::memcmp(a.w.data(), b.w.data(), a.w.nbytes()), 0);
  const auto sa = a.opt.state_tensors(), sb = b.opt.state_tensors();
  for (size_t i = 0; i < sa.size(); ++i)
    EXPECT_EQ(std::memcmp(sa[i].second->data(), sb[i].second->data(), sa[i].second->nbytes()), 0) << sa[i].first;
  // The other setting: refused by the options, naming the key and both values.
  Model c;
  test::expect_input_error([&] { load_checkpoint(config("f32"), layout, ck, c.opt); },
                           {"master_weights = none in the checkpoint, f32 now"});
  // An f32-master optimizer under the same options (as a build that ignored the key would make):
  // its state has other parts, refused before anything is copied.
  Tensor w = bf16_random(777, 31, 1.0), g32 = Tensor::zeros({777}, DType::f32);
  AdamW masters({ParamRef{"w", &w, &g32, true}}, 0.9, 0.999, 1e-8, 0.1, 5);
  const Tensor w_before = w.clone(MemCategory::other);
  test::expect_input_error([&] { load_checkpoint(none, layout, ck, masters); }, {"3 tensors, this run's optimizer has 4"});
  EXPECT_EQ(std::memcmp(w.data(), w_before.data(), w.nbytes()), 0);
}

// A checkpoint written before a key existed (its options lack master_weights) stands for the
// value the older builds behaved as (f32): it resumes under it and is refused under another; a
// key it has is compared as before; any other missing key differs (the rule before the table).
TEST(PureBf16, OptionsOfAnOlderCheckpointCompareMissingKeysToTheirImpliedValues) {
  const std::map<std::string, std::string> older = {{"lr", "0.001"}};
  EXPECT_EQ(checkpoint_options_diff(older, {{"lr", "0.001"}, {"master_weights", "f32"}}), "");
  EXPECT_EQ(checkpoint_options_diff(older, {{"lr", "0.001"}, {"master_weights", "none"}}),
            "master_weights = f32 in the checkpoint, none now");
  EXPECT_EQ(checkpoint_options_diff(older, {{"lr", "0.001"}, {"grad_accum", "1"}}),
            "grad_accum = (unset) in the checkpoint, 1 now");
  EXPECT_EQ(checkpoint_options_diff({{"lr", "0.001"}, {"master_weights", "none"}}, {{"lr", "0.001"}, {"master_weights", "f32"}}),
            "master_weights = none in the checkpoint, f32 now");
  EXPECT_EQ(checkpoint_options_diff(older, {{"lr", "0.002"}}), "lr = 0.001 in the checkpoint, 0.002 now");
  // A key of the checkpoint that this build lacks is a difference, whatever its value.
  EXPECT_EQ(checkpoint_options_diff({{"lr", "0.001"}, {"old_key", "x"}}, {{"lr", "0.001"}}),
            "old_key = x in the checkpoint, (unset) now");
}

}  // namespace
}  // namespace st
