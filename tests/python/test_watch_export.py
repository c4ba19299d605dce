"""st_read's typed config, units and optional pandas frames; the CSV/JSONL export; watch.py (the
progress block, its ETA's evaluation count, reading a file another process is writing); report.py
naming preempted runs. Synthetic metrics files only: nothing is trained.
Run: python3 -m unittest discover -s tests/python -p 'test_*.py'
"""

import csv
import importlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from contextlib import redirect_stdout
from unittest import mock

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "analysis"))
sys.path.insert(0, HERE)
import st_read  # noqa: E402
import watch  # noqa: E402
from test_report import _evals, _steps, run_report, write_run  # noqa: E402


def write_v2_run(root, run_id, outcome="running", steps=6, total=20, per_epoch=10, eval_every=5):
    """A run as format 2 writes it: typed /config, units on the columns, summary with total_steps."""
    d = write_run(root, run_id, {"outcome": outcome, "total_steps": total, "steps_per_epoch": per_epoch,
                                 "method": "lora", "strategy": "single", "world_size": 1},
                  steps=_steps(steps), evals=_evals([2.0, 1.5], [0.5, 0.625]))
    with h5py.File(os.path.join(d, "metrics.h5"), "a") as f:
        f.attrs["format_version"] = 2
        f.attrs["shardtune_commit"] = "abc123"
        c = f["config"]
        c.attrs["lr"] = 0.0003
        c.attrs["eval_every"] = np.int64(eval_every)
        c.attrs["shuffle"] = np.bool_(True)
        c.attrs["model"] = "models/stories260K"
        f["steps/loss"].attrs["units"] = "nats per target token"
        f["steps/loss"].attrs["description"] = "training loss"
    return d


class TypedReadTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def test_typed_config_attrs_and_units(self):
        run = st_read.read_run(write_v2_run(self.tmp.name, "v2"))
        c = run["config"]
        self.assertEqual(c["lr"], 0.0003)
        self.assertIsInstance(c["eval_every"], int)
        self.assertIs(c["shuffle"], True)
        self.assertEqual(c["model"], "models/stories260K")
        self.assertEqual(run["attrs"]["shardtune_commit"], "abc123")
        self.assertEqual(run["units"]["steps"]["loss"], "nats per target token")
        self.assertEqual(run["descriptions"]["steps"]["loss"], "training loss")

    def test_frames_without_pandas_and_with(self):
        d = write_v2_run(self.tmp.name, "frames")
        # pandas absent (as on this machine, or faked): the module still imports, plain dicts come back
        with mock.patch.dict(sys.modules, {"pandas": None}):
            fresh = importlib.reload(st_read)
            self.assertFalse(fresh.HAVE_PANDAS)
            run = fresh.read_frames(d)
            self.assertIsInstance(run["steps"], dict)
            self.assertEqual(run["steps"]["step"].tolist(), [1, 2, 3, 4, 5, 6])

        class FakeFrame(dict):
            pass
        fake = mock.MagicMock()
        fake.DataFrame = FakeFrame
        with mock.patch.dict(sys.modules, {"pandas": fake}):
            fresh = importlib.reload(st_read)
            self.assertTrue(fresh.HAVE_PANDAS)
            run = fresh.read_frames(d)
            self.assertIsInstance(run["steps"], FakeFrame)
            self.assertEqual(run["evals"]["val_loss"].tolist(), [2.0, 1.5])
        importlib.reload(st_read)

    def test_export_csv_and_jsonl(self):
        d = write_v2_run(self.tmp.name, "exp")
        out = os.path.join(self.tmp.name, "out")
        paths = st_read.export_tables(d, "csv", out)
        self.assertEqual(paths, [os.path.join(out, "steps.csv"), os.path.join(out, "evals.csv")])
        with open(paths[0]) as f:
            rows = list(csv.reader(f))
        self.assertEqual(rows[0][:2], ["step", "epoch"])
        self.assertEqual(len(rows), 1 + 6)
        mfu = rows[0].index("mfu")
        self.assertEqual(rows[1][mfu], "")  # NaN: an empty cell
        self.assertEqual(float(rows[2][rows[0].index("loss")]), 2.9)
        r = subprocess.run([sys.executable, os.path.join(REPO, "analysis", "st_read.py"), "export", d, "--format",
                            "jsonl", "--out", out, "--tables", "evals"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "evals.jsonl")) as f:
            recs = [json.loads(line) for line in f]
        self.assertEqual([x["val_accuracy"] for x in recs], [0.5, 0.625])
        r = subprocess.run([sys.executable, os.path.join(REPO, "analysis", "st_read.py"), "export",
                            os.path.join(self.tmp.name, "missing")], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("no such file", r.stderr)


class WatchTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def test_evaluations_after_counts_like_the_loop(self):
        def brute(k, total, per_epoch, every):
            n, last = 0, None
            for j in range(1, total + 1):
                end_of_epoch = j % per_epoch == 0
                if end_of_epoch or (every and j % every == 0) or j == total:
                    if j > k and last != j:
                        n += 1
                    last = j
            return n
        for total, per_epoch, every in ((20, 10, 5), (17, 10, 4), (30, 7, 0), (9, 10, 3), (12, 6, 4)):
            for k in range(0, total + 1):
                self.assertEqual(watch.evaluations_after(k, total, per_epoch, every), brute(k, total, per_epoch, every),
                                 (k, total, per_epoch, every))

    def test_block_and_eta(self):
        d = write_v2_run(self.tmp.name, "live", steps=6, total=20, per_epoch=10, eval_every=5)
        run = st_read.read_run(d)
        step, total, eta = watch.progress(run, tail=10)
        self.assertEqual((step, total), (6, 20))
        # 14 steps at 0.5 s, plus 3 evaluations left (10: epoch end, 15, 20: end) at 1.0 s
        self.assertAlmostEqual(eta, 14 * 0.5 + 3 * 1.0)
        buf = io.StringIO()
        with redirect_stdout(buf):
            rc = watch.main([d, "--once"])
        self.assertEqual(rc, 0)
        text = buf.getvalue()
        self.assertIn("step 6/20 (30.0%) | ETA 10s", text)
        self.assertIn("62.50%", text)
        done = write_v2_run(self.tmp.name, "done", outcome="preempted")
        with redirect_stdout(io.StringIO()):
            self.assertEqual(watch.main([done]), 1)  # an ended run: no polling, exit 1 (not ok)

    def test_reads_a_file_another_process_is_writing(self):
        d = write_v2_run(self.tmp.name, "writer", steps=1)
        path = os.path.join(d, "metrics.h5")
        writer = textwrap.dedent(f"""
            import h5py, time
            with h5py.File({path!r}, "a", locking=False) as f:
                g = f["steps"]
                for i in range(2, 400):
                    for name in g:
                        ds = g[name]
                        ds.resize((i,))
                        ds[i - 1] = i
                    f.flush()
            """)
        p = subprocess.Popen([sys.executable, "-c", writer])
        ok = failed = 0
        try:
            while p.poll() is None:
                try:
                    run = st_read.read_run(d)
                except (st_read.MetricsFileError, OSError, KeyError, ValueError):
                    failed += 1  # watch.py retries these at the next poll
                    continue
                lengths = {len(v) for v in run["steps"].values()}
                self.assertEqual(len(lengths), 1, "every column cut to the complete rows")
                steps = run["steps"]["step"].tolist()
                self.assertEqual(steps, list(range(1, len(steps) + 1)))
                ok += 1
        finally:
            p.wait(timeout=60)
        self.assertEqual(p.returncode, 0)
        self.assertGreater(ok, 0)
        run = st_read.read_run(d)
        self.assertEqual(len(run["steps"]["step"]), 399)


class PreemptedInReportTest(unittest.TestCase):
    def test_preempted_run_is_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = write_run(tmp, "pre", {"outcome": "preempted", "steps_completed": 5, "total_steps": 10,
                                       "total_time": 30.0, "world_size": 1}, steps=_steps(5))
            r = run_report(d, "--no-plots")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("| preempted", r.stdout)
            self.assertIn("preempted after step 5 of 10", r.stdout)
            self.assertNotIn("incomplete", r.stdout)


if __name__ == "__main__":
    unittest.main()
