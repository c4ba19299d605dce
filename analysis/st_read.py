"""Read shardtune's metrics.h5 (the layout is documented in src/io/metrics.hpp).

    import st_read
    run = st_read.read_run("runs/llama7b-tp-np4")     # a run directory or the .h5 file
    run["config"]["run_id"]        # str: every resolved option, as the deck spelled it
    run["steps"]["loss"]           # numpy array, one entry per optimizer step
    run["evals"]["val_loss"]       # one entry per evaluation
    run["epochs"]["epoch_time"]    # one entry per completed epoch
    run["ranks"]["peak_memory"]    # one entry per rank ({} until the run wrote /ranks)
    run["summary"]["outcome"]      # "running" | "ok" | "oom" | "error"

Strings come back as str, integers as int, reals as float (NaN where the writer had none).
A live or killed run is readable up to its last flush; a row the writer was in the middle of
when it died is dropped, so every column of a table has the same length.
"""

import json
import os

import h5py
import numpy as np

METRICS_FILE = "metrics.h5"
TABLES = ("steps", "evals", "epochs")

__all__ = ["METRICS_FILE", "TABLES", "MetricsFileError", "find_metrics_file", "read_run"]


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


def read_run(path_or_dir):
    """Read one run: a dict with path, config, steps, evals, epochs, ranks and summary."""
    path = find_metrics_file(path_or_dir)
    try:
        with _open(path) as f:
            run = {
                "path": path,
                "config": {k: str(v) for k, v in _attrs(f["config"]).items()} if "config" in f else {},
                "summary": _attrs(f["summary"]) if "summary" in f else {},
            }
            for name in TABLES + ("ranks",):
                run[name] = _table(f[name]) if name in f else {}
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
