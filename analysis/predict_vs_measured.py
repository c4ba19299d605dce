#!/usr/bin/env python3
"""The planner's predicted step time against the measured one, on the GPU host (issue #21).

For every single-GPU benchmark row of analysis/bench.py (default: the Llama rows 1b_full,
1b_lora, 7b_lora, 13b_lora, 7b_qlora, 13b_qlora, the T5 rows t5large_full, t5large_lora,
t5xl_full, t5xl_lora, and each strategy at world size 1 on 7b_lora and 1b_full: ddp, tp, zero3,
tp+zero3) it
  1. makes bench.py's random-token shards (once; seq2seq ones for the T5 rows),
  2. calibrates this GPU with the deck's own GEMM shapes, in the same invocation:
       shardtune calibrate --device cuda --deck DECK --data DIR --seconds S --out PROFILE
     (one profile per deck),
  3. runs the row as bench.py does (mpirun -np 1 ... train --deck DECK [--parallel S]) and takes
     the median step time over the steps after the first 2,
  4. asks the planner for the same layout with that profile:
       shardtune plan --deck DECK --data DIR --ranks 1 --strategies S --methods M --profile PROFILE --json J
and prints predicted vs measured step time and their ratio (target: within 10%), as a table and
as JSON in --out-dir.

    python3 analysis/predict_vs_measured.py --bin build/shardtune [--configs 7b_lora,7b_lora_zero3] [--seconds 20]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (the benchmark's decks, shards and run helpers)

DEFAULT = ("1b_full", "1b_lora", "7b_lora", "13b_lora", "7b_qlora", "13b_qlora",
           "t5large_full", "t5large_lora", "t5xl_full", "t5xl_lora",
           "7b_lora_ddp", "7b_lora_tp", "7b_lora_zero3", "7b_lora_tpzero3",
           "1b_full_ddp", "1b_full_tp", "1b_full_zero3", "1b_full_tpzero3")
TARGET = 0.10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="build/shardtune")
    p.add_argument("--configs", default=",".join(DEFAULT), help="bench.py configuration names")
    p.add_argument("--seconds", type=float, default=20, help="calibration budget per deck (default 20)")
    p.add_argument("--mpirun", default="mpirun")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--data-dir", default="data/bench/random-1024")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--t5-data-dir", default=None, help="seq2seq shards of the T5 rows (default data/bench/random-t5-S-T)")
    p.add_argument("--t5-seq-len", type=int, default=512)
    p.add_argument("--t5-target-len", type=int, default=128)
    p.add_argument("--t5-vocab", type=int, default=32128)
    p.add_argument("--train-args", default="")
    p.add_argument("--out-dir", default="runs/speed")
    p.add_argument("--skip-runs", action="store_true", help="predict only (no training runs)")
    return p.parse_args(argv)


def strategy_of(spec, keys):
    args = spec.get("args", [])
    if "--parallel" in args:
        return args[args.index("--parallel") + 1]
    return keys.get("parallel", "none")


def run(cmd, log):
    with open(log, "w") as f:
        f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode


def write_json(args, rows, notes, commands, partial):
    path = os.path.join(args.out_dir, "predict_vs_measured.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"rows": rows, "notes": notes, "commands": commands, "device": bench.gpu_name(), "partial": partial},
                  f, indent=1)
    os.replace(path + ".tmp", path)


def main(argv=None):
    args = parse_args(argv)
    args.bin = os.path.abspath(args.bin)
    os.chdir(os.path.dirname(HERE))
    logs = os.path.join(args.out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    names = [n for n in args.configs.split(",") if n]
    for n in names:
        if n not in bench.CONFIGS:
            print(f"predict_vs_measured: unknown configuration {n}", file=sys.stderr)
            return 2
    if args.t5_data_dir is None:
        args.t5_data_dir = f"data/bench/random-t5-{args.t5_seq_len}-{args.t5_target_len}"
    commands, notes = [], []
    profiles, rows, made = {}, [], set()
    for name in names:
        spec = bench.CONFIGS[name]
        keys = bench.read_deck(spec["deck"])
        shape = bench.deck_shape(keys, spec["deck"])
        # Causal rows train on the random-token shards, T5 rows on seq2seq ones (bench.py's data).
        data = bench.data_spec(shape, args)
        if data["dir"] not in made:
            if not bench.ensure_shards(args.bin, data, logs, commands, True):
                return 1
            made.add(data["dir"])
        if spec.get("args"):
            shape["run_id"] = name
        deck = spec["deck"]
        extra = [a for a in spec.get("args", []) if a]  # e.g. --parallel tp
        if deck not in profiles:
            prof = os.path.join(args.out_dir, f"profile-{os.path.basename(deck)[:-4]}.json")
            cmd = [args.bin, "calibrate", "--device", "cuda", "--deck", deck, "--data", data["dir"],
                   "--seconds", str(args.seconds), "--out", prof]
            if run(cmd, os.path.join(logs, f"calibrate-{os.path.basename(deck)[:-4]}.log")) != 0:
                print(f"predict_vs_measured: calibrate failed for {deck}; see {logs}", file=sys.stderr)
                return 1
            profiles[deck] = prof
        strategy = strategy_of(spec, keys)
        method = keys.get("method", "full")
        plan_json = os.path.join(args.out_dir, f"plan-{name}.json")
        cmd = [args.bin, "plan", "--deck", deck, "--data", data["dir"], "--ranks", "1", "--strategies",
               strategy, "--methods", method, "--profile", profiles[deck], "--json", plan_json] + extra
        if run(cmd, os.path.join(logs, f"plan-{name}.log")) != 0:
            rows.append({"name": name, "error": "plan failed"})
            continue
        with open(plan_json) as f:
            layouts = [l for l in json.load(f)["layouts"] if l.get("applies")]
        predicted = layouts[0]["step_seconds"] if layouts else None
        measured = None
        if not args.skip_runs:
            st = bench.run_shardtune_row(args, name, spec, shape, data,
                                         bench.shape_flops(shape, data["seq_len"], data["target_len"])["total"], logs,
                                         commands, notes, True)
            measured = st.get("median_step_time") if st.get("outcome") == "ok" else None
            if measured is None:
                notes.append(f"{name}: the run's outcome is {st.get('outcome')} ({st.get('error', '')})")
        row = {"name": name, "strategy": strategy, "method": method, "predicted_s": predicted, "measured_s": measured,
               "compute_s": layouts[0]["compute_seconds"] if layouts else None,
               "exposed_comm_s": layouts[0]["exposed_comm_seconds"] if layouts else None,
               "host_bound_s": layouts[0].get("host_bound_seconds") if layouts else None}
        if predicted and measured:
            row["ratio"] = predicted / measured
            row["within_target"] = abs(row["ratio"] - 1) <= TARGET
        rows.append(row)
        print(f"predict_vs_measured: {name}: predicted {predicted}, measured {measured}", flush=True)
        write_json(args, rows, notes, commands, partial=True)  # what is done so far survives a kill

    print(f"\n{'row':<18} {'strategy':<9} {'method':<6} {'predicted s':>12} {'measured s':>11} {'pred/meas':>10}  within 10%")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<18} {r['error']}")
            continue
        pred = f"{r['predicted_s']:.4f}" if r["predicted_s"] else "-"
        meas = f"{r['measured_s']:.4f}" if r["measured_s"] else "-"
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else "-"
        ok = ("yes" if r["within_target"] else "NO") if "ratio" in r else "-"
        print(f"{r['name']:<18} {r['strategy']:<9} {r['method']:<6} {pred:>12} {meas:>11} {ratio:>10}  {ok}")
    for n in notes:
        print("note:", n)
    write_json(args, rows, notes, commands, partial=False)
    judged = [r for r in rows if "ratio" in r]
    return 0 if judged and all(r["within_target"] for r in judged) else 1


if __name__ == "__main__":
    sys.exit(main())
