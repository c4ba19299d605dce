#!/usr/bin/env bash
# Slurm batch script: one shardtune rank per GPU. Submit from the repository root, e.g.
#   sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 jobs/slurm_train.sh \
#          --deck inputs/bench/llama7b_lora.cfg --parallel tp+zero3 --tp_size 4
# Everything after the script name is passed to `shardtune train` (deck, options).
# The TP group is the innermost dimension of the rank grid (ranks 0..tp_size-1 are one group):
# with --ntasks-per-node a multiple of tp_size, every TP group stays inside one node (NVLink).
# shardtune checks that its MPI world equals SLURM_NTASKS: if srun starts N single-rank jobs
# (no PMIx wiring) every rank stops with a message instead of training alone.
# Resumable runs: set RUN_ID (the run directory, default slurm-<job id>) to the same name on every
# submission and pass --checkpoint_every N --resume auto; 120 s before the time limit Slurm sends
# SIGUSR1 (--signal below), every rank writes a checkpoint and the job ends with exit status 4
# (outcome preempted); submitting it again (e.g. RUN_ID=name sbatch ...) continues from there.
#SBATCH --job-name=shardtune
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=USR1@120
#SBATCH --output=runs/slurm-%j.out
set -euo pipefail
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
# Each rank uses the GPU of its node-local rank (local rank modulo the visible devices).
exec srun --mpi=pmix --cpu-bind=cores build/shardtune train "$@" --run_id "${RUN_ID:-slurm-${SLURM_JOB_ID}}"
