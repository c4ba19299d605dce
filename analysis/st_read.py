"""Read shardtune's metrics.h5 (the layout is documented in src/io/metrics.hpp).

    import st_read
    run = st_read.read_run("runs/llama7b-tp-np4")     # a run directory or the .h5 file
    run["config"]["lr"]            # every resolved option: 0.0003 (float), 1234 (int), True, "lora"
    run["attrs"]["shardtune_commit"]  # the file's root attributes (version, host, start time, ...)
    run["steps"]["loss"]           # numpy array, one entry per optimizer step
    run["evals"]["val_loss"]       # one entry per evaluation
    run["epochs"]["epoch_time"]    # one entry per completed epoch
    run["ranks"]["peak_memory"]    # one entry per rank ({} until the run wrote /ranks)
    run["summary"]["outcome"]      # "running" | "ok" | "oom" | "error" | "preempted" | "interrupted"
    run["units"]["steps"]["loss"]  # each column's units ("nats per target token"); "descriptions" too

    st_read.read_frames("runs/x")  # the same with pandas DataFrames for the tables (when pandas
                                   # is installed; plain dicts of numpy arrays otherwise)

Strings come back as str, integers as int, reals as float (NaN where the writer had none).
Files written before metrics format 2 stored /config values as strings: numbers and booleans
among them are converted. A live or killed run is readable up to its last flush; a row the
writer was in the middle of when it died is dropped, so every column of a table has the same
length.

As a script, the tables of a run for other tools:

    python3 analysis/st_read.py export RUN [--format csv|jsonl] [--out DIR] [--tables steps,evals]

writes DIR/<table>.csv (or .jsonl: one JSON object per row, NaN as null) for each table
(default: steps and evals into the run directory) and prints the paths.
"""

import argparse
import csv
import json
import math
import os
import sys

import h5py
import numpy as np

try:  # optional: DataFrames when installed
    import pandas as pd
except ImportError:  # pragma: no cover - depends on the machine
    pd = None

METRICS_FILE = "metrics.h5"
TABLES = ("steps", "evals", "epochs")

__all__ = ["METRICS_FILE", "TABLES", "MetricsFileError", "find_metrics_file", "read_run", "read_frames",
           "export_tables", "HAVE_PANDAS"]

HAVE_PANDAS = pd is not None


class MetricsFileError(Exception):
    """A path that is not a readable shardtune metrics file (the message names it)."""


def find_metrics_file(path):
    """Return the metrics file for a run directory or file path; raise MetricsFileError."""
    if os.path.isdir(path):
        candidate = os.path.join(path, METRICS_FILE)
        if not os.path.isfile(candidate):
            raise MetricsFileError(f"{path}: no {METRICS_FILE} in this directory (not a shardtune run?)")
        return candidate
    if os.path.isfile(path):
        return path
    raise MetricsFileError(f"{path}: no such file or directory")


def _open(path):
    # The trainer holds the file open while it runs; do not let HDF5's file locking refuse us.
    try:
        return h5py.File(path, "r", locking=False)
    except (TypeError, ValueError):  # h5py or HDF5 too old for the locking argument
        return h5py.File(path, "r")


def _scalar(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.shape == ():
            return _scalar(value[()])
        return [_scalar(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _scalar(value.item())
    return value


def _attrs(obj):
    return {key: _scalar(obj.attrs[key]) for key in obj.attrs.keys()}


def _column(ds):
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.array([_scalar(v) for v in ds[()]], dtype=object)
    return np.asarray(ds[()])


def _table(group):
    columns = {name: _column(ds) for name, ds in group.items() if isinstance(ds, h5py.Dataset)}
    if columns:
        rows = min(len(c) for c in columns.values())
        columns = {name: c[:rows] for name, c in columns.items()}
    return columns


def _column_attr(group, key):
    return {name: _scalar(ds.attrs[key]) for name, ds in group.items()
            if isinstance(ds, h5py.Dataset) and key in ds.attrs}


def _config_value(value):
    """A /config value: typed in format 2; a string of a number or boolean from older files."""
    if not isinstance(value, str):
        return value
    if value in ("true", "false"):
        return value == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def read_run(path_or_dir):
    """Read one run: a dict with path, config, steps, evals, epochs, ranks and summary."""
    path = find_metrics_file(path_or_dir)
    try:
        with _open(path) as f:
            run = {
                "path": path,
                "attrs": _attrs(f),
                "config": {k: _config_value(v) for k, v in _attrs(f["config"]).items()} if "config" in f else {},
                "summary": _attrs(f["summary"]) if "summary" in f else {},
                "units": {},
                "descriptions": {},
            }
            for name in TABLES + ("ranks",):
                run[name] = _table(f[name]) if name in f else {}
                run["units"][name] = _column_attr(f[name], "units") if name in f else {}
                run["descriptions"][name] = _column_attr(f[name], "description") if name in f else {}
    except OSError as e:
        raise MetricsFileError(f"{path}: cannot read as HDF5 ({e})") from e
    if "outcome" not in run["summary"]:
        raise MetricsFileError(f"{path}: not a shardtune metrics file (no /summary outcome)")
    _merge_rank_outcomes(run, os.path.dirname(path))
    return run


def _merge_rank_outcomes(run, run_dir):
    """A rank other than 0 that ran out of memory ends the job before rank 0 can record it, and
    leaves outcome-rank<r>.json beside metrics.h5: a run still 'running' takes that outcome."""
    if run["summary"].get("outcome") != "running":
        return
    for name in sorted(os.listdir(run_dir or ".")):
        if not (name.startswith("outcome-rank") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(run_dir, name)) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        summary = run["summary"]
        summary["outcome"] = rec.get("outcome", "error")
        summary["error"] = f"rank {rec.get('rank', '?')}: {rec.get('error', '')}"
        for key in ("oom_bytes", "oom_phase", "oom_category"):
            if key in rec:
                summary[key] = rec[key]
        summary["failed_rank"] = rec.get("rank", -1)
        return


def read_frames(path_or_dir):
    """read_run with the tables (steps, evals, epochs, ranks) as pandas DataFrames; without pandas,
    the plain dicts of numpy arrays read_run returns (HAVE_PANDAS says which)."""
    run = read_run(path_or_dir)
    if pd is not None:
        for name in TABLES + ("ranks",):
            run[name] = pd.DataFrame(run[name])
    return run


def _json_value(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def export_tables(path_or_dir, fmt="csv", out_dir=None, tables=("steps", "evals")):
    """Write each table of a run as <out_dir>/<table>.csv or .jsonl; returns the paths written."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"format must be csv or jsonl, not {fmt!r}")
    run = read_run(path_or_dir)
    out_dir = out_dir or os.path.dirname(run["path"]) or "."
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name in tables:
        if name not in TABLES + ("ranks",):
            raise ValueError(f"unknown table {name!r} (one of {', '.join(TABLES + ('ranks',))})")
        cols = run[name]
        lead = [c for c in ("step", "epoch", "rank") if c in cols]  # the row's key first
        names = lead + [c for c in cols if c not in lead]
        rows = len(cols[names[0]]) if names else 0
        path = os.path.join(out_dir, f"{name}.{fmt}")
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            if fmt == "csv":
                w = csv.writer(f)
                w.writerow(names)
                for i in range(rows):
                    w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v
                                for v in (_json_value(cols[c][i]) for c in names)])
            else:
                for i in range(rows):
                    f.write(json.dumps({c: _json_value(cols[c][i]) for c in names}) + "\n")
        os.replace(tmp, path)
        written.append(path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description="Read shardtune metrics.h5; export its tables for other tools.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a run's tables as CSV or JSON Lines")
    ex.add_argument("run", help="run directory or metrics.h5")
    ex.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    ex.add_argument("--out", help="output directory (default: the run directory)")
    ex.add_argument("--tables", default="steps,evals", help="comma-separated: steps, evals, epochs, ranks")
    args = ap.parse_args(argv)
    try:
        for p in export_tables(args.run, args.format, args.out, [t for t in args.tables.split(",") if t]):
            print(p)
    except (MetricsFileError, ValueError) as e:
        print(f"st_read.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
