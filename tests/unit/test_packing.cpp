// Sequence packing (issue 19): the packer (first-fit decreasing, never splitting or dropping a
// document, deterministic under the seed), length-grouped batches, variable-length attention
// against each document run alone, RoPE positions restarting per document, the loader's packed
// batches, and a packed Llama batch giving every document's loss and the gradients of the
// documents run one by one (f64 to rounding, f32 within 1e-5).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "model/llama.hpp"
#include "ops/attention.hpp"
#include "ops/rope.hpp"
#include "tests/common/gradcheck.hpp"
#include "tests/common/test_util.hpp"
#include "train/loader.hpp"
#include "train/packing.hpp"

namespace st {
namespace {

std::vector<int32_t> random_lengths(int64_t n, int32_t lo, int32_t hi, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = lo + static_cast<int32_t>(rng.below(static_cast<uint64_t>(hi - lo + 1)));
  return v;
}

// The textbook quadratic first-fit decreasing, to check the tree version against.
std::vector<std::vector<int64_t>> naive_ffd(std::vector<int64_t> docs, const std::vector<int32_t>& len, int64_t cap) {
  std::stable_sort(docs.begin(), docs.end(), [&](int64_t a, int64_t b) { return len[a] > len[b]; });
  std::vector<std::vector<int64_t>> bins;
  std::vector<int64_t> room;
  for (int64_t d : docs) {
    size_t i = 0;
    while (i < bins.size() && room[i] < len[d]) ++i;
    if (i == bins.size()) {
      bins.emplace_back();
      room.push_back(cap);
    }
    bins[i].push_back(d);
    room[i] -= len[d];
  }
  return bins;
}

TEST(Packing, FirstFitDecreasingNeverSplitsOrDropsAndIsFirstFit) {
  // Many 1-token documents, documents of the full capacity, and everything between.
  std::vector<int32_t> len = random_lengths(700, 1, 64, 1);
  for (int i = 0; i < 40; ++i) len[static_cast<size_t>(7 * i)] = 1;
  for (int i = 0; i < 10; ++i) len[static_cast<size_t>(11 * i + 3)] = 64;
  std::vector<int64_t> docs(len.size());
  std::iota(docs.begin(), docs.end(), 0);
  std::reverse(docs.begin(), docs.end());  // ties in this order
  const auto bins = pack_first_fit_decreasing(docs, len, 64);
  EXPECT_EQ(bins, naive_ffd(docs, len, 64));
  std::vector<int> seen(len.size(), 0);
  int64_t total = 0;
  for (const auto& b : bins) {
    int64_t fill = 0;
    for (int64_t d : b) {
      ++seen[static_cast<size_t>(d)];
      fill += len[static_cast<size_t>(d)];
    }
    EXPECT_LE(fill, 64);
    total += fill;
  }
  for (size_t d = 0; d < seen.size(); ++d) EXPECT_EQ(seen[d], 1) << "document " << d;
  // First-fit decreasing's guarantee: at most 11/9 OPT + 6/9 bins, and OPT >= total / capacity.
  EXPECT_LE(9 * static_cast<int64_t>(bins.size()), 11 * ((total + 63) / 64) + 6);
  test::expect_input_error([&] { pack_first_fit_decreasing(docs, len, 63); }, {"64 tokens", "rows of 63"});
}

TEST(Packing, EpochRowsAreDeterministicAndHoldEveryDocumentOnce) {
  const std::vector<int32_t> len = random_lengths(300, 2, 40, 2);
  BatchingOptions o;
  o.seed = 77;
  o.pack_length = 48;
  const EpochRows a = epoch_rows(len, o, 1), again = epoch_rows(len, o, 1), e2 = epoch_rows(len, o, 2);
  o.seed = 78;
  const EpochRows other_seed = epoch_rows(len, o, 1);
  EXPECT_EQ(a.docs, again.docs);
  EXPECT_EQ(a.row_begin, again.row_begin);
  EXPECT_NE(a.docs, e2.docs);
  EXPECT_NE(a.docs, other_seed.docs);
  // First-fit decreasing sees only the lengths: every epoch has the same number of rows.
  EXPECT_EQ(a.size(), e2.size());
  EXPECT_EQ(a.size(), other_seed.size());
  for (const EpochRows* r : {&a, &e2, &other_seed}) {
    std::vector<int64_t> sorted = r->docs;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(len.size());
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(sorted, all);
    for (int64_t p = 0; p < r->size(); ++p) {
      int64_t fill = 0;
      for (int64_t i = r->row_begin[p]; i < r->row_begin[p + 1]; ++i) fill += len[r->docs[i]];
      EXPECT_LE(fill, 48);
      EXPECT_GE(r->docs_in(p), 1);
    }
  }
  // Without packing the rows are epoch_order's.
  BatchingOptions plain;
  plain.seed = 77;
  const EpochRows p = epoch_rows(len, plain, 3);
  EXPECT_EQ(p.docs, epoch_order(300, 77, 3, true));
  EXPECT_EQ(p.size(), 300);
}

TEST(Packing, GroupByLengthGivesSimilarLengthsInAShuffledBatchOrder) {
  const std::vector<int32_t> len = random_lengths(203, 1, 100, 3);
  BatchingOptions o;
  o.seed = 5;
  o.group_by_length = true;
  o.global_batch = 8;
  const EpochRows r = epoch_rows(len, o, 1);
  ASSERT_EQ(r.size(), 200);  // 25 whole global batches; the shuffled order's last 3 rows left out
  std::vector<int64_t> kept = epoch_order(203, 5, 1, true);
  kept.resize(200);
  std::vector<int64_t> a = r.docs, b = kept;
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  EXPECT_EQ(a, b);
  // Within a batch, lengths fall; across batches the order is shuffled (not monotone).
  int64_t padded_grouped = 0, padded_plain = 0, rises = 0;
  for (int64_t g = 0; g < 25; ++g) {
    int64_t mx = 0, mx_plain = 0;
    for (int64_t i = 0; i < 8; ++i) {
      const int64_t d = r.docs[g * 8 + i];
      if (i > 0) {
        EXPECT_LE(len[d], len[r.docs[g * 8 + i - 1]]);
      }
      mx = std::max<int64_t>(mx, len[d]);
      mx_plain = std::max<int64_t>(mx_plain, len[kept[g * 8 + i]]);
      padded_grouped -= len[d];
      padded_plain -= len[kept[g * 8 + i]];
    }
    padded_grouped += 8 * mx;
    padded_plain += 8 * mx_plain;
    if (g > 0 && len[r.docs[g * 8]] > len[r.docs[g * 8 - 8]]) ++rises;
  }
  EXPECT_GT(rises, 3);
  EXPECT_LT(padded_grouped * 5, padded_plain);  // far less padding than random batches
  EXPECT_EQ(epoch_rows(len, o, 1).docs, r.docs);
  EXPECT_NE(epoch_rows(len, o, 2).docs, r.docs);
}

// ---------------------------------------------------------------- attention over segments

AttentionSegments segments_of(const std::vector<std::pair<int32_t, int32_t>>& len_keys, Tensor& cu, Tensor& keys,
                              Tensor* tiles = nullptr) {
  const int64_t S = static_cast<int64_t>(len_keys.size());
  cu = Tensor::empty({S + 1}, DType::i32);
  keys = Tensor::empty({S}, DType::i32);
  cu.ptr<int32_t>()[0] = 0;
  for (int64_t s = 0; s < S; ++s) {
    cu.ptr<int32_t>()[s + 1] = cu.ptr<int32_t>()[s] + len_keys[s].first;
    keys.ptr<int32_t>()[s] = len_keys[s].second;
  }
  AttentionSegments seg;
  if (tiles) *tiles = Tensor::empty({4 * attention_max_tiles(cu.ptr<int32_t>()[S], S)}, DType::i32);
  attention_segments_finish(seg, cu, keys, tiles ? *tiles : Tensor());
  return seg;
}

TEST(PackedAttention, EachDocumentAttendsOnlyToItselfAsIfAlone) {
  // Documents of 1 token, a long one, odd lengths, and padding (keys 0) between them.
  const std::vector<std::pair<int32_t, int32_t>> parts = {{1, 1}, {9, 9}, {1, 1}, {3, 0}, {23, 23}, {5, 5}, {2, 0}};
  Tensor cu, keys;
  const AttentionSegments seg = segments_of(parts, cu, keys);
  const int64_t N = seg.tokens, Hq = 4, Hkv = 2, D = 6;
  ASSERT_EQ(N, 44);
  Rng rng(11);
  Tensor q = test::random_f64({N, Hq * D}, rng), k = test::random_f64({N, Hkv * D}, rng);
  Tensor v = test::random_f64({N, Hkv * D}, rng), dout = test::random_f64({N, Hq * D}, rng);
  AttentionShape s{1, N, Hq, Hkv, D, true, 1.0 / std::sqrt(6.0)};
  Tensor out = Tensor::empty({N, Hq * D}, DType::f64), lse = Tensor::empty({Hq, N}, DType::f64);
  attention_varlen_forward(s, q, k, v, seg, out, lse);
  Tensor dq = test::random_f64(q.shape(), rng), dk = test::random_f64(k.shape(), rng), dv = test::random_f64(v.shape(), rng);
  attention_varlen_backward(s, q, k, v, out, lse, dout, seg, dq, dk, dv, false);
  int64_t begin = 0;
  for (const auto& [len, nk] : parts) {
    SCOPED_TRACE(str("segment at ", begin, " of ", len, " tokens, ", nk, " keys"));
    auto rows = [&](const Tensor& t) { return t.slice(begin, begin + len).clone(MemCategory::other); };
    if (nk == 0) {  // padding: nothing seen, no output, no gradient
      for (int64_t i = 0; i < len * Hq * D; ++i) {
        EXPECT_EQ(out.ptr<double>()[begin * Hq * D + i], 0.0);
        EXPECT_EQ(dq.ptr<double>()[begin * Hq * D + i], 0.0);
      }
      for (int64_t i = 0; i < len * Hkv * D; ++i) EXPECT_EQ(dk.ptr<double>()[begin * Hkv * D + i], 0.0);
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < len; ++i) EXPECT_TRUE(std::isinf(lse.ptr<double>()[h * N + begin + i]));
      begin += len;
      continue;
    }
    AttentionShape one{1, len, Hq, Hkv, D, true, s.scale};
    Tensor oq = rows(q), ok = rows(k), ov = rows(v), odo = rows(dout);
    Tensor o = Tensor::empty({len, Hq * D}, DType::f64), l = Tensor::empty({Hq, len}, DType::f64);
    attention_forward(one, oq, ok, ov, Tensor(), o, l);
    Tensor gq = Tensor::zeros(oq.shape(), DType::f64), gk = Tensor::zeros(ok.shape(), DType::f64);
    Tensor gv = Tensor::zeros(ov.shape(), DType::f64);
    attention_backward(one, oq, ok, ov, o, l, odo, Tensor(), gq, gk, gv, true);
    EXPECT_LT(test::rel_error(rows(out), o), 1e-14);
    EXPECT_LT(test::rel_error(rows(dq), gq), 1e-14);
    EXPECT_LT(test::rel_error(rows(dk), gk), 1e-14);
    EXPECT_LT(test::rel_error(rows(dv), gv), 1e-14);
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < len; ++i)
        EXPECT_NEAR(lse.ptr<double>()[h * N + begin + i], l.ptr<double>()[h * len + i], 1e-13);
    begin += len;
  }
}

TEST(PackedAttention, RowSegmentsWithKeyLimitsAreThePaddedBatch) {
  // Segment b = row b with keys = lengths[b]: exactly the batched causal + key-padding mask.
  const int64_t B = 3, T = 7, Hq = 2, Hkv = 1, D = 4;
  const int32_t lens[B] = {7, 4, 1};
  Tensor cu, keys;
  const AttentionSegments seg = segments_of({{7, lens[0]}, {7, lens[1]}, {7, lens[2]}}, cu, keys);
  Rng rng(12);
  Tensor q = test::random_f64({B * T, Hq * D}, rng), k = test::random_f64({B * T, Hkv * D}, rng);
  Tensor v = test::random_f64({B * T, Hkv * D}, rng), dout = test::random_f64({B * T, Hq * D}, rng);
  Tensor lengths = Tensor::empty({B}, DType::i32);
  std::copy(lens, lens + B, lengths.ptr<int32_t>());
  AttentionShape s{B, T, Hq, Hkv, D, true, 0.5};
  Tensor o1 = Tensor::empty({B * T, Hq * D}, DType::f64), l1 = Tensor::empty({B * T, Hq}, DType::f64);
  Tensor o2 = o1.clone(MemCategory::other), l2 = l1.clone(MemCategory::other);
  attention_forward(s, q, k, v, lengths, o1, l1);
  attention_varlen_forward(s, q, k, v, seg, o2, l2);
  Tensor g1[3], g2[3];
  for (int i = 0; i < 3; ++i) {
    g1[i] = Tensor::zeros(i == 0 ? q.shape() : k.shape(), DType::f64);
    g2[i] = Tensor::zeros(i == 0 ? q.shape() : k.shape(), DType::f64);
  }
  attention_backward(s, q, k, v, o1, l1, dout, lengths, g1[0], g1[1], g1[2], true);
  attention_varlen_backward(s, q, k, v, o2, l2, dout, seg, g2[0], g2[1], g2[2], true);
  EXPECT_EQ(test::rel_error(o2, o1), 0.0);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(test::rel_error(g2[i], g1[i]), 0.0) << i;
  // lse: [B, Hq, T] batched, [Hq, N] varlen.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t t = 0; t < T; ++t)
        EXPECT_EQ(l2.ptr<double>()[h * B * T + b * T + t], l1.ptr<double>()[(b * Hq + h) * T + t]);
}

TEST(PackedAttention, TileTableCoversEveryTokenOnceAndRefusesBadSegments) {
  Tensor cu, keys, tiles;
  const AttentionSegments seg = segments_of({{1, 1}, {64, 64}, {65, 65}, {0, 0}, {130, 3}, {7, 0}}, cu, keys, &tiles);
  EXPECT_EQ(seg.tokens, 267);
  EXPECT_EQ(seg.count, 6);
  EXPECT_EQ(seg.max_len, 130);
  EXPECT_EQ(seg.n_tiles, 1 + 1 + 2 + 0 + 3 + 1);
  // Visible pairs: 1 + 64*65/2 + 65*66/2 + (3*4/2 + 3*127) + 0.
  EXPECT_EQ(seg.pairs, 1.0 + 2080 + 2145 + 6 + 381);
  std::vector<int> covered(267, 0);
  for (int64_t t = 0; t < seg.n_tiles; ++t) {
    const int32_t* e = tiles.ptr<int32_t>() + 4 * t;
    EXPECT_LE(e[0], e[3]);
    EXPECT_LT(e[3], e[1]);
    EXPECT_EQ((e[3] - e[0]) % kAttentionTile, 0);
    for (int32_t i = e[3]; i < std::min<int32_t>(e[1], e[3] + kAttentionTile); ++i) ++covered[static_cast<size_t>(i)];
  }
  for (int i = 0; i < 267; ++i) EXPECT_EQ(covered[static_cast<size_t>(i)], 1) << i;
  AttentionSegments bad;
  keys.ptr<int32_t>()[2] = 66;
  EXPECT_THROW(attention_segments_finish(bad, cu, keys), Error);
  keys.ptr<int32_t>()[2] = 65;
  cu.ptr<int32_t>()[3] = 1;  // decreasing
  EXPECT_THROW(attention_segments_finish(bad, cu, keys), Error);
}

TEST(PackedRope, PositionsRestartAtZeroInEachDocument) {
  const int64_t H = 2, D = 8;
  RopeTables tab = rope_tables(32, D, 10000.0, Device::cpu);
  Rng rng(13);
  // Two documents of 5 and 3 tokens in one row of 8: as each alone at positions 0...
  Tensor x = test::random_f64({8, H * D}, rng), packed = x.clone(MemCategory::other);
  Tensor pos = Tensor::empty({8}, DType::i32);
  const int32_t p[8] = {0, 1, 2, 3, 4, 0, 1, 2};
  std::copy(p, p + 8, pos.ptr<int32_t>());
  rope_forward(packed, 1, 8, tab, pos);
  Tensor a = x.slice(0, 5).clone(MemCategory::other), b = x.slice(5, 8).clone(MemCategory::other);
  rope_forward(a, 1, 5, tab);
  rope_forward(b, 1, 3, tab);
  EXPECT_EQ(test::rel_error(packed.slice(0, 5), a), 0.0);
  EXPECT_EQ(test::rel_error(packed.slice(5, 8), b), 0.0);
  rope_backward(packed, 1, 8, tab, pos);  // back to x up to the f32 tables' cos^2 + sin^2 - 1
  EXPECT_LT(test::rel_error(packed, x), 1e-7);
  pos.ptr<int32_t>()[7] = 32;
  EXPECT_THROW(rope_forward(packed, 1, 8, tab, pos), Error);
}

TEST(PackedRope, AttentionBackwardTakesRopeBackwardAlong) {
  // AttentionRope: dq and dk come out as rope_backward leaves them after the plain backward
  // (batched without positions, varlen with positions restarting); a wrong table or a
  // position out of range is refused.
  const int64_t Hq = 4, Hkv = 2, D = 8;
  const RopeTables tab = rope_tables(16, D, 10000.0, Device::cpu);
  Tensor cu, keys;
  const AttentionSegments seg = segments_of({{5, 5}, {1, 1}, {6, 6}, {2, 0}}, cu, keys);
  const int64_t N = seg.tokens;
  Tensor pos = Tensor::empty({N}, DType::i32);
  const int32_t p[14] = {0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 4, 5, 0, 1};
  std::copy(p, p + N, pos.ptr<int32_t>());
  Rng rng(14);
  Tensor q = test::random_f64({N, Hq * D}, rng), k = test::random_f64({N, Hkv * D}, rng);
  Tensor v = test::random_f64({N, Hkv * D}, rng), dout = test::random_f64({N, Hq * D}, rng);
  for (const bool varlen : {false, true}) {
    SCOPED_TRACE(varlen ? "varlen" : "batched");
    const int64_t B = varlen ? 1 : 2, T = N / B;
    AttentionShape s{B, T, Hq, Hkv, D, true, 0.25};
    const AttentionRope rope{&tab, varlen ? pos : Tensor()};
    Tensor out = Tensor::empty({N, Hq * D}, DType::f64), lse = Tensor::empty({Hq, N}, DType::f64);
    Tensor g[2][3];
    for (int r = 0; r < 2; ++r)
      for (int i = 0; i < 3; ++i) g[r][i] = test::random_f64(i == 0 ? q.shape() : k.shape(), rng);
    if (varlen) {
      attention_varlen_forward(s, q, k, v, seg, out, lse);
      attention_varlen_backward(s, q, k, v, out, lse, dout, seg, g[0][0], g[0][1], g[0][2], false);
      attention_varlen_backward(s, q, k, v, out, lse, dout, seg, g[1][0], g[1][1], g[1][2], false, &rope);
    } else {
      attention_forward(s, q, k, v, Tensor(), out, lse);
      attention_backward(s, q, k, v, out, lse, dout, Tensor(), g[0][0], g[0][1], g[0][2], false);
      attention_backward(s, q, k, v, out, lse, dout, Tensor(), g[1][0], g[1][1], g[1][2], false, Tensor(), nullptr, &rope);
    }
    EXPECT_GT(test::rel_error(g[1][0], g[0][0]), 1e-3);  // the rotation did something
    rope_backward(g[0][0], B, T, tab, rope.positions);
    rope_backward(g[0][1], B, T, tab, rope.positions);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(test::rel_error(g[1][i], g[0][i]), 0.0) << i;
  }
  AttentionShape s{1, N, Hq, Hkv, D, true, 0.25};
  Tensor out = Tensor::empty({N, Hq * D}, DType::f64), lse = Tensor::empty({Hq, N}, DType::f64);
  attention_varlen_forward(s, q, k, v, seg, out, lse);
  Tensor dq = Tensor::zeros(q.shape(), DType::f64), dk = Tensor::zeros(k.shape(), DType::f64);
  Tensor dv = Tensor::zeros(k.shape(), DType::f64);
  const RopeTables wide = rope_tables(16, 2 * D, 10000.0, Device::cpu);
  const AttentionRope wrong{&wide, pos};
  EXPECT_THROW(attention_varlen_backward(s, q, k, v, out, lse, dout, seg, dq, dk, dv, false, &wrong), Error);
  pos.ptr<int32_t>()[3] = 16;  // past the table
  const AttentionRope far{&tab, pos};
  EXPECT_THROW(attention_varlen_backward(s, q, k, v, out, lse, dout, seg, dq, dk, dv, false, &far), Error);
}

// ---------------------------------------------------------------- the loader and the model

// Documents (host rows of a shard with sequence length L): ids, loss masks (position 0 never a
// target; some prompt positions off) and lengths.
Batch documents(const std::vector<int32_t>& lens, int64_t L, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  Batch b;
  b.rows = static_cast<int64_t>(lens.size());
  b.seq_len = L;
  b.ids.assign(static_cast<size_t>(b.rows * L), 0);
  b.loss_mask.assign(static_cast<size_t>(b.rows * L), 0);
  b.lengths = lens;
  b.answer_start.assign(lens.size(), 0);
  b.labels.assign(lens.size(), -1);
  for (int64_t r = 0; r < b.rows; ++r)
    for (int64_t t = 0; t < lens[r]; ++t) {
      b.ids[r * L + t] = static_cast<int32_t>(1 + rng.below(static_cast<uint64_t>(vocab - 1)));
      b.loss_mask[r * L + t] = t >= 1 && (t >= 2 || rng.below(2) == 0);
    }
  return b;
}

Batch pick(const Batch& all, const std::vector<int64_t>& rows) {
  Batch b = all;
  b.rows = static_cast<int64_t>(rows.size());
  const int64_t L = all.seq_len;
  b.ids.clear();
  b.loss_mask.clear();
  b.lengths.clear();
  for (int64_t r : rows) {
    b.ids.insert(b.ids.end(), all.ids.begin() + r * L, all.ids.begin() + (r + 1) * L);
    b.loss_mask.insert(b.loss_mask.end(), all.loss_mask.begin() + r * L, all.loss_mask.begin() + (r + 1) * L);
    b.lengths.push_back(all.lengths[r]);
  }
  b.answer_start.assign(rows.size(), 0);
  b.labels.assign(rows.size(), -1);
  b.pack_rows.clear();
  return b;
}

TEST(PackedLoader, RowsHoldWholeDocumentsWithTheirOwnPositionsTargetsAndAttention) {
  const std::vector<int32_t> lens = {5, 1, 4, 6};
  Batch host = documents(lens, 8, 20, 21);
  host.pack_rows = {3, 1};  // row 0: documents 0, 1, 2 (10 tokens); row 1: document 3 (6)
  BatchBuffers buf(2, 12, Device::cpu);
  const LlamaBatch b = buf.make(host, 0.25);
  ASSERT_EQ(b.B, 2);
  ASSERT_EQ(b.T, 10);
  const int32_t* ids = b.ids.ptr<int32_t>();
  const int32_t* tg = b.targets.ptr<int32_t>();
  const int32_t* pos = b.positions.ptr<int32_t>();
  const float* w = b.weight.ptr<float>();
  const int64_t doc_of[2][10] = {{0, 0, 0, 0, 0, 1, 2, 2, 2, 2}, {3, 3, 3, 3, 3, 3, -1, -1, -1, -1}};
  const int64_t off_of[2][10] = {{0, 1, 2, 3, 4, 0, 0, 1, 2, 3}, {0, 1, 2, 3, 4, 5, 0, 0, 0, 0}};
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t t = 0; t < 10; ++t) {
      const int64_t d = doc_of[r][t], o = off_of[r][t], n = r * 10 + t;
      SCOPED_TRACE(str("row ", r, " position ", t));
      EXPECT_EQ(pos[n], o);
      if (d < 0) {
        EXPECT_EQ(tg[n], -1);
        EXPECT_EQ(w[n], 0.0f);
        continue;
      }
      EXPECT_EQ(ids[n], host.ids[d * 8 + o]);
      const bool target = o + 1 < lens[d] && host.loss_mask[d * 8 + o + 1];
      EXPECT_EQ(tg[n], target ? host.ids[d * 8 + o + 1] : -1);  // never the next document's token
      EXPECT_EQ(w[n], target ? 0.25f : 0.0f);
    }
  EXPECT_EQ(b.lengths.ptr<int32_t>()[0], 10);
  EXPECT_EQ(b.lengths.ptr<int32_t>()[1], 6);
  EXPECT_EQ(b.max_position, 5);
  // Segments: the four documents and row 1's padding (keys 0).
  ASSERT_EQ(b.segments.count, 5);
  const int32_t cu[6] = {0, 5, 6, 10, 16, 20}, nk[5] = {5, 1, 4, 6, 0};
  for (int s = 0; s < 5; ++s) {
    EXPECT_EQ(b.segments.cu_seqlens.ptr<int32_t>()[s + 1], cu[s + 1]) << s;
    EXPECT_EQ(b.segments.keys.ptr<int32_t>()[s], nk[s]) << s;
  }
  // An unpacked batch: each row one document and its padding, positions t.
  const LlamaBatch u = buf.make(pick(host, {0, 1}), 1.0);
  EXPECT_EQ(u.T, 5);
  EXPECT_EQ(u.segments.count, 3);  // [0, 5), [5, 6), [6, 10) (keys 0)
  EXPECT_EQ(u.max_position, 4);
  host.pack_rows = {3, 2};
  EXPECT_THROW(buf.make(host, 1.0), Error);  // 5 documents named, 4 given
}

LlamaConfig packing_config() {
  LlamaConfig c;
  c.vocab_size = 17;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  c.max_position_embeddings = 32;
  c.rms_norm_eps = 1e-6;
  return c;
}

struct Outcome {
  std::vector<double> doc_loss;   // each document's summed token loss
  std::vector<Tensor> grads;      // every trainable gradient (f64 copies)
};

std::vector<Tensor> grads_of(LlamaModel& m) {
  std::vector<Tensor> g;
  for (auto& p : llama_trainable_params(m)) g.push_back(p.grad->to_cpu(DType::f64));
  return g;
}

// The documents in packed rows of `pack_rows` (one forward and backward), then each alone.
std::pair<Outcome, Outcome> packed_and_alone(DType dt, const Batch& docs, const std::vector<int32_t>& pack_rows) {
  LlamaModel m = llama_build(packing_config(), dt, Device::cpu);
  llama_init_random(m, 31, 0.4);
  llama_enable_base_training(m);
  const int64_t n = docs.rows;
  std::pair<Outcome, Outcome> r;
  {
    Batch host = docs;
    host.pack_rows = pack_rows;
    BatchBuffers buf(static_cast<int64_t>(pack_rows.size()), 24, Device::cpu);
    LlamaActivations acts = llama_activations(m, static_cast<int64_t>(pack_rows.size()), 24, false, true);
    for (auto& p : llama_trainable_params(m)) p.grad->zero_();
    const LlamaBatch b = buf.make(host, 1.0);
    llama_forward(m, acts, b, LayerContext{}, true);
    llama_backward(m, acts, b, LayerContext{});
    // Per-document losses from the per-position losses, walking the rows as the loader laid them.
    const Tensor losses = acts.losses.to_cpu(DType::f64);
    int64_t d = 0;
    for (int64_t row = 0; row < b.B; ++row) {
      int64_t t0 = 0;
      for (int32_t i = 0; i < pack_rows[static_cast<size_t>(row)]; ++i, ++d) {
        double sum = 0;
        for (int64_t t = 0; t < docs.lengths[d]; ++t)
          sum += b.weight.ptr<float>()[row * b.T + t0 + t] * losses.ptr<double>()[row * b.T + t0 + t];
        r.first.doc_loss.push_back(sum);
        t0 += docs.lengths[d];
      }
    }
    r.first.grads = grads_of(m);
  }
  BatchBuffers one(1, 24, Device::cpu);
  LlamaActivations acts = llama_activations(m, 1, 24, false, true);
  for (auto& p : llama_trainable_params(m)) p.grad->zero_();
  for (int64_t d = 0; d < n; ++d) {  // gradients accumulate over the documents
    const LlamaBatch b = one.make(pick(docs, {d}), 1.0);
    r.second.doc_loss.push_back(llama_forward(m, acts, b, LayerContext{}, true));
    llama_backward(m, acts, b, LayerContext{});
  }
  r.second.grads = grads_of(m);
  return r;
}

void expect_packed_equals_alone(DType dt, double tol) {
  // 1-token documents, a row of one full-length document, odd lengths; rows of up to 24 tokens.
  const std::vector<int32_t> lens = {7, 1, 11, 24, 3, 1, 9, 5, 13};
  const Batch docs = documents(lens, 24, 17, 41);
  const auto [packed, alone] = packed_and_alone(dt, docs, {3, 1, 4, 1});  // rows of 19, 24, 18, 13 tokens
  ASSERT_EQ(packed.doc_loss.size(), lens.size());
  double total = 0;
  for (size_t d = 0; d < lens.size(); ++d) {
    EXPECT_NEAR(packed.doc_loss[d], alone.doc_loss[d], tol * std::max(1.0, std::fabs(alone.doc_loss[d]))) << d;
    total += alone.doc_loss[d];
  }
  EXPECT_GT(total, 0.0);
  ASSERT_EQ(packed.grads.size(), alone.grads.size());
  for (size_t i = 0; i < packed.grads.size(); ++i)
    EXPECT_LT(test::rel_error(packed.grads[i], alone.grads[i]), tol) << "gradient " << i;
}

TEST(PackedLlama, PackedBatchGivesEachDocumentsLossAndGradientsF64) { expect_packed_equals_alone(DType::f64, 1e-12); }

TEST(PackedLlama, PackedBatchGivesEachDocumentsLossAndGradientsF32) { expect_packed_equals_alone(DType::f32, 1e-5); }

TEST(PackedLlama, LoaderBatchEqualsThePlainPaddedBatch) {
  // The loader's batches (segments, positions) and a hand-made batch without them (row b one
  // sequence, keys beyond lengths[b] masked): the same loss and gradients.
  const std::vector<int32_t> lens = {6, 2, 9};
  Batch host = documents(lens, 12, 17, 51);
  LlamaModel m = llama_build(packing_config(), DType::f64, Device::cpu);
  llama_init_random(m, 32, 0.4);
  llama_enable_base_training(m);
  LlamaActivations acts = llama_activations(m, 3, 12, false, true);
  BatchBuffers buf(3, 12, Device::cpu);
  const LlamaBatch with = buf.make(host, 0.5);
  LlamaBatch plain = with;
  plain.positions = Tensor();
  plain.segments = AttentionSegments{};
  auto run = [&](const LlamaBatch& b) {
    for (auto& p : llama_trainable_params(m)) p.grad->zero_();
    const double loss = llama_forward(m, acts, b, LayerContext{}, true);
    llama_backward(m, acts, b, LayerContext{});
    return std::make_pair(loss, grads_of(m));
  };
  const auto a = run(with), b = run(plain);
  EXPECT_NEAR(a.first, b.first, 1e-13 * std::fabs(b.first));
  for (size_t i = 0; i < a.second.size(); ++i) EXPECT_LT(test::rel_error(a.second[i], b.second[i]), 1e-13) << i;
}

}  // namespace
}  // namespace st
