#!/usr/bin/env bash
# The collectives' latency and bus bandwidth on this node, for `shardtune plan --comm-profile`:
# an nccl-tests-style loop (all-reduce, all-gather, reduce-scatter, broadcast of 1 MiB to 256 MiB,
# f32, 2 warm-up + 10 timed iterations, the slowest rank's mean) through shardtune's own
# communicator (NCCL on cuda, MPI on cpu) for 2, 4, ... ranks up to the GPUs of the node, each
# count fitted to latency + size x nccl-tests' bus factor / bus bandwidth and merged into OUT.
# Needs 2 or more GPUs (DEVICE=cuda); with one GPU there is nothing to measure.
#   jobs/measure_comm.sh                       # -> runs/comm_profile.json
#   OUT=comm.json NMAX=4 jobs/measure_comm.sh
#   build/shardtune plan --deck ... --ranks 8 --comm-profile runs/comm_profile.json
# Environment: BIN, MPIRUN (launcher with flags), DEVICE (cuda|cpu), OUT, NMAX (largest rank count).
set -euo pipefail
BIN=${BIN:-build/shardtune}
MPIRUN=${MPIRUN:-mpirun --oversubscribe --bind-to none}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/comm_profile.json}
[ "$(id -u)" = 0 ] && MPIRUN="$MPIRUN --allow-run-as-root"
if [ "$DEVICE" = cuda ]; then
  GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
else
  GPUS=$(nproc)
fi
NMAX=${NMAX:-$GPUS}
if [ "$NMAX" -lt 2 ]; then
  echo "measure_comm: $GPUS $DEVICE device(s) here: collectives need 2 or more" >&2
  exit 2
fi
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
n=2
while [ "$n" -le "$NMAX" ]; do
  echo "== $n ranks"
  $MPIRUN -np "$n" "$BIN" calibrate --comm --device "$DEVICE" --out "$OUT" --append
  n=$((n * 2))
done
echo "== wrote $OUT"
