"""analysis/report.py per-experiment reports (issue 7) on a synthetic exp1/exp2/exp3 matrix.

The metrics.h5 files follow src/io/metrics.hpp (written by test_report.write_run) plus the
planner's fields: /summary predicted_peak (max over ranks) and /ranks/predicted_peak (per rank),
left out of some files as in metrics.h5 written before the planner. The expected numbers are
worked out by hand in the comments. Run: python3 -m unittest discover -s tests/python -p 'test_*.py'
"""

import os
import subprocess
import sys
import tempfile
import unittest

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_report import GIB, REPO, _evals, _ranks, _steps, run_report, write_run  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "analysis"))
import report  # noqa: E402
import st_read  # noqa: E402

MIB = 1 << 20


def exp_run(root, run_id, outcome="ok", world=2, epoch_time=None, peaks=None, predicted=None,
            rank_predicted=None, val_loss=None, **summary):
    """One experiment run; predicted (summary) and rank_predicted (/ranks) are left out when None."""
    model, method, strategy = run_id.split("_")[1:4]
    s = {"outcome": outcome, "method": method, "strategy": strategy, "world_size": world,
         "tp": world if strategy == "tp" else 1, "dp": 1 if strategy == "tp" else world, **summary}
    if outcome == "running":  # what a file stuck at "running" holds: the outcome alone
        s = {"outcome": "running"}
    if epoch_time is not None:
        s.update(mean_epoch_time=float(epoch_time), total_time=float(2 * epoch_time + 100))
    if val_loss is not None:
        s.update(initial_val_loss=2.0, final_val_loss=float(val_loss))
    if peaks:
        s["peak_memory"] = int(peaks[0])  # rank 0's, as the trainer writes it
    if predicted is not None:
        s["predicted_peak"] = int(predicted)
    steps = _steps(4, 3.0) if outcome in ("ok", "running") else ()
    evals = _evals([2.0, val_loss], [0.5, 0.8]) if val_loss is not None else ()
    epochs = [{"epoch": 0, "epoch_time": float(epoch_time), "val_loss": val_loss or 0.0, "steps": 4}] \
        if epoch_time is not None else ()
    d = write_run(root, run_id, s, steps=steps, evals=evals, epochs=epochs,
                  ranks=_ranks([int(p) for p in peaks]) if peaks else None)
    if rank_predicted is not None:
        with h5py.File(os.path.join(d, "metrics.h5"), "a") as f:
            f["ranks"].create_dataset("predicted_peak", data=np.array(rank_predicted, dtype="i8"))
    return d


def build_matrix(root):
    """A small matrix of the three experiments, an unrelated run, a matrix table and other paths."""
    g = GIB
    # exp1, full + tp: epoch 400 / 220 / 125 s; speedup 2 -> 8 = 400/125 = 3.20x, ideal 4x,
    # efficiency 80.0%; peak 40 -> 10 GiB (0.25x).
    exp_run(root, "exp1_llama7b_full_tp_2", world=2, epoch_time=400, val_loss=0.5,
            peaks=[39 * g, 40 * g], predicted=41 * g, rank_predicted=[38 * g, 41 * g])   # 1.025; rank 0 -2.6%
    exp_run(root, "exp1_llama7b_full_tp_4", world=4, epoch_time=220, val_loss=0.52,
            peaks=[20 * g] * 4, predicted=22 * g)                                      # 1.100: over 5%
    exp_run(root, "exp1_llama7b_full_tp_8", world=8, epoch_time=125, val_loss=0.55,
            peaks=[10 * g] * 8)                                                        # no predicted_peak
    # exp2, t5xl: lora + zero3 100 -> 60 s (1.67x, ideal 2x, 83.3%); full + zero3 ok at 2, stuck at
    # "running" at 4 (matrix table: OOM); full + ddp OOM at 2 (predicted over the limit), error at 4.
    exp_run(root, "exp2_t5xl_lora_zero3_2", world=2, epoch_time=100, val_loss=0.7, peaks=[30 * g, 29 * g],
            predicted=30 * g, rank_predicted=[30 * g, 29 * g])                         # 1.000
    # Run level (max over ranks) 20.4 / 20 GiB = 1.020, but rank 1's own 20 / 18 GiB is +11.1%: over 5%.
    exp_run(root, "exp2_t5xl_lora_zero3_4", world=4, epoch_time=60, val_loss=0.71,
            peaks=[20 * g, 18 * g, 18 * g, 18 * g], predicted=int(20.4 * g),
            rank_predicted=[int(20.4 * g), 20 * g, 18 * g, 18 * g])
    exp_run(root, "exp2_t5xl_full_zero3_2", world=2, epoch_time=150, val_loss=0.6, peaks=[38 * g, 37 * g])
    exp_run(root, "exp2_t5xl_full_zero3_4", "running", world=4)
    exp_run(root, "exp2_t5xl_full_ddp_2", "oom", world=2, peaks=[39 * g, 39 * g], predicted=45 * g,
            memory_limit=40 * g, oom_phase="backward", oom_bytes=2 * g, oom_category="activations",
            error="out of memory")
    exp_run(root, "exp2_t5xl_full_ddp_4", "error", world=4, error="NaN loss at step 7")
    # exp3, llama7b + zero3: QLoRA 12 / 10 GiB against LoRA 20 / 15 GiB: 40.0% and 33.3% less,
    # mean 36.7%. Predicted/measured: QLoRA 1.025 and 1.040, LoRA 1.000, full none.
    exp_run(root, "exp3_llama7b_qlora_zero3_2", world=2, epoch_time=300, val_loss=0.45, peaks=[12 * g, 11 * g],
            predicted=12 * g + 12 * g // 40)                                           # 1.025
    exp_run(root, "exp3_llama7b_qlora_zero3_4", world=4, epoch_time=160, val_loss=0.46, peaks=[10 * g] * 4,
            predicted=int(10.4 * g))                                                   # 1.040
    exp_run(root, "exp3_llama7b_lora_zero3_2", world=2, epoch_time=240, val_loss=0.44, peaks=[20 * g, 19 * g],
            predicted=20 * g)
    exp_run(root, "exp3_llama7b_lora_zero3_4", world=4, epoch_time=150, val_loss=0.44, peaks=[15 * g] * 4,
            predicted=15 * g)
    exp_run(root, "exp3_llama7b_full_zero3_2", world=2, epoch_time=500, val_loss=0.4, peaks=[60 * g, 58 * g])
    # Not an experiment: the generic table.
    write_run(root, "tiny-llama-full", {"outcome": "ok", "world_size": 1, "mean_epoch_time": 2.0,
                                        "total_time": 5.0, "peak_memory": 64 * MIB}, steps=_steps(2))
    # What else runs/ holds: a run_matrix.sh table, report.py's plots, a stray file, a bench dir.
    with open(os.path.join(root, "matrix_exp2.tsv"), "w") as f:
        f.write("run_id\tranks\tparallel\tdeck\tresult\tseconds\n"
                "exp2_t5xl_full_zero3_2\t2\tzero3\tinputs/exp2/flant5_xl_full.cfg\tok\t310\n"
                "exp2_t5xl_full_zero3_4\t4\tzero3\tinputs/exp2/flant5_xl_full.cfg\tOOM\t42\n")
    os.makedirs(os.path.join(root, "plots"), exist_ok=True)
    os.makedirs(os.path.join(root, "bench"), exist_ok=True)
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not a run\n")


def section(stdout, exp):
    """The lines of one experiment's section, up to the next ### heading."""
    lines = stdout.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("### ") and l.endswith(f"({exp})"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("### ")), len(lines))
    return lines[start:end]


def rows(lines, header_start):
    """Data rows (cell lists) of the table whose header starts with header_start."""
    i = next(i for i, l in enumerate(lines) if l.startswith(header_start))
    out = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        out.append([c.strip() for c in line.strip("|").split("|")])
    return out


class ExperimentReportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="shardtune-exp-report-")
        cls.root = os.path.join(cls.tmp.name, "runs")
        os.makedirs(cls.root)
        build_matrix(cls.root)
        cls.args = sorted(os.path.join(cls.root, n) for n in os.listdir(cls.root))  # runs/*
        cls.result = run_report(*cls.args)
        cls.out = cls.result.stdout

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_runs_glob_with_other_paths(self):
        r = self.result
        self.assertEqual(r.returncode, 0, r.stderr)
        # The stray file and the bench dir are named, the matrix table and plots/ are not.
        self.assertIn("skipping " + os.path.join(self.root, "notes.txt"), r.stderr)
        self.assertIn("skipping " + os.path.join(self.root, "bench") + ": no metrics.h5", r.stderr)
        self.assertNotIn("matrix_exp2.tsv", r.stderr)
        self.assertNotIn(os.path.join(self.root, "plots"), r.stderr)
        self.assertNotIn("Traceback", r.stderr)
        headings = [l for l in self.out.splitlines() if l.startswith("### ")]
        self.assertEqual([h.rsplit(" ", 1)[-1] for h in headings],
                         ["(exp1)", "(exp2)", "(exp3)", "runs", "memory"])  # + Other runs, Predicted vs measured
        self.assertEqual(headings[3], "### Other runs")

    def test_exp1_table(self):
        lines = section(self.out, "exp1")
        self.assertEqual(lines[0], "### Experiment 1: full fine-tuning, Megatron tensor parallelism (tp = GPUs) (exp1)")
        self.assertIn(report.EXPERIMENT_HEADER, lines)
        self.assertEqual(rows(lines, "| model |"), [
            ["llama7b", "full", "tp", "2", "6m 40s", "15m 00s", "0.500", "40.00 GiB", "41.00 GiB", "1.025"],
            ["llama7b", "full", "tp", "4", "3m 40s", "9m 00s", "0.520", "20.00 GiB", "22.00 GiB", "1.100"],
            ["llama7b", "full", "tp", "8", "2m 05s", "5m 50s", "0.550", "10.00 GiB", "-", "-"],
        ])
        speedup = [l for l in lines if l.startswith("Speedup")]
        self.assertEqual(speedup, [
            "Speedup, llama7b full tp: 3.20x from 2 to 8 GPUs (per-epoch time 6m 40s -> 2m 05s; ideal 4.00x), "
            "scaling efficiency 80.0%; peak memory per rank 40.00 GiB -> 10.00 GiB (0.25x)"])
        self.assertFalse(any(l.startswith("QLoRA") for l in lines))

    def test_exp2_table_oom_error_and_stuck_run(self):
        lines = section(self.out, "exp2")
        table = rows(lines, "| model |")
        self.assertEqual([r[1:4] for r in table], [["lora", "zero3", "2"], ["lora", "zero3", "4"],
                                                    ["full", "zero3", "2"], ["full", "zero3", "4"],
                                                    ["full", "ddp", "2"], ["full", "ddp", "4"]])
        lora2, lora4, full2, stuck, oom, err = table
        self.assertEqual(lora4[4:], ["1m 00s", "3m 40s", "0.710", "20.00 GiB", "20.40 GiB", "1.020"])
        self.assertEqual(full2[8:], ["-", "-"])  # no predicted_peak
        # OOM: phase in the time cell, the limit in the memory cell, the prediction kept.
        self.assertRegex(oom[4], r"^OOM \(backward\)\[\^\d+\]$")
        self.assertEqual(oom[5:], ["OOM", "-", "OOM (limit 40.00 GiB)", "45.00 GiB", "-"])
        self.assertRegex(err[4], r"^error\[\^\d+\]$")
        self.assertEqual(err[5:], ["error", "-", "-", "-", "-"])
        # Stuck at "running" in metrics.h5, OOM in runs/matrix_exp2.tsv.
        self.assertRegex(stuck[4], r"^OOM\[\^\d+\]$")
        note = stuck[4].split("[^")[1].rstrip("]")
        footnote = [l for l in lines if l.startswith(f"[^{note}]:")]
        self.assertEqual(len(footnote), 1)
        self.assertIn("exp2_t5xl_full_zero3_4", footnote[0])
        self.assertIn("run_matrix.sh recorded exit 3", footnote[0])
        err_note = [l for l in lines if l.startswith("[^" + err[4].split("[^")[1].rstrip("]") + "]:")]
        self.assertIn("failed: NaN loss at step 7", err_note[0])
        speedup = [l for l in lines if l.startswith("Speedup")]
        self.assertEqual(speedup, [
            "Speedup, t5xl lora zero3: 1.67x from 2 to 4 GPUs (per-epoch time 1m 40s -> 1m 00s; ideal 2.00x), "
            "scaling efficiency 83.3%; peak memory per rank 30.00 GiB -> 20.00 GiB (0.67x)",
            "Speedup, t5xl full zero3: n/a (completed at fewer than two GPU counts; not completed at 4 GPUs (OOM))",
            "Speedup, t5xl full ddp: n/a (completed at fewer than two GPU counts; not completed at 2 GPUs (OOM), "
            "4 GPUs (error))",
        ])

    def test_stuck_run_without_matrix_table_is_incomplete(self):
        r = run_report(os.path.join(self.root, "exp2_t5xl_full_zero3_4"), os.path.join(self.root, "exp2_t5xl_full_zero3_2"),
                       "--no-plots")
        self.assertEqual(r.returncode, 0, r.stderr)  # the table beside the runs is still found
        self.assertRegex(rows(section(r.stdout, "exp2"), "| model |")[1][4], r"^OOM\[")
        with tempfile.TemporaryDirectory() as tmp:
            d = exp_run(tmp, "exp2_t5xl_full_zero3_4", "running", world=4)
            r = run_report(d, "--no-plots")
        self.assertEqual(r.returncode, 0, r.stderr)
        row = rows(section(r.stdout, "exp2"), "| model |")[0]
        self.assertEqual(row[:4], ["t5xl", "full", "zero3", "4"])  # from the run_id: the file has no summary
        self.assertRegex(row[4], r"^incomplete\[\^1\]$")

    def test_exp3_qlora_reduction(self):
        lines = section(self.out, "exp3")
        table = rows(lines, "| model |")
        self.assertEqual([r[1] + "@" + r[3] for r in table],
                         ["qlora@2", "qlora@4", "lora@2", "lora@4", "full@2"])
        self.assertEqual(table[0][7:], ["12.00 GiB", "12.30 GiB", "1.025"])
        self.assertIn("QLoRA vs LoRA peak memory (reference: about 40% less with QLoRA):", lines)
        self.assertEqual(rows(lines, "| model | strategy | GPUs | LoRA peak"), [
            ["llama7b", "zero3", "2", "20.00 GiB", "12.00 GiB", "40.0%", "0.440", "0.450"],
            ["llama7b", "zero3", "4", "15.00 GiB", "10.00 GiB", "33.3%", "0.440", "0.460"],
        ])
        self.assertIn("QLoRA reduction, llama7b zero3: 36.7% mean over 2 GPU counts (reference about 40%)", lines)
        speedup = [l for l in lines if l.startswith("Speedup")]
        self.assertEqual(speedup[0].split(" (per-epoch")[0], "Speedup, llama7b qlora zero3: 1.88x from 2 to 4 GPUs")
        self.assertIn("scaling efficiency 93.8%", speedup[0])   # 300/160 = 1.875; / 2 = 0.9375
        self.assertIn("scaling efficiency 80.0%", speedup[1])   # lora: 240/150 = 1.6; / 2
        self.assertEqual(len(speedup), 2)  # full ran at one GPU count only

    def test_predicted_vs_measured(self):
        lines = self.out.splitlines()
        start = lines.index("### Predicted vs measured peak memory")
        part = lines[start:]
        table = {r[0]: r[1:] for r in rows(part, "| run |")}
        self.assertEqual(list(table), ["exp1_llama7b_full_tp_2", "exp1_llama7b_full_tp_4", "exp2_t5xl_lora_zero3_2",
                                       "exp2_t5xl_lora_zero3_4", "exp3_llama7b_qlora_zero3_2",
                                       "exp3_llama7b_qlora_zero3_4", "exp3_llama7b_lora_zero3_2",
                                       "exp3_llama7b_lora_zero3_4"])
        self.assertEqual(table["exp1_llama7b_full_tp_2"],
                         ["2", "41.00 GiB", "40.00 GiB", "1.025", "+2.5%", "-2.6% (rank 0)", "no"])
        self.assertEqual(table["exp1_llama7b_full_tp_4"], ["4", "22.00 GiB", "20.00 GiB", "1.100", "+10.0%", "-", "yes"])
        # Within 5% at run level (1.020), over it on rank 1 (20 / 18 GiB = +11.1%).
        self.assertEqual(table["exp2_t5xl_lora_zero3_4"],
                         ["4", "20.40 GiB", "20.00 GiB", "1.020", "+2.0%", "+11.1% (rank 1)", "yes"])
        self.assertEqual(table["exp2_t5xl_lora_zero3_2"][5:], ["+0.0% (rank 0)", "no"])
        self.assertEqual(table["exp3_llama7b_qlora_zero3_4"][3:], ["1.040", "+4.0%", "-", "no"])
        self.assertIn("Worst absolute deviation: 11.1% (exp2_t5xl_lora_zero3_4, rank 1).", part)
        self.assertIn("Over 5%: exp1_llama7b_full_tp_4, exp2_t5xl_lora_zero3_4.", part)
        self.assertIn("OOM exp2_t5xl_full_ddp_2: predicted 45.00 GiB against the limit 40.00 GiB "
                      "(the prediction is over the limit).", part)
        missing = [l for l in part if l.startswith("No predicted_peak")]
        self.assertEqual(missing, ["No predicted_peak (older metrics.h5): exp1_llama7b_full_tp_8, "
                                   "exp2_t5xl_full_zero3_2, exp3_llama7b_full_zero3_2, tiny-llama-full."])

    def test_functions(self):
        runs = [report.Run(st_read.read_run(os.path.join(self.root, n)), n) for n in
                ("exp1_llama7b_full_tp_2", "exp1_llama7b_full_tp_4", "exp1_llama7b_full_tp_8")]
        (e,) = report.scaling(runs)
        self.assertEqual((e["lo"], e["hi"]), (2, 8))
        self.assertAlmostEqual(e["speedup"], 3.2)
        self.assertAlmostEqual(e["ideal"], 4.0)
        self.assertAlmostEqual(e["efficiency"], 0.8)
        self.assertEqual(runs[0].summary["peak_memory"], 39 * GIB)  # rank 0's
        self.assertEqual(runs[0].peak, 40 * GIB)  # the highest rank's
        self.assertAlmostEqual(runs[0].prediction_ratio(), 1.025)
        dev, rank = runs[0].worst_rank_deviation()
        self.assertAlmostEqual(dev, 38 / 39 - 1)
        self.assertEqual(rank, 0)
        self.assertIsNone(runs[2].predicted)
        self.assertIsNone(runs[2].prediction_ratio())
        lora, qlora = (report.Run(st_read.read_run(os.path.join(self.root, n)), n) for n in
                       ("exp3_llama7b_lora_zero3_4", "exp3_llama7b_qlora_zero3_4"))
        self.assertAlmostEqual(report.qlora_reduction(lora, qlora), 100 / 3)
        self.assertEqual(qlora.experiment, "exp3")
        self.assertEqual((qlora.model, qlora.method, qlora.strategy, qlora.gpus), ("llama7b", "qlora", "zero3", 4))

    def test_summary_prediction_falls_back_to_ranks(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = exp_run(tmp, "exp3_llama13b_lora_zero3_2", world=2, epoch_time=10, peaks=[10 * GIB, 8 * GIB],
                        rank_predicted=[9 * GIB, 11 * GIB])
            run = report.Run(st_read.read_run(d), d)
        self.assertEqual(run.predicted, 11 * GIB)
        self.assertAlmostEqual(run.prediction_ratio(), 1.1)
        self.assertEqual(run.worst_rank_deviation(), (11 / 8 - 1, 1))

    def test_run_id_schemes(self):
        with tempfile.TemporaryDirectory() as tmp:
            cpu = exp_run(tmp, "exp1_cpu_full_tp_2", world=2, epoch_time=10, peaks=[GIB, GIB])
            # A hand-named run (inputs/exp1/llama7b_tp.cfg's example): model from the run_id, rest from /summary.
            hand = write_run(tmp, "exp1_llama7b_tp4", {"outcome": "ok", "method": "full", "strategy": "tp",
                                                       "world_size": 4, "tp": 4, "dp": 1, "mean_epoch_time": 5.0})
            other = write_run(tmp, "experiment-7", {"outcome": "ok", "world_size": 1})
            got = [report.Run(st_read.read_run(d), d) for d in (cpu, hand, other)]
        self.assertEqual([(r.experiment, r.model, r.method, r.strategy, r.gpus) for r in got],
                         [("exp1", "cpu", "full", "tp", 2), ("exp1", "llama7b", "full", "tp", 4),
                          (None, None, None, None, 1)])

    def test_plots(self):
        plots = os.path.join(self.root, "plots")  # the default: plots/ beside the runs
        self.assertIn("Plots: ", self.out)
        for name in ["loss.png", "epoch_time.png", "memory.png"] + [
                f"{exp}_{kind}.png" for exp in ("exp1", "exp2", "exp3") for kind in ("epoch_time", "memory", "loss")]:
            path = os.path.join(plots, name)
            self.assertIn(path, self.out)
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n", name)
            self.assertGreater(os.path.getsize(path), 5000, name)

    def test_nothing_readable(self):
        r = run_report(os.path.join(self.root, "notes.txt"), os.path.join(self.root, "matrix_exp2.tsv"),
                       os.path.join(self.root, "bench"), "--no-plots")
        self.assertEqual(r.returncode, 2)
        self.assertIn("no readable run among the 3 path(s) given", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_make_report_target(self):
        # make -n prints the command without running it: runs/* by default, RUNS=DIR otherwise.
        for extra, runs in (([], "runs"), (["RUNS=runs/cpu-repro"], "runs/cpu-repro")):
            out = subprocess.run(["make", "-s", "-n", "-C", REPO, "report"] + extra, capture_output=True,
                                 text=True, check=True).stdout
            self.assertIn(f"analysis/report.py {runs}/* --plots {runs}/plots", out)


if __name__ == "__main__":
    unittest.main()


class PackingReportTest(unittest.TestCase):
    """Sequence packing (issue 19): the matrix's "-packed" twins beside the unpacked runs."""

    def test_packed_rows_and_the_per_epoch_comparison(self):
        g = GIB
        with tempfile.TemporaryDirectory(prefix="shardtune-pack-report-") as tmp:
            # lora at 2 GPUs: 240 s unpacked (61.5% padding), 96 s packed (1.2%): 2.50x.
            exp_run(tmp, "exp3_llama7b_lora_zero3_2", world=2, epoch_time=240, val_loss=0.44, peaks=[20 * g] * 2,
                    padding_fraction=0.615)
            exp_run(tmp, "exp3_llama7b_lora-packed_zero3_2", world=2, epoch_time=96, val_loss=0.43,
                    peaks=[20 * g] * 2, padding_fraction=0.012)
            exp_run(tmp, "exp3_llama7b_lora-packed_zero3_4", world=4, epoch_time=50, val_loss=0.43, peaks=[15 * g] * 4)
            exp_run(tmp, "exp3_llama7b_qlora_zero3_2", world=2, epoch_time=300, val_loss=0.45, peaks=[12 * g] * 2)
            r = run_report(*sorted(os.path.join(tmp, n) for n in os.listdir(tmp)))
            self.assertEqual(r.returncode, 0, r.stderr)
            lines = section(r.stdout, "exp3")
            self.assertEqual([row[1] + "@" + row[3] for row in rows(lines, "| model |")],
                             ["qlora@2", "lora@2", "lora, packed@2", "lora, packed@4"])
            packing = [l for l in lines if l.startswith("Packing")]
            self.assertEqual(packing, ["Packing, llama7b lora zero3, 2 GPUs: per-epoch time 4m 00s -> 1m 36s (2.50x); "
                                       "padding 61.5% -> 1.2% of computed tokens; val loss 0.440 -> 0.430"])
            speedup = [l for l in lines if l.startswith("Speedup")]
            self.assertEqual(len(speedup), 1)
            self.assertTrue(speedup[0].startswith("Speedup, llama7b lora, packed zero3: 1.92x from 2 to 4 GPUs"), speedup)
            # A run named by hand is packed when its /config says so.
            d = write_run(tmp, "plain-run", {"outcome": "ok"}, config={"packing": "true"})
            self.assertTrue(report.Run(st_read.read_run(d), d).packed)


class PredictedTablesBesideRuns(unittest.TestCase):
    """report.py --predicted BIN: the planner's tables of the experiments among the runs (issue 21),
    each matrix row with the measured epoch of the run of that id where one exists."""

    def test_predicted_table_of_the_experiment_present(self):
        binary = os.path.join(REPO, "build", "shardtune")
        if not os.path.exists(binary):
            self.skipTest(f"{binary} not built (make build)")
        with tempfile.TemporaryDirectory() as t:
            d = exp_run(t, "exp1_llama7b_full_tp_4", world=4, epoch_time=400, peaks=[20 * GIB] * 4)
            # Rows of 128 tokens where the deck's shards (data/sst2-llama) were not prepared.
            p = run_report(d, "--no-plots", "--predicted", binary, "--predicted-seq-len", "128")
            self.assertEqual(p.returncode, 0, p.stderr)
            lines = p.stdout.splitlines()
            self.assertIn("### exp1: predicted on a100-40gb, 8 GPUs per node", lines)
            self.assertFalse(any(l.startswith("### exp2: predicted") for l in lines))  # no exp2 run given
            start = lines.index("### exp1: predicted on a100-40gb, 8 GPUs per node")
            table = [l.strip("|").split("|") for l in lines[start + 1:] if l.startswith("| exp1_")]
            table = [[c.strip() for c in row] for row in table]
            # jobs/matrix.sh's exp1 rows: tp 2, 4, 8, unpacked and packed.
            self.assertEqual([(r[0], r[1], r[2], r[3]) for r in table], [
                ("exp1_llama7b_full_tp_2", "2", "tp", "2"), ("exp1_llama7b_full_tp_4", "4", "tp", "4"),
                ("exp1_llama7b_full_tp_8", "8", "tp", "8"), ("exp1_llama7b_full-packed_tp_2", "2", "tp", "2"),
                ("exp1_llama7b_full-packed_tp_4", "4", "tp", "4"), ("exp1_llama7b_full-packed_tp_8", "8", "tp", "8")])
            for r in table:
                self.assertRegex(r[4], r"^[0-9.]+ (ms|s)$", r)  # a predicted step time, not a plan error
                self.assertGreater(float(r[5]), 0, r)  # tokens/s per GPU
            # Only the run given has a measured epoch; its ratio is predicted epoch / 400 s when the
            # plan has an epoch (the deck's shards exist), "-" otherwise.
            measured = {r[0]: (r[8], r[9]) for r in table}
            self.assertEqual(measured["exp1_llama7b_full_tp_4"][0], "400 s")
            self.assertTrue(all(m == ("-", "-") for k, m in measured.items() if k != "exp1_llama7b_full_tp_4"))
            row4 = next(r for r in table if r[0] == "exp1_llama7b_full_tp_4")
            if row4[6] != "-":
                pred_epoch = float(row4[6].split()[0]) / (1e3 if row4[6].endswith("ms") else 1)
                self.assertAlmostEqual(float(row4[9]), pred_epoch / 400, delta=0.006)
            else:
                self.assertEqual(row4[9], "-")

    def test_no_experiment_runs(self):
        binary = os.path.join(REPO, "build", "shardtune")
        with tempfile.TemporaryDirectory() as t:
            d = write_run(t, "plain_run", {"outcome": "ok", "method": "full"}, steps=_steps(4, 3.0))
            p = run_report(d, "--no-plots", "--predicted", binary)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("(--predicted: no experiment runs (exp<N>_... run ids) among the runs)", p.stdout)
