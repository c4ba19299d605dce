// Megatron tensor-parallel building blocks on the whole world as one TP group, on 2 and 4 ranks:
// the production layers (model/linear.hpp: a Linear holding its shard under the TP plan's style,
// tp_sum_partials for f; parallel/tp_ops: the vocab-parallel loss) against the unsharded ops.
// Every rank builds the same full tensors from a fixed seed, runs the sharded layer on its shard,
// and compares with the unsharded op computed locally (its slice of it).
//
// Checks are non-fatal (EXPECT_*) so that every rank makes the same collective calls whatever
// fails; mpi_main.cpp fails the job when any rank had a failure.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "ops/activation.hpp"
#include "ops/loss.hpp"
#include "model/linear.hpp"
#include "ops/matmul.hpp"
#include "ops/optim.hpp"
#include "parallel/runtime.hpp"
#include "parallel/tp_ops.hpp"
#include "tests/common/gradcheck.hpp"
#include "tests/common/layout_compare.hpp"
#include "tests/common/test_util.hpp"

namespace st {
namespace {

using test::max_rel_diff;
using test::random_f32;
using test::random_f64;

constexpr double kTol64 = 1e-12;  // relative, f64 comparisons
const double kEps32 = std::numeric_limits<float>::epsilon();
const double kEps64 = std::numeric_limits<double>::epsilon();

std::unique_ptr<Comm> tp_group() { return make_mpi_comm(MPI_COMM_WORLD, "tp"); }

Tensor clone(const Tensor& t) { return t.clone(MemCategory::other); }

// Rank-dependent junk, to check that an overwriting output does not read its prior content.
Tensor junk_like(const Tensor& t, int rank) {
  Tensor j = Tensor::empty(t.shape(), t.dtype());
  j.fill_(1000.0 * (rank + 1) + 0.5);
  return j;
}

// Bitwise the same tensor (or value) on every rank of the group.
bool same_on_all_ranks(Comm& comm, const Tensor& t) {
  Tensor hi = t.to_cpu(DType::f64), lo = t.to_cpu(DType::f64);
  for (int64_t i = 0; i < lo.numel(); ++i) lo.ptr<double>()[i] = -lo.ptr<double>()[i];
  comm.all_reduce_max(hi);
  comm.all_reduce_max(lo);
  const Tensor mine = t.to_cpu(DType::f64);
  for (int64_t i = 0; i < mine.numel(); ++i)
    if (hi.ptr<double>()[i] != mine.ptr<double>()[i] || -lo.ptr<double>()[i] != mine.ptr<double>()[i]) return false;
  return true;
}
bool same_on_all_ranks(Comm& comm, double v) {
  const double hi = comm.all_reduce_max(v), lo = -comm.all_reduce_max(-v);  // both calls on every rank
  return hi == v && lo == v;
}

// A linear layer holding this rank's part of W [out, in] as the TP plan's `mode` splits it
// (column: rows, row: columns), with a gradient slot holding this rank's part of dW0 when given.
Linear tp_linear(const Tensor& W, TpMode mode, Comm& tp, const Tensor* dW0 = nullptr) {
  const int P = tp.size(), me = tp.rank();
  Linear l;
  l.name = "test";
  l.tp_mode = mode;
  l.tp = TpGroup{&tp, P, me};
  l.weight = mode == TpMode::column ? shard_rows(W, P, me) : shard_cols(W, P, me);
  l.out = l.weight.dim(0);
  l.in = l.weight.dim(1);
  if (dW0) l.grad = mode == TpMode::column ? shard_rows(*dW0, P, me) : shard_cols(*dW0, P, me);
  return l;
}

// ---------------------------------------------------------------- shard helpers

TEST(TpOps, ShardRowsAndColsCutTheRightBlocks) {
  const int p = 3;
  Tensor W = Tensor::empty({6, 9}, DType::f64);
  for (int64_t k = 0; k < W.numel(); ++k) W.ptr<double>()[k] = static_cast<double>(k);
  for (int i = 0; i < p; ++i) {
    const Tensor r = shard_rows(W, p, i), c = shard_cols(W, p, i);
    ASSERT_EQ(r.shape(), Shape({2, 9}));
    ASSERT_EQ(c.shape(), Shape({6, 3}));
    for (int64_t a = 0; a < 2; ++a)
      for (int64_t b = 0; b < 9; ++b) EXPECT_EQ(r.ptr<double>()[a * 9 + b], W.ptr<double>()[(i * 2 + a) * 9 + b]);
    for (int64_t a = 0; a < 6; ++a)
      for (int64_t b = 0; b < 3; ++b) EXPECT_EQ(c.ptr<double>()[a * 3 + b], W.ptr<double>()[a * 9 + i * 3 + b]);
  }
  // New storage, not views: writing a shard leaves W alone.
  Tensor r0 = shard_rows(W, p, 0);
  r0.fill_(-1.0);
  EXPECT_EQ(W.ptr<double>()[0], 0.0);
  // Leading dimensions of shard_cols are kept; dtype is kept; 1-D rows (a bias).
  Tensor X = Tensor::empty({2, 3, 4}, DType::f32);
  for (int64_t k = 0; k < X.numel(); ++k) X.ptr<float>()[k] = static_cast<float>(k);
  const Tensor xc = shard_cols(X, 2, 1);
  ASSERT_EQ(xc.shape(), Shape({2, 3, 2}));
  ASSERT_EQ(xc.dtype(), DType::f32);
  for (int64_t row = 0; row < 6; ++row)
    for (int64_t b = 0; b < 2; ++b) EXPECT_EQ(xc.ptr<float>()[row * 2 + b], X.ptr<float>()[row * 4 + 2 + b]);
  Tensor bias = Tensor::empty({8}, DType::i32);
  for (int64_t k = 0; k < 8; ++k) bias.ptr<int32_t>()[k] = static_cast<int32_t>(k);
  const Tensor b3 = shard_rows(bias, 4, 3);
  ASSERT_EQ(b3.shape(), Shape({2}));
  EXPECT_EQ(b3.ptr<int32_t>()[0], 6);
  EXPECT_EQ(b3.ptr<int32_t>()[1], 7);
  // p = 1 is the whole tensor.
  EXPECT_EQ(max_rel_diff(shard_cols(W, 1, 0), W), 0.0);
}

TEST(TpOps, ShardErrorsNameTheDimensionAndP) {
  Tensor W = Tensor::zeros({10, 6}, DType::f64);
  test::expect_input_error([&] { shard_rows(W, 4, 0); }, {"shard_rows", "dimension 0", "size 10", "p = 4"});
  test::expect_input_error([&] { shard_cols(W, 4, 1); }, {"shard_cols", "dimension 1", "size 6", "p = 4"});
  Tensor X = Tensor::zeros({2, 3, 5}, DType::f32);
  test::expect_input_error([&] { shard_cols(X, 2, 0); }, {"dimension 2", "size 5", "p = 2"});
  test::expect_input_error([&] { shard_rows(W, 2, 2); }, {"shard index 2"});
  test::expect_input_error([&] { shard_rows(W, 0, 0); }, {"p = 0"});
  // With the group's own p: a layer whose width the group does not divide is refused on every rank.
  auto tp = tp_group();
  const int P = tp->size(), me = tp->rank();
  if (P == 1) GTEST_SKIP() << "p = 1 divides every dimension";
  Rng rng(7);
  const Tensor Wodd = random_f64({2 * P + 1, 3 * P + 1}, rng);
  test::expect_input_error([&] { shard_rows(Wodd, P, me); },
                           {"dimension 0", "size " + std::to_string(2 * P + 1), "p = " + std::to_string(P)});
  test::expect_input_error([&] { shard_cols(Wodd, P, me); },
                           {"dimension 1", "size " + std::to_string(3 * P + 1), "p = " + std::to_string(P)});
}

// ---------------------------------------------------------------- column-parallel linear

TEST(TpOps, ColumnParallelMatchesFullLinearF64) {
  auto tp = tp_group();
  const int P = tp->size(), me = tp->rank();
  const int64_t in = 7, out = 3 * P;
  Rng rng(101);
  const Tensor x = random_f64({2, 3, in}, rng), W = random_f64({out, in}, rng), W2 = random_f64({out, in}, rng);
  const Tensor dy = random_f64({2, 3, out}, rng), dy2 = random_f64({2, 3, out}, rng), y0 = random_f64({2, 3, out}, rng);
  const Tensor dW0 = random_f64({out, in}, rng);
  const LayerContext ctx;

  // Forward, overwriting junk and accumulating onto y0: this rank's columns, no communication.
  Linear l = tp_linear(W, TpMode::column, *tp, &dW0);
  Tensor y = Tensor::empty({2, 3, out}, DType::f64);
  linear_forward(x, W, y, false);
  Tensor y_i = junk_like(shard_cols(y, P, me), me);
  linear_layer_forward(l, x, y_i, false, ctx);
  EXPECT_LT(max_rel_diff(y_i, shard_cols(y, P, me)), kTol64);
  Tensor y_acc = clone(y0);
  linear_forward(x, W, y_acc, true);
  Tensor y_acc_i = shard_cols(y0, P, me);
  linear_layer_forward(l, x, y_acc_i, true, ctx);
  EXPECT_LT(max_rel_diff(y_acc_i, shard_cols(y_acc, P, me)), kTol64);

  // Backward of a column-parallel region (two layers reading x, as q and k do): each adds its
  // partial input gradient (the first overwrites junk), one sum over the group (Megatron's f)
  // completes dx = dy W + dy2 W2; dW_i accumulates onto this rank's rows of dW0.
  Tensor dx_ref = Tensor::empty(x.shape(), DType::f64), dW_ref = clone(dW0);
  linear_backward(x, W, dy, &dx_ref, &dW_ref, false);
  linear_backward(x, W2, dy2, &dx_ref, nullptr, true);
  Linear l2 = tp_linear(W2, TpMode::column, *tp);
  Tensor dx = junk_like(x, me);
  linear_layer_backward(l, x, shard_cols(dy, P, me), &dx, ctx, false);
  linear_layer_backward(l2, x, shard_cols(dy2, P, me), &dx, ctx, true);
  tp_sum_partials(l.tp, dx);
  EXPECT_LT(max_rel_diff(dx, dx_ref), kTol64) << "dx on rank " << me;
  EXPECT_LT(max_rel_diff(l.grad, shard_rows(dW_ref, P, me)), kTol64) << "dW_i on rank " << me;
  EXPECT_TRUE(same_on_all_ranks(*tp, dx));

  // No dx wanted: dW only, no communication.
  Linear l3 = tp_linear(W, TpMode::column, *tp);
  l3.grad = Tensor::zeros(l3.weight.shape(), DType::f64);
  Tensor dW_only_ref = Tensor::zeros(W.shape(), DType::f64);
  linear_backward(x, W, dy, nullptr, &dW_only_ref);
  linear_layer_backward(l3, x, shard_cols(dy, P, me), nullptr, ctx);
  EXPECT_LT(max_rel_diff(l3.grad, shard_rows(dW_only_ref, P, me)), kTol64);
}

// ---------------------------------------------------------------- row-parallel linear

TEST(TpOps, RowParallelMatchesFullLinearF64) {
  auto tp = tp_group();
  const int P = tp->size(), me = tp->rank();
  const int64_t in = 5 * P, out = 6, M = 9;
  Rng rng(202);
  const Tensor x = random_f64({M, in}, rng), W = random_f64({out, in}, rng), res = random_f64({M, out}, rng);
  const Tensor dy = random_f64({M, out}, rng), dx0 = random_f64({M, in}, rng), dW0 = random_f64({out, in}, rng);
  const Tensor x_i = shard_cols(x, P, me);
  const LayerContext ctx;
  Linear l = tp_linear(W, TpMode::row, *tp, &dW0);

  Tensor y_ref = Tensor::empty({M, out}, DType::f64), y_res_ref = Tensor::empty({M, out}, DType::f64);
  linear_forward(x, W, y_ref, false);
  linear_forward(x, W, y_res_ref, false, &res);

  // The forward completes the sum over the group (Megatron's g): the same y on every rank.
  Tensor y = junk_like(y_ref, me);  // overwritten, never read
  linear_layer_forward(l, x_i, y, false, ctx);
  EXPECT_LT(max_rel_diff(y, y_ref), kTol64) << "y on rank " << me;
  EXPECT_TRUE(same_on_all_ranks(*tp, y));

  // The residual (and y's prior content when accumulating) is added exactly once, whether every
  // rank passes it, only rank 0 does, or it is y.
  Tensor y_res = junk_like(y_ref, me);
  linear_layer_forward(l, x_i, y_res, false, ctx, &res);
  EXPECT_LT(max_rel_diff(y_res, y_res_ref), kTol64) << "y + residual (all ranks pass it) on rank " << me;
  Tensor y_res0 = junk_like(y_ref, me);
  linear_layer_forward(l, x_i, y_res0, false, ctx, me == 0 ? &res : nullptr);
  EXPECT_LT(max_rel_diff(y_res0, y_res_ref), kTol64) << "y + residual (rank 0 passes it) on rank " << me;
  Tensor y_alias = clone(res);
  linear_layer_forward(l, x_i, y_alias, false, ctx, &y_alias);
  EXPECT_LT(max_rel_diff(y_alias, y_res_ref), kTol64) << "y += (residual aliasing y) on rank " << me;
  Tensor y_acc = clone(res);
  linear_layer_forward(l, x_i, y_acc, true, ctx);
  EXPECT_LT(max_rel_diff(y_acc, y_res_ref), kTol64) << "y += x W^T (accumulate) on rank " << me;
  EXPECT_TRUE(same_on_all_ranks(*tp, y_res));

  // Backward: no communication; dx_i accumulates into this rank's columns of dx0, dW_i into dW0's.
  Tensor dx_ref = clone(dx0), dW_ref = clone(dW0);
  linear_backward(x, W, dy, &dx_ref, &dW_ref, true);
  Tensor dx_i = shard_cols(dx0, P, me);
  linear_layer_backward(l, x_i, dy, &dx_i, ctx, true);
  EXPECT_LT(max_rel_diff(dx_i, shard_cols(dx_ref, P, me)), kTol64) << "dx_i on rank " << me;
  EXPECT_LT(max_rel_diff(l.grad, shard_cols(dW_ref, P, me)), kTol64) << "dW_i on rank " << me;
  Tensor dx_ow_ref = Tensor::empty({M, in}, DType::f64);
  linear_backward(x, W, dy, &dx_ow_ref, nullptr, false);
  Tensor dx_ow = junk_like(x_i, me);
  Linear frozen = tp_linear(W, TpMode::row, *tp);
  linear_layer_backward(frozen, x_i, dy, &dx_ow, ctx, false);
  EXPECT_LT(max_rel_diff(dx_ow, shard_cols(dx_ow_ref, P, me)), kTol64) << "dx_i (overwrite) on rank " << me;
}

// The LLaMA MLP as Megatron splits it: gate and up column-parallel, SwiGLU on the shards, down
// row-parallel with the residual; one all-reduce forward (down), one backward (the input).
TEST(TpOps, SwiGluMlpColumnThenRowMatchesFullF64) {
  auto tp = tp_group();
  const int P = tp->size(), me = tp->rank();
  const int64_t C = 6, F = 4 * P, M = 5;
  Rng rng(303);
  const Tensor x = random_f64({M, C}, rng), Wg = random_f64({F, C}, rng), Wu = random_f64({F, C}, rng);
  const Tensor Wd = random_f64({C, F}, rng), dy = random_f64({M, C}, rng);
  const LayerContext ctx;

  // Full reference: y = x + swiglu(x Wg^T, x Wu^T) Wd^T and its gradients.
  Tensor g = Tensor::empty({M, F}, DType::f64), u = Tensor::empty({M, F}, DType::f64), h = Tensor::empty({M, F}, DType::f64);
  Tensor y_ref = Tensor::empty({M, C}, DType::f64);
  linear_forward(x, Wg, g, false);
  linear_forward(x, Wu, u, false);
  swiglu_forward(g, u, h);
  linear_forward(h, Wd, y_ref, false, &x);
  Tensor dh = Tensor::empty({M, F}, DType::f64), dg = Tensor::empty({M, F}, DType::f64), du = Tensor::empty({M, F}, DType::f64);
  Tensor dWg = Tensor::zeros(Wg.shape(), DType::f64), dWu = Tensor::zeros(Wu.shape(), DType::f64), dWd = Tensor::zeros(Wd.shape(), DType::f64);
  Tensor dx_ref = clone(dy);  // the residual's gradient
  linear_backward(h, Wd, dy, &dh, &dWd, false);
  swiglu_backward(dh, g, u, dg, du, false);
  linear_backward(x, Wg, dg, &dx_ref, &dWg, true);
  linear_backward(x, Wu, du, &dx_ref, &dWu, true);

  // Sharded.
  const Tensor zg = Tensor::zeros(Wg.shape(), DType::f64), zd = Tensor::zeros(Wd.shape(), DType::f64);
  Linear gate = tp_linear(Wg, TpMode::column, *tp, &zg), up = tp_linear(Wu, TpMode::column, *tp, &zg);
  Linear down = tp_linear(Wd, TpMode::row, *tp, &zd);
  const int64_t Fl = F / P;
  Tensor g_i = Tensor::empty({M, Fl}, DType::f64), u_i = Tensor::empty({M, Fl}, DType::f64), h_i = Tensor::empty({M, Fl}, DType::f64);
  Tensor y = Tensor::empty({M, C}, DType::f64);
  linear_layer_forward(gate, x, g_i, false, ctx);
  linear_layer_forward(up, x, u_i, false, ctx);
  swiglu_forward(g_i, u_i, h_i);
  linear_layer_forward(down, h_i, y, false, ctx, &x);
  EXPECT_LT(max_rel_diff(y, y_ref), kTol64) << "y on rank " << me;

  Tensor dh_i = Tensor::empty({M, Fl}, DType::f64), dg_i = Tensor::empty({M, Fl}, DType::f64), du_i = Tensor::empty({M, Fl}, DType::f64);
  Tensor dx = Tensor::empty({M, C}, DType::f64);
  linear_layer_backward(down, h_i, dy, &dh_i, ctx, false);
  swiglu_backward(dh_i, g_i, u_i, dg_i, du_i, false);
  linear_layer_backward(gate, x, dg_i, &dx, ctx, false);
  linear_layer_backward(up, x, du_i, &dx, ctx, true);
  tp_sum_partials(gate.tp, dx);
  axpy(1.0, dy, dx);  // the residual's gradient, added once the region's sum is complete
  EXPECT_LT(max_rel_diff(dx, dx_ref), kTol64) << "dx on rank " << me;
  EXPECT_LT(max_rel_diff(gate.grad, shard_rows(dWg, P, me)), kTol64) << "dWg_i on rank " << me;
  EXPECT_LT(max_rel_diff(up.grad, shard_rows(dWu, P, me)), kTol64) << "dWu_i on rank " << me;
  EXPECT_LT(max_rel_diff(down.grad, shard_cols(dWd, P, me)), kTol64) << "dWd_i on rank " << me;
  EXPECT_TRUE(same_on_all_ranks(*tp, dx));
}

// Biases (Qwen2's q, k, v): a column-parallel layer's bias is split with its output rows and
// trains from this rank's columns of dy; a row-parallel layer's bias is replicated, added once.
TEST(TpOps, LinearBiasesUnderTensorParallelismMatchFullF64) {
  auto tp = tp_group();
  const int P = tp->size(), me = tp->rank();
  const int64_t in = 2 * P + 2, out = 3 * P, M = 7;
  Rng rng(909);
  const Tensor x = random_f64({M, in}, rng), W = random_f64({out, in}, rng), b = random_f64({out}, rng);
  const Tensor dy = random_f64({M, out}, rng);
  const LayerContext ctx;
  // Reference: y = x W^T + b, db = column sums of dy.
  Tensor y_ref = Tensor::empty({M, out}, DType::f64);
  linear_forward(x, W, y_ref, false);
  Tensor db_ref = Tensor::zeros({out}, DType::f64);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < out; ++n) {
      y_ref.ptr<double>()[m * out + n] += b.ptr<double>()[n];
      db_ref.ptr<double>()[n] += dy.ptr<double>()[m * out + n];
    }
  Linear col = tp_linear(W, TpMode::column, *tp);
  col.bias = shard_rows(b, P, me);
  col.bias_grad = Tensor::zeros(col.bias.shape(), DType::f64);
  Tensor y_i = junk_like(shard_cols(y_ref, P, me), me);
  linear_layer_forward(col, x, y_i, false, ctx);
  EXPECT_LT(max_rel_diff(y_i, shard_cols(y_ref, P, me)), kTol64) << "column y_i on rank " << me;
  linear_layer_backward(col, x, shard_cols(dy, P, me), nullptr, ctx);
  EXPECT_LT(max_rel_diff(col.bias_grad, shard_rows(db_ref, P, me)), kTol64) << "column db_i on rank " << me;
  // Row-parallel: W [out, in] split by input columns, the full bias on every rank.
  const Tensor Wr = random_f64({out, 4 * P}, rng), xr = random_f64({M, 4 * P}, rng);
  Tensor yr_ref = Tensor::empty({M, out}, DType::f64);
  linear_forward(xr, Wr, yr_ref, false);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < out; ++n) yr_ref.ptr<double>()[m * out + n] += b.ptr<double>()[n];
  Linear row = tp_linear(Wr, TpMode::row, *tp);
  row.bias = clone(b);
  row.bias_grad = Tensor::zeros({out}, DType::f64);
  Tensor yr = junk_like(yr_ref, me);
  linear_layer_forward(row, shard_cols(xr, P, me), yr, false, ctx);
  EXPECT_LT(max_rel_diff(yr, yr_ref), kTol64) << "row y on rank " << me;
  linear_layer_backward(row, shard_cols(xr, P, me), dy, nullptr, ctx);
  EXPECT_LT(max_rel_diff(row.bias_grad, db_ref), kTol64) << "row db on rank " << me;
  EXPECT_TRUE(same_on_all_ranks(*tp, row.bias_grad));
}

// ---------------------------------------------------------------- f32: within rounding bounds

// |A| |B| (op as in matmul), in f64: the scale of the rounding error of each element of A B.
Tensor abs_product(const Tensor& A, bool ta, const Tensor& B, bool tb, const Shape& out) {
  Tensor a = A.to_cpu(DType::f64), b = B.to_cpu(DType::f64), c = Tensor::empty(out, DType::f64);
  for (int64_t k = 0; k < a.numel(); ++k) a.ptr<double>()[k] = std::fabs(a.ptr<double>()[k]);
  for (int64_t k = 0; k < b.numel(); ++k) b.ptr<double>()[k] = std::fabs(b.ptr<double>()[k]);
  matmul(c, a, ta, b, tb);
  return c;
}

// Both results are f32 sums of K products (the sharded one split into K/p local terms and a
// reduction over p ranks): each is within gamma_{K+p} (|A||B|)_ij of the exact value, so they
// differ by at most 2 (K + p) u (|A||B|)_ij = (K + p) eps (|A||B|)_ij (u = eps/2, with slack for
// gamma_n = n u / (1 - n u)). Returns the worst ratio |a - b| / bound (<= 1 passes).
double worst_vs_bound(const Tensor& a, const Tensor& b, const Tensor& absprod, int64_t K, int P) {
  const Tensor a64 = a.to_cpu(DType::f64), b64 = b.to_cpu(DType::f64);
  if (a64.numel() != absprod.numel() || b64.numel() != absprod.numel()) return INFINITY;
  const double c = 1.01 * static_cast<double>(K + P) * kEps32;
  double worst = 0;
  for (int64_t k = 0; k < a64.numel(); ++k) {
    const double d = std::fabs(a64.ptr<double>()[k] - b64.ptr<double>()[k]);
    const double bound = c * absprod.ptr<double>()[k] + 1e-300;
    worst = std::max(worst, d / bound);
  }
  return worst;
}

TEST(TpOps, LinearF32WithinRoundingBound) {
  auto tp = tp_group();
  const int P = tp->size(), me = tp->rank();
  const int64_t M = 16, in = 48 * P, out = 40 * P;
  Rng rng(404);
  const Tensor x = random_f32({M, in}, rng), W = random_f32({out, in}, rng), dy = random_f32({M, out}, rng);

  // Column-parallel: dx reduces over out (out/p local, p ranks); y and dW reduce over in / M on one rank.
  Tensor y = Tensor::empty({M, out}, DType::f32), dx_ref = Tensor::empty({M, in}, DType::f32);
  Tensor dW_ref = Tensor::zeros({out, in}, DType::f32);
  linear_forward(x, W, y, false);
  linear_backward(x, W, dy, &dx_ref, &dW_ref, false);
  const Tensor dy_i = shard_cols(dy, P, me), zW = Tensor::zeros({out, in}, DType::f32);
  const LayerContext ctx;
  Linear col = tp_linear(W, TpMode::column, *tp, &zW);
  Tensor y_i = Tensor::empty({M, out / P}, DType::f32), dx = Tensor::empty({M, in}, DType::f32);
  linear_layer_forward(col, x, y_i, false, ctx);
  linear_layer_backward(col, x, dy_i, &dx, ctx, false);
  tp_sum_partials(col.tp, dx);
  const Tensor& dW_i = col.grad;
  const Tensor y_bound = abs_product(x, false, W, true, {M, out});
  const Tensor dx_bound = abs_product(dy, false, W, false, {M, in});
  const Tensor dW_bound = abs_product(dy, true, x, false, {out, in});
  EXPECT_LE(worst_vs_bound(y_i, shard_cols(y, P, me), shard_cols(y_bound, P, me), in, 1), 1.0);
  EXPECT_LE(worst_vs_bound(dx, dx_ref, dx_bound, out, P), 1.0) << "column dx on rank " << me;
  EXPECT_LE(worst_vs_bound(dW_i, shard_rows(dW_ref, P, me), shard_rows(dW_bound, P, me), M, 1), 1.0);

  // Row-parallel on the transposed roles: W2 [in, out] split by columns (out/p each).
  const Tensor W2 = random_f32({in, out}, rng), dz = random_f32({M, in}, rng);
  Tensor z_ref = Tensor::empty({M, in}, DType::f32), dyr_ref = Tensor::empty({M, out}, DType::f32);
  Tensor dW2_ref = Tensor::zeros({in, out}, DType::f32);
  linear_forward(y, W2, z_ref, false);
  linear_backward(y, W2, dz, &dyr_ref, &dW2_ref, false);
  const Tensor zW2 = Tensor::zeros({in, out}, DType::f32);
  Linear row = tp_linear(W2, TpMode::row, *tp, &zW2);
  Tensor z = Tensor::empty({M, in}, DType::f32), dyr_i = Tensor::empty({M, out / P}, DType::f32);
  linear_layer_forward(row, y_i, z, false, ctx);
  linear_layer_backward(row, y_i, dz, &dyr_i, ctx, false);
  const Tensor& dW2_i = row.grad;
  // The reference takes the same input as the sharded chain: the y_i of every rank gathered
  // (y_i and y's columns may differ by rounding, already bounded above).
  Tensor y_gathered = Tensor::empty({M, out}, DType::f32);
  {
    Tensor mine = Tensor::zeros({M, out}, DType::f32);
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < out / P; ++c) mine.ptr<float>()[r * out + me * (out / P) + c] = y_i.ptr<float>()[r * (out / P) + c];
    tp->all_reduce_sum(mine);  // every other rank contributes zeros: exact
    y_gathered.copy_from(mine);
  }
  Tensor z_g = Tensor::empty({M, in}, DType::f32), dW2_g = Tensor::zeros({in, out}, DType::f32);
  linear_forward(y_gathered, W2, z_g, false);
  linear_backward(y_gathered, W2, dz, nullptr, &dW2_g, false);
  const Tensor z_bound = abs_product(y_gathered, false, W2, true, {M, in});
  const Tensor dyr_bound = abs_product(dz, false, W2, false, {M, out});
  const Tensor dW2_bound = abs_product(dz, true, y_gathered, false, {in, out});
  EXPECT_LE(worst_vs_bound(z, z_g, z_bound, out, P), 1.0) << "row y on rank " << me;
  EXPECT_LE(worst_vs_bound(dyr_i, shard_cols(dyr_ref, P, me), shard_cols(dyr_bound, P, me), in, 1), 1.0);
  EXPECT_LE(worst_vs_bound(dW2_i, shard_cols(dW2_g, P, me), shard_cols(dW2_bound, P, me), M, 1), 1.0);
  EXPECT_TRUE(same_on_all_ranks(*tp, z));
  // And the bound is tight enough to mean something: f32 is not bitwise f64, but far inside it.
  EXPECT_LT(max_rel_diff(dx, dx_ref), 1e-4);
}

// ---------------------------------------------------------------- vocab-parallel cross-entropy

struct CeCase {
  Tensor logits, targets, weight;
  int64_t N = 0, V = 0;
};

// Rows: 0 ignored (target -1), 1 weight 0 with a target, 2 target 0 (rank 0's first column),
// 3 target V-1 (the last rank's last column), 4 a row whose maximum (600, exp overflows without
// the global max) sits in the last shard while its target is in the first; the rest random.
CeCase make_ce_case(DType dt, int P, uint64_t seed) {
  CeCase c;
  c.N = 11;
  c.V = 5 * P;
  Rng rng(seed);
  Tensor l = random_f64({c.N, c.V}, rng, 4.0);
  l.ptr<double>()[4 * c.V + c.V - 2] = 600.0;
  l.ptr<double>()[4 * c.V + 1] = 599.0;
  c.logits = l.to_cpu(dt);
  c.targets = Tensor::empty({c.N}, DType::i32);
  c.weight = Tensor::empty({c.N}, DType::f32);
  int32_t* t = c.targets.ptr<int32_t>();
  float* w = c.weight.ptr<float>();
  for (int64_t n = 0; n < c.N; ++n) {
    t[n] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(c.V)));
    w[n] = 0.125f * static_cast<float>(n + 1) / 7.0f;
  }
  t[0] = -1;
  w[1] = 0.0f;
  t[2] = 0;
  t[3] = static_cast<int32_t>(c.V - 1);
  t[4] = 1;
  return c;
}

// Reference: the full cross_entropy op and the objective as llama_forward sums it.
double full_ce(Tensor& logits, const CeCase& c, Tensor& losses, bool grad) {
  cross_entropy(logits, c.targets, c.weight, losses, grad);
  const Tensor l64 = losses.to_cpu(DType::f64);
  double total = 0;
  for (int64_t n = 0; n < c.N; ++n) total += static_cast<double>(c.weight.ptr<float>()[n]) * l64.ptr<double>()[n];
  return total;
}

TEST(TpOps, VocabParallelCrossEntropyMatchesFullF64) {
  auto tp = tp_group();
  const int P = tp->size(), me = tp->rank();
  const CeCase c = make_ce_case(DType::f64, P, 505);
  Tensor full = clone(c.logits), losses_ref = Tensor::empty({c.N}, DType::f64);
  const double total_ref = full_ce(full, c, losses_ref, true);
  ASSERT_TRUE(std::isfinite(total_ref));

  // Loss only: the shard is left untouched.
  const Tensor shard0 = shard_cols(c.logits, P, me);
  Tensor shard = clone(shard0), losses = Tensor::empty({c.N}, DType::f64);
  const double total_fwd = vocab_parallel_cross_entropy(shard, c.targets, c.weight, &losses, false, *tp);
  EXPECT_NEAR(total_fwd, total_ref, kTol64 * std::fabs(total_ref)) << "rank " << me;
  EXPECT_LT(max_rel_diff(losses, losses_ref), kTol64) << "rank " << me;
  EXPECT_EQ(max_rel_diff(shard, shard0), 0.0) << "logits changed without grad on rank " << me;
  EXPECT_EQ(losses.ptr<double>()[0], 0.0);
  EXPECT_EQ(losses.ptr<double>()[1], 0.0);

  // With the gradient, in place; and without a losses tensor.
  const double total = vocab_parallel_cross_entropy(shard, c.targets, c.weight, nullptr, true, *tp);
  EXPECT_NEAR(total, total_ref, kTol64 * std::fabs(total_ref)) << "rank " << me;
  EXPECT_EQ(total, total_fwd);
  const Tensor grad_ref = shard_cols(full, P, me);
  EXPECT_LT(max_rel_diff(shard, grad_ref), kTol64) << "gradient shard on rank " << me;
  // Ignored rows are zero in the gradient; a row's gradient sums to 0 over the full vocabulary.
  for (int64_t j = 0; j < c.V / P; ++j) {
    EXPECT_EQ(shard.ptr<double>()[0 * (c.V / P) + j], 0.0);
    EXPECT_EQ(shard.ptr<double>()[1 * (c.V / P) + j], 0.0);
  }
  Tensor rowsum = Tensor::zeros({c.N}, DType::f64);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t j = 0; j < c.V / P; ++j) rowsum.ptr<double>()[n] += shard.ptr<double>()[n * (c.V / P) + j];
  tp->all_reduce_sum(rowsum);
  for (int64_t n = 0; n < c.N; ++n) EXPECT_NEAR(rowsum.ptr<double>()[n], 0.0, 1e-14) << "row " << n;

  EXPECT_TRUE(same_on_all_ranks(*tp, total));
  EXPECT_TRUE(same_on_all_ranks(*tp, losses));

  // 3-D logits [B, T, V/p] flatten to rows like the op's.
  Tensor shard3 = shard0.view({1, c.N, c.V / P});
  Tensor shard3c = clone(shard3);
  const double total3 = vocab_parallel_cross_entropy(shard3c, c.targets, c.weight, nullptr, true, *tp);
  EXPECT_EQ(total3, total_fwd);
  EXPECT_EQ(max_rel_diff(shard3c.view(shard.shape()), shard), 0.0);
}

TEST(TpOps, VocabParallelCrossEntropyMatchesFullF32) {
  auto tp = tp_group();
  const int P = tp->size(), me = tp->rank();
  const CeCase c = make_ce_case(DType::f32, P, 606);
  Tensor full = clone(c.logits), losses_ref = Tensor::empty({c.N}, DType::f32);
  const double total_ref = full_ce(full, c, losses_ref, true);
  Tensor shard = shard_cols(c.logits, P, me), losses = Tensor::empty({c.N}, DType::f32);
  const double total = vocab_parallel_cross_entropy(shard, c.targets, c.weight, &losses, true, *tp);
  // Both compute logsumexp in double (V terms, in another order: ~V eps64 relative to |lse|) and
  // round loss and gradient to f32 once: at most an ulp of f32 apart, plus the double difference.
  const Tensor grad_ref = shard_cols(full, P, me);
  const int64_t Vl = c.V / P;
  double abs_w = 0, bound_total = 0;
  for (int64_t n = 0; n < c.N; ++n) {
    const double ref = losses_ref.ptr<float>()[n], got = losses.ptr<float>()[n];
    const double lse_scale = std::fabs(ref) + 700.0;  // |lse| <= |loss| + |max logit|
    const double tol = kEps32 * std::fabs(ref) + 4.0 * static_cast<double>(c.V) * kEps64 * lse_scale;
    EXPECT_LE(std::fabs(got - ref), tol) << "loss of row " << n << " on rank " << me;
    const double w = std::fabs(static_cast<double>(c.weight.ptr<float>()[n]));
    abs_w = std::max(abs_w, w);
    bound_total += w * tol;
    for (int64_t j = 0; j < Vl; ++j) {
      const double gd = std::fabs(static_cast<double>(shard.ptr<float>()[n * Vl + j]) - grad_ref.ptr<float>()[n * Vl + j]);
      EXPECT_LE(gd, 2.0 * kEps32 * w + 4.0 * static_cast<double>(c.V) * kEps64 * w * lse_scale)
          << "gradient row " << n << " column " << j << " on rank " << me;
    }
  }
  EXPECT_LE(std::fabs(total - total_ref), bound_total + 1e-300) << "rank " << me;
  EXPECT_GT(abs_w, 0.0);
  EXPECT_TRUE(same_on_all_ranks(*tp, total));
}

// The Megatron LM head: a column-parallel projection onto the vocabulary, the vocab-parallel
// loss, and the backward into the hidden state, against the unsharded chain.
TEST(TpOps, VocabParallelLmHeadMatchesFullF64) {
  auto tp = tp_group();
  const int P = tp->size(), me = tp->rank();
  const int64_t C = 8;
  CeCase c = make_ce_case(DType::f64, P, 707);
  Rng rng(708);
  const Tensor x = random_f64({c.N, C}, rng), W = random_f64({c.V, C}, rng, 2.0);

  Tensor logits = Tensor::empty({c.N, c.V}, DType::f64), losses_ref = Tensor::empty({c.N}, DType::f64);
  linear_forward(x, W, logits, false);
  const double total_ref = full_ce(logits, c, losses_ref, true);
  Tensor dx_ref = Tensor::empty({c.N, C}, DType::f64), dW_ref = Tensor::zeros(W.shape(), DType::f64);
  linear_backward(x, W, logits, &dx_ref, &dW_ref, false);

  const Tensor zW = Tensor::zeros(W.shape(), DType::f64);
  const LayerContext ctx;
  Linear head = tp_linear(W, TpMode::column, *tp, &zW);
  Tensor logits_i = Tensor::empty({c.N, c.V / P}, DType::f64);
  linear_layer_forward(head, x, logits_i, false, ctx);
  const double total = vocab_parallel_cross_entropy(logits_i, c.targets, c.weight, nullptr, true, *tp);
  Tensor dx = Tensor::empty({c.N, C}, DType::f64);
  linear_layer_backward(head, x, logits_i, &dx, ctx, false);
  tp_sum_partials(head.tp, dx);
  const Tensor& dW_i = head.grad;
  EXPECT_NEAR(total, total_ref, kTol64 * std::fabs(total_ref)) << "rank " << me;
  EXPECT_LT(max_rel_diff(dx, dx_ref), kTol64) << "dx on rank " << me;
  EXPECT_LT(max_rel_diff(dW_i, shard_rows(dW_ref, P, me)), kTol64) << "dW_i on rank " << me;
}

TEST(TpOps, VocabParallelCrossEntropyRefusesBadInput) {
  auto tp = tp_group();
  const int P = tp->size(), me = tp->rank();
  CeCase c = make_ce_case(DType::f64, P, 808);
  Tensor shard = shard_cols(c.logits, P, me);
  // A target id past the global vocabulary: refused on every rank before any communication
  // (ids past a shard's own columns, like V-1 on rank 0, are fine: see the tests above).
  c.targets.ptr<int32_t>()[5] = static_cast<int32_t>(c.V);
  try {
    vocab_parallel_cross_entropy(shard, c.targets, c.weight, nullptr, true, *tp);
    ADD_FAILURE() << "no error on rank " << me;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary [0, " + std::to_string(c.V) + ")"), std::string::npos)
        << e.what();
  }
  c.targets.ptr<int32_t>()[5] = 0;
  Tensor losses_f32 = Tensor::empty({c.N}, DType::f32), short_weight = Tensor::zeros({c.N - 1}, DType::f32);
  EXPECT_THROW(vocab_parallel_cross_entropy(shard, c.targets, c.weight, &losses_f32, false, *tp), Error);
  EXPECT_THROW(vocab_parallel_cross_entropy(shard, c.targets, short_weight, nullptr, false, *tp), Error);
  // The group still works afterwards (no rank was left inside a collective).
  EXPECT_DOUBLE_EQ(tp->all_reduce_sum(1.0), static_cast<double>(P));
  // A vocabulary the group does not divide cannot be sharded.
  if (P > 1) {
    const Tensor odd = Tensor::zeros({c.N, 5 * P + 1}, DType::f64);
    test::expect_input_error([&] { shard_cols(odd, P, me); }, {"dimension 1", "p = " + std::to_string(P)});
  }
}

}  // namespace
}  // namespace st
