#!/usr/bin/env bash
# Runs an experiment's matrix (jobs/matrix.sh) locally with mpirun, one run after another:
#   jobs/run_matrix.sh exp1|exp2|exp3 [--cpu] [shardtune train options...]
# --cpu uses the CPU-size decks (inputs/exp*/cpu_*.cfg, 2 and 4 ranks; needs data/synthetic from
# `make run`, and data/synthetic/sentiment_t5 for exp2). Other arguments go to every run.
# A run whose runs/<run_id>/metrics.h5 has /summary outcome "ok" is skipped; one with another
# outcome (an earlier OOM or failure) runs again with --overwrite true. Exit 3 from
# shardtune (out of memory; it records outcome "oom" itself) is a result, listed as OOM, and the
# matrix goes on; any other failure is listed as FAILED, the matrix goes on, and the script
# exits 1 at the end. The table is also written to runs/matrix_<exp>[_cpu].tsv.
# Environment: BIN (default build/shardtune), MPIRUN (launcher and flags, default
# `mpirun --oversubscribe --bind-to none`), PYTHON (with h5py; default /usr/bin/python3; h5dump
# is used when it lacks h5py), RUNS (default runs).
set -uo pipefail
cd "$(dirname "$0")/.."
source jobs/matrix.sh
exp=${1:?usage: jobs/run_matrix.sh exp1|exp2|exp3 [--cpu] [train options...]}
shift
cpu=
if [ "${1:-}" = --cpu ]; then cpu=cpu; shift; fi
BIN=${BIN:-build/shardtune}
MPIRUN=${MPIRUN:-mpirun --oversubscribe --bind-to none}
[ "$(id -u)" = 0 ] && [[ "$MPIRUN" == mpirun* ]] && MPIRUN="$MPIRUN --allow-run-as-root"
PYTHON=${PYTHON:-/usr/bin/python3}
RUNS=${RUNS:-runs}
rows=$(matrix_rows "$exp" "$cpu") || exit 2

# outcome RUN_DIR: the /summary outcome attribute of RUN_DIR/metrics.h5, or "" when there is none.
outcome() {
  local f=$1/metrics.h5
  [ -f "$f" ] || return 0
  if "$PYTHON" -c 'import h5py' 2> /dev/null; then
    "$PYTHON" - "$f" 2> /dev/null <<'PY'
import sys, h5py
try:
    with h5py.File(sys.argv[1], "r") as f:
        v = f["summary"].attrs.get("outcome", "")
        print(v.decode() if isinstance(v, bytes) else str(v))
except Exception:
    print("")
PY
  elif command -v h5dump > /dev/null; then
    h5dump -a /summary/outcome "$f" 2> /dev/null | sed -n 's/^ *(0): "\(.*\)"$/\1/p' | head -1
  else
    echo "run_matrix.sh: neither $PYTHON with h5py nor h5dump: cannot read $f" >&2
  fi
}

mkdir -p "$RUNS"
table="$RUNS/matrix_${exp}${cpu:+_cpu}.tsv"
printf 'run_id\tranks\tparallel\tdeck\tresult\tseconds\n' > "$table"
failed=0
while read -r run_id ranks deck parallel tp_size; do
  [ -n "$run_id" ] || continue
  if [ "$(outcome "$RUNS/$run_id")" = ok ]; then
    result=skipped secs=0
  else
    echo "== $run_id: $MPIRUN -np $ranks $BIN train --deck $deck --parallel $parallel --tp_size $tp_size"
    # An earlier attempt that did not end ok (OOM, failed, killed) is replaced on purpose.
    again=()
    [ -f "$RUNS/$run_id/metrics.h5" ] && again=(--overwrite true)
    mkdir -p "$RUNS/$run_id"
    start=$SECONDS
    $MPIRUN -np "$ranks" "$BIN" train --deck "$deck" --parallel "$parallel" --tp_size "$tp_size" \
      --output_dir "$RUNS" --run_id "$run_id" "${again[@]}" "$@" < /dev/null > "$RUNS/$run_id/run.log" 2>&1
    rc=$?
    secs=$((SECONDS - start))
    case $rc in
      0) result=ok ;;
      3) result=OOM ;;
      *) result="FAILED(exit $rc; $RUNS/$run_id/run.log)"; failed=1 ;;
    esac
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$run_id" "$ranks" "$parallel" "$deck" "$result" "$secs" >> "$table"
  echo "== $run_id: $result"
done <<< "$rows"
echo "== $exp${cpu:+ (cpu)}: $table"
column -t -s $'\t' "$table" 2> /dev/null || cat "$table"
exit $failed
