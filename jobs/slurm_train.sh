#!/usr/bin/env bash
# Slurm launcher for `shardtune train`, one rank per GPU. Run it from the repository root; every
# argument goes to `shardtune train` (deck, options). Two ways to use it:
#
#   jobs/slurm_train.sh --deck inputs/bench/llama7b_lora.cfg --parallel tp+zero3 --tp_size 4
#       outside a job: submits itself with sbatch, sized from the environment (below)
#   sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 --cpus-per-task=8 jobs/slurm_train.sh --deck ...
#       plain sbatch: the size is yours (this file sets no GPU or CPU counts)
#
# Environment (defaults in brackets; the size ones only when submitting):
#   NODES [1]  GPUS_PER_NODE [4] (0: CPU only)  TASKS_PER_NODE [GPUS_PER_NODE, or 1 without GPUs]
#   CPUS_PER_TASK [8] (also OMP threads per rank)  TIME [04:00:00]  SBATCH_ARGS (more sbatch options)
#   RUN_ID [slurm-<job id>]: the run directory runs/<RUN_ID>; the same on every (re)submission
#   REQUEUE [1]: requeue the job when shardtune exits 4 (preempted), at most MAX_REQUEUES [20] times
#   BIN [build/shardtune]  DRY_RUN=1: print the sbatch line (outside a job) or the srun line (inside
#   one) and run nothing
#
# Preemption and the time limit: 120 s before the limit Slurm sends SIGUSR1 (--signal below); every
# rank writes a checkpoint and shardtune exits 4 (outcome preempted). The script then requeues the
# job (scontrol requeue: same job id, so the same RUN_ID), and the requeued job continues from the
# checkpoint: `--resume auto` is added unless you pass --resume yourself. Pass --checkpoint_every N
# as well, so that a job killed without warning (node failure) loses at most N steps.
# TP groups are the innermost dimension of the rank grid (ranks 0..tp_size-1 are one group): with
# tasks per node a multiple of tp_size, every TP group stays inside one node (NVLink). shardtune
# checks that its MPI world equals SLURM_NTASKS (srun without PMIx wiring would start N one-rank
# jobs), and each rank uses the GPU of its node-local rank.
#SBATCH --job-name=shardtune
#SBATCH --time=04:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=runs/slurm-%j.out
set -euo pipefail
BIN=${BIN:-build/shardtune}

if [ -z "${SLURM_JOB_ID:-}" ]; then
  # Outside a job: submit this script, sized from the environment.
  gpus=${GPUS_PER_NODE:-4}
  tasks=${TASKS_PER_NODE:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 1)}
  cmd=(sbatch "--nodes=${NODES:-1}" "--ntasks-per-node=$tasks" "--cpus-per-task=${CPUS_PER_TASK:-8}"
       "--time=${TIME:-04:00:00}")
  [ "$gpus" -gt 0 ] && cmd+=("--gpus-per-node=$gpus")
  # shellcheck disable=SC2206  # SBATCH_ARGS is a list of options
  [ -n "${SBATCH_ARGS:-}" ] && cmd+=(${SBATCH_ARGS})
  cmd+=("$0" "$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "${cmd[*]}"
    exit 0
  fi
  mkdir -p runs  # the job's output file (--output above)
  exec "${cmd[@]}"
fi

# Inside the job.
run_id=${RUN_ID:-slurm-${SLURM_JOB_ID}}
args=("$@" --run_id "$run_id")
resume_given=0
for a in "$@"; do
  case $a in --resume|--resume=*) resume_given=1 ;; esac
done
[ "$resume_given" = 1 ] || args+=(--resume auto)
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
cmd=(srun --mpi=pmix --cpu-bind=cores "$BIN" train "${args[@]}")
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "${cmd[*]}"
  exit 0
fi
echo "slurm_train.sh: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}), run $run_id: ${cmd[*]}"
rc=0
"${cmd[@]}" || rc=$?
if [ "$rc" = 4 ] && [ "${REQUEUE:-1}" = 1 ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -lt "${MAX_REQUEUES:-20}" ]; then
    echo "slurm_train.sh: preempted (exit 4): requeueing job $SLURM_JOB_ID to continue run $run_id"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "slurm_train.sh: preempted (exit 4) after ${SLURM_RESTART_COUNT:-0} requeues (MAX_REQUEUES): not requeueing" >&2
fi
exit "$rc"
