#!/usr/bin/env python3
"""Follow a shardtune run while it trains: the last steps, the evaluations, progress and ETA.

    python3 analysis/watch.py RUN [--interval 5] [--tail 10] [--once]

RUN is a run directory (runs/<run_id>) or its metrics.h5. Every --interval seconds the file is
opened, read and closed again, and a block is printed: the run's outcome, step / total steps and
the ETA (mean s/step of the last --tail steps times the steps left, plus the evaluations left at
their mean time), the last --tail steps (loss, lr, grad norm, s/step, tokens/s) and every
evaluation (val loss, accuracy). It exits when the run has ended (any outcome but "running";
exit status 0 for ok, 1 otherwise), or after one block with --once.

Reading a live file. The trainer (rank 0) holds metrics.h5 open for writing and flushes it after
every row, with HDF5's file locking turned off for it (src/io/metrics.cpp). HDF5 1.10's
single-writer/multiple-reader mode (SWMR) is not used: a SWMR writer may not create objects or
attributes once SWMR writing has started, while the trainer writes /summary attributes and /ranks
at the end of a run (and SWMR files need the 1.10 file format). Instead this script reopens the
file for each poll (a reader that kept it open would not see new rows), with locking off, and
treats a read that fails or sees a half-written row as "try again at the next poll": a row being
written is dropped (every column is cut to the shortest), an error (the writer in the middle of a
flush) is retried, and only --max-failures failures in a row are reported as an error.
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_read  # noqa: E402


def _fmt_duration(s):
    if s is None or not math.isfinite(s) or s < 0:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {(s % 3600) // 60}m"


def evaluations_after(k, total, per_epoch, every):
    """Evaluations the training loop still runs after step k of total (as the trainer counts them:
    every `every` steps inside an epoch, each epoch's end, the end of a run cut short)."""
    if k >= total or per_epoch <= 0:
        return 0
    n = total // per_epoch - k // per_epoch
    if every > 0:
        lcm = every * per_epoch // math.gcd(every, per_epoch)
        n += (total // every - k // every) - (total // lcm - k // lcm)
    if total % per_epoch != 0 and (every <= 0 or total % every != 0):
        n += 1
    return n


def progress(run, tail=10):
    """(step, total, eta_seconds) of a run; total / eta None where the file does not say."""
    steps, evals, s, c = run["steps"], run["evals"], run["summary"], run["config"]
    step = int(steps["step"][-1]) if len(steps.get("step", [])) else 0
    total = s.get("total_steps")
    total = int(total) if total is not None else None
    if total is None or not len(steps.get("step_time", [])):
        return step, total, None
    recent = [float(x) for x in steps["step_time"][-tail:]]
    eta = sum(recent) / len(recent) * max(0, total - step)
    has_val = bool(c.get("val_split", "validation"))
    per_epoch = int(s.get("steps_per_epoch") or 0)
    left = evaluations_after(step, total, per_epoch, int(c.get("eval_every") or 0)) if has_val else 0
    times = [float(x) for x in evals.get("eval_time", [])]
    if left and times:
        eta += left * sum(times) / len(times)
    return step, total, eta


def render(run, tail=10):
    s, c = run["summary"], run["config"]
    lines = []
    step, total, eta = progress(run, tail)
    what = ", ".join(str(x) for x in (s.get("method") or c.get("method"), s.get("strategy") or c.get("parallel"),
                                      f"{s['world_size']} rank{'' if s['world_size'] == 1 else 's'}" if "world_size" in s else None) if x)
    lines.append(f"run {s.get('run_id') or c.get('run_id') or run['path']} ({what}): {s.get('outcome', '?')}")
    lines.append(f"step {step}/{total if total is not None else '?'}"
                 + (f" ({100.0 * step / total:.1f}%)" if total else "")
                 + (f" | ETA {_fmt_duration(eta)}" if s.get("outcome") == "running" else
                    f" | total time {_fmt_duration(s.get('total_time'))}"))
    steps = run["steps"]
    n = len(steps.get("step", []))
    if n:
        lines.append(f"{'step':>8} {'loss':>9} {'lr':>9} {'gnorm':>8} {'s/step':>8} {'tok/s':>9}")
        for i in range(max(0, n - tail), n):
            lines.append(f"{int(steps['step'][i]):>8} {float(steps['loss'][i]):>9.4f} {float(steps['lr'][i]):>9.2e} "
                         f"{float(steps['grad_norm'][i]):>8.3f} {float(steps['step_time'][i]):>8.3f} "
                         f"{float(steps['tokens_per_s'][i]):>9.0f}")
    evals = run["evals"]
    if len(evals.get("step", [])):
        lines.append(f"{'eval at':>8} {'val loss':>9} {'val acc':>8} {'time':>8}")
        for i in range(len(evals["step"])):
            acc = float(evals["val_accuracy"][i])
            lines.append(f"{int(evals['step'][i]):>8} {float(evals['val_loss'][i]):>9.4f} "
                         f"{'-' if math.isnan(acc) else f'{100 * acc:.2f}%':>8} {float(evals['eval_time'][i]):>7.1f}s")
    if s.get("error"):
        lines.append(f"error: {s['error']}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Follow a running shardtune run (metrics.h5).")
    ap.add_argument("run", help="run directory or metrics.h5")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between polls (default 5)")
    ap.add_argument("--tail", type=int, default=10, help="steps shown, and averaged for the ETA (default 10)")
    ap.add_argument("--once", action="store_true", help="print one block and exit")
    ap.add_argument("--max-failures", type=int, default=5, help="failed reads in a row before giving up (default 5)")
    args = ap.parse_args(argv)
    failures = 0
    while True:
        try:
            run = st_read.read_run(args.run)
            failures = 0
        except (st_read.MetricsFileError, OSError, KeyError, ValueError) as e:
            failures += 1
            if failures >= args.max_failures or args.once:
                print(f"watch.py: {e}", file=sys.stderr)
                return 2
            time.sleep(min(args.interval, 1.0))
            continue
        print(render(run, args.tail), flush=True)
        outcome = run["summary"].get("outcome")
        if outcome != "running":
            return 0 if outcome == "ok" else 1
        if args.once:
            return 0
        print(flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
