#!/usr/bin/env bash
# Every parallel strategy against the one-rank run, for full, LoRA and QLoRA: 20 steps of a small
# model on synthetic data, then the largest relative loss difference and the resident weights per
# rank. On a GPU host with fewer GPUs than ranks the ranks share a GPU (NCCL refuses that, so the
# collectives go through MPI and host memory). ~2 min on one H100. (On CPUs the same checks, in
# f32 and tighter, are the e2e tests of `make test`; DEVICE=cpu works but takes long on few cores.)
#   jobs/check_strategies.sh            # a Llama on the synthetic instruction set
#   ARCH=t5 jobs/check_strategies.sh    # a T5 on the synthetic sentiment set as text to text
# Environment: BIN, MPIRUN (launcher with flags), PYTHON, DEVICE, WORK (scratch directory), ARCH.
set -euo pipefail
BIN=${BIN:-build/shardtune}
MPIRUN=${MPIRUN:-mpirun --oversubscribe --bind-to none}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-$(mktemp -d -t shardtune-strategies-XXXXXX)}
ARCH=${ARCH:-llama}
[ "$(id -u)" = 0 ] && MPIRUN="$MPIRUN --allow-run-as-root"
echo "== data in $WORK"
"$BIN" prepare --synthetic "$WORK/synth" --sentiment-rows 600 --instruct-rows 400 > /dev/null
for split in train val; do
  name=$([ $split = train ] && echo train || echo validation)
  if [ "$ARCH" = t5 ]; then
    "$BIN" prepare --input "$WORK/synth/sentiment_$([ $split = train ] && echo train || echo dev).tsv" \
      --tokenizer "$WORK/synth/tokenizer.model" --output "$WORK/data" --split $name --arch seq2seq \
      --max-seq-len 64 --max-target-len 4 > /dev/null
  else
    "$BIN" prepare --input "$WORK/synth/instruct_$split.jsonl" --tokenizer "$WORK/synth/tokenizer.model" \
      --output "$WORK/data" --split $name --loss-on all --template plain --max-seq-len 128 > /dev/null
  fi
done
if [ "$ARCH" = t5 ]; then
  SHAPE="--arch t5 --hidden_size 256 --head_dim 64 --intermediate_size 512 --num_layers 2 --num_decoder_layers 2 --num_heads 4"
else
  SHAPE="--hidden_size 256 --intermediate_size 512 --num_layers 4 --num_heads 4 --num_kv_heads 4"
fi
run() {  # ranks parallel tp_size grad_accum method run_id
  $MPIRUN -np "$1" "$BIN" train --device "$DEVICE" --data "$WORK/data" --tokenizer "$WORK/synth/tokenizer.model" \
    --output_dir "$WORK/runs" --run_id "$6" $SHAPE --micro_batch_size 4 --grad_accum "$4" --max_steps 20 --lr 2e-3 --warmup_steps 3 --eval_every 0 \
    --log_every 10 --method "$5" --qlora_quantize all --qlora_double_quant false --parallel "$2" --tp_size "$3" \
    --threads 2 --overwrite true > "$WORK/$6.log" 2>&1 || { echo "FAILED: $6 (see $WORK/$6.log)"; return 1; }
}
for m in full lora qlora; do
  echo "== $m"
  run 1 none 1 4 $m ${m}_ref
  run 2 ddp 1 2 $m ${m}_ddp2
  run 2 tp 2 4 $m ${m}_tp2
  run 2 zero3 1 2 $m ${m}_zero3dp2
  run 4 tp+zero3 2 2 $m ${m}_tp2zero3dp2
done
"$PYTHON" - "$WORK/runs" <<'PY'
import sys, h5py, numpy as np
runs = sys.argv[1]
for m in ["full", "lora", "qlora"]:
    ref = h5py.File(f"{runs}/{m}_ref/metrics.h5"); rl = ref["steps/loss"][:]
    for lay in ["ddp2", "tp2", "zero3dp2", "tp2zero3dp2"]:
        f = h5py.File(f"{runs}/{m}_{lay}/metrics.h5"); l = f["steps/loss"][:]
        print(f"{m:5s} {lay:12s} max loss rel diff {np.max(np.abs(l - rl) / np.abs(rl)):.2e}  final val "
              f"{f['summary'].attrs['final_val_loss']:.4f} vs {ref['summary'].attrs['final_val_loss']:.4f}  "
              f"weights/rank {f['ranks/peak_weights'][0] / 2**20:.2f} vs {ref['ranks/peak_weights'][0] / 2**20:.2f} MiB")
PY
