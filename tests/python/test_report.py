"""analysis/report.py and analysis/st_read.py on synthetic metrics.h5 files.

The files are written with h5py in the layout of src/io/metrics.hpp, with the same HDF5 types
the C++ MetricsWriter uses (fixed-length UTF-8 string attributes, 1-D extendible columns,
variable-length string hosts). Run: python3 -m unittest discover -s tests/python -p 'test_*.py'
"""

import glob
import math
import os
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT = os.path.join(REPO, "analysis", "report.py")
sys.path.insert(0, os.path.join(REPO, "analysis"))
import st_read  # noqa: E402

GIB = 1 << 30
STEP_COLUMNS = {"step": "i8", "epoch": "i4", "loss": "f8", "lr": "f8", "grad_norm": "f8", "tokens": "i8",
                "step_time": "f8", "tokens_per_s": "f8", "mfu": "f8", "mem_current": "i8", "mem_peak": "i8"}
EVAL_COLUMNS = {"step": "i8", "epoch": "f8", "val_loss": "f8", "val_accuracy": "f8", "val_tokens": "i8",
                "eval_time": "f8"}
EPOCH_COLUMNS = {"epoch": "i4", "epoch_time": "f8", "train_loss": "f8", "val_loss": "f8", "val_accuracy": "f8",
                 "steps": "i8"}
CATEGORIES = ("weights", "gradients", "optimizer", "activations", "workspace")


def _str_attr(obj, key, value):
    data = str(value).encode("utf-8")
    obj.attrs.create(key, data if data else b"\0", dtype=h5py.string_dtype("utf-8", max(1, len(data))))


def _table(group, columns, rows):
    for name, dtype in columns.items():
        values = np.array([r.get(name, 0) for r in rows], dtype=dtype)
        group.create_dataset(name, data=values, maxshape=(None,), chunks=(64,))


def write_run(root, run_id, summary, steps=(), evals=(), epochs=(), ranks=None, config=None):
    """runs/<run_id>/metrics.h5 in the MetricsWriter layout; returns the run directory."""
    run_dir = os.path.join(root, run_id)
    os.makedirs(run_dir, exist_ok=True)
    with h5py.File(os.path.join(run_dir, "metrics.h5"), "w") as f:
        cfg = f.create_group("config")
        for key, value in {"run_id": run_id, "deck": f"inputs/test/{run_id}.cfg", **(config or {})}.items():
            _str_attr(cfg, key, value)
        _table(f.create_group("steps"), STEP_COLUMNS, list(steps))
        _table(f.create_group("evals"), EVAL_COLUMNS, list(evals))
        _table(f.create_group("epochs"), EPOCH_COLUMNS, list(epochs))
        if ranks is not None:
            g = f.create_group("ranks")
            g.create_dataset("rank", data=np.arange(len(ranks), dtype="i4"))
            g.create_dataset("host", data=[r["host"] for r in ranks], dtype=h5py.string_dtype("utf-8"))
            g.create_dataset("peak_memory", data=np.array([r["peak"] for r in ranks], dtype="i8"))
            for cat in CATEGORIES:
                g.create_dataset(f"peak_{cat}", data=np.array([r.get(cat, 0) for r in ranks], dtype="i8"))
            g.create_dataset("comm_time", data=np.array([r.get("comm", 0.0) for r in ranks], dtype="f8"))
        s = f.create_group("summary")
        for key, value in {"run_id": run_id, **summary}.items():
            if isinstance(value, str):
                _str_attr(s, key, value)
            elif isinstance(value, int):
                s.attrs.create(key, value, dtype="i8")
            else:
                s.attrs.create(key, value, dtype="f8")
    return run_dir


def _steps(n, loss0=3.0):
    return [{"step": i + 1, "epoch": i // 2, "loss": loss0 - 0.1 * i, "lr": 1e-4, "grad_norm": 1.0,
             "tokens": 512, "step_time": 0.5, "tokens_per_s": 1024.0, "mfu": float("nan"),
             "mem_current": GIB, "mem_peak": GIB + i} for i in range(n)]


def _evals(losses, accs):
    return [{"step": 2 * i, "epoch": float(i), "val_loss": l, "val_accuracy": a, "val_tokens": 100,
             "eval_time": 1.0} for i, (l, a) in enumerate(zip(losses, accs))]


def _ranks(peaks):
    return [{"host": f"node{i // 8}", "peak": p, "weights": p // 2, "gradients": p // 8, "optimizer": p // 4,
             "activations": p // 8, "comm": 0.5} for i, p in enumerate(peaks)]


def build_runs(root):
    """The five synthetic runs; returns {run_id: run_dir}."""
    nan = float("nan")
    dirs = {}
    # 1 rank, ok, 2 epochs, with labels (accuracy).
    dirs["tiny-llama-full"] = write_run(
        root, "tiny-llama-full",
        {"outcome": "ok", "strategy": "single", "method": "full", "world_size": 1, "tp": 1, "dp": 1,
         "total_time": 30.5, "mean_epoch_time": 11.0, "epochs_completed": 2, "steps_completed": 4,
         "peak_memory": 3 * GIB // 2, "initial_val_loss": 2.5, "final_val_loss": 1.25,
         "initial_val_accuracy": 0.5, "final_val_accuracy": 0.75, "error": ""},
        steps=_steps(4), evals=_evals([2.5, 1.75, 1.25], [0.5, 0.625, 0.75]),
        epochs=[{"epoch": 0, "epoch_time": 10.0, "train_loss": 2.8, "val_loss": 1.75, "val_accuracy": 0.625,
                 "steps": 2},
                {"epoch": 1, "epoch_time": 12.0, "train_loss": 2.6, "val_loss": 1.25, "val_accuracy": 0.75,
                 "steps": 2}],
        ranks=_ranks([3 * GIB // 2]), config={"model.name": "tiny-llama", "train.epochs": "2"})
    # The same configuration at 2 and 4 ranks (TP x DP), no labels: accuracy NaN.
    for world, dp, epoch_time, peak in ((2, 1, 100.0, 3 * GIB), (4, 2, 55.0, 2 * GIB)):
        run_id = f"flant5-lora-np{world}"
        dirs[run_id] = write_run(
            root, run_id,
            {"outcome": "ok", "strategy": "tp+zero3", "method": "lora", "world_size": world, "tp": 2, "dp": dp,
             "total_time": 2 * epoch_time + 20, "mean_epoch_time": epoch_time, "peak_memory": peak,
             "initial_val_loss": 4.0, "final_val_loss": 3.0, "initial_val_accuracy": nan,
             "final_val_accuracy": nan},
            steps=_steps(4, 4.5), evals=_evals([4.0, 3.0], [nan, nan]),
            epochs=[{"epoch": e, "epoch_time": epoch_time, "val_loss": 3.0, "val_accuracy": nan, "steps": 2}
                    for e in range(2)],
            ranks=_ranks([peak - r for r in range(world)]))
    # Out of memory in backward.
    dirs["flant5-full-np2"] = write_run(
        root, "flant5-full-np2",
        {"outcome": "oom", "strategy": "zero3", "method": "full", "world_size": 2, "tp": 1, "dp": 2,
         "oom_bytes": 3 * GIB // 2, "oom_phase": "backward", "oom_category": "activations",
         "memory_limit": 40 * GIB, "peak_memory": 39 * GIB, "total_time": 12.0,
         "error": "out of memory", "initial_val_loss": nan, "final_val_loss": nan},
        ranks=_ranks([39 * GIB, 38 * GIB]))
    # Still running (or killed): a few steps, no epoch, no /ranks.
    dirs["tiny-llama-lora"] = write_run(
        root, "tiny-llama-lora",
        {"outcome": "running", "strategy": "single", "method": "lora", "world_size": 1, "tp": 1, "dp": 1},
        steps=_steps(3), evals=_evals([2.5], [0.5]))
    return dirs


def run_report(*args):
    return subprocess.run([sys.executable, REPORT, *args], capture_output=True, text=True, timeout=300)


def table_rows(stdout):
    """Data rows of the first Markdown table, as lists of cells."""
    rows = [line for line in stdout.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


class ReportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="shardtune-report-")
        cls.root = os.path.join(cls.tmp.name, "runs")
        cls.dirs = build_runs(cls.root)
        # Arguments in an order unlike the table's.
        cls.args = [cls.dirs[k] for k in ("tiny-llama-lora", "flant5-lora-np4", "tiny-llama-full",
                                          "flant5-full-np2", "flant5-lora-np2")]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_table_rows_and_columns(self):
        r = run_report(*self.args, "--no-plots")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0], "| config | ranks | per-epoch time | total run time | val loss | val acc "
                                   "| peak memory |")
        rows = table_rows(r.stdout)
        self.assertEqual(len(rows), 5)
        self.assertTrue(all(len(row) == 7 for row in rows), rows)
        # Sorted by config, then rank count.
        self.assertEqual([row[0] for row in rows],
                         ["flant5-full (zero3, full)", "flant5-lora (tp+zero3, lora)",
                          "flant5-lora (tp+zero3, lora)", "tiny-llama-full (single, full)",
                          "tiny-llama-lora (single, lora)"])
        self.assertEqual([row[1] for row in rows], ["2 (tp1 x dp2)", "2 (tp2 x dp1)", "4 (tp2 x dp2)", "1", "1"])
        oom, lora2, lora4, ok, running = rows
        self.assertEqual(ok[2:], ["11.0 s", "30.5 s", "2.500 -> 1.250", "50.0% -> 75.0%", "1.50 GiB"])
        self.assertEqual(lora2[2:], ["1m 40s", "3m 40s", "4.000 -> 3.000", "-", "3.00 GiB"])
        self.assertEqual(lora4[2:], ["55.0 s", "2m 10s", "4.000 -> 3.000", "-", "2.00 GiB"])
        self.assertEqual(oom[2:6], ["OOM[^1]", "OOM", "OOM", "OOM"])
        self.assertEqual(oom[6], "39.00 GiB")
        self.assertEqual(running[2:6], ["incomplete[^2]"] + ["incomplete"] * 3)

    def test_footnotes_and_speedup(self):
        r = run_report(*self.args, "--no-plots", "--title", "Experiment 2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("## Experiment 2\n"), r.stdout)
        lines = r.stdout.splitlines()
        oom_note = [l for l in lines if l.startswith("[^1]:")]
        self.assertEqual(len(oom_note), 1, r.stdout)
        self.assertIn("flant5-full-np2", oom_note[0])
        self.assertIn("'backward'", oom_note[0])
        self.assertIn("1.50 GiB", oom_note[0])
        running_note = [l for l in lines if l.startswith("[^2]:")]
        self.assertIn("tiny-llama-lora", running_note[0])
        self.assertIn("3 steps", running_note[0])
        speedups = [l for l in lines if l.startswith("Speedup")]
        self.assertEqual(len(speedups), 1, r.stdout)  # only flant5-lora ran at several rank counts
        self.assertTrue(speedups[0].startswith("Speedup, flant5-lora (tp+zero3, lora): 1.82x from 2 to 4 ranks"),
                        speedups[0])

    def test_speedup_not_available_when_one_count_ooms(self):
        with tempfile.TemporaryDirectory() as tmp:
            a = write_run(tmp, "big-np2", {"outcome": "oom", "world_size": 2, "oom_phase": "forward",
                                           "oom_bytes": GIB})
            b = write_run(tmp, "big-np4", {"outcome": "ok", "world_size": 4, "mean_epoch_time": 5.0})
            r = run_report(a, b, "--no-plots")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Speedup, big: n/a (completed at fewer than two rank counts; not completed at 2 ranks)",
                      r.stdout)

    def test_error_run(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = write_run(tmp, "broken", {"outcome": "error", "world_size": 1, "error": "NaN loss at step 7"})
            r = run_report(d, "--no-plots")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(table_rows(r.stdout)[0][2:6], ["error[^1]", "error", "error", "error"])
        self.assertIn("[^1]: broken: failed: NaN loss at step 7", r.stdout)

    def test_plots(self):
        plots = os.path.join(self.tmp.name, "out", "plots")
        r = run_report(*self.args, "--plots", plots)
        self.assertEqual(r.returncode, 0, r.stderr)
        for name in ("loss.png", "epoch_time.png", "memory.png"):
            path = os.path.join(plots, name)
            self.assertIn(path, r.stdout)
            with open(path, "rb") as f:
                head = f.read(8)
            self.assertEqual(head, b"\x89PNG\r\n\x1a\n", name)
            self.assertGreater(os.path.getsize(path), 1000, name)

    def test_default_plot_dir_is_skipped_by_a_glob(self):
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "runs")
            write_run(root, "a-np1", {"outcome": "ok", "world_size": 1, "mean_epoch_time": 2.0})
            write_run(root, "a-np2", {"outcome": "ok", "world_size": 2, "mean_epoch_time": 1.0})
            first = run_report(*sorted(glob.glob(os.path.join(root, "*"))))
            self.assertEqual(first.returncode, 0, first.stderr)
            self.assertTrue(os.path.isfile(os.path.join(root, "plots", "loss.png")))
            # runs/* now also names runs/plots (no metrics.h5): it is report.py's own output.
            second = run_report(*sorted(glob.glob(os.path.join(root, "*"))))
            self.assertEqual(second.returncode, 0, second.stderr)
            self.assertIn("Speedup, a: 2.00x from 1 to 2 ranks", second.stdout)

    def test_path_without_metrics_fails(self):
        with tempfile.TemporaryDirectory() as tmp:
            empty = os.path.join(tmp, "not-a-run")
            os.makedirs(empty)
            # Default: a path that is not a run is skipped with a message (runs/* names other things).
            r = run_report(self.dirs["tiny-llama-full"], empty, "--no-plots")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f"report.py: skipping {empty}: no metrics.h5", r.stderr)
            self.assertEqual(len(table_rows(r.stdout)), 1)
            # --strict: any such path fails the report.
            r = run_report(self.dirs["tiny-llama-full"], empty, "--no-plots", "--strict")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(empty, r.stderr)
            self.assertIn("no metrics.h5", r.stderr)
            self.assertEqual(r.stdout, "")  # no half table
            # Nothing readable at all: an error without --strict too.
            r = run_report(empty, "--no-plots")
            self.assertEqual(r.returncode, 2)
            self.assertIn("no readable run", r.stderr)
            self.assertEqual(r.stdout, "")
            missing = os.path.join(tmp, "nowhere")
            r = run_report(missing, "--no-plots")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(missing, r.stderr)
            garbage = os.path.join(tmp, "garbage.h5")
            with open(garbage, "w") as f:
                f.write("not hdf5")
            r = run_report(garbage, "--no-plots")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(garbage, r.stderr)
            self.assertNotIn("Traceback", r.stderr)


class ReadRunTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="shardtune-stread-")
        cls.dirs = build_runs(cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_ok_run(self):
        run = st_read.read_run(self.dirs["tiny-llama-full"])
        self.assertEqual(run["path"], os.path.join(self.dirs["tiny-llama-full"], "metrics.h5"))
        self.assertEqual(run["config"], {"run_id": "tiny-llama-full", "deck": "inputs/test/tiny-llama-full.cfg",
                                         "model.name": "tiny-llama", "train.epochs": 2})  # an old string number, converted
        self.assertEqual(set(run["steps"]), set(STEP_COLUMNS))
        self.assertEqual(set(run["evals"]), set(EVAL_COLUMNS))
        self.assertEqual(set(run["epochs"]), set(EPOCH_COLUMNS))
        self.assertEqual(run["steps"]["step"].tolist(), [1, 2, 3, 4])
        self.assertEqual(run["steps"]["step"].dtype, np.int64)
        self.assertEqual(run["steps"]["epoch"].dtype, np.int32)
        np.testing.assert_array_equal(run["steps"]["loss"], [3.0, 2.9, 2.8, 2.7])
        self.assertTrue(np.isnan(run["steps"]["mfu"]).all())
        self.assertEqual(run["evals"]["val_loss"].tolist(), [2.5, 1.75, 1.25])
        self.assertEqual(run["epochs"]["epoch_time"].tolist(), [10.0, 12.0])
        self.assertEqual(list(run["ranks"]["host"]), ["node0"])
        self.assertIsInstance(run["ranks"]["host"][0], str)
        self.assertEqual(run["ranks"]["peak_memory"].tolist(), [3 * GIB // 2])
        s = run["summary"]
        self.assertEqual(s["outcome"], "ok")
        self.assertEqual(s["error"], "")
        self.assertIsInstance(s["world_size"], int)
        self.assertEqual(s["peak_memory"], 3 * GIB // 2)
        self.assertIsInstance(s["total_time"], float)
        self.assertEqual(s["final_val_loss"], 1.25)

    def test_file_path_and_nan_summary(self):
        path = os.path.join(self.dirs["flant5-lora-np2"], "metrics.h5")
        run = st_read.read_run(path)
        self.assertEqual(run["summary"]["world_size"], 2)
        self.assertTrue(math.isnan(run["summary"]["final_val_accuracy"]))
        self.assertEqual(len(run["ranks"]["rank"]), 2)

    def test_running_run_without_ranks(self):
        run = st_read.read_run(self.dirs["tiny-llama-lora"])
        self.assertEqual(run["summary"]["outcome"], "running")
        self.assertEqual(run["ranks"], {})
        self.assertEqual(len(run["steps"]["loss"]), 3)
        self.assertEqual({k: len(v) for k, v in run["epochs"].items()}, {k: 0 for k in EPOCH_COLUMNS})

    def test_ragged_table_is_cut_to_complete_rows(self):
        d = write_run(self.tmp.name, "ragged", {"outcome": "running"}, steps=_steps(3))
        with h5py.File(os.path.join(d, "metrics.h5"), "a") as f:
            loss = f["steps/loss"]  # the writer died after appending one column of row 4
            loss.resize((4,))
            loss[3] = 9.0
        run = st_read.read_run(d)
        self.assertEqual({k: len(v) for k, v in run["steps"].items()}, {k: 3 for k in STEP_COLUMNS})

    def test_live_file_held_open_by_a_writer(self):
        d = write_run(self.tmp.name, "live", {"outcome": "running"}, steps=_steps(2))
        with h5py.File(os.path.join(d, "metrics.h5"), "a") as f:  # a writer holding the file
            f.flush()
            code = (f"import sys; sys.path.insert(0, {os.path.join(REPO, 'analysis')!r}); import st_read; "
                    f"print(len(st_read.read_run({d!r})['steps']['loss']))")
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "2")

    def test_errors(self):
        with self.assertRaises(st_read.MetricsFileError) as cm:
            st_read.read_run(os.path.join(self.tmp.name, "nowhere"))
        self.assertIn("nowhere", str(cm.exception))
        empty = os.path.join(self.tmp.name, "empty-dir")
        os.makedirs(empty, exist_ok=True)
        with self.assertRaises(st_read.MetricsFileError) as cm:
            st_read.read_run(empty)
        self.assertIn("no metrics.h5", str(cm.exception))
        not_ours = os.path.join(self.tmp.name, "other.h5")
        with h5py.File(not_ours, "w") as f:
            f.create_dataset("x", data=[1])
        with self.assertRaises(st_read.MetricsFileError) as cm:
            st_read.read_run(not_ours)
        self.assertIn("not a shardtune metrics file", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
