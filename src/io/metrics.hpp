// metrics.h5: every figure a run produces, written by rank 0 and flushed as the run goes.
//
//   /          attributes: format_version (i64, kMetricsFormatVersion), shardtune_version,
//              shardtune_commit, shardtune_build (the binary's build flags), start_time (UTC,
//              ISO 8601, the first segment's), host, command_line, segments (i64: 1, +1 per
//              resume), last_start_time (this segment's)
//   /config    attributes: every resolved option (key -> value): integers as i64, reals as f64,
//              booleans as h5py's bool (enum FALSE/TRUE), the rest as strings; plus "deck"
//              (the deck path) and "command_line"
// Every dataset carries the attributes "units" and "description". Strings are variable-length
// UTF-8 (h5py reads them as str).
//   /steps     1-D extendible datasets, one row per optimizer step:
//              step (i64), epoch (i32), loss (f64), lr (f64), grad_norm (f64), tokens (i64:
//              real tokens of the global batch), computed_tokens (i64: positions computed,
//              padding included), step_time (f64, s), tokens_per_s (f64, real tokens),
//              mfu (f64, NaN where no peak is known), mem_current (i64, bytes), mem_peak (i64, bytes)
//   /evals     one row per evaluation: step (i64), epoch (f64, fractional), val_loss (f64),
//              val_accuracy (f64, NaN without labels), val_tokens (i64), eval_time (f64)
//   /epochs    one row per completed epoch: epoch (i32), epoch_time (f64), train_loss (f64,
//              token-weighted mean over the epoch), val_loss (f64), val_accuracy (f64),
//              steps (i64)
//   /ranks     one row per rank: rank (i32), host (string), peak_memory (i64) and
//              peak_<category> (i64) for weights, gradients, optimizer, activations, workspace,
//              comm_time (f64, s)
//   /summary   attributes: outcome ("running" | "ok" | "oom" | "error" | "preempted" |
//              "interrupted"), error (string),
//              oom_bytes (i64), oom_phase (string), oom_category (string), total_time (f64),
//              mean_epoch_time (f64), epochs_completed (i64), steps_completed (i64),
//              peak_memory (i64), tokens_per_s (f64), train_tokens (i64), computed_tokens (i64),
//              padding_fraction (f64: 1 - train_tokens / computed_tokens), initial_val_loss,
//              final_val_loss, initial_val_accuracy, final_val_accuracy (f64),
//              world_size, tp, dp (i64), strategy, method, device, run_id (string),
//              num_parameters, trainable_parameters (i64), memory_limit (i64, 0 = none);
//              total_time sums every segment of a resumed run
// A resumed run (resume = ...) reopens the file and continues it (MetricsWriter::reopen);
// /summary outcome "preempted": stopped by SIGTERM/SIGUSR1 after writing a checkpoint.
// The file is created as "<path>" directly (it is a log, readable up to its last flush);
// outcome "running" marks a run that has not finished (or was killed).
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "config/run_config.hpp"

namespace st {

inline constexpr int64_t kMetricsFormatVersion = 2;

// How /config stores each key (keys absent here are strings).
using ConfigKinds = std::map<std::string, ResolvedOption::Kind>;

struct StepRecord {
  int64_t step = 0;
  int32_t epoch = 0;
  double loss = 0, lr = 0, grad_norm = 0;
  int64_t tokens = 0;           // real tokens
  int64_t computed_tokens = 0;  // positions computed (padding included)
  double step_time = 0, tokens_per_s = 0, mfu = 0;
  int64_t mem_current = 0, mem_peak = 0;
};

struct EvalRecord {
  int64_t step = 0;
  double epoch = 0;
  double val_loss = 0, val_accuracy = 0;
  int64_t val_tokens = 0;
  double eval_time = 0;
};

struct EpochRecord {
  int32_t epoch = 0;
  double epoch_time = 0, train_loss = 0, val_loss = 0, val_accuracy = 0;
  int64_t steps = 0;
};

struct RankRecord {
  int32_t rank = 0;
  std::string host;
  int64_t peak_memory = 0;
  int64_t predicted_peak = 0;  // the planner's prediction of peak_memory (0: none made)
  std::map<std::string, int64_t> peak_by_category;  // "weights", "gradients", ...
  double comm_time = 0;
};

// Summary attributes: typed maps so new fields need no new API.
struct SummaryRecord {
  std::map<std::string, std::string> strings;
  std::map<std::string, int64_t> ints;
  std::map<std::string, double> reals;
};

class MetricsWriter {
 public:
  // Creates the file (and parent directories), writes /config and /summary outcome=running.
  MetricsWriter(const std::string& path, const std::map<std::string, std::string>& config, const ConfigKinds& kinds = {});
  // Resume: reopens an existing file (created by the constructor above) and drops the rows a
  // run went beyond `last_step` to (/steps and /evals rows with step > last_step, /epochs rows
  // beyond `last_epoch` complete epochs); /config is rewritten, /summary outcome set to
  // "running"; `segments` goes up by one. Creates the file as above when it does not exist.
  static std::unique_ptr<MetricsWriter> reopen(const std::string& path, const std::map<std::string, std::string>& config,
                                               int64_t last_step, int64_t last_epoch, const ConfigKinds& kinds = {});
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  void append_step(const StepRecord& r);
  void append_eval(const EvalRecord& r);
  void append_epoch(const EpochRecord& r);
  void write_ranks(const std::vector<RankRecord>& ranks);
  // Merges into /summary's attributes (later calls overwrite keys).
  void write_summary(const SummaryRecord& s);
  void flush();
  const std::string& path() const { return path_; }
  // The file's /summary total_time when it was reopened (the earlier segments' wall time; NaN
  // when there was none, e.g. a killed run): a resumed run adds its own to it.
  double previous_total_time() const { return previous_total_time_; }

 private:
  MetricsWriter() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
  double previous_total_time_ = std::numeric_limits<double>::quiet_NaN();
};

}  // namespace st
