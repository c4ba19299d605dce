#!/usr/bin/env bash
# One array task of an experiment's matrix: sourced by jobs/exp{1,2,3}.sbatch after they set EXP.
# Picks row SLURM_ARRAY_TASK_ID of `matrix_rows $EXP` (jobs/matrix.sh), checks the allocation
# has enough tasks, and launches `shardtune train` with that row's deck, rank count, strategy and
# run_id; output in runs/<run_id>/ (metrics.h5 from shardtune, job.log from this script).
# Environment:
#   DRY_RUN=1        print the launch line (one line) and exit; nothing runs, no allocation needed
#   LAUNCHER=srun    srun --mpi=pmix (default) | mpirun (mpirun -np RANKS --bind-to none)
#   BIN              shardtune binary (default build/shardtune)
#   RUNS             run directory root (default runs)
# Arguments of the sbatch script are passed on to `shardtune train` (e.g. --model DIR).
# Exit status: shardtune's, except 3 (out of memory: an OOM row, outcome oom in metrics.h5),
# which is a result and exits 0.
set -euo pipefail
source jobs/matrix.sh
: "${SLURM_ARRAY_TASK_ID:?set SLURM_ARRAY_TASK_ID (sbatch --array sets it; for a dry run: SLURM_ARRAY_TASK_ID=0 DRY_RUN=1)}"
row=$(matrix_row "$EXP" "$SLURM_ARRAY_TASK_ID") || exit 2
read -r run_id ranks deck parallel tp_size <<< "$row"
BIN=${BIN:-build/shardtune}
RUNS=${RUNS:-runs}
LAUNCHER=${LAUNCHER:-srun}
case $LAUNCHER in
  srun) launch=(srun --mpi=pmix --ntasks="$ranks" --cpu-bind=cores) ;;
  mpirun) launch=(mpirun -np "$ranks" --bind-to none) ;;
  *) echo "array_task.sh: LAUNCHER must be srun or mpirun, not '$LAUNCHER'" >&2; exit 2 ;;
esac
cmd=("${launch[@]}" "$BIN" train --deck "$deck" --parallel "$parallel" --tp_size "$tp_size"
     --output_dir "$RUNS" --run_id "$run_id" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "${cmd[*]}"
  exit 0
fi
if [ -n "${SLURM_NTASKS:-}" ] && [ "$SLURM_NTASKS" -lt "$ranks" ]; then
  echo "array_task.sh: $run_id needs $ranks tasks, the allocation has $SLURM_NTASKS" \
       "(submit with jobs/submit_matrix.sh $EXP, which sizes each rank count's array)" >&2
  exit 2
fi
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
mkdir -p "$RUNS/$run_id"
echo "== $EXP[$SLURM_ARRAY_TASK_ID] $run_id: ${cmd[*]}" | tee "$RUNS/$run_id/job.log"
rc=0
"${cmd[@]}" 2>&1 | tee -a "$RUNS/$run_id/job.log" || rc=${PIPESTATUS[0]}
if [ "$rc" = 3 ]; then
  echo "== $run_id: OOM (outcome oom in $RUNS/$run_id/metrics.h5; a result)" | tee -a "$RUNS/$run_id/job.log"
  exit 0
fi
exit "$rc"
