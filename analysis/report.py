#!/usr/bin/env python3
"""Tables and plots from shardtune runs, in the form of the reference experiments.

    python3 analysis/report.py runs/* [--plots DIR] [--title T] [--no-plots]

Each argument is a run directory (holding metrics.h5) or a metrics file. Prints a Markdown
table, one row per run:

    | config | ranks | per-epoch time | total run time | val loss | val acc | peak memory |

config is the run_id with a trailing rank-count token dropped ("llama7b-tp-np4" -> "llama7b-tp",
so the same configuration at 2, 4 and 8 ranks forms one group) plus (strategy, method).
Runs that ran out of memory show OOM (phase and bytes in a footnote), failed runs "error",
unfinished or killed runs "incomplete". Below the table, one speedup line per configuration
run at several rank counts (mean epoch time at the fewest ranks / at the most).

Plots (PNG, into --plots DIR; default: "plots" beside the first run's directory, e.g.
runs/plots, which report.py skips when runs/* names it): loss.png (train loss per step, val loss
per eval), epoch_time.png (mean epoch time per run), memory.png (peak memory per run, by
category, from the rank with the highest peak).

Exit status: 0, or 2 when a path is not a readable run (the message names it).
"""

import argparse
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_read  # noqa: E402

PLOT_NAMES = ("loss.png", "epoch_time.png", "memory.png")
# Rank-count tokens at the end of a run_id: "-np4", "_4gpus", "-w8", "-ranks2", "-tp2", "-dp4".
_RANK_TOKEN = re.compile(r"^(?P<base>.+?)[-_.](?P<word>[a-z]*?)(?P<n>\d+)(?P<unit>gpus?|g|ranks?|r)?$", re.I)
_WORLD_WORDS = {"", "np", "n", "rank", "ranks", "gpu", "gpus", "g", "w", "world", "x"}


# ----------------------------------------------------------------------------- formatting

def _num(value):
    """A finite float, or None."""
    if value is None or isinstance(value, str):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def format_bytes(n):
    n = _num(n)
    if n is None or n <= 0:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}" if unit != "GiB" else f"{n:.2f} GiB"
        n /= 1024
    return f"{n:.2f} TiB"


def format_seconds(s):
    s = _num(s)
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(round(s % 60)):02d}s"
    return f"{int(s // 3600)}h {int(round(s % 3600 / 60)):02d}m"


def _first_last(summary, key, series, fmt):
    first = _num(summary.get(f"initial_{key}"))
    last = _num(summary.get(f"final_{key}"))
    finite = [v for v in (_num(x) for x in series) if v is not None]
    if first is None and finite:
        first = finite[0]
    if last is None and finite:
        last = finite[-1]
    if first is None and last is None:
        return "-"
    return f"{fmt(first) if first is not None else '?'} -> {fmt(last) if last is not None else '?'}"


# ----------------------------------------------------------------------------- runs

def _config_value(config, key):
    if key in config:
        return config[key]
    for k, v in config.items():
        if k.endswith("." + key):
            return v
    return None


def _int(value):
    v = _num(value)
    return int(v) if v is not None else None


def config_label(run_id, world, tp, dp):
    """run_id without trailing tokens that only restate the rank count."""
    base = run_id
    while True:
        m = _RANK_TOKEN.match(base)
        if not m:
            return base
        word, n = m.group("word").lower(), int(m.group("n"))
        if (word in _WORLD_WORDS and n == world) or (word == "tp" and n == tp) or (word == "dp" and n == dp):
            base = m.group("base")
        else:
            return base


class Run:
    """One run's row data, derived from st_read.read_run."""

    def __init__(self, data, arg):
        self.data = data
        self.arg = arg
        s, c = data["summary"], data["config"]
        self.summary = s
        self.outcome = str(s.get("outcome", "running"))
        run_dir = os.path.dirname(os.path.abspath(data["path"]))
        self.run_id = s.get("run_id") or c.get("run_id") or os.path.basename(run_dir)
        ranks_table = data["ranks"]
        self.world = _int(s.get("world_size")) or _int(_config_value(c, "world_size")) or (
            len(ranks_table["rank"]) if "rank" in ranks_table and len(ranks_table["rank"]) else None)
        self.tp = _int(s.get("tp")) or _int(_config_value(c, "tp"))
        self.dp = _int(s.get("dp")) or _int(_config_value(c, "dp"))
        self.strategy = s.get("strategy") or _config_value(c, "strategy")
        self.method = s.get("method") or _config_value(c, "method")
        label = config_label(str(self.run_id), self.world, self.tp, self.dp)
        extra = ", ".join(str(x) for x in (self.strategy, self.method) if x)
        self.label = f"{label} ({extra})" if extra else label
        epoch_times = [v for v in (_num(x) for x in data["epochs"].get("epoch_time", [])) if v is not None]
        self.epoch_time = _num(s.get("mean_epoch_time"))
        if (self.epoch_time is None or self.epoch_time <= 0) and epoch_times:
            self.epoch_time = sum(epoch_times) / len(epoch_times)
        self.total_time = _num(s.get("total_time"))
        self.peak = _num(s.get("peak_memory"))
        if not self.peak:
            for table, column in (("ranks", "peak_memory"), ("steps", "mem_peak")):
                values = [v for v in (_num(x) for x in data[table].get(column, [])) if v is not None]
                if values:
                    self.peak = max(values)
                    break

    def sort_key(self):
        return (self.label, self.world if self.world is not None else 1 << 30, str(self.run_id))

    def ranks_cell(self):
        if self.world is None:
            return "?"
        if self.world > 1 and self.tp and self.dp:
            return f"{self.world} (tp{self.tp} x dp{self.dp})"
        return str(self.world)

    def val_loss_cell(self):
        evals, epochs = self.data["evals"], self.data["epochs"]
        series = evals.get("val_loss", []) if len(evals.get("val_loss", [])) else epochs.get("val_loss", [])
        return _first_last(self.summary, "val_loss", series, lambda v: f"{v:.3f}")

    def val_acc_cell(self):
        evals, epochs = self.data["evals"], self.data["epochs"]
        series = evals.get("val_accuracy", []) if len(evals.get("val_accuracy", [])) else epochs.get("val_accuracy", [])
        return _first_last(self.summary, "val_accuracy", series, lambda v: f"{100 * v:.1f}%")

    def footnote(self):
        s = self.summary
        if self.outcome == "oom":
            text = f"out of memory in phase '{s.get('oom_phase') or '?'}' asking for {format_bytes(s.get('oom_bytes'))}"
            if s.get("oom_category"):
                text += f" ({s['oom_category']})"
            if _num(s.get("memory_limit")):
                text += f"; memory limit {format_bytes(s.get('memory_limit'))}"
            return text
        if self.outcome == "error":
            return f"failed: {s.get('error') or 'no message recorded'}"
        if self.outcome != "ok":
            steps = len(self.data["steps"].get("step", []))
            epochs = len(self.data["epochs"].get("epoch", []))
            return f"outcome '{self.outcome}': still running or killed; {steps} steps, {epochs} epochs logged"
        return None


# ----------------------------------------------------------------------------- table

def build_report(runs, title=None):
    """The Markdown report (table, speedup lines, footnotes) as a list of lines."""
    runs = sorted(runs, key=Run.sort_key)
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines.append("| config | ranks | per-epoch time | total run time | val loss | val acc | peak memory |")
    lines.append("|---|---|---|---|---|---|---|")
    notes = []
    for run in runs:
        note = run.footnote()
        mark = ""
        if note:
            notes.append(f"[^{len(notes) + 1}]: {run.run_id}: {note}")
            mark = f"[^{len(notes)}]"
        if run.outcome == "ok":
            cells = [format_seconds(run.epoch_time), format_seconds(run.total_time), run.val_loss_cell(),
                     run.val_acc_cell()]
        else:
            word = {"oom": "OOM", "error": "error"}.get(run.outcome, "incomplete")
            cells = [word + mark] + [word] * 3
        lines.append("| " + " | ".join([run.label, run.ranks_cell()] + cells + [format_bytes(run.peak)]) + " |")
    speedups = speedup_lines(runs)
    if speedups:
        lines += [""] + speedups
    if notes:
        lines += [""] + notes
    return lines


def speedup_lines(runs):
    groups = {}
    for run in runs:
        if run.world is not None:
            groups.setdefault(run.label, []).append(run)
    lines = []
    for label, group in groups.items():
        if len({r.world for r in group}) < 2:
            continue
        times = {}
        for r in group:
            if r.outcome == "ok" and r.epoch_time:
                times.setdefault(r.world, []).append(r.epoch_time)
        failed = sorted({r.world for r in group if r.outcome != "ok"} - set(times))
        failed_text = f"; not completed at {', '.join(map(str, failed))} ranks" if failed else ""
        if len(times) < 2:
            lines.append(f"Speedup, {label}: n/a (completed at fewer than two rank counts{failed_text})")
            continue
        lo, hi = min(times), max(times)
        t_lo, t_hi = sum(times[lo]) / len(times[lo]), sum(times[hi]) / len(times[hi])
        speedup = t_lo / t_hi
        lines.append(f"Speedup, {label}: {speedup:.2f}x from {lo} to {hi} ranks (per-epoch time "
                     f"{format_seconds(t_lo)} -> {format_seconds(t_hi)}; ideal {hi / lo:.2f}x, "
                     f"efficiency {100 * speedup * lo / hi:.0f}%{failed_text})")
    return lines


# ----------------------------------------------------------------------------- plots

def write_plots(runs, out_dir, title=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = sorted(runs, key=Run.sort_key)
    os.makedirs(out_dir, exist_ok=True)
    names = [f"{r.label} @ {r.world if r.world is not None else '?'}" for r in runs]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths = []

    def save(fig, name):
        if title:
            fig.suptitle(title)
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (run, name) in enumerate(zip(runs, names)):
        color = colors[i % len(colors)]
        steps, evals = run.data["steps"], run.data["evals"]
        if len(steps.get("loss", [])):
            ax.plot(steps["step"], steps["loss"], color=color, lw=1, label=f"{name} train")
        if len(evals.get("val_loss", [])):
            ax.plot(evals["step"], evals["val_loss"], color=color, ls="--", marker="o", ms=4, label=f"{name} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training and validation loss")
    if ax.lines:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no steps logged", ha="center", transform=ax.transAxes)
    save(fig, "loss.png")

    x = np.arange(len(runs))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs)), 5))
    heights = [r.epoch_time if r.outcome == "ok" and r.epoch_time else 0.0 for r in runs]
    ax.set_ylim(0, 1.12 * max([1e-3] + heights))
    ax.bar(x, heights, color=[colors[i % len(colors)] for i in range(len(runs))])
    for i, (run, h) in enumerate(zip(runs, heights)):
        text = format_seconds(h) if h else {"oom": "OOM", "error": "error"}.get(run.outcome, "incomplete")
        ax.text(i, h, text, ha="center", va="bottom", fontsize="small")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("mean epoch time (s)")
    ax.set_title("Per-epoch training time")
    save(fig, "epoch_time.png")

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs)), 5))
    categories = ["weights", "gradients", "optimizer", "activations", "workspace"]
    for run in runs:
        for column in run.data["ranks"]:
            if column.startswith("peak_") and column != "peak_memory" and column[5:] not in categories:
                categories.append(column[5:])
    gib = float(1 << 30)
    bottoms = np.zeros(len(runs))
    for k, cat in enumerate(categories):
        values = np.zeros(len(runs))
        for i, run in enumerate(runs):
            ranks = run.data["ranks"]
            if len(ranks.get("peak_memory", [])) and f"peak_{cat}" in ranks:
                top = int(np.argmax(ranks["peak_memory"]))  # the rank that needed the most
                values[i] = float(ranks[f"peak_{cat}"][top]) / gib
        if values.any():
            ax.bar(x, values, bottom=bottoms, label=cat, color=colors[k % len(colors)])
            bottoms += values
    totals_only = np.array([r.peak / gib if r.peak and not len(r.data["ranks"].get("peak_memory", [])) else 0.0
                            for r in runs])
    if totals_only.any():  # runs without a /ranks table: their total only
        ax.bar(x, totals_only, bottom=bottoms, label="total (no /ranks)", color="0.6")
        bottoms += totals_only
    for i, run in enumerate(runs):
        if run.peak:
            ax.plot([i - 0.4, i + 0.4], [run.peak / gib] * 2, color="black", lw=1.5)
            ax.text(i, max(run.peak / gib, bottoms[i]), format_bytes(run.peak), ha="center", va="bottom",
                    fontsize="small")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
    ax.set_ylim(0, 1.12 * max([1e-3] + list(bottoms) + [(r.peak or 0) / gib for r in runs]))
    ax.set_ylabel("GiB (per rank, highest rank)")
    ax.set_title("Peak memory by category (black line: total peak)")
    if ax.patches:
        ax.legend(fontsize="small")
    save(fig, "memory.png")
    return paths


# ----------------------------------------------------------------------------- main

def default_plot_dir(metrics_path):
    run_dir = os.path.dirname(os.path.abspath(metrics_path))
    return os.path.join(os.path.dirname(run_dir), "plots")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Markdown tables and PNG plots from shardtune runs.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_FILE")
    parser.add_argument("--plots", metavar="DIR", help="directory for the PNGs (default: plots/ beside the first run)")
    parser.add_argument("--title", help="heading for the table and the plots")
    parser.add_argument("--no-plots", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    found, bad = [], []
    for arg in args.runs:
        try:
            found.append((arg, st_read.find_metrics_file(arg)))
        except st_read.MetricsFileError as e:
            bad.append((arg, str(e)))
    plot_dir = args.plots or (default_plot_dir(found[0][1]) if found else None)
    if plot_dir and not args.plots:
        # "report.py runs/*" also names runs/plots, our own output: skip it.
        bad = [(arg, e) for arg, e in bad if os.path.realpath(arg) != os.path.realpath(plot_dir)]
    if not found and not bad:
        bad.append(("report.py", "no run directories given"))
    if bad:
        for _, e in bad:
            print(f"report.py: error: {e}", file=sys.stderr)
        return 2

    runs = []
    for arg, path in found:
        try:
            runs.append(Run(st_read.read_run(path), arg))
        except st_read.MetricsFileError as e:
            print(f"report.py: error: {e}", file=sys.stderr)
            return 2
    print("\n".join(build_report(runs, args.title)))
    if not args.no_plots:
        paths = write_plots(runs, plot_dir, args.title)
        print()
        print("Plots: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
