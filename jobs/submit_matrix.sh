#!/usr/bin/env bash
# Submits an experiment's Slurm array (jobs/<exp>.sbatch) as one array per rank count, each
# sized to its runs: --ntasks-per-node=R --gpus-per-node=R for the indices with R ranks.
#   jobs/submit_matrix.sh exp2 [sbatch options...]     (DRY_RUN=1: print the sbatch lines)
# CPUS_PER_TASK (default 8) sets --cpus-per-task (OpenMP threads per rank); other sizes and site
# options (partition, account, time) go in as sbatch options.
set -euo pipefail
cd "$(dirname "$0")/.."
source jobs/matrix.sh
exp=${1:?usage: jobs/submit_matrix.sh exp1|exp2|exp3 [sbatch options...]}
shift
mkdir -p runs
for ranks in 2 4 8; do
  idx=$(matrix_indices "$exp" "$ranks")
  [ -n "$idx" ] || continue
  cmd=(sbatch --array="$idx" --ntasks-per-node="$ranks" --gpus-per-node="$ranks" --cpus-per-task="${CPUS_PER_TASK:-8}"
       "$@" "jobs/$exp.sbatch")
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "${cmd[*]}"; else "${cmd[@]}"; fi
done
