#!/usr/bin/env python3
"""Sequence packing benchmark (issue 19): real short-row data, padded vs length-grouped vs
packed, side by side in one run.

For each dataset (default: SST-2 and Alpaca from ../shared/data, tokenized with the Llama 2
tokenizer) it
  1. prepares the shards once (shardtune prepare; kept when they exist),
  2. trains a 7B-shape random-init Llama with LoRA (inputs/bench/packing_7b_lora.cfg: r=16 on
     all seven projections, activation checkpointing, bf16) three times at the same
     micro_batch_size, row length and memory_limit (40 GiB): padded (each micro-batch padded to
     its longest row), grouped (group_by_length = true) and packed (packing = true,
     pack_length = the shards' max_seq_len, so the activation buffers are the same size),
  3. reads each run's metrics.h5 and reports, over the steps after the first WARMUP_STEPS:
     real tokens/s (sum of /steps/tokens over the sum of step times), computed tokens/s
     (padding included), the padding fraction, the mean step time, steps per epoch and the
     projected seconds per epoch (steps per epoch x mean step time), the speedup of real
     tokens/s over the padded run, and the peak memory;
then prints the table, marks the targets (SST-2: packed real tokens/s >= 2.0x the padded run,
packed padding fraction < 5%) met / NOT met, and writes packing.{txt,md,json} under --out (and
into $OUT when set). Copy the Markdown to docs/bench/ with the date and the GPU in its name.

Default steps: 200 for SST-2, 100 for Alpaca (its packed rows of 1024 tokens take twice as long
per step; 200 of them would not fit the 8-minute budget of one device call). --tiny runs the
same logic on the CPU with a tiny Llama, a few steps and --limit'ed data (the check that the
script works, not a measurement).

    python3 analysis/bench_packing.py --bin build/shardtune [--datasets sst2] [--steps 200]
    python3 analysis/bench_packing.py --bin build-cpu/shardtune --tiny     # CPU, seconds
"""

import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

WARMUP_STEPS = 2
GIB = 2.0 ** 30
DECK = "inputs/bench/packing_7b_lora.cfg"
TINY_DECK = "inputs/base/tiny_llama.cfg"

# Dataset: input under the shared data directory, prepare options, and the run's shape.
DATASETS = {
    "sst2": {"input": "sst2/train.tsv", "max_seq_len": 128, "micro_batch_size": 16, "steps": 200,
             "prepare": [], "tiny_limit": 3000, "what": "GLUE SST-2 train (67,349 rows)"},
    "alpaca": {"input": "instruct/alpaca_en_demo.json", "max_seq_len": 1024, "micro_batch_size": 4, "steps": 100,
               "prepare": ["--template", "alpaca"], "tiny_limit": 200, "what": "Alpaca demo (999 records)"},
}
MODES = {
    "padded": [],
    "grouped": ["--group_by_length", "true"],
    "packed": ["--packing", "true"],
}
TARGETS = {"sst2": {"min_speedup": 2.0, "max_padding": 0.05}}
MET, NOT_MET, NA = "met", "NOT met", "n/a"


# ------------------------------------------------------------------------------ commands


def prepare_command(binary, shared, data_dir, name, limit=0):
    """shardtune prepare of dataset `name` (train split only: the runs do not evaluate)."""
    d = DATASETS[name]
    cmd = [binary, "prepare", "--input", os.path.join(shared, d["input"]),
           "--tokenizer", os.path.join(shared, "tokenizers", "llama2", "tokenizer.model"),
           "--output", os.path.join(data_dir, f"{name}-llama2"), "--split", "train",
           "--max-seq-len", str(d["max_seq_len"])] + list(d["prepare"])
    if limit:
        cmd += ["--limit", str(limit)]
    return cmd


def train_command(mpirun, binary, deck, data, run_id, output_dir, mode, micro, steps, extra=()):
    """mpirun -np 1 ... BIN train --deck DECK with the dataset, the mode's keys and the steps.
    Every mode gets the same micro_batch_size and (through the shards) row length."""
    cmd = shlex.split(mpirun) if mpirun else []
    if cmd and "-np" not in cmd and "-n" not in cmd:
        cmd += ["-np", "1"]
    if cmd and not any(a.startswith("--bind-to") for a in cmd):
        cmd += ["--bind-to", "none"]
    if cmd and hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-run-as-root" not in cmd:
        cmd += ["--allow-run-as-root"]  # containers run as root
    return cmd + [binary, "train", "--deck", deck, "--data", data, "--run_id", run_id, "--output_dir", output_dir,
                  "--micro_batch_size", str(micro), "--max_steps", str(steps)] + list(MODES[mode]) + list(extra)


# ------------------------------------------------------------------------------ results


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def summarize(run, warmup=WARMUP_STEPS):
    """From st_read.read_run(): outcome, real and computed tokens/s over the steps after
    `warmup` (sums, not medians: grouped and padded steps vary in size), padding fraction, mean
    step time, steps per epoch, projected seconds per epoch, peak memory."""
    summary, steps = run.get("summary", {}), run.get("steps", {})
    out = {"outcome": summary.get("outcome", "error")}
    if summary.get("error"):
        out["error"] = summary["error"]
    step_no = [int(s) for s in steps.get("step", [])]
    keep = [i for i, s in enumerate(step_no) if s > warmup] or list(range(len(step_no)))
    times = [float(steps["step_time"][i]) for i in keep] if "step_time" in steps else []
    real = [float(steps["tokens"][i]) for i in keep] if "tokens" in steps else []
    computed = [float(steps["computed_tokens"][i]) for i in keep] if "computed_tokens" in steps else []
    out["steps_measured"] = len(times)
    if times and sum(times) > 0:
        t = sum(times)
        out["mean_step_time"] = t / len(times)
        out["real_tokens_per_s"] = sum(real) / t
        if computed and sum(computed) > 0:
            out["computed_tokens_per_s"] = sum(computed) / t
            out["padding_fraction"] = 1.0 - sum(real) / sum(computed)
        out["real_tokens_per_step"] = sum(real) / len(real)
    spe = summary.get("steps_per_epoch")
    if _finite(spe) and spe > 0:
        out["steps_per_epoch"] = int(spe)
        if "mean_step_time" in out:
            out["epoch_seconds"] = spe * out["mean_step_time"]
    if _finite(summary.get("padding_fraction")):
        out["run_padding_fraction"] = float(summary["padding_fraction"])
    if _finite(summary.get("peak_memory")) and summary["peak_memory"] > 0:
        out["peak_memory_bytes"] = int(summary["peak_memory"])
    if out["outcome"] == "ok" and "real_tokens_per_s" not in out:
        out["outcome"] = "error"
        out["error"] = "no training steps recorded"
    return out


def compare(rows):
    """Adds, per dataset, each row's real-token speedup over its padded row."""
    base = {r["dataset"]: r for r in rows if r["mode"] == "padded" and r.get("outcome") == "ok"}
    for r in rows:
        b = base.get(r["dataset"])
        ok = r.get("outcome") == "ok" and b is not None
        r["speedup"] = r["real_tokens_per_s"] / b["real_tokens_per_s"] if ok else None
    return rows


def judge_targets(rows):
    """The issue's targets on each dataset that has them: (dataset, target, value, status)."""
    out = []
    for name, t in TARGETS.items():
        packed = next((r for r in rows if r["dataset"] == name and r["mode"] == "packed"), None)
        if packed is None:
            continue
        ok = packed.get("outcome") == "ok"
        sp = packed.get("speedup")
        out.append((name, f"packed real tokens/s >= {t['min_speedup']:.1f}x padded",
                    f"{sp:.2f}x" if sp is not None else "-",
                    (MET if sp >= t["min_speedup"] else NOT_MET) if ok and sp is not None else NA))
        pad = packed.get("padding_fraction")
        out.append((name, f"packed padding fraction < {100 * t['max_padding']:.0f}%",
                    f"{100 * pad:.1f}%" if pad is not None else "-",
                    (MET if pad < t["max_padding"] else NOT_MET) if ok and pad is not None else NA))
    return out


COLUMNS = [
    ("dataset", "dataset"), ("mode", "mode"), ("micro", "rows/micro-batch"), ("real", "real tok/s"),
    ("computed", "computed tok/s"), ("padding", "padding"), ("step", "s/step"), ("spe", "steps/epoch"),
    ("epoch", "s/epoch (projected)"), ("speedup", "vs padded"), ("peak", "peak GiB"), ("outcome", "outcome"),
]


def _fmt(row):
    def num(v, f):
        return f.format(v) if _finite(v) else "-"
    ok = row.get("outcome") == "ok"
    return {
        "dataset": row["dataset"], "mode": row["mode"], "micro": str(row.get("micro_batch_size", "-")),
        "real": num(row.get("real_tokens_per_s"), "{:,.0f}") if ok else "-",
        "computed": num(row.get("computed_tokens_per_s"), "{:,.0f}") if ok else "-",
        "padding": num(100 * row["padding_fraction"], "{:.1f}%") if ok and _finite(row.get("padding_fraction")) else "-",
        "step": num(row.get("mean_step_time"), "{:.3f}") if ok else "-",
        "spe": str(row.get("steps_per_epoch", "-")),
        "epoch": num(row.get("epoch_seconds"), "{:,.0f}") if ok else "-",
        "speedup": num(row.get("speedup"), "{:.2f}x") if ok else "-",
        "peak": num(row.get("peak_memory_bytes", float("nan")) / GIB, "{:.1f}"),
        "outcome": row.get("outcome", "-"),
    }


def text_table(rows):
    cells = [_fmt(r) for r in rows]
    widths = {k: max(len(h), *(len(c[k]) for c in cells)) for k, h in COLUMNS}
    line = "  ".join(h.rjust(widths[k]) for k, h in COLUMNS)
    body = ["  ".join(c[k].rjust(widths[k]) for k, _ in COLUMNS) for c in cells]
    return "\n".join([line] + body)


def markdown(rows, targets, meta):
    out = [f"# Sequence packing benchmark ({meta.get('date', '')}, {meta.get('device', '')})", ""]
    out.append(meta.get("description", ""))
    out += ["", "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for c in (_fmt(r) for r in rows):
        out.append("| " + " | ".join(c[k] for k, _ in COLUMNS) + " |")
    if targets:
        out += ["", "| dataset | target | value | status |", "|---|---|---|---|"]
        out += [f"| {d} | {t} | {v} | {s} |" for d, t, v, s in targets]
    if meta.get("notes"):
        out += [""] + [f"- {n}" for n in meta["notes"]]
    if meta.get("command"):
        out += ["", "Command:", "", "    " + meta["command"]]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ driver


def run_logged(cmd, log_path):
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(REPO, "build", "shardtune"))
    p.add_argument("--mpirun", default="mpirun", help="mpirun command line ('' to run the binary directly)")
    p.add_argument("--shared", default=os.path.join(REPO, "..", "shared", "data"), help="the shared data directory")
    p.add_argument("--data-dir", default=os.path.join(REPO, "data", "bench"), help="where the shards go")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "bench-packing"), help="runs and tables")
    p.add_argument("--datasets", default="sst2,alpaca")
    p.add_argument("--modes", default="padded,grouped,packed")
    p.add_argument("--steps", type=int, default=None, help="steps of every run (default: 200 SST-2, 100 Alpaca)")
    p.add_argument("--memory-limit", default="40GiB", help="the same memory_limit for every run")
    p.add_argument("--tiny", action="store_true", help="CPU check of the driver: tiny model, few steps, --limit'ed data")
    a = p.parse_args(argv)
    datasets = [d for d in a.datasets.split(",") if d]
    modes = [m for m in a.modes.split(",") if m]
    for d in datasets:
        if d not in DATASETS:
            p.error(f"--datasets: unknown '{d}' (known: {', '.join(DATASETS)})")
    for m in modes:
        if m not in MODES:
            p.error(f"--modes: unknown '{m}' (known: {', '.join(MODES)})")
    import st_read  # h5py, imported here so that --help works without it

    os.makedirs(a.out, exist_ok=True)
    deck = os.path.join(REPO, TINY_DECK if a.tiny else DECK)
    extra = ["--memory_limit", a.memory_limit]
    if a.tiny:
        extra = ["--device", "cpu", "--threads", "2", "--hidden_size", "64", "--intermediate_size", "160",
                 "--num_layers", "2", "--method", "lora", "--val_split", "", "--eval_at_start", "false",
                 "--epochs", "100", "--log_every", "1", "--max_position_embeddings", "1024"]
    rows = []
    for name in datasets:
        d = DATASETS[name]
        data = os.path.join(a.data_dir, f"{name}-llama2")
        if not os.path.exists(os.path.join(data, "train-00000.h5")):
            cmd = prepare_command(a.bin, a.shared, a.data_dir, name, d["tiny_limit"] if a.tiny else 0)
            print("prepare:", " ".join(cmd), flush=True)
            if run_logged(cmd, os.path.join(a.out, f"prepare-{name}.log")) != 0:
                print(f"prepare of {name} failed: see {a.out}/prepare-{name}.log", file=sys.stderr)
                return 1
        steps = a.steps or (4 if a.tiny else d["steps"])
        micro = 4 if a.tiny else d["micro_batch_size"]
        for mode in modes:
            run_id = f"packing-{name}-{mode}"
            cmd = train_command(a.mpirun, a.bin, deck, data, run_id, a.out, mode, micro, steps, extra)
            print(f"{name} {mode}:", " ".join(shlex.quote(c) for c in cmd), flush=True)
            rc = run_logged(cmd, os.path.join(a.out, f"{run_id}.log"))
            try:
                row = summarize(st_read.read_run(os.path.join(a.out, run_id)))
            except st_read.MetricsFileError as e:
                row = {"outcome": "error", "error": str(e)}
            if rc != 0 and row.get("outcome") == "ok":
                row["outcome"] = "error"
            row.update(dataset=name, mode=mode, micro_batch_size=micro, steps=steps, exit_status=rc)
            rows.append(row)
            print(f"  -> {row.get('outcome')}: {_fmt(row)['real']} real tok/s, padding {_fmt(row)['padding']}",
                  flush=True)
    compare(rows)
    targets = judge_targets(rows)
    device = "CPU (--tiny: a check of the driver, not a measurement)" if a.tiny else _gpu_name()
    meta = {
        "date": datetime.date.today().isoformat(), "device": device,
        "description": ("7B-shape Llama (hidden 4096, 32 layers, MLP 11008, 32 heads), random init, LoRA r=16 on "
                        "q,k,v,o,gate,up,down, bf16, activation checkpointing, memory_limit "
                        f"{a.memory_limit}; Llama 2 tokenizer. Steps per run: "
                        + ", ".join(f"{n} {a.steps or DATASETS[n]['steps']}" for n in datasets)
                        + f"; figures over the steps after the first {WARMUP_STEPS}.") if not a.tiny else
                       "Tiny Llama on the CPU (--tiny): checks the driver only.",
        "notes": ["real tok/s: tokens of the documents trained per second; computed tok/s: positions computed "
                  "(padding included); padding = 1 - real / computed.",
                  "s/epoch (projected): steps per epoch x mean step time; packed runs have fewer steps per epoch "
                  "(micro_batch_size counts packed rows)."],
        "command": " ".join(shlex.quote(x) for x in [sys.executable, os.path.relpath(__file__, REPO)] + list(argv or sys.argv[1:])),
    }
    table = text_table(rows)
    print()
    print(table)
    for d, t, v, s in targets:
        print(f"target {d}: {t}: {v} ({s})")
    md = markdown(rows, targets, meta)
    dests = [a.out] + ([os.environ["OUT"]] if os.environ.get("OUT") else [])
    for dest in dests:
        os.makedirs(dest, exist_ok=True)
        with open(os.path.join(dest, "packing.md"), "w") as f:
            f.write(md)
        with open(os.path.join(dest, "packing.txt"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(dest, "packing.json"), "w") as f:
            json.dump({"meta": meta, "rows": rows, "targets": targets}, f, indent=1, default=str)
    return 0 if all(r.get("outcome") == "ok" for r in rows) else 1


def _gpu_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        return out[0] if out else "GPU"
    except (OSError, subprocess.SubprocessError):
        return "GPU"


if __name__ == "__main__":
    sys.exit(main())
