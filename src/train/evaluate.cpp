#include "train/evaluate.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/allocator.hpp"
#include "core/timer.hpp"
#include "parallel/watchdog.hpp"

namespace st {

EvalResult evaluate(LlamaModel& m, LlamaActivations& acts, BatchBuffers& buffers, const ShardDataset& data,
                    int64_t max_rows, int64_t batch_size, Comm* dp) {
  MemoryPhase phase("eval");
  Stopwatch sw;
  const int64_t n = max_rows > 0 ? std::min(max_rows, data.size()) : data.size();
  const std::vector<int32_t>& label_ids = data.info().label_token_ids;
  const bool classify = !label_ids.empty();
  EvalResult r;
  double loss_sum = 0;
  int64_t correct = 0, labelled = 0;
  Batch host;
  const int64_t stride = dp ? dp->size() : 1, first = dp ? dp->rank() : 0;
  for (int64_t start = first * batch_size; start < n; start += stride * batch_size) {
    const int64_t rows = std::min(batch_size, n - start);
    watchdog_beat("eval batch");
    std::vector<int64_t> idx(static_cast<size_t>(rows));
    std::iota(idx.begin(), idx.end(), start);
    data.read_rows(idx, host);
    const int64_t tokens = host.loss_tokens();
    // Weight 1 per target: the forward returns the plain sum of token losses.
    LlamaBatch batch = buffers.make(host, 1.0);
    loss_sum += llama_forward(m, acts, batch, LayerContext{}, false);
    r.tokens += tokens;
    r.rows += rows;
    if (!classify) continue;
    for (int64_t b = 0; b < rows; ++b) {
      const int32_t label = host.labels[static_cast<size_t>(b)];
      const int64_t pos = host.answer_start[static_cast<size_t>(b)] - 1;  // predicts the first answer token
      if (label < 0 || label >= static_cast<int32_t>(label_ids.size()) || pos < 0 || pos >= batch.T) continue;
      const Tensor row = acts.logits.slice(b * batch.T + pos, b * batch.T + pos + 1).to_cpu(DType::f32);
      const float* lp = row.ptr<float>();
      int best = 0;
      for (size_t c = 1; c < label_ids.size(); ++c)
        if (lp[label_ids[c]] > lp[label_ids[static_cast<size_t>(best)]]) best = static_cast<int>(c);
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
