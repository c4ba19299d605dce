#include "train/evaluate.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/allocator.hpp"
#include "core/timer.hpp"
#include "parallel/watchdog.hpp"
#include "train/model_runner.hpp"

namespace st {

namespace {
constexpr float kNoScore = std::numeric_limits<float>::quiet_NaN();
}

std::vector<float> label_scores_at(const Tensor& logits, int64_t T, const std::vector<int64_t>& pos,
                                   const std::vector<int32_t>& label_ids, int64_t vocab_offset, int64_t vocab_local,
                                   const TpGroup& tp) {
  const int64_t rows = static_cast<int64_t>(pos.size()), nlabels = static_cast<int64_t>(label_ids.size());
  Tensor lab = Tensor::zeros({rows * nlabels}, DType::f32, Device::cpu, MemCategory::other);
  float* lv = lab.ptr<float>();
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t p = pos[static_cast<size_t>(b)];
    if (p < 0 || p >= T) continue;
    const Tensor row = logits.slice(b * T + p, b * T + p + 1).to_cpu(DType::f32);
    for (int64_t c = 0; c < nlabels; ++c) {
      const int64_t col = label_ids[static_cast<size_t>(c)] - vocab_offset;
      if (col >= 0 && col < vocab_local) lv[b * nlabels + c] = row.ptr<float>()[col];
    }
  }
  tp_sum_partials(tp, lab);
  std::vector<float> out(lv, lv + rows * nlabels);
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t p = pos[static_cast<size_t>(b)];
    if (p < 0 || p >= T) std::fill_n(out.begin() + b * nlabels, nlabels, kNoScore);
  }
  return out;
}

EvalResult evaluate(ModelRunner& model, const ShardDataset& data, int64_t max_rows, int64_t batch_size, Comm* dp,
                    const EvalProgress& progress) {
  MemoryPhase phase("eval");
  Stopwatch sw;
  const int64_t n = max_rows > 0 ? std::min(max_rows, data.size()) : data.size();
  const std::vector<int32_t>& label_ids = data.info().label_token_ids;
  const int64_t nlabels = static_cast<int64_t>(label_ids.size());
  EvalResult r;
  double loss_sum = 0;
  int64_t correct = 0, labelled = 0;
  Batch host;
  const int64_t stride = dp ? dp->size() : 1, first = dp ? dp->rank() : 0;
  // Batches are dealt round-robin. When the forward itself communicates (ZeRO-3 gathers, which
  // every rank of the group must join), every rank runs the same number of forwards: a rank
  // without rows in the last round runs one on row 0 and discards it.
  const int64_t rounds = (n + stride * batch_size - 1) / (stride * batch_size);
  for (int64_t k = 0; k < rounds; ++k) {
    const int64_t start = (k * stride + first) * batch_size;
    const bool idle = start >= n;
    if (idle && !model.has_hooks()) break;
    const int64_t rows = idle ? 1 : std::min(batch_size, n - start);
    watchdog_beat("eval batch");
    std::vector<int64_t> idx(static_cast<size_t>(rows));
    std::iota(idx.begin(), idx.end(), idle ? 0 : start);
    data.read_rows(idx, host);
    const EvalScores s = model.eval_batch(host, label_ids);
    if (progress) progress(k + 1, rounds, sw.seconds());
    if (idle) continue;
    loss_sum += s.loss_sum;
    r.tokens += host.loss_tokens();
    r.rows += rows;
    if (s.label_scores.empty()) continue;
    for (int64_t b = 0; b < rows; ++b) {
      const int32_t label = host.labels[static_cast<size_t>(b)];
      const float* sc = s.label_scores.data() + b * nlabels;
      if (label < 0 || label >= static_cast<int32_t>(nlabels) || std::isnan(sc[0])) continue;
      int best = 0;
      for (int64_t c = 1; c < nlabels; ++c)
        if (sc[c] > sc[best]) best = static_cast<int>(c);
      correct += best == label;
      ++labelled;
    }
  }
  if (dp) {
    loss_sum = dp->all_reduce_sum(loss_sum);
    r.tokens = static_cast<int64_t>(dp->all_reduce_sum(static_cast<double>(r.tokens)));
    r.rows = static_cast<int64_t>(dp->all_reduce_sum(static_cast<double>(r.rows)));
    correct = static_cast<int64_t>(dp->all_reduce_sum(static_cast<double>(correct)));
    labelled = static_cast<int64_t>(dp->all_reduce_sum(static_cast<double>(labelled)));
  }
  r.loss = r.tokens > 0 ? loss_sum / static_cast<double>(r.tokens) : std::numeric_limits<double>::quiet_NaN();
  r.accuracy = labelled > 0 ? static_cast<double>(correct) / static_cast<double>(labelled)
                            : std::numeric_limits<double>::quiet_NaN();
  r.seconds = sw.seconds();
  return r;
}

}  // namespace st
