#include "train/packing.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "train/loader.hpp"

namespace st {

namespace {

// A seeded shuffle of n items for (seed, epoch), on a stream of its own (not epoch_order's).
void shuffle_groups(std::vector<int64_t>& v, uint64_t seed, int64_t epoch) {
  Rng rng(splitmix64(seed ^ 0x9acc1e5ull) + static_cast<uint64_t>(epoch));
  for (int64_t i = static_cast<int64_t>(v.size()) - 1; i > 0; --i)
    std::swap(v[static_cast<size_t>(i)], v[static_cast<size_t>(rng.below(static_cast<uint64_t>(i + 1)))]);
}

// `docs` in decreasing length; ties keep their order.
std::vector<int64_t> by_length(std::vector<int64_t> docs, const std::vector<int32_t>& lengths) {
  std::stable_sort(docs.begin(), docs.end(), [&](int64_t a, int64_t b) {
    return lengths[static_cast<size_t>(a)] > lengths[static_cast<size_t>(b)];
  });
  return docs;
}

}  // namespace

std::vector<std::vector<int64_t>> pack_first_fit_decreasing(const std::vector<int64_t>& docs,
                                                            const std::vector<int32_t>& lengths, int64_t capacity) {
  std::vector<std::vector<int64_t>> bins;
  if (docs.empty()) return bins;
  // free_[M + i] is bin i's free space (unopened bins: all of it); inner nodes hold the maximum
  // of their children, so the first bin with room is found from the root in log2(M) steps.
  size_t M = 1;
  while (M < docs.size()) M <<= 1;
  std::vector<int64_t> free_(2 * M, capacity);
  for (const int64_t d : by_length(docs, lengths)) {
    const int64_t need = lengths[static_cast<size_t>(d)];
    if (need > capacity) ST_THROW_INPUT("packing: a document of ", need, " tokens does not fit in rows of ", capacity);
    size_t node = 1;
    while (node < M) node = free_[2 * node] >= need ? 2 * node : 2 * node + 1;
    const size_t bin = node - M;
    if (bin >= bins.size()) bins.resize(bin + 1);
    bins[bin].push_back(d);
    free_[node] -= need;
    for (node /= 2; node >= 1; node /= 2) free_[node] = std::max(free_[2 * node], free_[2 * node + 1]);
  }
  return bins;
}

EpochRows epoch_rows(const std::vector<int32_t>& lengths, const BatchingOptions& o, int64_t epoch) {
  const int64_t n = static_cast<int64_t>(lengths.size());
  std::vector<int64_t> order = epoch_order(n, o.seed, epoch, o.shuffle);
  EpochRows r;
  if (o.pack_length > 0) {
    const std::vector<std::vector<int64_t>> bins = pack_first_fit_decreasing(order, lengths, o.pack_length);
    std::vector<int64_t> rows(bins.size());
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int64_t>(i);
    if (o.shuffle) shuffle_groups(rows, o.seed, epoch);
    r.row_begin.push_back(0);
    for (const int64_t b : rows) {
      const std::vector<int64_t>& bin = bins[static_cast<size_t>(b)];
      r.docs.insert(r.docs.end(), bin.begin(), bin.end());
      r.row_begin.push_back(static_cast<int64_t>(r.docs.size()));
    }
    return r;
  }
  if (o.group_by_length) {
    const int64_t G = std::max<int64_t>(1, o.global_batch), batches = n / G;
    order.resize(static_cast<size_t>(batches * G));  // the epoch's whole global batches
    const std::vector<int64_t> sorted = by_length(order, lengths);
    std::vector<int64_t> groups(static_cast<size_t>(batches));
    for (int64_t i = 0; i < batches; ++i) groups[static_cast<size_t>(i)] = i;
    if (o.shuffle) shuffle_groups(groups, o.seed, epoch);
    order.clear();
    for (const int64_t g : groups) order.insert(order.end(), sorted.begin() + g * G, sorted.begin() + (g + 1) * G);
  }
  r.docs = std::move(order);
  r.row_begin.resize(r.docs.size() + 1);
  for (size_t i = 0; i < r.row_begin.size(); ++i) r.row_begin[i] = static_cast<int64_t>(i);
  return r;
}

}  // namespace st
