#include "train/plan.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/dryrun.hpp"
#include "core/log.hpp"
#include "core/op_trace.hpp"
#include "io/shards.hpp"
#include "parallel/parallelize.hpp"
#include "train/families.hpp"
#include "train/packing.hpp"
#include "train/setup.hpp"

namespace st {

namespace {

// B rows at the full lengths of the data: the largest micro-batch a run can meet. Packing: B
// training rows of pack_length tokens, each filled with documents of the shards' full length
// (the last one shorter where pack_length is not a multiple of it).
Batch full_batch(int64_t B, const PlanData& d) {
  Batch b;
  const int64_t L = d.shape.seq_len, Lt = d.shape.target_len, P = d.shape.pack_length;
  if (P > 0 && Lt == 0) {
    const int64_t per_row = (P + L - 1) / L;
    b = full_batch(B * per_row, PlanData{d.info, DataShape{L, 0, 0, d.shape.label_token_ids}});
    for (int64_t r = 0; r < B; ++r)
      for (int64_t i = 0; i < per_row; ++i)
        b.lengths[static_cast<size_t>(r * per_row + i)] = static_cast<int32_t>(std::min(L, P - i * L));
    b.pack_rows.assign(static_cast<size_t>(B), static_cast<int32_t>(per_row));
    return b;
  }
  b.rows = B;
  b.seq_len = L;
  b.ids.assign(static_cast<size_t>(B * L), 0);
  b.lengths.assign(static_cast<size_t>(B), static_cast<int32_t>(L));
  b.answer_start.assign(static_cast<size_t>(B), static_cast<int32_t>(std::max<int64_t>(1, L - 1)));
  b.labels.assign(static_cast<size_t>(B), -1);
  if (Lt > 0) {
    b.target_len = Lt;
    b.targets.assign(static_cast<size_t>(B * Lt), 0);
    b.target_lengths.assign(static_cast<size_t>(B), static_cast<int32_t>(Lt));
  } else {
    b.loss_mask.assign(static_cast<size_t>(B * L), 1);
  }
  return b;
}

struct DryOutcome {
  RankPlan memory;
  double step_flops = 0, step_comm_bytes = 0;  // of one training step on this rank
  double flops_per_token = 0;
  int64_t trainable = 0, num_parameters = 0;
  WeightBytes weight_bytes;
  std::vector<TraceEvent> trace;  // every op and collective of the second training step
};

DryOutcome dry_run(const RunConfig& c0, const PlanData& data, const PlanLayout& L, int rank) {
  // The deck with the layout's choices (echoed as the run would echo them).
  RunConfig c = c0;
  const ParallelLayout& P = L.parallel;
  c.parallel = P.name();
  c.tp_size = P.tp;
  c.method = method_name(L.method);
  c.activation_checkpointing = checkpointing_value(L.checkpointing.blocks, Checkpointed::kAll);
  const Device device = run_device(c);
  const DType dtype = run_dtype(c, device);
  const int tp = P.tp, dp = P.dp;
  const int tp_rank = rank % tp, dp_rank = rank / tp;

  DryRun dry;
  const std::unique_ptr<Comm> world = make_dry_comm(P.world, rank, device, "world");
  const std::unique_ptr<Comm> tpc = make_dry_comm(tp, tp_rank, device, "tp");
  const std::unique_ptr<Comm> dpc = make_dry_comm(dp, dp_rank, device, "dp");
  RankComms comms;
  comms.tp = tp_group_for(P, tpc.get());
  comms.dp = dpc.get();
  comms.dp_host = dpc.get();
  comms.tp_host = tpc.get();
  comms.world = world.get();

  Allocator& a = allocator_for(device);
  DryOutcome out;
  out.memory.rank = rank;
  TrainingState s = build_training_state(c, P, L.method, data.info, data.shape, dtype, device, comms, true);
  out.memory.setup_peak = a.stats().total_peak;
  out.memory.persistent = a.stats().total_current;
  out.memory.blocks = s.model->num_blocks();
  out.flops_per_token = s.model->flops_per_token();
  out.trainable = s.num_trainable;
  out.num_parameters = s.num_parameters;
  out.weight_bytes = s.weight_bytes;
  a.reset_peak();  // as the trainer does before its first step
  const Batch batch = full_batch(c.micro_batch_size, data);
  const auto read = [&](int64_t, Batch& host, LayerContext&) { host = batch; };
  // Two steps: whatever the first step creates lazily is held during the second.
  training_step(s, c, comms, c.grad_accum, 1.0, c.lr, read);
  const DryRunCounters before = dry_run_counters();
  {
    OpTraceRecorder recorder;
    training_step(s, c, comms, c.grad_accum, 1.0, c.lr, read);
    out.trace = recorder.events();
  }
  const DryRunCounters after = dry_run_counters();
  out.step_flops = after.flops - before.flops;
  out.step_comm_bytes = after.comm_bus_bytes - before.comm_bus_bytes;
  if (!c.val_split.empty()) {  // evaluation reads unpacked rows
    PlanData unpacked = data;
    unpacked.shape.pack_length = 0;
    (void)s.model->eval_batch(full_batch(c.micro_batch_size, unpacked), data.shape.label_token_ids);
  }
  out.memory.peak = a.stats().total_peak;
  out.memory.at_peak = a.stats().at_total_peak;
  return out;
}

RankPlan max_of(const RankPlan& a, const RankPlan& b) { return b.max_peak() > a.max_peak() ? b : a; }

}  // namespace

PlanData plan_data_from_shards(const RunConfig& c) {
  PlanData d;
  const ShardDataset train = ShardDataset::open(c.data, c.train_split);
  d.info = train.info();
  d.shape.seq_len = train.seq_len();
  d.shape.target_len = train.target_len();
  d.shape.label_token_ids = train.info().label_token_ids;
  d.shape.pack_length = resolved_pack_length(c, train.seq_len());
  d.train_lengths = train.lengths();
  if (c.max_train_rows > 0 && static_cast<int64_t>(d.train_lengths.size()) > c.max_train_rows)
    d.train_lengths.resize(static_cast<size_t>(c.max_train_rows));
  if (!c.val_split.empty()) {
    const ShardDataset val = ShardDataset::open(c.data, c.val_split);
    d.shape.seq_len = std::max(d.shape.seq_len, val.seq_len());
    d.shape.target_len = std::max(d.shape.target_len, val.target_len());
  }
  return d;
}

PlanData plan_data_synthetic(const RunConfig& c, int64_t seq_len, int64_t target_len) {
  PlanData d;
  const ModelFamily& fam = model_family(c);
  if (seq_len < 2) ST_THROW_INPUT("plan: --seq-len must be at least 2 (got ", seq_len, ")");
  if (fam.seq2seq && target_len < 1)
    ST_THROW_INPUT("plan: a ", fam.name, " (encoder-decoder) model needs --target-len (the decoder length)");
  if (c.model.empty() && c.vocab_size < 1)
    ST_THROW_INPUT("plan: without shards, set vocab_size (there is no tokenizer to take it from)");
  d.info.arch = fam.seq2seq ? "seq2seq" : "causal";
  d.info.task = "random";
  d.info.tokenizer_vocab_size = c.vocab_size;
  d.info.bos_id = 1;
  d.info.eos_id = 2;
  d.info.pad_id = 0;
  d.info.seq_len = seq_len;
  d.info.target_len = fam.seq2seq ? target_len : 0;
  d.shape.seq_len = seq_len;
  d.shape.target_len = d.info.target_len;
  d.shape.pack_length = resolved_pack_length(c, seq_len);
  return d;
}

RankPlan predict_rank_memory(const RunConfig& c, const PlanData& data, const PlanLayout& layout, int rank) {
  return dry_run(c, data, layout, rank).memory;
}

Batch plan_full_batch(int64_t B, const PlanData& data) { return full_batch(B, data); }

std::vector<TraceEvent> plan_step_trace(const RunConfig& c, const PlanData& data, const PlanLayout& layout, int rank) {
  PlanData d = data;
  d.shape.seq_len = epoch_shape(c, data, layout.parallel.dp).typical_len;
  if (d.shape.pack_length > 0 || data.shape.target_len > 0) d.shape.seq_len = data.shape.seq_len;
  return dry_run(c, d, layout, rank).trace;
}

RankPlan predict_memory(const RunConfig& c, const PlanData& data, const PlanLayout& layout) {
  RankPlan p = predict_rank_memory(c, data, layout, 0);
  if (layout.parallel.world > 1) p = max_of(p, predict_rank_memory(c, data, layout, layout.parallel.world - 1));
  return p;
}

SpeedModel default_speed_model(const std::string& device) {
  SpeedModel m;
  if (device == "cuda") {
    m.device = builtin_device_profile(GpuKind::h100);
    m.comm.link = LinkKind::nvlink4;
  } else {
    m.device = builtin_cpu_profile();
    m.comm.link = LinkKind::pcie4;  // shared-memory MPI: of that order
  }
  m.comm.gpus_per_node = 8;
  return m;
}

EpochShape epoch_shape(const RunConfig& c, const PlanData& d, int dp) {
  EpochShape e;
  e.typical_len = d.shape.row_len();
  if (d.train_lengths.empty() || d.shape.target_len > 0) return e;
  const int64_t B = c.micro_batch_size, A = c.grad_accum, G = B * A * dp;
  BatchingOptions o;
  o.seed = c.seed;
  o.shuffle = c.shuffle;
  o.group_by_length = c.group_by_length;
  o.pack_length = d.shape.pack_length;
  o.global_batch = G;
  const EpochRows rows = epoch_rows(d.train_lengths, o, 1);
  e.steps = rows.size() / G;
  if (o.pack_length > 0 || e.steps == 0) return e;
  // Row p of the epoch: step s = p / G, rank r, micro-batch a at [s G + r B A + a B, + B).
  auto len = [&](int64_t p) { return d.train_lengths[static_cast<size_t>(rows.docs[static_cast<size_t>(rows.row_begin[static_cast<size_t>(p)])])]; };
  double sum = 0;
  for (int64_t s = 0; s < e.steps; ++s)
    for (int64_t a = 0; a < A; ++a) {
      int64_t longest = 0;
      for (int64_t r = 0; r < dp; ++r)
        for (int64_t i = 0; i < B; ++i) longest = std::max<int64_t>(longest, len(s * G + r * B * A + a * B + i));
      sum += static_cast<double>(longest);
    }
  e.typical_len = std::clamp<int64_t>(static_cast<int64_t>(std::llround(sum / static_cast<double>(e.steps * A))), 2,
                                      d.shape.seq_len);
  return e;
}

size_t default_runtime_reserve(const std::string& device, bool communicators) {
  if (device != "cuda") return 0;
  return (communicators ? size_t{3} : size_t{1}) << 30;
}

size_t run_cap_reserve(const RunConfig& c, bool communicators) {
  return parse_bytes(c.memory_limit, "memory_limit") > 0 ? 0 : default_runtime_reserve(c.device, communicators);
}

std::vector<LayoutEstimate> plan_layouts(const RunConfig& c, const PlanData& data, const PlanRequest& req) {
  const std::vector<Method>& methods = req.methods.empty() ? all_methods() : req.methods;
  std::vector<PlanLayout> layouts;
  const int n = req.ranks;
  auto wanted = [&](Strategy s) {
    return req.strategies.empty() || std::find(req.strategies.begin(), req.strategies.end(), s) != req.strategies.end();
  };
  for (Method m : methods) {
    auto add = [&](Strategy par, int tp) {
      if (!wanted(par)) return;
      PlanLayout l;
      l.parallel = ParallelLayout::make(par, tp, n, "planner");
      l.method = m;
      l.checkpointing = checkpointing_is_auto(c) ? Checkpointed::all() : run_checkpointing(c);
      layouts.push_back(l);
    };
    // On one rank a strategy's machinery still runs (groups of one): planned when asked for.
    auto asked = [&](Strategy s) {
      return std::find(req.strategies.begin(), req.strategies.end(), s) != req.strategies.end();
    };
    if (n == 1) add(Strategy::none, 1);
    if (n > 1 || asked(Strategy::ddp)) add(Strategy::ddp, 1);
    add(Strategy::zero3, 1);
    if (n == 1 && asked(Strategy::tp)) add(Strategy::tp, 1);
    if (n == 1 && asked(Strategy::tp_zero3)) add(Strategy::tp_zero3, 1);
    for (int tp = 2; tp <= n; ++tp) {
      if (n % tp != 0) continue;
      add(Strategy::tp, tp);
      if (tp < n) add(Strategy::tp_zero3, tp);
    }
  }
  std::vector<LayoutEstimate> out;
  for (const PlanLayout& l : layouts) {
    LayoutEstimate e;
    e.layout = l;
    try {
      DryOutcome main0 = dry_run(c, data, l, 0);
      RankPlan mem = main0.memory;
      if (n > 1) mem = max_of(mem, dry_run(c, data, l, n - 1).memory);
      e.memory = mem;
      // Activations with every block checkpointed and with none (rank 0).
      const int64_t k = l.checkpointing.of(main0.memory.blocks);
      auto activations = [&](Checkpointed ck) {
        if (ck.of(main0.memory.blocks) == k) return mem.at_peak[static_cast<size_t>(MemCategory::activations)];
        PlanLayout other = l;
        other.checkpointing = ck;
        return dry_run(c, data, other, 0).memory.at_peak[static_cast<size_t>(MemCategory::activations)];
      };
      e.activations_ckpt = activations(Checkpointed::all());
      e.activations_full = activations(Checkpointed::none());
      e.reserve = req.reserve >= 0 ? static_cast<size_t>(req.reserve)
                                   : default_runtime_reserve(c.device, l.parallel.has_communicators());
      e.fits = req.device_memory == 0 || mem.max_peak() + e.reserve <= req.device_memory;
      // Time: rank 0's step replayed on the model's streams (train/step_time.hpp), at the
      // length the epoch's micro-batches are trimmed to on average.
      e.epoch = epoch_shape(c, data, l.parallel.dp);
      std::vector<TraceEvent> trace = std::move(main0.trace);
      if (e.epoch.typical_len != data.shape.row_len()) {
        PlanData shorter = data;
        shorter.shape.seq_len = e.epoch.typical_len;
        trace = dry_run(c, shorter, l, 0).trace;
      }
      e.step = schedule_step(trace, req.speed.device, req.speed.comm, l.parallel);
      e.step_seconds = e.step.total;
      e.compute_seconds = e.step.compute;
      e.comm_seconds = e.step.exposed_comm;
      const double rows = static_cast<double>(c.micro_batch_size * c.grad_accum * l.parallel.dp);
      e.rows_per_second = rows / e.step_seconds;
      e.tokens_per_second_per_gpu = rows * static_cast<double>(e.epoch.typical_len + data.shape.target_len) /
                                    e.step_seconds / l.parallel.world;
      e.epoch_seconds = static_cast<double>(e.epoch.steps) * e.step_seconds;
    } catch (const InputError& err) {
      e.applies = false;
      e.reason = err.what();
    }
    out.push_back(e);
  }
  return out;
}

CheckpointChoice choose_checkpointing(const RunConfig& c, const PlanData& data, const ParallelLayout& parallel,
                                      Method method, size_t device_memory, size_t reserve, const std::string& where) {
  CheckpointChoice out;
  auto predict = [&](int64_t n) {
    ++out.dry_runs;
    return predict_memory(c, data, PlanLayout{parallel, method, Checkpointed{n}});
  };
  auto fits = [&](const RankPlan& p) { return device_memory == 0 || p.max_peak() + reserve <= device_memory; };
  RankPlan none = predict(0);
  out.total = none.blocks;
  if (fits(none)) {
    out.memory = none;
    return out;
  }
  RankPlan all = predict(out.total);
  if (!fits(all))
    ST_THROW_INPUT(where, ": activation_checkpointing = auto: nothing fits: with all ", out.total,
                   " blocks checkpointed the predicted peak is ", format_bytes(static_cast<double>(all.max_peak())), " + ",
                   format_bytes(static_cast<double>(reserve)), " reserved outside the allocator, over ",
                   format_bytes(static_cast<double>(device_memory)), " (see `shardtune plan`)");
  // fits(hi), !fits(lo); n = 1 costs what n = 0 does (model/checkpointing.hpp), so start at 1.
  int64_t lo = 1, hi = out.total;
  out.memory = all;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    RankPlan p = predict(mid);
    if (fits(p)) {
      hi = mid;
      out.memory = p;
    } else {
      lo = mid;
    }
  }
  out.blocks = hi;
  return out;
}

const LayoutEstimate* recommend(const std::vector<LayoutEstimate>& all, Method method) {
  const LayoutEstimate* best = nullptr;
  for (const LayoutEstimate& e : all) {
    if (!e.applies || !e.fits || e.layout.method != method) continue;
    if (!best || e.rows_per_second > best->rows_per_second) best = &e;
  }
  return best;
}

}  // namespace st
