#include "train/trainer.hpp"

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "adapters/peft.hpp"
#include "core/atomic_file.hpp"
#include "core/log.hpp"
#include "core/profile.hpp"
#include "core/rng.hpp"
#include "core/sha256.hpp"
#include "core/timer.hpp"
#include "core/version.hpp"
#include "io/metrics.hpp"
#include "io/shards.hpp"
#include "io/hf_checkpoint.hpp"
#include "parallel/ddp.hpp"
#include "parallel/parallelize.hpp"
#include "parallel/runtime.hpp"
#include "parallel/zero3.hpp"
#include "parallel/watchdog.hpp"
#include "train/evaluate.hpp"
#include "train/loader.hpp"
#include "train/mfu.hpp"
#include "train/checkpoint.hpp"
#include "train/model_runner.hpp"
#include "train/optimizer.hpp"
#include "train/packing.hpp"
#include "train/plan.hpp"
#include "train/preflight.hpp"
#include "train/run_dir.hpp"
#include "train/schedule.hpp"
#include "train/setup.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

// SIGTERM / SIGUSR1 (Slurm's warning before the time limit, or a scheduler's preemption): the
// handler only records the signal; the step loop checks it after each step, agrees on it over
// every rank, writes a checkpoint and ends the run with outcome "preempted" (exit kExitPreempted).
// SIGINT (Ctrl-C) likewise ends the run after the step, with outcome "interrupted" (exit 130),
// writing a checkpoint when checkpoint_every is set; a second Ctrl-C kills the process at once.
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal == 0 || sig != SIGINT) g_stop_signal = sig;  // a preemption signal wins
}

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
  sa.sa_flags = SA_RESTART | SA_RESETHAND;  // the second Ctrl-C takes the default action
  sigaction(SIGINT, &sa, nullptr);
}

// The stop request agreed over every rank: 0 none, 1 interrupt (SIGINT), 2 preemption.
double local_stop_request() {
  if (g_stop_signal == 0) return 0;
  return g_stop_signal == SIGINT ? 1.0 : 2.0;
}

const char* signal_name(int sig) {
  return sig == SIGTERM ? "SIGTERM" : sig == SIGUSR1 ? "SIGUSR1" : sig == SIGINT ? "SIGINT" : "a stop signal";
}

// Seconds between progress lines of a long evaluation (SHARDTUNE_PROGRESS_SECONDS, default 10).
double progress_interval() {
  static const double s = [] {
    const char* e = std::getenv("SHARDTUNE_PROGRESS_SECONDS");
    return e && *e ? std::max(0.0, std::atof(e)) : 10.0;
  }();
  return s;
}

// Doubles in checkpoint JSON by their bits: exact, NaN included.
uint64_t dbits(double v) { return std::bit_cast<uint64_t>(v); }
double from_bits(const nlohmann::json& j) { return std::bit_cast<double>(j.get<uint64_t>()); }

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kProfileWarmupSteps = 2;

void setup_threads(const RunConfig& c) {
  int n = c.threads;
  if (n <= 0) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int local = runtime_active() ? runtime().local_size : 1;
    n = std::max(1, cores / std::max(1, local));
  }
  omp_set_num_threads(n);
}

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(std::llround(s));
  if (t < 60) return str(t, "s");
  if (t < 3600) return str(t / 60, "m ", t % 60, "s");
  return str(t / 3600, "h ", (t % 3600) / 60, "m");
}

std::string fmt_fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string fmt_sci(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2e", v);
  return buf;
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const std::string& x : v) out += (out.empty() ? "" : sep) + x;
  return out;
}

std::map<std::string, std::string> config_map(const RunConfig& c) {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : c.resolved()) m[k] = v;
  m["deck"] = c.deck;
  m["command_line"] = c.command_line;
  return m;
}

ConfigKinds config_kinds(const RunConfig& c) {
  ConfigKinds k;
  for (const ResolvedOption& o : c.resolved_typed()) k[o.key] = o.kind;
  return k;
}

void print_config(const RunConfig& c) {
  ST_LOG(version_line());
  ST_LOG("shardtune: resolved options (source in brackets)");
  bool omitted = false;
  for (const auto& [k, v] : c.resolved()) {
    if (c.set_by_checkpoint(k)) {  // hidden_size = 256 means nothing when model = DIR sets it
      omitted = true;
      continue;
    }
    const auto it = c.origin.find(k);
    const std::string src = it == c.origin.end() ? "default" : it->second;
    ST_LOG(str("  ", k, " = ", v, src == "default" ? "" : str("   [", src, "]")));
  }
  if (omitted) ST_LOG("  (random-init shape keys omitted: ", c.model, "/config.json sets them)");
}

// Evaluations the training loop still runs after step `k` of `total` (eval_every steps inside an
// epoch, each epoch's end, and the end of a run cut short by max_steps).
int64_t evaluations_after(int64_t k, int64_t total, int64_t per_epoch, int64_t every) {
  if (k >= total) return 0;
  auto multiples = [&](int64_t m) { return m > 0 ? total / m - k / m : 0; };
  int64_t n = multiples(per_epoch);
  if (every > 0) n += multiples(every) - multiples(std::lcm(every, per_epoch));
  if (total % per_epoch != 0 && (every <= 0 || total % every != 0)) ++n;
  return n;
}

// Shards of one split, with the checks that tie them to the tokenizer and to each other.
ShardDataset open_split(const RunConfig& c, const std::string& split) {
  ShardDataset d = ShardDataset::open(c.data, split);
  if (d.size() == 0) ST_THROW_INPUT(c.data, ": split '", split, "' has no rows");
  return d;
}

void check_tokenizers(const RunConfig& c, const ShardDataset& train, const ShardDataset* val) {
  if (val && val->info().tokenizer_sha256 != train.info().tokenizer_sha256)
    ST_THROW_INPUT(val->files().front(), ": tokenizer_sha256 ", val->info().tokenizer_sha256,
                   " differs from the training shards' ", train.info().tokenizer_sha256,
                   " (the splits were written with different tokenizers)");
  if (!c.tokenizer.empty()) {
    const std::string sha = sha256_file_hex(c.tokenizer);
    if (sha != train.info().tokenizer_sha256)
      ST_THROW_INPUT(train.files().front(), ": shards were written with a tokenizer of sha256 ",
                     train.info().tokenizer_sha256, ", but tokenizer = ", c.tokenizer, " has sha256 ", sha);
  }
}

// Test hook: SHARDTUNE_FAULT="<rank>:<step>" makes that rank fail at that step (before the
// gradient all-reduce), so the tests can check that one failing rank ends the whole job;
// "<rank>:<step>:hang" makes it hang there instead (the watchdog must end the job), and
// "<rank>:<step>:oom" makes it run out of memory (outcome oom, exit 3); "<rank>:<step>:sigterm"
// (or sigusr1) sends that rank the signal during the step (checkpoint, outcome preempted, exit 4);
// "<rank>:<step>:sigint" as Ctrl-C (outcome interrupted, exit 130).
void maybe_inject_fault(int64_t step) {
  static const char* spec = std::getenv("SHARDTUNE_FAULT");
  if (!spec) return;
  int rank = -1;
  long long at = -1;
  char mode[8] = "";
  if (std::sscanf(spec, "%d:%lld:%7s", &rank, &at, mode) < 2) return;
  if (rank == runtime().world_rank && at == step && std::strcmp(mode, "hang") == 0)
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  if (rank == runtime().world_rank && at == step && std::strcmp(mode, "sigterm") == 0) {
    std::raise(SIGTERM);  // as from Slurm or kill: the run checkpoints after this step and stops
    return;
  }
  if (rank == runtime().world_rank && at == step && std::strcmp(mode, "sigusr1") == 0) {
    std::raise(SIGUSR1);
    return;
  }
  if (rank == runtime().world_rank && at == step && std::strcmp(mode, "sigint") == 0) {
    std::raise(SIGINT);  // as Ctrl-C: outcome interrupted, a checkpoint only with checkpoint_every
    return;
  }
  if (rank == runtime().world_rank && at == step && std::strcmp(mode, "oom") == 0)
    throw OutOfMemory(str("injected out of memory (SHARDTUNE_FAULT=", spec, ") at step ", step), __FILE__, __LINE__,
                      0, "activations", memory_phase());
  if (rank == runtime().world_rank && at == step)
    ST_THROW("injected fault (SHARDTUNE_FAULT=", spec, ") at step ", step);
}


struct RankMemory {
  MemoryStats stats;
  double comm_time = 0;
  size_t predicted_peak = 0;
};

// Every rank's peak memory and communication time, gathered to all ranks.
std::vector<RankRecord> gather_rank_records(const RankMemory& mine) {
  constexpr int kFields = 3 + kNumMemCategories;
  constexpr int kHost = 64;
  Runtime& rt = runtime();
  Tensor local = Tensor::empty({kFields}, DType::f64, Device::cpu, MemCategory::other);
  double* p = local.ptr<double>();
  p[0] = static_cast<double>(mine.stats.total_peak);
  p[1] = mine.comm_time;
  p[2] = static_cast<double>(mine.predicted_peak);
  for (int i = 0; i < kNumMemCategories; ++i) p[3 + i] = static_cast<double>(mine.stats.peak[static_cast<size_t>(i)]);
  Tensor all = Tensor::empty({kFields * rt.world_size}, DType::f64, Device::cpu, MemCategory::other);
  rt.world->all_gather(local, all);
  Tensor host = Tensor::zeros({kHost}, DType::u8, Device::cpu, MemCategory::other);
  std::memcpy(host.data(), rt.host.c_str(), std::min<size_t>(kHost - 1, rt.host.size()));
  Tensor hosts = Tensor::empty({kHost * rt.world_size}, DType::u8, Device::cpu, MemCategory::other);
  rt.world->all_gather(host, hosts);
  std::vector<RankRecord> out;
  for (int r = 0; r < rt.world_size; ++r) {
    const double* q = all.ptr<double>() + r * kFields;
    RankRecord rec;
    rec.rank = r;
    rec.host = std::string(reinterpret_cast<const char*>(hosts.ptr<uint8_t>() + r * kHost));
    rec.peak_memory = static_cast<int64_t>(q[0]);
    rec.comm_time = q[1];
    rec.predicted_peak = static_cast<int64_t>(q[2]);
    for (int i = 0; i < kNumMemCategories; ++i)
      rec.peak_by_category[mem_category_name(static_cast<MemCategory>(i))] = static_cast<int64_t>(q[3 + i]);
    out.push_back(rec);
  }
  return out;
}

class Run {
 public:
  Run(const RunConfig& c, const ParallelLayout& layout) : cfg_(c), layout_(layout), method_(run_method(c)) {}
  int train();
  int evaluate_only();

 private:
  void begin(const char* what, bool training = false);
  void open_data(bool need_train);
  RankComms comms() const;
  void build_model(bool training);
  EvalResult run_eval(int64_t step, double epoch);
  // The progress line's figures since the last one (the logging window).
  struct LogWindow {
    int64_t steps = 0, targets = 0, tokens = 0;
    double loss_sum = 0, time = 0, gnorm_sum = 0;
  };
  void log_step(const StepRecord& r, int64_t step_targets, int64_t total_steps, int64_t steps_per_epoch);
  void finish_summary(const char* outcome);
  double run_time() const { return prior_time_ + total_.seconds(); }  // every segment of the run
  std::string tokenizer_for_export() const;
  CheckpointLayout layout() const;

  RunConfig cfg_;
  ParallelLayout layout_;
  Method method_;
  Device device_ = Device::cpu;
  DType dtype_ = DType::f32;
  std::string run_dir_;
  std::unique_ptr<MetricsWriter> metrics_;
  Stopwatch total_;
  std::unique_ptr<ShardDataset> train_, val_;
  TrainingState state_;          // model, ZeRO-3, optimizer, DDP
  ModelRunner* model_ = nullptr;  // state_.model
  double flops_per_token_ = 0;
  double peak_flops_ = 0;  // dense bf16 peak of this GPU (train/mfu.hpp); 0 on CPUs and unknown GPUs
  size_t predicted_peak_ = 0;  // the planner's dry run of this rank (training runs)
  std::optional<MemoryStats> train_stats_;  // memory statistics at the end of training
  SummaryRecord summary_;
  std::vector<double> epoch_times_;
  bool have_initial_eval_ = false;
  int64_t last_eval_step_ = -1;
  EvalResult last_eval_;
  std::string resume_dir_;  // the checkpoint this training run continues ("" = none)
  double prior_time_ = 0;   // wall time of the earlier segments of a resumed run
  LogWindow window_;
  double eval_seconds_sum_ = 0;  // this segment's evaluations (for the ETA)
  int64_t evals_timed_ = 0;

 public:
  // Record a failed run's outcome with everything gathered so far (the error then propagates).
  void record_failure(const std::string& outcome, const std::string& message, const OutOfMemory* oom);
};

CheckpointLayout Run::layout() const {
  CheckpointLayout l;
  l.parallel = layout_;
  l.method = method_;
  l.rank = runtime().world_rank;
  return l;
}

void Run::begin(const char* what, bool training) {
  device_ = run_device(cfg_);
  dtype_ = run_dtype(cfg_, device_);
  if (device_ == Device::cuda) select_cuda_device(runtime().local_rank);
  // NCCL communicators for GPU runs with several ranks, and for a strategy's one-rank run (whose
  // collectives then go through NCCL too).
  if (device_ == Device::cuda && layout_.has_communicators())
    runtime_enable_device_comms(runtime());  // NCCL
  setup_threads(cfg_);
  allocator_for(device_).set_limit(parse_bytes(cfg_.memory_limit, "memory_limit"));
  run_dir_ = claim_run_directory(cfg_, training, *runtime().world);  // locked; eval: <run>/eval-<n>
  if (process_rank() == 0) print_config(cfg_);
  if (training) {
    resume_dir_ = find_resume_checkpoint(cfg_);
    Runtime& rtr = runtime();
    if (rtr.world_size > 1) {
      // Every rank must continue from the same step (a file system that shows ranks different
      // directories would otherwise mix checkpoints).
      const double mine = resume_dir_.empty() ? -1.0 : static_cast<double>(checkpoint_dir_step(fs::path(resume_dir_).filename().string()));
      const double hi = rtr.world->all_reduce_max(mine), lo = -rtr.world->all_reduce_max(-mine);
      if (hi != lo)
        ST_THROW_INPUT("resume = ", cfg_.resume, ": the ranks see different checkpoints (steps ", lo, " to ", hi,
                       "): checkpoint_dir must be one directory every rank sees (a shared file system)");
    }
    // Refused before anything is written (metrics.h5 would be cut back to the checkpoint).
    if (!resume_dir_.empty()) check_checkpoint(cfg_, layout(), resume_dir_);
  }
  if (process_rank() == 0) {
    if (training) check_run_replacement(cfg_, run_dir_, resume_dir_);  // a finished run is not replaced
    const std::string mpath = (fs::path(run_dir_) / "metrics.h5").string();
    if (!resume_dir_.empty()) {
      // Continue the file: keep the rows up to the checkpoint, drop those of a run that got further.
      const nlohmann::json t = checkpoint_trainer_state(resume_dir_, 0);
      metrics_ = MetricsWriter::reopen(mpath, config_map(cfg_), t.at("step").get<int64_t>(),
                                       t.at("epochs_done").get<int64_t>(), config_kinds(cfg_));
      if (std::isfinite(metrics_->previous_total_time())) prior_time_ = metrics_->previous_total_time();
    } else {
      metrics_ = std::make_unique<MetricsWriter>(mpath, config_map(cfg_), config_kinds(cfg_));
    }
    ST_LOG("shardtune ", what, ": run ", cfg_.run_id, " -> ", metrics_->path(), " (", omp_get_max_threads(),
           " threads, ", device_name(device_), ", ", dtype_name(dtype_), ")");
  }
  summary_.strings["run_id"] = cfg_.run_id;
  summary_.strings["method"] = method_name(method_);
  summary_.strings["strategy"] = layout_.summary_name();
  summary_.strings["device"] = device_name(device_);
  if (device_ == Device::cuda) {
    const std::string gpu = cuda_device_name();
    peak_flops_ = gpu_bf16_peak_flops(gpu);
    summary_.strings["gpu"] = gpu;
    summary_.reals["gpu_peak_flops"] = peak_flops_ > 0 ? peak_flops_ : kNaN;
  }
  summary_.strings["dtype"] = dtype_name(dtype_);
  summary_.ints["world_size"] = layout_.world;
  summary_.ints["tp"] = layout_.tp;
  summary_.ints["dp"] = layout_.dp;
  summary_.ints["memory_limit"] = static_cast<int64_t>(allocator_for(device_).limit());
}

void Run::open_data(bool need_train) {
  MemoryPhase phase("load");
  if (need_train) {
    train_ = std::make_unique<ShardDataset>(open_split(cfg_, cfg_.train_split));
    ST_LOG("data: ", cfg_.train_split, " ", train_->size(), " rows of up to ", train_->seq_len(), " tokens (",
           train_->files().size(), " shard", train_->files().size() == 1 ? "" : "s", ", task ", train_->info().task, ")");
  }
  if (!cfg_.val_split.empty()) {
    val_ = std::make_unique<ShardDataset>(open_split(cfg_, cfg_.val_split));
    ST_LOG("data: ", cfg_.val_split, " ", val_->size(), " rows");
  }
  if (!train_ && !val_) ST_THROW_INPUT(cfg_.origin.at("val_split"), ": val_split is empty: nothing to evaluate");
  const ShardDataset& ref = train_ ? *train_ : *val_;
  check_tokenizers(cfg_, ref, val_.get());
  if (train_ && val_ && val_->info().task != train_->info().task)
    ST_THROW_INPUT(val_->files().front(), ": task '", val_->info().task, "' differs from the training split's '",
                   train_->info().task, "'");
}

RankComms Run::comms() const {
  Runtime& rt = runtime();
  RankComms c;
  c.tp = tp_group_for(layout_, &runtime_comm(rt, CommGroup::tp, device_));
  c.dp = &runtime_comm(rt, CommGroup::dp, device_);
  c.dp_host = rt.dp_comm.get();
  c.tp_host = rt.tp_comm.get();
  c.world = rt.world.get();
  return c;
}

void Run::build_model(bool training) {
  check_data_against_model(cfg_, train_.get(), val_.get());  // token ids inside the model's vocabulary
  const ShardDataset& ref = train_ ? *train_ : *val_;
  DataShape shape;
  shape.seq_len = std::max(train_ ? train_->seq_len() : 0, val_ ? val_->seq_len() : 0);
  shape.target_len = std::max(train_ ? train_->target_len() : 0, val_ ? val_->target_len() : 0);
  shape.label_token_ids = ref.info().label_token_ids;
  if (training) shape.pack_length = resolved_pack_length(cfg_, train_->seq_len());
  Runtime& rt0 = runtime();
  if (training) {
    // The planner's prediction of this rank's peak: a dry run of what follows (train/plan.hpp).
    PlanLayout layout;
    layout.parallel = layout_;
    layout.method = method_;
    layout.checkpointing = run_checkpointing(cfg_);
    predicted_peak_ = predict_rank_memory(cfg_, PlanData{ref.info(), shape}, layout, rt0.world_rank).peak;
    ST_LOG("plan: predicted peak ", format_bytes(static_cast<double>(predicted_peak_)), " on this rank");
  }
  state_ = build_training_state(cfg_, layout_, method_, ref.info(), shape, dtype_, device_, comms(), training);
  model_ = state_.model.get();
  summary_.strings["arch"] = state_.family->name;
  if (state_.lora_adapters > 0 && cfg_.adapter.empty()) {
    const std::vector<std::string> targets = lora_targets_for(cfg_, *state_.family);
    ST_LOG("lora: ", state_.lora_adapters, " adapters, r=", cfg_.lora_r, " alpha=", cfg_.lora_alpha,
           " dropout=", cfg_.lora_dropout, " on ", join(targets, ","));
  }
  const int64_t total = state_.num_parameters;
  const int64_t trainable = state_.num_trainable;
  const WeightBytes wb = state_.weight_bytes;
  if (train_) flops_per_token_ = model_->flops_per_token();
  Runtime& rt = runtime();
  if (state_.zero) {
    const Zero3::Bytes zb = state_.zero->bytes();
    ST_LOG("zero3: ", state_.zero->num_units(), " units sharded over ", rt.dp, " data-parallel rank", rt.dp == 1 ? "" : "s",
           "; this rank keeps ", format_bytes(static_cast<double>(zb.frozen)), " frozen + ",
           format_bytes(static_cast<double>(zb.working)), " trainable weights, ",
           format_bytes(static_cast<double>(zb.master)), " masters, ", format_bytes(static_cast<double>(zb.grads)),
           " gradients; largest gathered unit ", format_bytes(static_cast<double>(zb.largest_unit_gathered)));
    summary_.ints["zero3_frozen_shard_bytes"] = static_cast<int64_t>(zb.frozen);
    summary_.ints["zero3_trainable_shard_bytes"] = static_cast<int64_t>(zb.working);
    summary_.ints["zero3_largest_unit_bytes"] = static_cast<int64_t>(zb.largest_unit_gathered);
  }
  if (state_.grad_sync)
    ST_LOG("ddp: ", rt.dp, " data-parallel ranks, gradients summed in ", state_.grad_sync->num_buckets(), " bucket",
           state_.grad_sync->num_buckets() == 1 ? "" : "s");
  summary_.ints["num_parameters"] = total;
  summary_.ints["base_weight_bytes"] = static_cast<int64_t>(wb.stored);
  summary_.ints["base_weight_bytes_dense"] = static_cast<int64_t>(wb.dense);
  summary_.ints["nf4_layers"] = static_cast<int64_t>(wb.quantized_layers);
  summary_.ints["trainable_parameters"] = trainable;
  ST_LOG("params: ", total, " total, ", trainable, " trainable (", fmt_fixed(100.0 * trainable / std::max<int64_t>(1, total), 2),
         "%); memory after setup ", format_bytes(static_cast<double>(allocator_for(device_).stats().total_current)));
}

EvalResult Run::run_eval(int64_t step, double epoch) {
  if (step == last_eval_step_) return last_eval_;  // already evaluated at this step
  Stopwatch since_line;
  const auto progress = [&](int64_t done, int64_t total, double elapsed) {
    if (done >= total || since_line.seconds() < progress_interval()) return;
    since_line = Stopwatch();
    ST_LOG("eval  step ", step, " | batch ", done, "/", total, " | ", fmt_duration(elapsed), " elapsed, ETA ",
           fmt_duration(elapsed / static_cast<double>(done) * static_cast<double>(total - done)));
  };
  EvalResult r = evaluate(*model_, *val_, cfg_.max_val_rows, cfg_.micro_batch_size,
                          runtime().dp > 1 ? runtime().dp_comm.get() : nullptr, progress);
  eval_seconds_sum_ += r.seconds;
  ++evals_timed_;
  ST_LOG("eval  step ", step, " | val loss ", fmt_fixed(r.loss, 4),
         std::isnan(r.accuracy) ? std::string() : str(" | val acc ", fmt_fixed(100 * r.accuracy, 2), "%"), " | ",
         r.rows, " rows, ", r.tokens, " targets, ", fmt_fixed(r.seconds, 2), "s");
  if (metrics_) metrics_->append_eval({step, epoch, r.loss, r.accuracy, r.tokens, r.seconds});
  if (!have_initial_eval_) {
    summary_.reals["initial_val_loss"] = r.loss;
    summary_.reals["initial_val_accuracy"] = r.accuracy;
    have_initial_eval_ = true;
  }
  summary_.reals["final_val_loss"] = r.loss;
  summary_.reals["final_val_accuracy"] = r.accuracy;
  last_eval_step_ = step;
  last_eval_ = r;
  return r;
}

// One line per log_every steps (and the first and last): loss (token-weighted), gradient norm,
// tokens/s and s/step are means over the steps since the previous line; the ETA is the window's
// s/step times the steps left plus the evaluations left at this segment's mean evaluation time
// (or the last one's, restored from a checkpoint).
void Run::log_step(const StepRecord& r, int64_t step_targets, int64_t total_steps, int64_t steps_per_epoch) {
  LogWindow& w = window_;
  ++w.steps;
  w.targets += step_targets;
  w.tokens += r.tokens;
  w.loss_sum += r.loss * static_cast<double>(step_targets);
  w.time += r.step_time;
  w.gnorm_sum += r.grad_norm;
  const bool tty_line = r.step % cfg_.log_every == 0 || r.step == total_steps || r.step == 1;
  if (!tty_line) return;
  const double n = static_cast<double>(w.steps);
  const double loss = w.targets > 0 ? w.loss_sum / static_cast<double>(w.targets) : r.loss;
  const double step_time = w.time / n;
  std::string eta = fmt_duration(step_time * static_cast<double>(total_steps - r.step));
  const int64_t evals_left =
      val_ ? evaluations_after(r.step, total_steps, steps_per_epoch, cfg_.eval_every) : 0;
  if (evals_left > 0) {
    const double per_eval = evals_timed_ > 0 ? eval_seconds_sum_ / static_cast<double>(evals_timed_)
                                             : (last_eval_step_ >= 0 ? last_eval_.seconds : kNaN);
    eta = std::isfinite(per_eval)
              ? fmt_duration(step_time * static_cast<double>(total_steps - r.step) + per_eval * static_cast<double>(evals_left))
              : eta + " + " + std::to_string(evals_left) + " evaluations";
  }
  ST_LOG("step ", r.step, "/", total_steps, " | epoch ", r.epoch, " | loss ", fmt_fixed(loss, 4), " | lr ",
         fmt_sci(r.lr), " | gnorm ", fmt_fixed(w.gnorm_sum / n, 3), " | ",
         static_cast<int64_t>(static_cast<double>(w.tokens) / w.time), " tok/s | ", fmt_fixed(step_time, 3),
         " s/step | ETA ", eta);
  w = LogWindow{};
}

std::string Run::tokenizer_for_export() const {
  if (!cfg_.tokenizer.empty()) return cfg_.tokenizer;
  if (!cfg_.model.empty() && fs::exists(fs::path(cfg_.model) / "tokenizer.model"))
    return (fs::path(cfg_.model) / "tokenizer.model").string();
  return "";
}

void Run::finish_summary(const char* outcome) {
  // Peaks of the run itself: taken before saving the model when it was saved (merging and
  // gathering for the save is not training).
  const MemoryStats ms = train_stats_ ? *train_stats_ : allocator_for(device_).stats();
  summary_.strings["outcome"] = outcome;
  summary_.reals["total_time"] = run_time();
  summary_.ints["peak_memory"] = static_cast<int64_t>(ms.total_peak);
  for (int i = 0; i < kNumMemCategories; ++i)
    summary_.ints[str("peak_", mem_category_name(static_cast<MemCategory>(i)))] =
        static_cast<int64_t>(ms.at_total_peak[static_cast<size_t>(i)]);
  double mean_epoch = kNaN;
  if (!epoch_times_.empty()) {
    mean_epoch = 0;
    for (double t : epoch_times_) mean_epoch += t;
    mean_epoch /= static_cast<double>(epoch_times_.size());
  }
  summary_.reals["mean_epoch_time"] = mean_epoch;
  summary_.ints["epochs_completed"] = static_cast<int64_t>(epoch_times_.size());
  Runtime& rtc = runtime();
  RankMemory mine{ms, runtime_comm_time(rtc), predicted_peak_};
  const std::vector<RankRecord> ranks = gather_rank_records(mine);
  int64_t predicted = 0;
  for (const RankRecord& r : ranks) predicted = std::max(predicted, r.predicted_peak);
  if (predicted > 0) summary_.ints["predicted_peak"] = predicted;
  if (metrics_) {
    metrics_->write_ranks(ranks);
    metrics_->write_summary(summary_);
    metrics_->flush();
  }
}

int Run::train() {
  install_stop_handlers();
  begin("train", true);
  open_data(true);
  build_model(true);
  Runtime& rt = runtime();
  const int64_t micro = cfg_.micro_batch_size, accum = cfg_.grad_accum;
  const int64_t global_batch = micro * accum * rt.dp;
  const int64_t n_train = cfg_.max_train_rows > 0 ? std::min(cfg_.max_train_rows, train_->size()) : train_->size();
  // The training rows of each epoch (train/packing.hpp): shard rows, length-grouped, or packed.
  const std::vector<int32_t>& row_targets = train_->loss_tokens();
  const std::vector<int32_t> all_row_lengths = model_->row_tokens(*train_);
  const std::vector<int32_t> row_lengths(all_row_lengths.begin(), all_row_lengths.begin() + n_train);
  BatchingOptions batching;
  batching.seed = cfg_.seed;
  batching.shuffle = cfg_.shuffle;
  batching.group_by_length = cfg_.group_by_length;
  batching.pack_length = resolved_pack_length(cfg_, train_->seq_len());
  batching.global_batch = global_batch;
  if (batching.pack_length > 0) {
    const int32_t longest = *std::max_element(row_lengths.begin(), row_lengths.end());
    if (longest > batching.pack_length)
      ST_THROW_INPUT(cfg_.origin.at("pack_length"), ": pack_length = ", batching.pack_length,
                     " is shorter than the longest training row (", longest,
                     " tokens); documents are never split: set pack_length >= ", longest);
  }
  const int64_t n_rows = epoch_rows(row_lengths, batching, 1).size();
  const int64_t steps_per_epoch = n_rows / global_batch;
  if (steps_per_epoch == 0)
    ST_THROW_INPUT(cfg_.data, ": the training split has ", n_train, " rows",
                   batching.pack_length > 0 ? str(" (", n_rows, " packed rows)") : std::string(),
                   ", fewer than one global batch of ", global_batch,
                   " (micro_batch_size x grad_accum x data-parallel ranks)");
  if (batching.pack_length > 0) {
    const double real = std::accumulate(row_lengths.begin(), row_lengths.end(), 0.0);
    ST_LOG("packing: ", n_train, " documents into ", n_rows, " rows of up to ", batching.pack_length, " tokens (",
           fmt_fixed(100.0 * real / (static_cast<double>(n_rows) * static_cast<double>(batching.pack_length)), 1),
           "% filled); each epoch trains ", steps_per_epoch * global_batch, " rows, leaving out the last ",
           n_rows - steps_per_epoch * global_batch);
  }
  int64_t total_steps = steps_per_epoch * cfg_.epochs;
  if (cfg_.max_steps > 0) total_steps = std::min(total_steps, cfg_.max_steps);
  const LrSchedule sched{cfg_.lr, cfg_.min_lr_ratio, cfg_.warmup_steps, total_steps, cfg_.lr_schedule};
  const double flops_per_token = flops_per_token_;
  summary_.reals["flops_per_token"] = flops_per_token;
  summary_.ints["global_batch"] = global_batch;
  summary_.ints["steps_per_epoch"] = steps_per_epoch;
  summary_.ints["rows_per_epoch"] = n_rows;
  summary_.ints["total_steps"] = total_steps;
  if (metrics_) {  // for analysis/watch.py while the run goes (outcome stays "running")
    SummaryRecord early;
    early.ints = {{"total_steps", total_steps}, {"steps_per_epoch", steps_per_epoch}, {"global_batch", global_batch}};
    early.strings = {{"run_id", cfg_.run_id}, {"method", method_name(method_)}, {"strategy", summary_.strings["strategy"]}};
    metrics_->write_summary(early);
  }
  ST_LOG("train: ", total_steps, " steps (", steps_per_epoch, " per epoch, global batch ", global_batch,
         batching.pack_length > 0 ? " packed rows = " : " rows = ",
         micro, " x ", accum, " accumulation x ", rt.dp, " ranks), ", cfg_.epochs, " epoch", cfg_.epochs == 1 ? "" : "s");

  // Where the loop starts: the beginning, or a checkpoint's position (train/checkpoint.hpp).
  const CheckpointLayout layout = this->layout();
  int64_t step = 0, train_tokens = 0, computed_tokens = 0;
  double step_time_sum = 0;
  int64_t start_epoch = 1, start_s = 0, last_checkpoint = -1;
  bool done = false, preempted = false, interrupted = false;
  // The running figures of the current epoch (restored with a checkpoint taken inside it).
  struct EpochSums {
    double loss_sum = 0, elapsed = 0, eval_time = 0;
    int64_t targets = 0, steps = 0;
  } resumed_sums;
  if (!resume_dir_.empty()) {
    MemoryPhase phase("load");
    const nlohmann::json t = load_checkpoint(cfg_, layout, resume_dir_, *state_.opt);
    try {
      step = t.at("step").get<int64_t>();
      start_epoch = t.at("epoch").get<int64_t>();
      start_s = t.at("step_in_epoch").get<int64_t>();
      done = t.at("finished").get<bool>();
      train_tokens = t.at("train_tokens").get<int64_t>();
      computed_tokens = t.value("computed_tokens", int64_t{0});
      step_time_sum = from_bits(t.at("step_time_sum"));
      if (t.contains("run_time")) prior_time_ = std::max(prior_time_, from_bits(t.at("run_time")));
      resumed_sums.loss_sum = from_bits(t.at("epoch_loss_sum"));
      resumed_sums.elapsed = from_bits(t.at("epoch_elapsed"));
      resumed_sums.eval_time = from_bits(t.at("epoch_eval_time"));
      resumed_sums.targets = t.at("epoch_targets").get<int64_t>();
      resumed_sums.steps = t.at("epoch_steps").get<int64_t>();
      for (const auto& e : t.at("epoch_times")) epoch_times_.push_back(from_bits(e));
      have_initial_eval_ = t.at("have_initial_eval").get<bool>();
      for (const char* k : {"initial_val_loss", "initial_val_accuracy", "final_val_loss", "final_val_accuracy"})
        if (t.contains(k)) summary_.reals[k] = from_bits(t.at(k));
      last_eval_step_ = t.at("last_eval_step").get<int64_t>();
      const nlohmann::json& le = t.at("last_eval");
      last_eval_.loss = from_bits(le.at("loss"));
      last_eval_.accuracy = from_bits(le.at("accuracy"));
      last_eval_.tokens = le.at("tokens").get<int64_t>();
      last_eval_.rows = le.at("rows").get<int64_t>();
      last_eval_.seconds = from_bits(le.at("seconds"));
    } catch (const nlohmann::json::exception& e) {
      ST_THROW_INPUT(resume_dir_, ": trainer state: ", e.what());
    }
    last_checkpoint = step;
    ST_LOG("resume: continuing at step ", step + 1, " (epoch ", start_epoch, ", step ", start_s + 1, " of ",
           steps_per_epoch, ")");
  }
  rt.world->barrier();  // every rank has read its checkpoint before rank 0 tidies the directory
  if (rt.world_rank == 0) prune_checkpoints(cfg_, resume_dir_.empty() ? -1 : step);

  if (val_ && cfg_.eval_at_start && resume_dir_.empty()) run_eval(0, 0.0);
  allocator_for(device_).reset_peak();  // peak of training itself (setup and eval are below it anyway)

  // A checkpoint of the state after `step`, continuing at step `pos_s` of epoch `pos_epoch`.
  auto checkpoint = [&](int64_t pos_epoch, int64_t pos_s, bool finished, const EpochSums& es) {
    MemoryPhase phase("checkpoint");
    watchdog_beat(str("checkpoint at step ", step));
    nlohmann::json t = {{"step", step},
                        {"epoch", pos_epoch},
                        {"step_in_epoch", pos_s},
                        {"epochs_done", finished ? cfg_.epochs : pos_epoch - 1},
                        {"finished", finished},
                        {"train_tokens", train_tokens},
                        {"computed_tokens", computed_tokens},
                        {"step_time_sum", dbits(step_time_sum)},
                        {"run_time", dbits(run_time())},
                        {"epoch_loss_sum", dbits(es.loss_sum)},
                        {"epoch_elapsed", dbits(es.elapsed)},
                        {"epoch_eval_time", dbits(es.eval_time)},
                        {"epoch_targets", es.targets},
                        {"epoch_steps", es.steps},
                        {"have_initial_eval", have_initial_eval_},
                        {"last_eval_step", last_eval_step_},
                        {"last_eval",
                         {{"loss", dbits(last_eval_.loss)},
                          {"accuracy", dbits(last_eval_.accuracy)},
                          {"tokens", last_eval_.tokens},
                          {"rows", last_eval_.rows},
                          {"seconds", dbits(last_eval_.seconds)}}}};
    nlohmann::json times = nlohmann::json::array();
    for (double x : epoch_times_) times.push_back(dbits(x));
    t["epoch_times"] = times;
    for (const char* k : {"initial_val_loss", "initial_val_accuracy", "final_val_loss", "final_val_accuracy"})
      if (summary_.reals.count(k)) t[k] = dbits(summary_.reals.at(k));
    write_checkpoint(cfg_, layout, step, *state_.opt, t, *rt.world);
    last_checkpoint = step;
    watchdog_beat(str("checkpoint at step ", step, " written"));
  };
  // After each step (for an epoch's last step, after the epoch's evaluation): a stop signal on
  // any rank, or a periodic checkpoint. Returns true when the run must stop (preempted). The
  // last step of the run continues to the end (its checkpoint is the final one).
  auto after_step = [&](int64_t pos_epoch, int64_t pos_s, const EpochSums& es) {
    if (step >= total_steps) return false;
    double stop = local_stop_request();
    if (rt.world_size > 1) stop = rt.world->all_reduce_max(stop);
    if (stop > 0) {
      const std::string who = g_stop_signal != 0 ? str("signal ", signal_name(g_stop_signal)) : "signal on another rank";
      preempted = stop > 1.5;
      interrupted = !preempted;
      // The outcome first: a launcher that kills the ranks soon after its signal (mpirun) must
      // not leave the run looking "running".
      if (metrics_) {
        SummaryRecord s = summary_;
        s.strings["outcome"] = preempted ? "preempted" : "interrupted";
        s.reals["total_time"] = run_time();
        s.ints["steps_completed"] = step;
        metrics_->write_summary(s);
      }
      if (preempted || cfg_.checkpoint_every > 0) {
        ST_LOG(who, ": writing a checkpoint at step ", step, " and stopping (", preempted ? "preempted" : "interrupted", ")");
        checkpoint(pos_epoch, pos_s, false, es);
      } else {
        ST_LOG(who, ": stopping after step ", step, " (interrupted; no checkpoint: checkpoint_every = 0)");
      }
      return true;
    }
    if (cfg_.checkpoint_every > 0 && step % cfg_.checkpoint_every == 0) checkpoint(pos_epoch, pos_s, false, es);
    return false;
  };

  const RankComms step_comms = comms();
  for (int64_t epoch = start_epoch; epoch <= cfg_.epochs && !done; ++epoch) {
    const EpochRows rows = epoch_rows(row_lengths, batching, epoch);
    if (rows.size() != n_rows) ST_THROW("epoch ", epoch, " has ", rows.size(), " training rows, epoch 1 had ", n_rows);
    Stopwatch epoch_clock;
    const bool resumed_epoch = !resume_dir_.empty() && epoch == start_epoch;
    const EpochSums before = resumed_epoch ? resumed_sums : EpochSums{};
    double eval_time_in_epoch = before.eval_time, epoch_loss_sum = before.loss_sum;
    int64_t epoch_targets = before.targets, epoch_steps = before.steps;
    auto sums_now = [&] {
      return EpochSums{epoch_loss_sum, before.elapsed + epoch_clock.seconds() - (eval_time_in_epoch - before.eval_time),
                       eval_time_in_epoch, epoch_targets, epoch_steps};
    };
    for (int64_t s = resumed_epoch ? start_s : 0; s < steps_per_epoch; ++s) {
      if (cfg_.max_steps > 0 && step >= cfg_.max_steps) { done = true; break; }
      Stopwatch step_clock;
      ++step;
      watchdog_beat(str("train step ", step));
      // This step's training rows for this data-parallel rank.
      const int64_t first = s * global_batch + rt.dp_rank * micro * accum;
      int64_t step_targets = 0, step_tokens = 0;
      for (int64_t d = rows.row_begin[static_cast<size_t>(s * global_batch)];
           d < rows.row_begin[static_cast<size_t>((s + 1) * global_batch)]; ++d) {
        const int64_t row = rows.docs[static_cast<size_t>(d)];
        step_targets += row_targets[static_cast<size_t>(row)];
        step_tokens += row_lengths[static_cast<size_t>(row)];
      }
      const double token_weight = step_targets > 0 ? 1.0 / static_cast<double>(step_targets) : 0.0;
      const double lr = sched.at(step);
      const StepOutcome out = training_step(
          state_, cfg_, step_comms, accum, token_weight, lr,
          [&](int64_t a, Batch& host, LayerContext& ctx) {
            const int64_t p0 = first + a * micro;  // training rows [p0, p0 + micro)
            const auto d0 = rows.docs.begin() + rows.row_begin[static_cast<size_t>(p0)];
            const auto d1 = rows.docs.begin() + rows.row_begin[static_cast<size_t>(p0 + micro)];
            train_->read_rows(std::vector<int64_t>(d0, d1), host);
            if (batching.pack_length > 0)
              for (int64_t p = p0; p < p0 + micro; ++p) host.pack_rows.push_back(static_cast<int32_t>(rows.docs_in(p)));
            ctx.dropout_seed = splitmix64(cfg_.seed ^ splitmix64(static_cast<uint64_t>(step) * 1000003ull + static_cast<uint64_t>(a)));
          },
          [&] { maybe_inject_fault(step); });
      const double loss = out.loss, gnorm = out.grad_norm;
      const double dt = step_clock.seconds();
      step_time_sum += dt;
      train_tokens += step_tokens;
      computed_tokens += out.computed_tokens;
      epoch_loss_sum += loss * static_cast<double>(step_targets);
      epoch_targets += step_targets;
      ++epoch_steps;
      const MemoryStats& ms = allocator_for(device_).stats();
      StepRecord rec;
      rec.step = step;
      rec.epoch = static_cast<int32_t>(epoch);
      rec.loss = loss;
      rec.lr = lr;
      rec.grad_norm = gnorm;
      rec.tokens = step_tokens;
      rec.computed_tokens = out.computed_tokens;
      rec.step_time = dt;
      rec.tokens_per_s = static_cast<double>(step_tokens) / dt;
      // NaN on CPUs and GPUs without a peak in the table.
      rec.mfu = model_flops_utilization(flops_per_token, static_cast<double>(step_tokens), dt, layout_.world, peak_flops_);
      rec.mem_current = static_cast<int64_t>(ms.total_current);
      rec.mem_peak = static_cast<int64_t>(ms.total_peak);
      if (metrics_) metrics_->append_step(rec);
      if (step == kProfileWarmupSteps) profile_reset();  // the profile covers steady-state steps
      log_step(rec, step_targets, total_steps, steps_per_epoch);
      if (!std::isfinite(loss)) ST_THROW("loss is ", loss, " at step ", step, " (diverged: lower lr or enable grad_clip)");
      if (val_ && cfg_.eval_every > 0 && step % cfg_.eval_every == 0 && s + 1 < steps_per_epoch) {
        const EvalResult r = run_eval(step, static_cast<double>(epoch - 1) + static_cast<double>(s + 1) / steps_per_epoch);
        eval_time_in_epoch += r.seconds;
      }
      if (s + 1 < steps_per_epoch && after_step(epoch, s + 1, sums_now())) {
        done = true;
        break;
      }
    }
    if (preempted || interrupted || epoch_steps == 0) break;
    const double epoch_time = before.elapsed + epoch_clock.seconds() - (eval_time_in_epoch - before.eval_time);
    const bool full_epoch = epoch_steps == steps_per_epoch;
    EpochRecord er;
    er.epoch = static_cast<int32_t>(epoch);
    er.epoch_time = epoch_time;
    er.train_loss = epoch_targets > 0 ? epoch_loss_sum / static_cast<double>(epoch_targets) : kNaN;
    er.steps = epoch_steps;
    er.val_loss = kNaN;
    er.val_accuracy = kNaN;
    if (val_) {
      const EvalResult r = run_eval(step, static_cast<double>(epoch - 1) + static_cast<double>(epoch_steps) / steps_per_epoch);
      er.val_loss = r.loss;
      er.val_accuracy = r.accuracy;
    }
    if (full_epoch) {
      epoch_times_.push_back(epoch_time);
      if (metrics_) metrics_->append_epoch(er);
    }
    ST_LOG("epoch ", epoch, (full_epoch ? "" : " (partial)"), " | ", epoch_steps, " steps in ", fmt_duration(epoch_time),
           " | train loss ", fmt_fixed(er.train_loss, 4));
    if (full_epoch && after_step(epoch + 1, 0, EpochSums{})) break;
  }
  // The final checkpoint: the state at the end, after the last evaluation.
  if (!preempted && !interrupted && cfg_.checkpoint_every > 0 && step > last_checkpoint)
    checkpoint(cfg_.epochs + 1, 0, true, EpochSums{});
  profile_report(step - std::min<int64_t>(step, kProfileWarmupSteps));
  summary_.ints["steps_completed"] = step;
  summary_.ints["train_tokens"] = train_tokens;
  summary_.ints["computed_tokens"] = computed_tokens;
  summary_.reals["padding_fraction"] =
      computed_tokens > 0 ? 1.0 - static_cast<double>(train_tokens) / static_cast<double>(computed_tokens) : kNaN;
  summary_.reals["tokens_per_s"] = step_time_sum > 0 ? static_cast<double>(train_tokens) / step_time_sum : kNaN;
  summary_.reals["model_tflops"] =
      step_time_sum > 0 ? flops_per_token * static_cast<double>(train_tokens) / step_time_sum / 1e12 : kNaN;
  summary_.reals["mfu"] =
      model_flops_utilization(flops_per_token, static_cast<double>(train_tokens), step_time_sum, layout_.world, peak_flops_);
  train_stats_ = allocator_for(device_).stats();
  if (device_ == Device::cuda) {
    // What the GPU holds beyond our allocator (CUDA context, cuBLAS, NCCL): the planner's reserve.
    summary_.ints["device_used_memory"] = static_cast<int64_t>(cuda_used_memory());
    summary_.ints["allocator_current_memory"] = static_cast<int64_t>(train_stats_->total_current);
  }
  if (preempted || interrupted) {
    finish_summary(preempted ? "preempted" : "interrupted");
    const bool saved = preempted || cfg_.checkpoint_every > 0;
    ST_LOG(preempted ? "preempted" : "interrupted", ": stopped after step ", step, " of ", total_steps, " in ",
           fmt_duration(run_time()),
           saved ? str(" with a checkpoint in ", checkpoint_root(cfg_), " (resume = auto continues it)") : std::string(),
           " | ", run_dir_, "/metrics.h5");
    return preempted ? kExitPreempted : kExitInterrupted;
  }
  const bool save_adapter = cfg_.save_adapter && state_.lora_adapters > 0;
  if ((cfg_.save_model || save_adapter) && state_.zero) state_.zero->gather_all_for_save();  // collective over the data-parallel group
  if (save_adapter && rt.dp_rank == 0) {  // before save_model, which merges the adapters away
    MemoryPhase phase("save");
    const std::string dir = (fs::path(run_dir_) / "adapter").string();
    save_peft_adapter(model_->linears(), state_.family->peft, cfg_.model, dir);  // collective within the TP group
    if (rt.tp_rank == 0)
      write_adapter_training(dir, {method_, cfg_.qlora_quantize, cfg_.qlora_block_size, cfg_.qlora_double_quant,
                                   cfg_.run_id, step});
    ST_LOG("saved adapter (PEFT format) to ", dir, cfg_.model.empty() ? " (random-init base: export needs --model)" : "");
  }
  if (cfg_.save_model && rt.dp_rank == 0) {  // the TP group of data-parallel rank 0 (collective within it)
    MemoryPhase phase("save");
    const std::string dir = (fs::path(run_dir_) / "model").string();
    model_->save(dir, tokenizer_for_export(), kHfDefaultMaxShardBytes);
    ST_LOG("saved model (adapters merged) to ", dir);
  }
  finish_summary("ok");
  ST_LOG("done: ", step, " steps in ", fmt_duration(run_time()),
         prior_time_ > 0 ? str(" (", fmt_duration(total_.seconds()), " in this segment)") : std::string(), " | peak memory ",
         format_bytes(static_cast<double>(allocator_for(device_).stats().total_peak)), " | ",
         run_dir_, "/metrics.h5");
  return kExitOk;
}

int Run::evaluate_only() {
  begin("eval");
  if (cfg_.val_split.empty()) ST_THROW_INPUT(cfg_.origin.at("val_split"), ": val_split is empty: nothing to evaluate");
  open_data(false);
  build_model(false);
  const EvalResult r = run_eval(0, 0.0);
  summary_.ints["steps_completed"] = 0;
  finish_summary("ok");
  return std::isfinite(r.loss) ? kExitOk : kExitError;
}

void Run::record_failure(const std::string& outcome, const std::string& message, const OutOfMemory* oom) {
  if (!metrics_) {
    // Another rank: rank 0 owns metrics.h5 and is ended with the job, so this rank leaves its
    // outcome beside it (<run dir>/outcome-rank<r>.json), which analysis/st_read.py merges.
    if (run_dir_.empty() || outcome != "oom") return;
    try {
      nlohmann::json j = {{"rank", process_rank()}, {"outcome", outcome}, {"error", message},
                          {"peak_memory", allocator_for(device_).stats().total_peak}};
      if (oom) {
        j["oom_bytes"] = oom->requested();
        j["oom_phase"] = oom->phase();
        j["oom_category"] = oom->category();
      }
      fs::create_directories(run_dir_);
      atomic_write_file((fs::path(run_dir_) / str("outcome-rank", process_rank(), ".json")).string(), j.dump(1) + "\n");
    } catch (const std::exception& e) {
      ST_WARN("could not record outcome '", outcome, "' of rank ", process_rank(), ": ", e.what());
    }
    return;
  }
  SummaryRecord s = summary_;
  s.strings["outcome"] = outcome;
  s.strings["error"] = message;
  s.reals["total_time"] = run_time();
  s.ints["peak_memory"] = static_cast<int64_t>(allocator_for(device_).stats().total_peak);
  if (predicted_peak_ > 0) s.ints["predicted_peak"] = static_cast<int64_t>(predicted_peak_);  // rank 0's
  if (oom) {
    s.ints["oom_bytes"] = static_cast<int64_t>(oom->requested());
    s.strings["oom_phase"] = oom->phase();
    s.strings["oom_category"] = oom->category();
  }
  try {
    metrics_->write_summary(s);
    metrics_->flush();
  } catch (const std::exception& e) {
    ST_WARN("could not record outcome '", outcome, "' in metrics.h5: ", e.what());
  }
}

}  // namespace

// Every run ends with an outcome in metrics.h5: ok, oom (a result, exit status 3) or error (the
// error then propagates to the fatal path).
template <typename F>
static int run_guarded(Run& run, F body) {
  try {
    return body();
  } catch (const OutOfMemory& e) {
    run.record_failure("oom", e.what(), &e);
    std::fprintf(stderr, "shardtune: out of memory on rank %d (outcome 'oom' recorded): %s\n", process_rank(), e.what());
    return kExitOom;
  } catch (const Error& e) {
    run.record_failure("error", e.what(), nullptr);
    throw;
  } catch (const std::exception& e) {
    run.record_failure("error", e.what(), nullptr);
    throw Error(e.what(), __FILE__, __LINE__);
  }
}

int run_training(const RunConfig& cfg, const ParallelLayout& layout) {
  Run run(cfg, layout);
  return run_guarded(run, [&] { return run.train(); });
}

// eval of an adapter a QLoRA run saved: on the NF4 base it was trained on (its
// shardtune_adapter.json), unless method is set; a dense evaluation of it is warned about.
RunConfig with_adapter_method(const RunConfig& cfg) {
  RunConfig c = cfg;
  if (c.adapter.empty()) return c;
  const std::optional<AdapterTraining> t = read_adapter_training(c.adapter);
  if (!t || t->method != Method::qlora) return c;
  const auto set = [&](const char* key) { return c.origin.count(key) && c.origin.at(key) != "default"; };
  if (!set("method")) {
    const std::string src = str("adapter ", c.adapter, " (trained with qlora)");
    c.method = method_name(Method::qlora);
    c.origin["method"] = src;
    if (!set("qlora_quantize")) c.qlora_quantize = t->qlora_quantize, c.origin["qlora_quantize"] = src;
    if (!set("qlora_block_size")) c.qlora_block_size = t->qlora_block_size, c.origin["qlora_block_size"] = src;
    if (!set("qlora_double_quant")) c.qlora_double_quant = t->qlora_double_quant, c.origin["qlora_double_quant"] = src;
  } else if (run_method(c) != Method::qlora && process_rank() == 0) {
    ST_WARN("adapter ", c.adapter, " was trained on an NF4 base (QLoRA); method = ", c.method,
            " evaluates it on the dense base, which gives other figures than the run's own evaluations "
            "(leave method unset, or set method = qlora, to evaluate it as trained)");
  }
  return c;
}

int run_evaluation(const RunConfig& cfg_in, const ParallelLayout& layout) {
  const RunConfig cfg = with_adapter_method(cfg_in);
  Run run(cfg, layout);
  return run_guarded(run, [&] { return run.evaluate_only(); });
}

}  // namespace st
