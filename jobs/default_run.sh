#!/usr/bin/env bash
# The embedded default job (`make run`): synthetic data and tokenizer, a tiny Llama trained in
# full from scratch, then LoRA-tuned on a sentiment task, and the results table.
# Environment: BIN (shardtune binary), MPIRUN (launcher with flags), NP (ranks), PYTHON.
set -euo pipefail
BIN=${BIN:-build/shardtune}
MPIRUN=${MPIRUN:-mpirun}
NP=${NP:-1}
PYTHON=${PYTHON:-/usr/bin/python3}
DATA=data/synthetic

echo "== 1/4 synthetic data and tokenizer -> $DATA"
"$BIN" prepare --synthetic "$DATA"

echo "== 2/4 tokenized HDF5 shards"
"$BIN" prepare --input "$DATA/instruct_train.jsonl" --tokenizer "$DATA/tokenizer.model" \
  --output "$DATA/instruct" --split train --loss-on all --template plain --max-seq-len 128
"$BIN" prepare --input "$DATA/instruct_val.jsonl" --tokenizer "$DATA/tokenizer.model" \
  --output "$DATA/instruct" --split validation --loss-on all --template plain --max-seq-len 128
"$BIN" prepare --input "$DATA/sentiment_train.tsv" --tokenizer "$DATA/tokenizer.model" \
  --output "$DATA/sentiment" --split train --loss-on answer --max-seq-len 64
"$BIN" prepare --input "$DATA/sentiment_dev.tsv" --tokenizer "$DATA/tokenizer.model" \
  --output "$DATA/sentiment" --split validation --loss-on answer --max-seq-len 64

echo "== 3/4 training (mpirun -np $NP)"
# The default job makes its runs again each time: --overwrite true replaces the last ones.
$MPIRUN -np "$NP" "$BIN" train --deck inputs/default/pretrain_full.cfg --overwrite true
$MPIRUN -np "$NP" "$BIN" train --deck inputs/default/sentiment_lora.cfg --overwrite true

echo "== 4/4 results"
"$PYTHON" analysis/report.py runs/default_full runs/default_lora --title "shardtune default job (CPU)"
