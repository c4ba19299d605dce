// `shardtune train` and `shardtune eval`: MPI start-up, options, the run, the exit status.
#include <cstdlib>

#include "cli/commands.hpp"
#include "config/run_config.hpp"
#include "core/allocator.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "parallel/runtime.hpp"
#include "parallel/watchdog.hpp"
#include "train/plan.hpp"
#include "train/trainer.hpp"

namespace st {

namespace {

// The rank the launcher gave this process (before MPI_Init), for the fatal line's identity.
const char* launcher_rank_env() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"})
    if (const char* r = std::getenv(v)) return r;
  return nullptr;
}

// parallel = auto: the planner's fastest strategy (and tp_size) that fits for this method on
// this many ranks. Every rank computes the same answer from the same inputs.
void choose_strategy(RunConfig& cfg, int world_size) {
  PlanRequest req;
  req.ranks = world_size;
  const Method method = run_method(cfg);
  req.methods = {method};
  req.device_memory = parse_bytes(cfg.memory_limit, "memory_limit");
  if (req.device_memory == 0 && cfg.device == "cuda") req.device_memory = cuda_total_memory();
  // memory_limit caps shardtune's allocator itself: nothing to keep free under it (run_cap_reserve).
  if (parse_bytes(cfg.memory_limit, "memory_limit") > 0) req.reserve = 0;
  req.speed = default_speed_model(cfg.device);
  const std::vector<LayoutEstimate> all = plan_layouts(cfg, plan_data_from_shards(cfg), req);
  const LayoutEstimate* best = recommend(all, method);
  if (!best)
    ST_THROW_INPUT(cfg.origin.at("parallel"), ": parallel = auto: no strategy fits ", cfg.method, " on ", world_size,
                   " rank", world_size == 1 ? "" : "s", " in ", format_bytes(static_cast<double>(req.device_memory)),
                   " per device (see `shardtune plan --deck ... --ranks ", world_size, "`)");
  cfg.parallel = best->layout.parallel.name();
  cfg.tp_size = best->layout.parallel.tp;
  cfg.origin["parallel"] = cfg.origin["tp_size"] = "planner (parallel = auto)";
  ST_LOG("plan: parallel = auto chose ", cfg.parallel, cfg.tp_size > 1 ? str(", tp_size = ", cfg.tp_size) : std::string(),
         " (predicted peak ", format_bytes(static_cast<double>(best->memory.max_peak())), " per rank)");
}

// activation_checkpointing = auto: the planner's fewest checkpointed blocks (the first ones) that
// fit memory_limit or the GPU's memory for this layout; the choice replaces auto in the options
// (so the resolved options, metrics.h5 and checkpoints record it). Every rank computes the same.
void choose_checkpointing_blocks(RunConfig& cfg, const ParallelLayout& layout) {
  size_t limit = parse_bytes(cfg.memory_limit, "memory_limit");
  if (limit == 0 && cfg.device == "cuda") limit = cuda_total_memory();
  const size_t reserve = run_cap_reserve(cfg, layout.has_communicators());
  const CheckpointChoice ch = choose_checkpointing(cfg, plan_data_from_shards(cfg), layout, run_method(cfg), limit,
                                                   reserve, cfg.origin.at("activation_checkpointing"));
  cfg.activation_checkpointing = checkpointing_value(ch.blocks, ch.total);
  cfg.origin["activation_checkpointing"] = "planner (activation_checkpointing = auto)";
  ST_LOG("plan: activation_checkpointing = auto chose ", ch.blocks, " of ", ch.total, " blocks checkpointed (predicted peak ",
         format_bytes(static_cast<double>(ch.memory.max_peak())), " per rank",
         limit ? str(" + ", format_bytes(static_cast<double>(reserve)), " reserve, limit ", format_bytes(static_cast<double>(limit)))
               : std::string(", no memory limit"),
         "; ", ch.dry_runs, " dry run", ch.dry_runs == 1 ? "" : "s", ")");
}

int run_subcommand(int argc, char** argv, const char* name, int (*body)(const RunConfig&, const ParallelLayout&)) {
  try {
    // The options first, before MPI starts: a refused command costs milliseconds (the same
    // refusal on every rank of an mpirun, each exiting with status 2, hangs nothing).
    if (const char* r = launcher_rank_env()) set_process_identity(std::atoi(r), process_host());
    RunConfig cfg;
    if (!parse_run_config(argc, argv, name, cfg)) return kExitOk;
    Runtime& rt = runtime_init(&argc, &argv);
    if (run_strategy(cfg) == Strategy::automatic) choose_strategy(cfg, rt.world_size);
    // The layout, validated once; the rank grid is its tp x dp.
    const ParallelLayout layout = ParallelLayout::make(run_strategy(cfg), cfg.tp_size, rt.world_size, cfg.origin.at("tp_size"));
    runtime_make_grid(rt, layout.tp);
    if (checkpointing_is_auto(cfg) && std::string(name) == "train") choose_checkpointing_blocks(cfg, layout);
    // From here on a rank without progress for watchdog_timeout seconds ends the job.
    watchdog_start(cfg.watchdog_timeout);
    watchdog_beat(str(name, " set-up"));
    const int status = body(cfg, layout);
    if (status == kExitOom && rt.world_size > 1) rt.world->abort(kExitOom);  // no rank may wait on a lost peer
    watchdog_stop();
    runtime_finalize();
    return status;
  } catch (const Error& e) {
    fatal(e);
  } catch (const std::exception& e) {
    fatal(__FILE__, __LINE__, e.what());
  }
}

}  // namespace

int cmd_train(int argc, char** argv) { return run_subcommand(argc, argv, "train", run_training); }
int cmd_eval(int argc, char** argv) { return run_subcommand(argc, argv, "eval", run_evaluation); }

}  // namespace st
