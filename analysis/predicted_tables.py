#!/usr/bin/env python3
"""The planner's predicted tables of the reference experiments (issue #21), beside the measured
rows where runs/<run_id>/metrics.h5 exist.

For each row of jobs/matrix.sh's run matrix of exp1, exp2, exp3 (run id, GPUs, deck, strategy,
tp) it asks `shardtune plan` for that layout on the given GPU kind and links (a dry run: no GPU
needed) and prints a Markdown table per experiment: GPUs | strategy | predicted step time |
tokens/s per GPU | predicted epoch time | fits | measured epoch time | predicted / measured.

    python3 analysis/predicted_tables.py --bin build/shardtune [--experiments exp1] \
        [--gpu a100-40gb] [--link nvlink3] [--gpus-per-node 8] [--profile P] [--runs runs] [--seq-len L]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (read_deck)


def matrix_rows(exp, repo):
    out = subprocess.run(["bash", "-c", f"source jobs/matrix.sh && matrix_rows {exp}"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        run_id, ranks, deck, par, tp = line.split()
        rows.append({"run_id": run_id, "ranks": int(ranks), "deck": deck, "strategy": par, "tp": int(tp)})
    return rows


def measured_epoch(runs_dir, run_id):
    """Mean per-epoch training time of a finished run, or None."""
    path = os.path.join(runs_dir, run_id, "metrics.h5")
    if not os.path.exists(path):
        return None
    try:
        import st_read

        run = st_read.read_run(path)
    except Exception:  # an unreadable or foreign file is "not measured"
        return None
    if run.get("summary", {}).get("outcome") != "ok":
        return run.get("summary", {}).get("outcome")
    times = run.get("epochs", {}).get("epoch_time", [])
    return statistics.mean(float(t) for t in times) if len(times) else None


def predict(args, row):
    keys = bench.read_deck(row["deck"])
    method = keys.get("method", "full")
    with tempfile.TemporaryDirectory() as tmp:
        js = os.path.join(tmp, "plan.json")
        cmd = [args.bin, "plan", "--deck", row["deck"], "--gpus", str(row["ranks"]), "--gpus-per-node",
               str(args.gpus_per_node), "--strategies", row["strategy"], "--methods", method, "--json", js]
        cmd += ["--profile", args.profile] if args.profile else ["--gpu", args.gpu]
        if args.link:
            cmd += ["--link", args.link]
        if args.seq_len and not os.path.exists(keys.get("data", "")):
            cmd += ["--seq-len", str(args.seq_len)]  # no shards: rows of this length, no epoch
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["plan failed"])[-1]
            return {"error": last}
        with open(js) as f:
            layouts = json.load(f)["layouts"]
    for l in layouts:
        if l.get("applies") and l["tp"] == row["tp"]:
            return l
    return {"error": f"no applicable layout with tp {row['tp']}"}


def fmt_s(x):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.0f} s"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="build/shardtune")
    p.add_argument("--experiments", default="exp1,exp2,exp3")
    p.add_argument("--gpu", default="a100-40gb", help="built-in GPU kind (default a100-40gb, the reference's)")
    p.add_argument("--profile", default=None, help="a calibrated device profile instead of --gpu")
    p.add_argument("--link", default=None, help="link inside a node (default: the GPU kind's)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--runs", default="runs", help="where measured runs are (runs/<run_id>/metrics.h5)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="row length to plan with where a deck's shards do not exist (no epoch time then)")
    args = p.parse_args(argv)
    print("\n".join(tables(args.bin, [e for e in args.experiments.split(",") if e], gpu=args.gpu,
                           profile=args.profile, link=args.link, gpus_per_node=args.gpus_per_node, runs=args.runs,
                           seq_len=args.seq_len)))
    return 0


def tables(bin_path, experiments, gpu="a100-40gb", profile=None, link=None, gpus_per_node=8, runs="runs", seq_len=None):
    """Markdown lines: one predicted table per experiment (the decks and matrix rows are the
    repository's; bin_path, profile and runs may be relative to the current directory)."""
    repo = os.path.dirname(HERE)
    args = argparse.Namespace(bin=os.path.abspath(bin_path), gpu=gpu, link=link, gpus_per_node=gpus_per_node,
                              profile=os.path.abspath(profile) if profile else None, runs=os.path.abspath(runs),
                              seq_len=seq_len)
    lines = []
    cwd = os.getcwd()
    os.chdir(repo)  # the decks name their includes relative to the repository
    try:
        for exp in experiments:
            lines += ["", f"### {exp}: predicted on {args.profile or args.gpu}, {args.gpus_per_node} GPUs per node", "",
                      "| run | GPUs | strategy | tp | pred. step | tokens/s per GPU | pred. epoch | fits | measured epoch "
                      "| pred./meas. |", "|---|---|---|---|---|---|---|---|---|---|"]
            for row in matrix_rows(exp, repo):
                pred = predict(args, row)
                meas = measured_epoch(args.runs, row["run_id"])
                cells = [row["run_id"], str(row["ranks"]), row["strategy"], str(row["tp"])]
                if "error" in pred:
                    cells += [f"plan: {pred['error']}", "-", "-", "-"]
                else:
                    epoch = pred.get("epoch_seconds") or None
                    cells += [fmt_s(pred["step_seconds"]), f"{pred['tokens_per_second_per_gpu']:.0f}", fmt_s(epoch),
                              "yes" if pred["fits"] else "OOM"]
                ratio = "-"
                if "error" not in pred and isinstance(meas, float) and pred.get("epoch_seconds"):
                    ratio = f"{pred['epoch_seconds'] / meas:.2f}"
                cells += [fmt_s(meas), ratio]
                lines.append("| " + " | ".join(cells) + " |")
    finally:
        os.chdir(cwd)
    return lines

if __name__ == "__main__":
    sys.exit(main())
