// `shardtune train` and `shardtune eval`: MPI start-up, options, the run, the exit status.
#include "cli/commands.hpp"
#include "config/run_config.hpp"
#include "core/error.hpp"
#include "parallel/runtime.hpp"
#include "parallel/watchdog.hpp"
#include "train/trainer.hpp"

namespace st {

namespace {

int run_subcommand(int argc, char** argv, const char* name, int (*body)(const RunConfig&)) {
  try {
    Runtime& rt = runtime_init(&argc, &argv);
    RunConfig cfg;
    if (!parse_run_config(argc, argv, name, cfg)) {
      runtime_finalize();
      return kExitOk;
    }
    runtime_make_grid(rt, static_cast<int>(cfg.tp_size));
    if (rt.world_size > 1 && cfg.parallel == "none")
      ST_THROW_INPUT("launched with ", rt.world_size, " ranks, but parallel = none trains on one rank: "
                     "run with mpirun -np 1, or set parallel = ddp, tp, zero3 or tp+zero3");
    // From here on a rank without progress for watchdog_timeout seconds ends the job.
    watchdog_start(cfg.watchdog_timeout);
    watchdog_beat(str(name, " set-up"));
    const int status = body(cfg);
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
