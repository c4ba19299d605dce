// A run's output directory: claimed before anything is written to it, and a finished run never
// replaced unless the user says so.
//
//   <output_dir>/<run_id>/          one training run: metrics.h5, checkpoints/, model/, adapter/,
//                                   outcome-rank<r>.json, and .lock (see below)
//   <output_dir>/<run_id>/eval-<n>/ the n-th `shardtune eval` of that run id (n = 1, 2, ...):
//                                   its own metrics.h5; never the training run's
//
// The claim: rank 0 opens <dir>/.lock and takes an fcntl lock on it (open file description lock,
// Linux; a POSIX record lock elsewhere), held until the process ends: the kernel releases it when
// the process dies, however it dies, so a stale lock cannot outlive its run. The file holds
// "host pid time" of the holder; a second run finds the lock taken and is refused naming them.
// A checkpoint_dir outside the run directory is claimed the same way.
#pragma once

#include <string>

#include "config/run_config.hpp"

namespace st {

class Comm;

// Checks the output paths (output_dir, the run directory and, for training, checkpoint_dir must
// not be regular files), creates the run directory and claims it (rank 0 locks it; InputError
// naming the holder's host and pid when another run holds it). For eval (training = false) the
// claimed directory is a new <run>/eval-<n> (created with mkdir, so two evals never share one),
// its n agreed over `world`. Returns the directory this process writes metrics.h5 into.
// Collective over `world` for eval.
std::string claim_run_directory(const RunConfig& c, bool training, Comm& world);

// Rank 0 of a training run, before metrics.h5 is created: a run directory holding an earlier
// run's metrics.h5 (or complete checkpoints) is only replaced with overwrite = true or continued
// with a resume; resume = auto that found no checkpoint replaces an unfinished run (outcome other
// than ok) with a warning, and any run replaces an attempt that ended (not ok) before its first
// step. Otherwise InputError naming the file, its outcome and steps, and the ways out. Then removes the earlier run's outcome-rank<r>.json files (they belong to it).
void check_run_replacement(const RunConfig& c, const std::string& run_dir, const std::string& resume_dir);

// Takes the lock of `dir` for this process (see above); InputError naming the holder when
// another process has it. `what` names the directory's role in messages. Exposed for tests.
void lock_directory(const std::string& dir, const std::string& what);

}  // namespace st
