#!/usr/bin/env bash
# The CPU reproduction of the three reference experiments (README, "CPU reproduction"): the
# synthetic data set and tokenizer, every CPU-size deck of jobs/matrix.sh on 2 and 4 ranks
# (exp1 tensor parallelism, exp2 T5 ZeRO-3 + LoRA vs full under a 40 MiB cap, exp3 ZeRO-3 +
# QLoRA/LoRA/full), then analysis/report.py's tables and plots.
#   jobs/cpu_reproduction.sh [train options...]     e.g. --epochs 1 for a quicker pass
# Environment: BIN (build/shardtune), PYTHON (/usr/bin/python3), RUNS (runs/cpu-repro), REPORT
# ($RUNS/report.md), MPIRUN (as jobs/run_matrix.sh). Runs already complete in $RUNS are kept
# (run_matrix.sh skips them); the options go to every run.
# Exit status: 0, or 1 when a run failed (OOM rows are results, not failures).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/shardtune}
PYTHON=${PYTHON:-/usr/bin/python3}
export BIN PYTHON RUNS=${RUNS:-runs/cpu-repro}
report=${REPORT:-$RUNS/report.md}
D=data/synthetic
set -e
[ -f "$D/tokenizer.model" ] || "$BIN" prepare --synthetic "$D"
prep() {  # DIR SPLIT INPUT ARGS...
  local out=$1 split=$2 input=$3
  shift 3
  ls "$out/$split"-*.h5 > /dev/null 2>&1 ||
    "$BIN" prepare --input "$input" --tokenizer "$D/tokenizer.model" --output "$out" --split "$split" "$@"
}
prep "$D/sentiment" train "$D/sentiment_train.tsv" --loss-on answer --max-seq-len 64
prep "$D/sentiment" validation "$D/sentiment_dev.tsv" --loss-on answer --max-seq-len 64
prep "$D/sentiment_t5" train "$D/sentiment_train.tsv" --arch seq2seq --max-seq-len 64 --max-target-len 4
prep "$D/sentiment_t5" validation "$D/sentiment_dev.tsv" --arch seq2seq --max-seq-len 64 --max-target-len 4
set +e
status=0
for exp in exp1 exp2 exp3; do
  echo "== $exp (CPU size, 2 and 4 ranks) -> $RUNS"
  jobs/run_matrix.sh "$exp" --cpu "$@" || status=1
done
mkdir -p "$(dirname "$report")"
"$PYTHON" analysis/report.py "$RUNS"/exp* "$RUNS"/matrix_*.tsv --plots "$RUNS/plots" \
  --title "shardtune reference experiments, CPU size ($(nproc) cores)" > "$report" || status=1
echo "report: $report (plots in $RUNS/plots)"
exit $status
