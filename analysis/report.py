#!/usr/bin/env python3
"""Tables and plots from shardtune runs, in the form of the reference experiments (issue 7).

    python3 analysis/report.py runs/* [--plots DIR] [--title T] [--no-plots] [--strict]
    make report                       # the same over runs/*

Each argument is a run directory (holding metrics.h5), a metrics file, or a jobs/run_matrix.sh
table (runs/matrix_<exp>[_cpu].tsv). Anything else (runs/plots, runs/bench, stray files) is
skipped with a message on stderr; --strict makes such a path an error instead. Exit status 0,
or 2 when no readable run was given (or, with --strict, any path is not one).

Output (Markdown, on stdout), one section per experiment, then the other runs, then the
prediction check:

1. Experiments. A run belongs to experiment exp<N> by its run_id, exp<N>_<model>_<method>_
   <strategy>_<ranks> (jobs/matrix.sh: exp3_llama7b_qlora_zero3_4, exp1_cpu_full_tp_2); these
   tokens name its row (other exp<N>_... run_ids: model from the run_id, the rest from /summary).
   Per experiment a table in the reference form, one row per model, method, strategy and GPU
   count (matrix order: qlora, lora, full):

     | model | method | strategy | GPUs | per-epoch time | total run time | val loss | peak memory
     | predicted peak | predicted/measured |

   val loss is the final one; peak memory is per rank, the highest rank (/ranks/peak_memory;
   the summary's peak_memory is rank 0's); predicted peak is /summary predicted_peak (the
   planner's, max over ranks; else the max of /ranks/predicted_peak; "-" in files older than the
   planner). Out-of-memory rows read "OOM (phase)" with the memory limit, failed rows "error",
   unfinished ones "incomplete", each with a footnote. A run whose metrics.h5 still says
   "running" but which run_matrix.sh's table lists as OOM or FAILED (a rank other than 0 ran out
   of memory) is shown as such. Below the table:
   - "Speedup, <model> <method> <strategy>: S x from A to B GPUs (...; ideal B/A x), scaling
     efficiency E%", S = mean epoch time at A / at B over the fewest (A) and most (B) GPU counts
     that completed, E = S / (B/A); plus the per-rank peak memory at A and B. n/a, with the GPU
     counts that did not complete, when fewer than two did.
   - Where QLoRA and LoRA of one model and strategy both completed at a GPU count: a table of
     both peaks and QLoRA's reduction, 100 * (1 - QLoRA peak / LoRA peak) percent, with the
     mean per model (the reference: about 40% less).
   - Sequence packing (issue 19): a run is packed when its method token ends in "-packed"
     (jobs/matrix.sh: exp3_llama7b_lora-packed_zero3_4) or its /config says packing = true; its
     row reads "<method>, packed". Where a configuration completed both unpacked and packed at a
     GPU count: "Packing, <model> <method> <strategy>, G GPUs: per-epoch time A -> B (S x);
     padding P% -> Q% of computed tokens; val loss V -> W" (padding from /summary
     padding_fraction where the files have it).
2. Other runs (run_ids outside the experiments): the generic table, one row per run:
     | config | ranks | per-epoch time | total run time | val loss | val acc | peak memory |
   config is the run_id with a trailing rank-count token dropped ("llama7b-tp-np4" ->
   "llama7b-tp") plus (strategy, method); OOM / error / incomplete as above; one speedup line per
   configuration run at several rank counts. (With no experiment runs this is the whole table,
   without a heading.)
3. Predicted vs measured peak memory (when any run has predicted_peak): every completed run with
   both, the ratio predicted/measured, the deviation in percent and the worst rank's own
   deviation (/ranks/predicted_peak against /ranks/peak_memory); the worst absolute deviation,
   the runs over 5%, OOM runs' predictions against their memory limit, and the completed runs
   without a prediction.

Plots (PNG, into --plots DIR; default: "plots" beside the first run's directory, e.g. runs/plots,
which report.py skips when runs/* names it): over all runs, loss.png (train loss per step as a
line, val loss per evaluation as points, log scale), accuracy.png (validation accuracy per
evaluation, for labelled shards), epoch_time.png (mean epoch time per run), memory.png (peak memory per run, by
category, from the rank with the highest peak); per experiment, <exp>_epoch_time.png (per-epoch
time against GPUs per model/method/strategy, with ideal scaling), <exp>_memory.png (peak memory
by method, bars per GPU count, a panel per model, predicted peaks and OOMs marked) and
<exp>_loss.png (train and val loss, a panel per model, log scale). Legends name each run's
model, method, strategy and ranks and sit beside the axes, not over the data.
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
# Experiment runs (jobs/matrix.sh): exp<N>_<model>_<method>_<strategy>_<ranks>, e.g.
# exp3_llama7b_qlora_zero3_4; other exp<N>_... run_ids still belong to experiment <N>.
_EXP_RUN_ID = re.compile(r"^(?P<exp>exp\d+)_(?P<model>.+)_(?P<method>[^_]+)_(?P<strategy>[^_]+)_(?P<ranks>\d+)$", re.I)
_EXP_PREFIX = re.compile(r"^(?P<exp>exp\d+)[-_](?P<rest>.+)$", re.I)
EXPERIMENTS = {
    "exp1": "Experiment 1: full fine-tuning, Megatron tensor parallelism (tp = GPUs)",
    "exp2": "Experiment 2: FlanT5, ZeRO-3 + LoRA against full fine-tuning (ZeRO-3 and unsharded DDP), "
            "memory capped per GPU (memory_limit: 40 GiB, 40 MiB at CPU size)",
    "exp3": "Experiment 3: Llama, ZeRO-3 with QLoRA, LoRA and full fine-tuning",
}
METHOD_ORDER = {"qlora": 0, "lora": 1, "full": 2}
STRATEGY_ORDER = {"tp": 0, "zero3": 1, "ddp": 2}
QLORA_REFERENCE = 40.0   # QLoRA's peak-memory reduction against LoRA in the reference, percent
PREDICTION_TOLERANCE = 5.0  # predicted vs measured peak, percent


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


def _positive_column(table, column):
    """The positive finite values of a /ranks column, or [] (column absent)."""
    return [v for v in (_num(x) for x in table.get(column, [])) if v is not None and v > 0]


def _int(value):
    v = _num(value)
    return int(v) if v is not None else None


OUTCOME_WORDS = {"oom": "OOM", "error": "error", "preempted": "preempted", "interrupted": "interrupted"}


def outcome_word(outcome):
    """How a table cell names a run that did not complete: OOM, error, preempted (stopped by
    SIGTERM/SIGUSR1 with a checkpoint: a resubmission continues it), interrupted (Ctrl-C), or
    incomplete (still running, or killed)."""
    return OUTCOME_WORDS.get(outcome, "incomplete")


def legend_name(run):
    """What a plot's legend calls a run: model, method, strategy and ranks (run_id for the rest)."""
    cfg = run.data.get("config", {})
    model = str(cfg.get("model") or "")
    model = os.path.basename(os.path.normpath(model)) if model else f"random-init {cfg.get('arch') or 'model'}"
    ranks = f"{run.world} rank{'' if run.world == 1 else 's'}" if run.world is not None else "? ranks"
    tp = f" tp{run.tp}" if run.tp and run.tp > 1 else ""
    return f"{run.run_id}: {model} {run.method or '?'} {run.strategy or '?'}{tp}, {ranks}"


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
        # Peak memory per rank, the highest rank: /ranks when written (the summary's is rank 0's),
        # else the summary, else the step log (a run that never finished).
        self.rank_peaks = _positive_column(data["ranks"], "peak_memory")
        self.peak = max(self.rank_peaks) if self.rank_peaks else None
        if not self.peak:
            self.peak = _num(s.get("peak_memory")) or None
        if not self.peak:
            values = [v for v in (_num(x) for x in data["steps"].get("mem_peak", [])) if v is not None]
            self.peak = max(values) if values else None
        # The planner's prediction (absent from files older than the planner): summary
        # predicted_peak (max over ranks) and /ranks/predicted_peak (per rank).
        self.rank_predicted = _positive_column(data["ranks"], "predicted_peak")
        self.predicted = _num(s.get("predicted_peak"))
        if not self.predicted or self.predicted <= 0:
            self.predicted = max(self.rank_predicted) if self.rank_predicted else None
        self.matrix_note = None
        self.packed = str(_config_value(c, "packing") or "").lower() in ("true", "1", "yes", "on")
        self._parse_experiment(c)

    def _parse_experiment(self, config):
        """experiment, model, method, strategy and GPU count from an experiment run_id."""
        self.experiment = self.model = None
        self.gpus = self.world
        m = _EXP_RUN_ID.match(str(self.run_id))
        if m:  # the matrix scheme, exp<N>_<model>_<method>_<strategy>_<ranks>: the row it stands for
            self.experiment, self.model = m.group("exp").lower(), m.group("model")
            self.method, self.strategy = m.group("method"), m.group("strategy")
            if self.method.lower().endswith("-packed"):  # the matrix's packing = true twin
                self.method, self.packed = self.method[: -len("-packed")], True
            self.gpus = self.world or int(m.group("ranks"))
            return
        m = _EXP_PREFIX.match(str(self.run_id))
        if m:  # a hand-named experiment run ("exp1_llama7b_tp4"): the summary says what ran
            self.experiment = m.group("exp").lower()
            self.model = config_label(m.group("rest"), self.world, self.tp, self.dp)
            self.method = self.method or _config_value(config, "method") or "?"
            self.strategy = self.strategy or "?"

    def apply_matrix_result(self, result):
        """A jobs/run_matrix.sh result for a run metrics.h5 still calls "running": when one rank
        of a multi-rank run ran out of memory, rank 0's file can stay at "running"."""
        if self.outcome != "running" or not result:
            return
        if result == "OOM":
            self.outcome = "oom"
            self.matrix_note = ("metrics.h5 still says 'running'; jobs/run_matrix.sh recorded exit 3 "
                                "(out of memory, on a rank other than 0)")
        elif result.startswith("FAILED"):
            self.outcome = "error"
            self.matrix_note = f"metrics.h5 still says 'running'; jobs/run_matrix.sh recorded {result}"

    def method_cell(self):
        return f"{self.method}, packed" if self.packed else str(self.method)

    def config_name(self):
        return " ".join(str(x) for x in (self.model, self.method_cell(), self.strategy))

    def final_val_loss(self):
        v = _num(self.summary.get("final_val_loss"))
        if v is None:
            evals, epochs = self.data["evals"], self.data["epochs"]
            series = evals.get("val_loss", []) if len(evals.get("val_loss", [])) else epochs.get("val_loss", [])
            finite = [x for x in (_num(y) for y in series) if x is not None]
            v = finite[-1] if finite else None
        return v

    def prediction_ratio(self):
        """predicted / measured peak (max over ranks), for a completed run with both."""
        if self.outcome != "ok" or not self.predicted or not self.peak:
            return None
        return self.predicted / self.peak

    def worst_rank_deviation(self):
        """(|predicted/measured - 1|, rank) of the rank that deviates most, from /ranks."""
        if self.outcome != "ok" or not self.rank_predicted or not self.rank_peaks:
            return None
        pred = self.data["ranks"]["predicted_peak"]
        meas = self.data["ranks"]["peak_memory"]
        ranks = self.data["ranks"].get("rank", range(len(meas)))
        worst = None
        for r, p, m in zip(ranks, pred, meas):
            p, m = _num(p), _num(m)
            if p and m and p > 0 and m > 0:
                dev = p / m - 1
                if worst is None or abs(dev) > abs(worst[0]):
                    worst = (dev, int(r))
        return worst

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
        if self.matrix_note:
            return self.matrix_note
        if self.outcome == "oom":
            text = f"out of memory in phase '{s.get('oom_phase') or '?'}' asking for {format_bytes(s.get('oom_bytes'))}"
            if s.get("oom_category"):
                text += f" ({s['oom_category']})"
            if _num(s.get("memory_limit")):
                text += f"; memory limit {format_bytes(s.get('memory_limit'))}"
            return text
        if self.outcome == "error":
            return f"failed: {s.get('error') or 'no message recorded'}"
        if self.outcome in ("preempted", "interrupted"):
            done, total = s.get("steps_completed"), s.get("total_steps")
            where = f"after step {done}" + (f" of {total}" if total else "") if done is not None else "early"
            how = ("by SIGTERM/SIGUSR1 with a checkpoint (resume = auto continues it; jobs/slurm_train.sh requeues "
                   "itself)" if self.outcome == "preempted" else "by Ctrl-C (SIGINT)")
            return f"{self.outcome} {where}, {how}; {format_seconds(_num(s.get('total_time')))} so far"
        if self.outcome != "ok":
            steps = len(self.data["steps"].get("step", []))
            epochs = len(self.data["epochs"].get("epoch", []))
            return f"outcome '{self.outcome}': still running or killed; {steps} steps, {epochs} epochs logged"
        return None


# ----------------------------------------------------------------------------- table

class Notes:
    """Markdown footnotes numbered across the whole report."""

    def __init__(self):
        self.count = 0
        self.pending = []

    def mark(self, run):
        text = run.footnote()
        if not text:
            return ""
        self.count += 1
        self.pending.append(f"[^{self.count}]: {run.run_id}: {text}")
        return f"[^{self.count}]"

    def flush(self):
        """The footnotes since the last flush, preceded by a blank line (or nothing)."""
        lines, self.pending = ([""] + self.pending if self.pending else []), []
        return lines


def build_report(runs, title=None):
    """The Markdown report as a list of lines: one section per experiment (table, speedup and
    scaling efficiency, QLoRA vs LoRA memory), the generic table of the other runs, and the
    predicted vs measured peak memory."""
    runs = sorted(runs, key=Run.sort_key)
    experiment_runs = [r for r in runs if r.experiment]
    other = [r for r in runs if not r.experiment]
    notes = Notes()
    lines = []
    if title:
        lines += [f"## {title}", ""]
    for exp in sorted({r.experiment for r in experiment_runs}, key=_natural_key):
        lines += experiment_section(exp, [r for r in experiment_runs if r.experiment == exp], notes) + [""]
    if other:
        if experiment_runs:
            lines += ["### Other runs", ""]
        lines += generic_table(other, notes) + [""]
    prediction = prediction_section(runs)
    if prediction:
        lines += prediction + [""]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def generic_table(runs, notes):
    """One row per run: config, ranks, times, val loss and accuracy, peak memory."""
    lines = ["| config | ranks | per-epoch time | total run time | val loss | val acc | peak memory |",
             "|---|---|---|---|---|---|---|"]
    for run in runs:
        mark = notes.mark(run)
        if run.outcome == "ok":
            cells = [format_seconds(run.epoch_time), format_seconds(run.total_time), run.val_loss_cell(),
                     run.val_acc_cell()]
        else:
            word = outcome_word(run.outcome)
            cells = [word + mark] + [word] * 3
        lines.append("| " + " | ".join([run.label, run.ranks_cell()] + cells + [format_bytes(run.peak)]) + " |")
    speedups = speedup_lines(runs)
    if speedups:
        lines += [""] + speedups
    return lines + notes.flush()


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


# ----------------------------------------------------------------------------- experiments

def _natural_key(text):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", str(text)) if t]


def experiment_key(run):
    """Matrix order: model, method (qlora, lora, full), strategy, GPU count."""
    return (_natural_key(run.model), METHOD_ORDER.get(str(run.method).lower(), 9), str(run.method), run.packed,
            STRATEGY_ORDER.get(str(run.strategy).lower(), 9), str(run.strategy),
            run.gpus if run.gpus is not None else 1 << 30, str(run.run_id))


EXPERIMENT_HEADER = ("| model | method | strategy | GPUs | per-epoch time | total run time | val loss "
                     "| peak memory | predicted peak | predicted/measured |")


def experiment_row(run, notes):
    mark = notes.mark(run)
    gpus = str(run.gpus) if run.gpus is not None else "?"
    predicted = format_bytes(run.predicted)
    if run.outcome == "ok":
        val = run.final_val_loss()
        ratio = run.prediction_ratio()
        cells = [format_seconds(run.epoch_time) + mark, format_seconds(run.total_time),
                 f"{val:.3f}" if val is not None else "-", format_bytes(run.peak), predicted,
                 f"{ratio:.3f}" if ratio is not None else "-"]
    elif run.outcome == "oom":
        phase = run.summary.get("oom_phase")
        limit = _num(run.summary.get("memory_limit"))
        cells = [(f"OOM ({phase})" if phase else "OOM") + mark, "OOM", "-",
                 f"OOM (limit {format_bytes(limit)})" if limit else "OOM", predicted, "-"]
    else:
        word = outcome_word(run.outcome)
        cells = [word + mark, word, "-", "-", predicted, "-"]
    return "| " + " | ".join([str(run.model), run.method_cell(), str(run.strategy), gpus] + cells) + " |"


def experiment_section(exp, runs, notes):
    runs = sorted(runs, key=experiment_key)
    heading = EXPERIMENTS.get(exp, f"Experiment {exp[3:]}")
    lines = [f"### {heading} ({exp})", "", EXPERIMENT_HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [experiment_row(run, notes) for run in runs]
    lines.append("")
    lines.append("Peak memory: per rank, the highest rank; predicted peak: the planner's, where metrics.h5 "
                 "has it.")
    scaling = scaling_lines(runs)
    if scaling:
        lines += [""] + scaling
    qlora = qlora_lines(runs)
    if qlora:
        lines += [""] + qlora
    packing = packing_lines(runs)
    if packing:
        lines += [""] + packing
    return lines + notes.flush()


def packing_lines(runs):
    """Per (model, method, strategy, GPUs) completed both unpacked and packed: the per-epoch
    times side by side, the padding fractions and the final validation losses."""
    pairs = {}
    for run in runs:
        if run.outcome == "ok" and run.epoch_time and run.gpus is not None:
            pairs.setdefault((str(run.model), str(run.method), str(run.strategy), run.gpus), {})[run.packed] = run
    lines = []
    for (model, method, strategy, gpus), pair in sorted(pairs.items(), key=lambda kv: (
            _natural_key(kv[0][0]), METHOD_ORDER.get(kv[0][1].lower(), 9), kv[0][2], kv[0][3])):
        if False not in pair or True not in pair:
            continue
        plain, packed = pair[False], pair[True]
        text = (f"Packing, {model} {method} {strategy}, {gpus} GPUs: per-epoch time "
                f"{format_seconds(plain.epoch_time)} -> {format_seconds(packed.epoch_time)} "
                f"({plain.epoch_time / packed.epoch_time:.2f}x)")
        pads = [_num(r.summary.get("padding_fraction")) for r in (plain, packed)]
        if all(p is not None for p in pads):
            text += f"; padding {100 * pads[0]:.1f}% -> {100 * pads[1]:.1f}% of computed tokens"
        vals = [r.final_val_loss() for r in (plain, packed)]
        if all(v is not None for v in vals):
            text += f"; val loss {vals[0]:.3f} -> {vals[1]:.3f}"
        lines.append(text)
    return lines


def _mean(values):
    return sum(values) / len(values)


def scaling(runs):
    """Per configuration (model, method, strategy) run at several GPU counts: a dict with the
    speedup of the per-epoch time from the fewest to the most GPUs that completed, the ideal
    speedup, the scaling efficiency (speedup / ideal) and the peak memory at both ends.
    None values where fewer than two GPU counts completed."""
    groups = {}
    for run in runs:
        if run.gpus is not None:
            groups.setdefault(run.config_name(), []).append(run)
    result = []
    for name, group in groups.items():
        if len({r.gpus for r in group}) < 2:
            continue
        times, peaks = {}, {}
        for r in group:
            if r.outcome == "ok" and r.epoch_time:
                times.setdefault(r.gpus, []).append(r.epoch_time)
                if r.peak:
                    peaks.setdefault(r.gpus, []).append(r.peak)
        entry = {"config": name, "speedup": None, "efficiency": None,
                 "not_completed": {r.gpus: r.outcome for r in sorted(group, key=lambda r: r.gpus)
                                   if r.gpus not in times}}
        if len(times) >= 2:
            lo, hi = min(times), max(times)
            t_lo, t_hi = _mean(times[lo]), _mean(times[hi])
            entry.update(lo=lo, hi=hi, time_lo=t_lo, time_hi=t_hi, speedup=t_lo / t_hi, ideal=hi / lo,
                         efficiency=(t_lo / t_hi) / (hi / lo),
                         peak_lo=_mean(peaks[lo]) if lo in peaks else None,
                         peak_hi=_mean(peaks[hi]) if hi in peaks else None)
        result.append(entry)
    return result


def scaling_lines(runs):
    lines = []
    for e in scaling(runs):
        missing = e["not_completed"]
        missing_text = ("; not completed at " + ", ".join(
            f"{g} GPUs ({outcome_word(o)})"
            for g, o in missing.items())) if missing else ""
        if e["speedup"] is None:
            lines.append(f"Speedup, {e['config']}: n/a (completed at fewer than two GPU counts{missing_text})")
            continue
        text = (f"Speedup, {e['config']}: {e['speedup']:.2f}x from {e['lo']} to {e['hi']} GPUs (per-epoch time "
                f"{format_seconds(e['time_lo'])} -> {format_seconds(e['time_hi'])}; ideal {e['ideal']:.2f}x), "
                f"scaling efficiency {100 * e['efficiency']:.1f}%")
        if e["peak_lo"] and e["peak_hi"]:
            text += (f"; peak memory per rank {format_bytes(e['peak_lo'])} -> {format_bytes(e['peak_hi'])} "
                     f"({e['peak_hi'] / e['peak_lo']:.2f}x)")
        lines.append(text + missing_text)
    return lines


def qlora_pairs(runs):
    """(model, strategy, GPUs, LoRA run, QLoRA run) where both finished with a peak."""
    done = {}
    for r in runs:
        if r.outcome == "ok" and r.peak and str(r.method).lower() in ("lora", "qlora"):
            done.setdefault((str(r.method).lower(), r.model, r.strategy, r.gpus), r)
    pairs = []
    for (method, model, strategy, gpus), lora in done.items():
        qlora = done.get(("qlora", model, strategy, gpus))
        if method == "lora" and qlora:
            pairs.append((model, strategy, gpus, lora, qlora))
    return sorted(pairs, key=lambda p: (_natural_key(p[0]), str(p[1]), p[2] if p[2] is not None else 1 << 30))


def qlora_reduction(lora, qlora):
    """QLoRA's peak-memory reduction against LoRA, percent (positive: QLoRA needs less)."""
    return 100.0 * (1.0 - qlora.peak / lora.peak)


def qlora_lines(runs):
    methods = {str(r.method).lower() for r in runs}
    if not {"lora", "qlora"} <= methods:
        return []
    lines = [f"QLoRA vs LoRA peak memory (reference: about {QLORA_REFERENCE:.0f}% less with QLoRA):"]
    pairs = qlora_pairs(runs)
    if not pairs:
        return lines + ["", "n/a: no model and GPU count where both QLoRA and LoRA finished"]
    lines += ["", "| model | strategy | GPUs | LoRA peak | QLoRA peak | QLoRA reduction | LoRA val loss "
                  "| QLoRA val loss |", "|---|---|---|---|---|---|---|---|"]
    by_model = {}
    for model, strategy, gpus, lora, qlora in pairs:
        red = qlora_reduction(lora, qlora)
        by_model.setdefault((model, strategy), []).append(red)
        vl, vq = lora.final_val_loss(), qlora.final_val_loss()
        lines.append(f"| {model} | {strategy} | {gpus} | {format_bytes(lora.peak)} | {format_bytes(qlora.peak)} "
                     f"| {red:.1f}% | {f'{vl:.3f}' if vl is not None else '-'} "
                     f"| {f'{vq:.3f}' if vq is not None else '-'} |")
    lines.append("")
    for (model, strategy), reds in by_model.items():
        lines.append(f"QLoRA reduction, {model} {strategy}: {_mean(reds):.1f}% mean over {len(reds)} GPU "
                     f"count{'s' if len(reds) != 1 else ''} (reference about {QLORA_REFERENCE:.0f}%)")
    return lines


# ----------------------------------------------------------------------------- predicted vs measured

def prediction_section(runs):
    """Predicted (planner) against measured peak memory per rank, for every completed run with
    both; [] when no run has a prediction."""
    if not any(r.predicted for r in runs):
        return []
    lines = ["### Predicted vs measured peak memory", "",
             "Completed runs with both figures (per rank, the highest rank; worst rank: the rank whose "
             "own prediction deviates most, from /ranks/predicted_peak).", "",
             "| run | GPUs | predicted | measured | predicted/measured | deviation | worst rank "
             f"| over {PREDICTION_TOLERANCE:.0f}% |", "|---|---|---|---|---|---|---|---|"]
    worst, over = None, []
    compared = [r for r in sorted(runs, key=lambda r: (r.experiment or "~", experiment_key(r)))
                if r.prediction_ratio() is not None]
    for run in compared:
        ratio = run.prediction_ratio()
        dev = 100.0 * (ratio - 1.0)
        rank_dev = run.worst_rank_deviation()
        candidates = [(abs(dev), f"{run.run_id}")]
        rank_cell = "-"
        if rank_dev:
            rank_cell = f"{100 * rank_dev[0]:+.1f}% (rank {rank_dev[1]})"
            candidates.append((abs(100 * rank_dev[0]), f"{run.run_id}, rank {rank_dev[1]}"))
        top = max(candidates, key=lambda c: c[0])
        exceeded = round(top[0], 9) > PREDICTION_TOLERANCE
        if exceeded:
            over.append(run.run_id)
        if worst is None or top[0] > worst[0]:
            worst = top
        lines.append(f"| {run.run_id} | {run.gpus if run.gpus is not None else '?'} | {format_bytes(run.predicted)} "
                     f"| {format_bytes(run.peak)} | {ratio:.3f} | {dev:+.1f}% | {rank_cell} "
                     f"| {'yes' if exceeded else 'no'} |")
    lines.append("")
    if worst:
        lines.append(f"Worst absolute deviation: {worst[0]:.1f}% ({worst[1]}).")
        lines.append(f"Over {PREDICTION_TOLERANCE:.0f}%: " + (", ".join(over) if over else "none") + ".")
    else:
        lines.append("No completed run has both a predicted and a measured peak.")
    ooms = [r for r in runs if r.outcome == "oom" and r.predicted]
    for r in ooms:
        limit = _num(r.summary.get("memory_limit"))
        if limit:
            verdict = "the prediction is over the limit" if r.predicted > limit else \
                "the prediction is within the limit: the planner missed this OOM"
            lines.append(f"OOM {r.run_id}: predicted {format_bytes(r.predicted)} against the limit "
                         f"{format_bytes(limit)} ({verdict}).")
    missing = [str(r.run_id) for r in runs if r.outcome == "ok" and r.peak and not r.predicted]
    if missing:
        lines.append(f"No predicted_peak (older metrics.h5): {', '.join(missing)}.")
    return lines


# ----------------------------------------------------------------------------- plots

def write_plots(runs, out_dir, title=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

    runs = sorted(runs, key=Run.sort_key)
    os.makedirs(out_dir, exist_ok=True)
    names = [legend_name(r) for r in runs]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths = []

    def save(fig, name):
        if title:
            fig.suptitle(title)
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)

    def legend_outside(ax):
        """The legend right of the axes, never over the data."""
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)

    # loss.png: train loss per step (thin line) and val loss per evaluation (points), log scale so
    # that the later steps are not flattened by the first ones
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, (run, name) in enumerate(zip(runs, names)):
        color = colors[i % len(colors)]
        steps, evals = run.data["steps"], run.data["evals"]
        loss = np.asarray(steps.get("loss", []), dtype=float)
        if len(loss):
            ok = np.isfinite(loss) & (loss > 0)
            ax.plot(np.asarray(steps["step"])[ok], loss[ok], color=color, lw=0.8, alpha=0.8, label=f"{name}: train")
        val = np.asarray(evals.get("val_loss", []), dtype=float)
        if len(val):
            ok = np.isfinite(val) & (val > 0)
            ax.plot(np.asarray(evals["step"])[ok], val[ok], color=color, ls="none", marker="o", ms=5,
                    markeredgecolor="black", markeredgewidth=0.5, label=f"{name}: validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per target token, log scale)")
    ax.set_title("Training loss per step (line) and validation loss per evaluation (points)")
    if ax.lines:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
        legend_outside(ax)
    else:
        ax.text(0.5, 0.5, "no steps logged", ha="center", transform=ax.transAxes)
    save(fig, "loss.png")

    # accuracy.png: validation accuracy per evaluation (the task's metric, for labelled shards)
    with_acc = [i for i, r in enumerate(runs)
                if np.isfinite(np.asarray(r.data["evals"].get("val_accuracy", []), dtype=float)).any()]
    if with_acc:
        fig, ax = plt.subplots(figsize=(9, 5))
        for i in with_acc:  # the same colour per run as in loss.png
            run, name = runs[i], names[i]
            evals = run.data["evals"]
            acc = 100.0 * np.asarray(evals["val_accuracy"], dtype=float)
            ok = np.isfinite(acc)
            ax.plot(np.asarray(evals["step"])[ok], acc[ok], color=colors[i % len(colors)], ls=":", lw=1,
                    marker="o", ms=5, markeredgecolor="black", markeredgewidth=0.5, label=name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_ylim(0, 100)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.set_title("Validation accuracy per evaluation")
        legend_outside(ax)
        save(fig, "accuracy.png")

    x = np.arange(len(runs))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs)), 5))
    heights = [r.epoch_time if r.outcome == "ok" and r.epoch_time else 0.0 for r in runs]
    ax.set_ylim(0, 1.12 * max([1e-3] + heights))
    ax.bar(x, heights, color=[colors[i % len(colors)] for i in range(len(runs))])
    for i, (run, h) in enumerate(zip(runs, heights)):
        text = format_seconds(h) if h else "no full epoch" if run.outcome == "ok" else outcome_word(run.outcome)
        ax.text(i, h, text, ha="center", va="bottom", fontsize="small")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("mean epoch time (s)")
    ax.set_title("Per-epoch training time (evaluations excluded)")
    save(fig, "epoch_time.png")

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(runs)), 5))
    categories = ["weights", "gradients", "optimizer", "activations", "communication", "workspace"]
    for run in runs:
        for column in run.data["ranks"]:
            if column.startswith("peak_") and column != "peak_memory" and column[5:] not in categories:
                categories.append(column[5:])
    # one unit for the axis: GiB, or MiB when every run stays below 1 GiB
    unit = "GiB" if max([0] + [r.peak or 0 for r in runs]) >= (1 << 30) else "MiB"
    gib = float(1 << 30) if unit == "GiB" else float(1 << 20)
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
    ax.set_ylabel(f"peak memory ({unit}, per rank: the highest rank)")
    ax.set_title("Peak memory by category (black line: total peak)")
    if ax.patches:
        legend_outside(ax)
    save(fig, "memory.png")
    return paths


def write_experiment_plots(runs, out_dir):
    """Per experiment: <exp>_epoch_time.png (per-epoch time against GPUs, one line per model,
    method and strategy, dotted: ideal scaling from the fewest GPUs), <exp>_memory.png (peak
    memory per rank by method, bars per GPU count, one panel per model; OOM bars hatched at the
    memory limit, black ticks: predicted peaks) and <exp>_loss.png (train loss per step, val
    loss per eval, one panel per model). Returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(out_dir, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    gib = float(1 << 30)
    paths = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)

    experiments = sorted({r.experiment for r in runs if r.experiment}, key=_natural_key)
    for exp in experiments:
        group = sorted([r for r in runs if r.experiment == exp], key=experiment_key)
        configs = list(dict.fromkeys(r.config_name() for r in group))
        models = list(dict.fromkeys(str(r.model) for r in group))
        gpu_counts = sorted({r.gpus for r in group if r.gpus is not None})
        title = EXPERIMENTS.get(exp, f"Experiment {exp[3:]}")
        unit, scale = ("GiB", gib) if max([r.peak or 0 for r in group] + [0]) >= gib else ("MiB", float(1 << 20))

        # per-epoch time against GPUs
        fig, ax = plt.subplots(figsize=(8, 5))
        for k, name in enumerate(configs):
            done = sorted((r.gpus, r.epoch_time) for r in group
                          if r.config_name() == name and r.outcome == "ok" and r.epoch_time and r.gpus)
            if not done:
                continue
            color = colors[k % len(colors)]
            xs, ys = zip(*done)
            ax.plot(xs, ys, marker="o", color=color, label=name)
            if len(xs) > 1:
                ax.plot(xs, [ys[0] * xs[0] / x for x in xs], color=color, ls=":", lw=1)
            for r in group:  # a GPU count that did not complete: an x at the last completed time
                if r.config_name() == name and r.outcome != "ok" and r.gpus:
                    ax.plot([r.gpus], [ys[-1]], marker="x", ms=8, color=color, ls="none")
                    ax.annotate("OOM" if r.outcome == "oom" else r.outcome, (r.gpus, ys[-1]), color=color,
                                fontsize="small", ha="center", va="bottom", xytext=(0, 5),
                                textcoords="offset points")
        if gpu_counts:
            ax.set_xscale("log", base=2)
            ax.set_xticks(gpu_counts)
            ax.set_xticklabels([str(g) for g in gpu_counts])
        ax.margins(y=0.12)
        ax.set_xlabel("GPUs (ranks)")
        ax.set_ylabel("per-epoch training time (s)")
        ax.set_title(f"{exp}: per-epoch time (dotted: ideal scaling; x: not completed)")
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no completed run", ha="center", transform=ax.transAxes)
        fig.suptitle(title, fontsize="medium")
        save(fig, f"{exp}_epoch_time.png")

        # peak memory by method, bars per GPU count, one panel per model
        fig, axes = plt.subplots(1, len(models), figsize=(max(6, 5 * len(models)), 5), squeeze=False)
        for ax, model in zip(axes[0], models):
            mruns = [r for r in group if str(r.model) == model]
            mconfigs = list(dict.fromkeys(f"{r.method} {r.strategy}" for r in mruns))
            width = 0.8 / max(1, len(mconfigs))
            x = np.arange(len(gpu_counts))
            top = 0.0
            for k, cfg in enumerate(mconfigs):
                for r in mruns:
                    if f"{r.method} {r.strategy}" != cfg or r.gpus not in gpu_counts:
                        continue
                    xi = gpu_counts.index(r.gpus) - 0.4 + width * (k + 0.5)
                    color = colors[k % len(colors)]
                    label = cfg if cfg not in ax.get_legend_handles_labels()[1] else None
                    limit = _num(r.summary.get("memory_limit"))
                    if r.outcome == "ok" and r.peak:
                        h = r.peak / scale
                        ax.bar(xi, h, width, color=color, label=label)
                    elif r.outcome == "oom":
                        h = limit / scale if limit else 0.0
                        ax.bar(xi, h, width, color="white", edgecolor=color, hatch="//", label=label)
                        ax.text(xi, h, "OOM", ha="center", va="bottom", fontsize="x-small")
                    else:
                        h = 0.0
                        ax.text(xi, 0, r.outcome, ha="center", va="bottom", fontsize="x-small", rotation=90)
                    if r.predicted:
                        ax.plot([xi - width / 2, xi + width / 2], [r.predicted / scale] * 2, color="black", lw=2)
                        h = max(h, r.predicted / scale)
                    top = max(top, h)
            ax.set_xticks(x)
            ax.set_xticklabels([str(g) for g in gpu_counts])
            ax.set_xlim(-0.5, len(gpu_counts) - 0.5)
            ax.set_xlabel("GPUs")
            ax.set_ylabel(f"peak memory per rank ({unit})")
            ax.set_ylim(0, 1.15 * top if top else 1)
            ax.set_title(model)
            if ax.patches:
                ax.legend(fontsize="small")
        fig.suptitle(f"{title}\npeak memory by method (black: predicted; hatched: OOM at the limit)",
                     fontsize="medium")
        save(fig, f"{exp}_memory.png")

        # loss curves, one panel per model
        fig, axes = plt.subplots(1, len(models), figsize=(max(6, 6 * len(models)), 5), squeeze=False)
        for ax, model in zip(axes[0], models):
            k = 0
            for r in group:
                if str(r.model) != model:
                    continue
                steps, evals = r.data["steps"], r.data["evals"]
                color = colors[k % len(colors)]
                name = f"{r.method} {r.strategy} @{r.gpus}"
                drew = False
                if len(steps.get("loss", [])):
                    ax.plot(steps["step"], steps["loss"], color=color, lw=1, label=f"{name} train")
                    drew = True
                if len(evals.get("val_loss", [])):
                    ax.plot(evals["step"], evals["val_loss"], color=color, ls="none", marker="o", ms=4,
                            markeredgecolor="black", markeredgewidth=0.5, label=f"{name} val")
                    drew = True
                k += drew
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("loss (nats per target token, log scale)")
            ax.set_title(model)
            if ax.lines:
                ax.set_yscale("log")
                ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
            else:
                ax.text(0.5, 0.5, "no steps logged", ha="center", transform=ax.transAxes)
        fig.suptitle(f"{title}\ntrain loss per step (lines), val loss per evaluation (points)", fontsize="medium")
        save(fig, f"{exp}_loss.png")
    return paths


# ----------------------------------------------------------------------------- main

def default_plot_dir(metrics_path):
    run_dir = os.path.dirname(os.path.abspath(metrics_path))
    return os.path.join(os.path.dirname(run_dir), "plots")


def read_matrix_results(paths):
    """{run_id: result} from jobs/run_matrix.sh tables (runs/matrix_<exp>[_cpu].tsv: run_id, ranks,
    parallel, deck, result, seconds), the newest file last so that it wins."""
    results = {}
    for path in sorted(set(paths), key=lambda p: (os.path.getmtime(p), p)):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                header = f.readline().rstrip("\n").split("\t")
                if "run_id" not in header or "result" not in header:
                    continue
                i, j = header.index("run_id"), header.index("result")
                for line in f:
                    cells = line.rstrip("\n").split("\t")
                    if len(cells) > max(i, j) and cells[i]:
                        results[cells[i]] = cells[j]
        except OSError:
            continue
    return results


def _is_matrix_table(path):
    name = os.path.basename(path)
    return os.path.isfile(path) and name.startswith("matrix_") and name.endswith(".tsv")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Markdown tables and PNG plots from shardtune runs.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_FILE")
    parser.add_argument("--plots", metavar="DIR", help="directory for the PNGs (default: plots/ beside the first run)")
    parser.add_argument("--title", help="heading for the table and the plots")
    parser.add_argument("--no-plots", action="store_true", help="print the table only")
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 when any path is not a readable run (default: skip it with a message)")
    parser.add_argument("--predicted", metavar="BIN",
                        help="also print the planner's predicted 1-8 GPU tables (analysis/predicted_tables.py) of the "
                             "experiments among the runs, beside their measured epoch times, using this shardtune binary")
    parser.add_argument("--predicted-gpu", default="a100-40gb",
                        help="GPU kind of the predicted tables (default a100-40gb, the reference experiments')")
    parser.add_argument("--predicted-seq-len", type=int, default=None, metavar="L",
                        help="row length for decks whose shards do not exist here (default: such rows show plan's error)")
    args = parser.parse_args(argv)

    runs, bad, tables = [], [], []
    for arg in args.runs:
        if _is_matrix_table(arg):  # runs/matrix_exp1_cpu.tsv: jobs/run_matrix.sh's results
            tables.append(arg)
            continue
        try:
            runs.append(Run(st_read.read_run(arg), arg))
        except st_read.MetricsFileError as e:
            bad.append((arg, str(e)))
        except (OSError, KeyError, ValueError, TypeError, IndexError) as e:  # an HDF5 file of another layout
            bad.append((arg, f"{arg}: not a readable shardtune metrics file ({type(e).__name__}: {e})"))
    plot_dir = args.plots or (default_plot_dir(runs[0].data["path"]) if runs else None)
    if plot_dir and not args.plots:
        # "report.py runs/*" also names runs/plots, our own output: skip it without a word.
        bad = [(arg, e) for arg, e in bad if os.path.realpath(arg) != os.path.realpath(plot_dir)]
    if not runs or (bad and args.strict):
        for _, e in bad:
            print(f"report.py: error: {e}", file=sys.stderr)
        if not runs:
            print(f"report.py: error: no readable run among the {len(args.runs)} path(s) given (a run is a "
                  "directory holding metrics.h5, written by shardtune train or jobs/run_matrix.sh)", file=sys.stderr)
        return 2
    for _, e in bad:
        print(f"report.py: skipping {e}", file=sys.stderr)

    # The run_matrix.sh tables named, and those beside the runs (runs/matrix_*.tsv).
    for run in runs:
        parent = os.path.dirname(os.path.dirname(os.path.abspath(run.data["path"])))
        try:
            tables += [os.path.join(parent, n) for n in os.listdir(parent) if _is_matrix_table(os.path.join(parent, n))]
        except OSError:
            pass
    matrix = read_matrix_results(os.path.abspath(t) for t in tables)
    for run in runs:
        run.apply_matrix_result(matrix.get(str(run.run_id)))

    print("\n".join(build_report(runs, args.title)))
    if args.predicted:
        import predicted_tables

        exps = sorted({r.experiment for r in runs if r.experiment}, key=_natural_key)
        if not exps:
            print("\n(--predicted: no experiment runs (exp<N>_... run ids) among the runs)")
        for exp in exps:
            members = [r for r in runs if r.experiment == exp]
            runs_dir = os.path.dirname(os.path.dirname(os.path.abspath(members[0].data["path"])))
            print("\n".join(predicted_tables.tables(args.predicted, [exp], gpu=args.predicted_gpu, runs=runs_dir,
                                                     seq_len=args.predicted_seq_len)))
    if not args.no_plots:
        paths = write_plots(runs, plot_dir, args.title) + write_experiment_plots(runs, plot_dir)
        print()
        print("Plots: " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
