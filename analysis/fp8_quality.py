#!/usr/bin/env python3
"""Issue #20's FP8 quality target: LoRA on real text with the frozen base in bf16 and in FP8
(base_precision = fp8), side by side; the training loss must stay within 1% of the bf16 run's at
every step after step 20, and the final validation loss within 0.5%.

Model: stories260K (../shared/data/models/stories260K, a real pretrained Llama). Its MLP width
(172) is not a multiple of 16, which FP8 GEMMs need, so the adapters (and with them the FP8
bases) are on the attention projections q, k, v, o (64 x 64 and 32 x 64). Data: the TinyStories
subset (../shared/data/corpus/tinystories_subset/tinystories.txt), one story per row (blank-line
separated), loss on every token, the last 10% of the stories for validation.

With --pretrain the base is a random-init Llama of the --hidden/--layers/--heads/--intermediate
shape (multiples of 16, so the adapters and FP8 bases are on all seven projections q, k, v, o,
gate, up, down) first trained in full on the same training rows for --pretrain-steps steps
(cosine schedule, saved with save_model), the fairer test the issue allows; its untrained and
final losses are printed before the comparison. Tokenizer: --tokenizer (default stories260K's,
a 512-token vocabulary trained on TinyStories).

    python3 analysis/fp8_quality.py                       # prepare, both runs, comparison
    python3 analysis/fp8_quality.py --pretrain            # prepare, pretraining, both runs, comparison
    python3 analysis/fp8_quality.py --compare A B         # compare two finished runs only

Prints the per-step comparison (every step after --skip, every --print-every-th in full) and one
line "fp8 quality: PASS ..." or "fp8 quality: FAIL ..." (exit 0 / 1)."""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

REPO = os.path.dirname(HERE)
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))


def stories(text):
    """The corpus split into stories at blank lines (whitespace-trimmed, empty ones dropped)."""
    out, cur = [], []
    for line in text.splitlines():
        if line.strip():
            cur.append(line.strip())
        elif cur:
            out.append(" ".join(cur))
            cur = []
    if cur:
        out.append(" ".join(cur))
    return out


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"instruction": "Tell a story.", "input": "", "output": r}) + "\n")


def compare(loss_a, loss_b, val_a, val_b, skip=20, step_tol=0.01, val_tol=0.005, print_every=10):
    """(lines, ok): per-step relative differences of b against a (steps are 1-based; steps after
    `skip` are judged) and the final validation losses."""
    lines, worst, worst_step, bad = [], 0.0, None, []
    n = min(len(loss_a), len(loss_b))
    if n == 0 or len(loss_a) != len(loss_b):
        return [f"step counts differ or are empty: {len(loss_a)} vs {len(loss_b)}"], False
    lines.append(f"{'step':>5} {'bf16':>10} {'fp8':>10} {'rel diff':>9}")
    for i in range(n):
        step = i + 1
        a, b = float(loss_a[i]), float(loss_b[i])
        rel = abs(b - a) / abs(a) if a != 0 else float("inf")
        judged = step > skip
        if judged and not rel <= step_tol:
            bad.append(step)
        if judged and (rel > worst or rel != rel):
            worst, worst_step = rel, step
        if step % print_every == 0 or step == 1 or step == n or (judged and not rel <= step_tol):
            lines.append(f"{step:>5} {a:>10.5f} {b:>10.5f} {rel:>8.3%}{'' if not judged or rel <= step_tol else '  over'}")
    ok = not bad
    lines.append(f"training loss after step {skip}: worst relative difference {worst:.3%} at step {worst_step} "
                 f"(limit {step_tol:.1%}); {len(bad)} step(s) over")
    if val_a is None or val_b is None:
        lines.append("final validation loss: missing")
        ok = False
    else:
        vrel = abs(val_b - val_a) / abs(val_a)
        lines.append(f"final validation loss: bf16 {val_a:.5f}, fp8 {val_b:.5f}, relative difference {vrel:.3%} "
                     f"(limit {val_tol:.1%})")
        ok = ok and vrel <= val_tol
    return lines, ok


def read_run_losses(run_dir):
    """(training loss per step, validation losses in order) of a finished run."""
    import st_read
    run = st_read.read_run(run_dir)
    if run["summary"].get("outcome") != "ok":
        raise RuntimeError(f"{run_dir}: outcome {run['summary'].get('outcome')}")
    val = run["evals"].get("val_loss")
    return list(run["steps"]["loss"]), ([float(v) for v in val] if val is not None else [])


def read_losses(run_dir):
    loss, val = read_run_losses(run_dir)
    return loss, (val[-1] if val else None)


def run(cmd):
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def prepare(args, tok):
    """Train/validation shards of the corpus's stories (the last 10% validate) in <out>/data."""
    with open(args.corpus, encoding="utf-8") as f:
        rows = stories(f.read())
    n_val = max(1, len(rows) // 10)
    data = os.path.join(args.out, "data")
    os.makedirs(data, exist_ok=True)
    for split, part in (("train", rows[:-n_val]), ("validation", rows[-n_val:])):
        src = os.path.join(args.out, f"{split}.jsonl")
        write_jsonl(src, part)
        run([args.bin, "prepare", "--input", src, "--tokenizer", tok, "--output", data, "--split", split,
             "--loss-on", "all", "--template", "plain", "--max-seq-len", str(args.seq_len)])
    return data


def train_cmd(args, run_id, data, tok, steps, lr, keys):
    """`shardtune train` on the shards with the settings every run here shares, then `keys`
    (flag, value pairs: the method, model and schedule of this run)."""
    cmd = [args.bin, "train", "--data", data, "--tokenizer", tok, "--device", args.device,
           "--max_steps", str(steps), "--epochs", "1000", "--micro_batch_size", str(args.batch),
           "--lr", str(lr), "--log_every", "20", "--eval_every", str(args.eval_every), "--seed", "1",
           "--output_dir", args.out, "--run_id", run_id, "--overwrite", "true"]
    for k, v in keys:
        cmd += ["--" + k, str(v)]
    return cmd


def lora_cmd(args, model, data, tok, targets, precision, run_id):
    return train_cmd(args, run_id, data, tok, args.steps, args.lr, [
        ("model", model), ("method", "lora"), ("lora_targets", targets), ("lora_r", 8), ("lora_alpha", 16),
        ("base_precision", precision), ("warmup_steps", 10), ("save_adapter", "false")])


def pretrain_cmd(args, data, tok, run_id):
    """Full fine-tuning of a random-init Llama of the --pretrain shape; saves <run>/model."""
    return train_cmd(args, run_id, data, tok, args.pretrain_steps, args.pretrain_lr, [
        ("method", "full"), ("arch", "llama"), ("hidden_size", args.hidden), ("num_layers", args.layers),
        ("num_heads", args.heads), ("intermediate_size", args.intermediate),
        ("max_position_embeddings", max(2048, args.seq_len)), ("lr_schedule", "cosine"),
        ("warmup_steps", args.pretrain_warmup), ("min_lr_ratio", 0.1), ("weight_decay", 0.1),
        ("save_model", "true")])


def check_shape(args):
    """Errors of the --pretrain shape: FP8 GEMMs need in/out widths that are multiples of 16."""
    errs = []
    for name in ("hidden", "intermediate"):
        v = getattr(args, name)
        if v <= 0 or v % 16:
            errs.append(f"--{name} {v}: must be a positive multiple of 16")
    if args.heads <= 0 or args.hidden % max(args.heads, 1):
        errs.append(f"--heads {args.heads}: must divide --hidden {args.hidden}")
    if args.layers <= 0 or args.pretrain_steps <= 0:
        errs.append("--layers and --pretrain-steps must be positive")
    return errs


def pretrain(args, data, tok):
    """Trains the base in full, prints its losses, returns its model directory."""
    run_id = "pretrain_full"
    run(pretrain_cmd(args, data, tok, run_id))
    run_dir = os.path.join(args.out, run_id)
    loss, val = read_run_losses(run_dir)
    tail = loss[-10:]
    print(f"pretraining: {len(loss)} steps, {args.hidden} x {args.layers} layers ({args.heads} heads, "
          f"intermediate {args.intermediate}); training loss step 1 {loss[0]:.5f}, last {loss[-1]:.5f} "
          f"(mean of the last {len(tail)}: {sum(tail) / len(tail):.5f}); validation loss "
          + (f"untrained {val[0]:.5f}, final {val[-1]:.5f}" if val else "missing"), flush=True)
    return os.path.join(run_dir, "model")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default=os.path.join(REPO, "build", "shardtune"), help="the shardtune binary")
    p.add_argument("--model", default=os.path.join(SHARED, "models", "stories260K"),
                   help="pretrained model directory of the LoRA runs (without --pretrain); default stories260K")
    p.add_argument("--tokenizer", help="SentencePiece model (default: --model's tokenizer.model)")
    p.add_argument("--corpus", default=os.path.join(SHARED, "corpus", "tinystories_subset", "tinystories.txt"),
                   help="text, stories separated by blank lines (the last 10%% for validation)")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "fp8_quality"), help="prepared data and runs go here")
    p.add_argument("--device", default="cuda", help="cuda or cpu (the CPU runs the same FP8 arithmetic)")
    p.add_argument("--steps", type=int, default=300, help="LoRA steps of each run (default 300)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens a row (default 256)")
    p.add_argument("--batch", type=int, default=16, help="rows a step (default 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (default 1e-3)")
    p.add_argument("--lora-targets", help="adapted projections (default: q,k,v,o; with --pretrain all seven)")
    p.add_argument("--eval-every", type=int, default=100, help="validation every N steps (default 100)")
    p.add_argument("--skip", type=int, default=20, help="steps not judged at the start (default 20)")
    p.add_argument("--print-every", type=int, default=10, help="comparison lines printed every N steps (default 10)")
    p.add_argument("--compare", nargs=2, metavar=("BF16_RUN", "FP8_RUN"), help="only compare two finished runs")
    g = p.add_argument_group("--pretrain: the base is a random-init Llama trained in full on the corpus first")
    g.add_argument("--pretrain", action="store_true", help="pretrain the base first (the shape below)")
    g.add_argument("--hidden", type=int, default=1024, help="hidden size, a multiple of 16 (default 1024)")
    g.add_argument("--layers", type=int, default=8, help="decoder blocks (default 8)")
    g.add_argument("--heads", type=int, default=16, help="attention heads, dividing --hidden (default 16)")
    g.add_argument("--intermediate", type=int, default=2816, help="MLP width, a multiple of 16 (default 2816)")
    g.add_argument("--pretrain-steps", type=int, default=300, help="full training steps (default 300)")
    g.add_argument("--pretrain-lr", type=float, default=6e-4, help="peak lr, cosine schedule (default 6e-4)")
    g.add_argument("--pretrain-warmup", type=int, default=30, help="warmup steps (default 30)")
    args = p.parse_args(argv)
    if args.pretrain and not args.compare:
        errs = check_shape(args)
        if errs:
            p.error("; ".join(errs))

    if args.compare:
        dirs = args.compare
    else:
        os.makedirs(args.out, exist_ok=True)
        tok = args.tokenizer or os.path.join(args.model, "tokenizer.model")
        data = prepare(args, tok)
        model, name = (pretrain(args, data, tok), "pretrained") if args.pretrain else (args.model, "stories260K")
        targets = args.lora_targets or ("q,k,v,o,gate,up,down" if args.pretrain else "q,k,v,o")
        dirs = []
        for precision in ("bf16", "fp8"):
            run_id = f"{name}_lora_{precision}"
            run(lora_cmd(args, model, data, tok, targets, precision, run_id))
            dirs.append(os.path.join(args.out, run_id))
    (la, va), (lb, vb) = read_losses(dirs[0]), read_losses(dirs[1])
    lines, ok = compare(la, lb, va, vb, skip=args.skip, print_every=args.print_every)
    print("\n".join(lines))
    print(f"fp8 quality: {'PASS' if ok else 'FAIL'} ({dirs[0]} vs {dirs[1]})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
