"""jobs/: the Slurm arrays of the three reference experiments and jobs/run_matrix.sh (issue 7).

Every job script passes `bash -n`; each sbatch array index's DRY_RUN prints one launch line with
the deck, rank count and strategy its experiment's matrix needs (checked against the matrices
written out below, not against jobs/matrix.sh alone); run_matrix.sh skips runs whose metrics.h5
says outcome ok, records exit 3 as OOM and goes on after a failure. A fake mpirun and a fake
shardtune (environment MPIRUN, BIN) stand in, so nothing real runs.
Run: python3 -m unittest discover -s tests/python -p 'test_*.py'
"""

import glob
import itertools
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
import unittest

import h5py

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOBS = os.path.join(REPO, "jobs")
RANKS = (2, 4, 8)

# What each experiment must run (issue 7): (deck, ranks, parallel, tp_size) per array index.
EXPECTED = {
    "exp1": {(f"inputs/exp1/llama7b_tp{packed}.cfg", r, "tp", r) for packed, r in itertools.product(("", "_packed"), RANKS)},
    "exp2": {(f"inputs/exp2/flant5_{size}_{method}.cfg", r, par, 1)
             for size, (method, par), r in itertools.product(
                 ("large", "xl"), (("lora", "zero3"), ("full", "zero3"), ("full", "ddp")), RANKS)},
    "exp3": {(f"inputs/exp3/llama{size}_{method}.cfg", r, "zero3", 1)
             for size, method, r in itertools.product(("7b", "13b"), ("qlora", "lora", "full", "lora_packed"), RANKS)},
}


def _bash(script, env=None, cwd=REPO):
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True)


def _matrix(exp, cpu=""):
    out = _bash(f"source jobs/matrix.sh && matrix_rows {exp} {cpu}")
    assert out.returncode == 0, out.stderr
    return [line.split() for line in out.stdout.splitlines()]


def _dry_run(sbatch, index, **extra):
    env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(index), DRY_RUN="1", **extra)
    env.pop("SLURM_SUBMIT_DIR", None)
    return subprocess.run([sbatch], cwd="/", env=env, capture_output=True, text=True)


def _option(argv, name):
    """The value of `--name value` or `--name=value` in argv (None when absent)."""
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


class BashSyntax(unittest.TestCase):
    def test_every_job_script_parses(self):
        scripts = sorted(glob.glob(os.path.join(JOBS, "*.sh")) + glob.glob(os.path.join(JOBS, "*.sbatch")))
        self.assertGreaterEqual(len(scripts), 7)
        for s in scripts:
            with self.subTest(script=os.path.basename(s)):
                out = subprocess.run(["bash", "-n", s], capture_output=True, text=True)
                self.assertEqual(out.returncode, 0, out.stderr)


class SlurmArrays(unittest.TestCase):
    def test_directives(self):
        for exp in EXPECTED:
            with self.subTest(exp=exp):
                with open(os.path.join(JOBS, f"{exp}.sbatch")) as f:
                    text = f.read()
                self.assertRegex(text, r"(?m)^#SBATCH --ntasks-per-node=\d+$")
                self.assertRegex(text, r"(?m)^#SBATCH --gpus-per-node=\d+$")
                self.assertNotIn("--gpus-per-task", text)
                m = re.search(r"(?m)^#SBATCH --array=0-(\d+)$", text)
                self.assertIsNotNone(m)
                self.assertEqual(int(m.group(1)) + 1, len(EXPECTED[exp]), "array size = matrix size")

    def test_dry_run_per_index(self):
        for exp, want in EXPECTED.items():
            got = set()
            run_ids = set()
            for index in range(len(want)):
                with self.subTest(exp=exp, index=index):
                    out = _dry_run(os.path.join(JOBS, f"{exp}.sbatch"), index)
                    self.assertEqual(out.returncode, 0, out.stderr)
                    lines = out.stdout.strip().splitlines()
                    self.assertEqual(len(lines), 1, out.stdout)
                    argv = shlex.split(lines[0])
                    self.assertEqual(argv[:2], ["srun", "--mpi=pmix"])
                    self.assertIn("train", argv)
                    deck = _option(argv, "--deck")
                    self.assertTrue(os.path.isfile(os.path.join(REPO, deck)), deck)
                    ranks, par, tp = int(_option(argv, "--ntasks")), _option(argv, "--parallel"), int(_option(argv, "--tp_size"))
                    run_id = _option(argv, "--run_id")
                    self.assertTrue(run_id.startswith(exp + "_") and run_id.endswith(f"_{ranks}"), run_id)
                    self.assertIn(f"_{par}_", run_id)
                    self.assertEqual(_option(argv, "--output_dir"), "runs")
                    got.add((deck, ranks, par, tp))
                    run_ids.add(run_id)
            self.assertEqual(got, want, exp)
            self.assertEqual(len(run_ids), len(want), f"{exp}: run_ids must be distinct")

    def test_mpirun_launcher_and_extra_arguments(self):
        out = _dry_run(os.path.join(JOBS, "exp2.sbatch"), 0, LAUNCHER="mpirun")
        argv = shlex.split(out.stdout.strip())
        self.assertEqual(argv[:3], ["mpirun", "-np", "2"])
        env = dict(os.environ, SLURM_ARRAY_TASK_ID="0", DRY_RUN="1")
        out = subprocess.run([os.path.join(JOBS, "exp1.sbatch"), "--model", "/m"], env=env, capture_output=True, text=True)
        self.assertEqual(shlex.split(out.stdout.strip())[-2:], ["--model", "/m"])

    def test_index_outside_the_matrix_fails(self):
        for index in (str(len(EXPECTED["exp1"])), "-1", "x"):
            out = _dry_run(os.path.join(JOBS, "exp1.sbatch"), index)
            self.assertNotEqual(out.returncode, 0, index)
            self.assertEqual(out.stdout, "")

    def test_submit_sizes_each_rank_count(self):
        env = dict(os.environ, DRY_RUN="1")
        out = subprocess.run([os.path.join(JOBS, "submit_matrix.sh"), "exp3"], env=env, capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.strip().splitlines()
        self.assertEqual(len(lines), 3)
        rows = _matrix("exp3")
        for r, line in zip(RANKS, lines):
            argv = shlex.split(line)
            self.assertEqual(_option(argv, "--ntasks-per-node"), str(r))
            self.assertEqual(_option(argv, "--gpus-per-node"), str(r))
            idx = [int(i) for i in _option(argv, "--array").split(",")]
            self.assertEqual([int(rows[i][1]) for i in idx], [r] * len(idx))


class CpuMatrices(unittest.TestCase):
    def test_cpu_rows(self):
        for exp in EXPECTED:
            rows = _matrix(exp, "cpu")
            self.assertEqual({int(r[1]) for r in rows}, {2, 4}, exp)
            for run_id, ranks, deck, par, tp in rows:
                self.assertTrue(os.path.basename(deck).startswith("cpu_"), deck)
                self.assertTrue(os.path.isfile(os.path.join(REPO, deck)), deck)
                if par == "tp":
                    self.assertEqual(tp, ranks)


FAKE_MPIRUN = """\
#!/usr/bin/env bash
# fake mpirun: log the call, drop `-np N`, run the rest once
echo "$*" >> "$FAKE_LOG"
[ "$1" = -np ] && shift 2
exec "$@"
"""

FAKE_SHARDTUNE = """\
#!{python}
# fake shardtune train: writes metrics.h5 with the outcome FAKE_OUTCOMES gives its run_id
import os, sys, h5py
a = sys.argv
run_id, out = a[a.index("--run_id") + 1], a[a.index("--output_dir") + 1]
outcome = dict(x.split("=") for x in os.environ.get("FAKE_OUTCOMES", "").split(",") if x).get(run_id, "ok")
if outcome == "error":
    sys.exit(1)
os.makedirs(os.path.join(out, run_id), exist_ok=True)
with h5py.File(os.path.join(out, run_id, "metrics.h5"), "w") as f:
    s = f.create_group("summary")
    s.attrs.create("outcome", outcome.encode(), dtype=h5py.string_dtype("utf-8", len(outcome)))
sys.exit(3 if outcome == "oom" else 0)
"""


def _write_metrics(path, outcome):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:  # as src/io/metrics: fixed-length UTF-8 string attribute
        s = f.create_group("summary")
        s.attrs.create("outcome", outcome.encode(), dtype=h5py.string_dtype("utf-8", len(outcome)))


class RunMatrix(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        t = self.tmp.name
        self.runs, self.log = os.path.join(t, "runs"), os.path.join(t, "calls.log")
        self.mpirun, self.bin = os.path.join(t, "mpirun"), os.path.join(t, "shardtune")
        with open(self.mpirun, "w") as f:
            f.write(FAKE_MPIRUN)
        with open(self.bin, "w") as f:
            f.write(FAKE_SHARDTUNE.format(python=sys.executable))
        for p in (self.mpirun, self.bin):
            os.chmod(p, os.stat(p).st_mode | stat.S_IXUSR)

    def tearDown(self):
        self.tmp.cleanup()

    def _run(self, exp, outcomes=""):
        env = dict(os.environ, MPIRUN=self.mpirun, BIN=self.bin, RUNS=self.runs, PYTHON=sys.executable,
                   FAKE_LOG=self.log, FAKE_OUTCOMES=outcomes)
        out = subprocess.run([os.path.join(JOBS, "run_matrix.sh"), exp, "--cpu"], env=env, capture_output=True,
                             text=True, timeout=120)
        table = os.path.join(self.runs, f"matrix_{exp}_cpu.tsv")
        results = {}
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.rstrip("\n").split("\t")
                results[cols[0]] = cols[4]
        calls = []
        if os.path.exists(self.log):
            with open(self.log) as f:
                calls = f.read().splitlines()
        return out, results, calls

    def test_skip_ok_rerun_oom_and_missing(self):
        rows = [r[0] for r in _matrix("exp2", "cpu")]
        ok_id, oom_id, missing_id = rows[0], rows[1], rows[2]
        _write_metrics(os.path.join(self.runs, ok_id, "metrics.h5"), "ok")
        _write_metrics(os.path.join(self.runs, oom_id, "metrics.h5"), "oom")  # an earlier OOM: not "ok", runs again
        out, results, calls = self._run("exp2", outcomes=f"{oom_id}=oom")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(results[ok_id], "skipped")
        self.assertEqual(results[oom_id], "OOM")
        self.assertEqual(results[missing_id], "ok")
        self.assertEqual(set(results), set(rows))
        called = [_option(c.split(), "--run_id") for c in calls]
        self.assertNotIn(ok_id, called)
        self.assertEqual(sorted(called), sorted(set(rows) - {ok_id}))
        for c in calls:  # the launcher gets -np RANKS and the row's deck and strategy
            argv = c.split()
            row = next(r for r in _matrix("exp2", "cpu") if r[0] == _option(argv, "--run_id"))
            self.assertEqual(argv[:2], ["-np", row[1]])
            self.assertEqual((_option(argv, "--deck"), _option(argv, "--parallel")), (row[2], row[3]))
            # the earlier OOM attempt is replaced on purpose; a new run replaces nothing
            self.assertEqual("--overwrite" in argv, row[0] == oom_id, c)
            if row[0] == oom_id:
                self.assertEqual(_option(argv, "--overwrite"), "true")

        # second pass: everything that finished ok is skipped; the OOM row runs again and stays OOM
        os.remove(self.log)
        out, results, calls = self._run("exp2", outcomes=f"{oom_id}=oom")
        self.assertEqual(out.returncode, 0)
        self.assertEqual([_option(c.split(), "--run_id") for c in calls], [oom_id])
        self.assertEqual(results[oom_id], "OOM")
        self.assertEqual({k for k, v in results.items() if v == "skipped"}, set(rows) - {oom_id})

    def test_a_failure_is_reported_and_the_matrix_goes_on(self):
        rows = [r[0] for r in _matrix("exp3", "cpu")]
        out, results, calls = self._run("exp3", outcomes=f"{rows[0]}=error")
        self.assertEqual(out.returncode, 1)
        self.assertTrue(results[rows[0]].startswith("FAILED"), results[rows[0]])
        self.assertEqual([results[r] for r in rows[1:]], ["ok"] * (len(rows) - 1))
        self.assertEqual(len(calls), len(rows))


if __name__ == "__main__":
    unittest.main()


class SlurmTrain(unittest.TestCase):
    """jobs/slurm_train.sh: sized from the environment (no hard-coded GPU or CPU counts), DRY_RUN,
    and the requeue on exit 4 (preempted) with fake srun / scontrol on PATH."""

    SCRIPT = os.path.join(JOBS, "slurm_train.sh")

    def _run(self, args=(), **env):
        e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        e.update(env)
        return subprocess.run([self.SCRIPT, *args], cwd=REPO, env=e, capture_output=True, text=True)

    def test_no_hard_coded_sizes(self):
        with open(self.SCRIPT) as f:
            directives = [l for l in f.read().splitlines() if l.startswith("#SBATCH")]
        for d in directives:
            for opt in ("--gpus", "--cpus-per-task", "--ntasks", "--nodes"):
                self.assertNotIn(opt, d)
        self.assertIn("#SBATCH --requeue", directives)
        self.assertIn("#SBATCH --signal=USR1@120", directives)

    def test_submit_defaults_and_environment(self):
        out = self._run(["--deck", "D.cfg"], DRY_RUN="1")
        self.assertEqual(out.returncode, 0, out.stderr)
        argv = shlex.split(out.stdout.strip())
        self.assertEqual(argv[0], "sbatch")
        for opt, want in (("--nodes", "1"), ("--ntasks-per-node", "4"), ("--gpus-per-node", "4"),
                          ("--cpus-per-task", "8"), ("--time", "04:00:00")):
            self.assertEqual(_option(argv, opt), want, opt)
        self.assertEqual(argv[-3:], [self.SCRIPT, "--deck", "D.cfg"])
        out = self._run(["--deck", "D.cfg"], DRY_RUN="1", NODES="2", GPUS_PER_NODE="8", CPUS_PER_TASK="12",
                        TIME="1:00:00", SBATCH_ARGS="--partition=gpu --account=x")
        argv = shlex.split(out.stdout.strip())
        for opt, want in (("--nodes", "2"), ("--ntasks-per-node", "8"), ("--gpus-per-node", "8"),
                          ("--cpus-per-task", "12"), ("--time", "1:00:00"), ("--partition", "gpu"), ("--account", "x")):
            self.assertEqual(_option(argv, opt), want, opt)
        out = self._run([], DRY_RUN="1", GPUS_PER_NODE="0", TASKS_PER_NODE="2")
        argv = shlex.split(out.stdout.strip())
        self.assertIsNone(_option(argv, "--gpus-per-node"))
        self.assertEqual(_option(argv, "--ntasks-per-node"), "2")

    def test_in_job_launch_line(self):
        out = self._run(["--deck", "D.cfg", "--checkpoint_every", "50"], DRY_RUN="1", SLURM_JOB_ID="77")
        self.assertEqual(out.returncode, 0, out.stderr)
        argv = shlex.split(out.stdout.strip())
        self.assertEqual(argv[:3], ["srun", "--mpi=pmix", "--cpu-bind=cores"])
        self.assertEqual(argv[3:5], ["build/shardtune", "train"])
        self.assertEqual(_option(argv, "--run_id"), "slurm-77")
        self.assertEqual(_option(argv, "--resume"), "auto")
        self.assertEqual(_option(argv, "--checkpoint_every"), "50")
        out = self._run(["--deck", "D.cfg", "--resume=none"], DRY_RUN="1", SLURM_JOB_ID="77", RUN_ID="mine")
        argv = shlex.split(out.stdout.strip())
        self.assertEqual(_option(argv, "--run_id"), "mine")
        self.assertEqual([a for a in argv if a.startswith("--resume")], ["--resume=none"])

    def _fake_slurm(self, tmp, srun_exit):
        for name, body in (("srun", f"echo srun \"$@\" >> {tmp}/calls; exit {srun_exit}"),
                           ("scontrol", f"echo scontrol \"$@\" >> {tmp}/calls")):
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write(f"#!/bin/bash\n{body}\n")
            os.chmod(path, 0o755)
        return dict(PATH=f"{tmp}:{os.environ['PATH']}", SLURM_JOB_ID="91")

    def _calls(self, tmp):
        path = os.path.join(tmp, "calls")
        return open(path).read().splitlines() if os.path.exists(path) else []

    def test_requeue_on_preemption(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = self._run(["--deck", "D.cfg"], **self._fake_slurm(tmp, 4))
            self.assertEqual(out.returncode, 0, out.stderr)
            calls = self._calls(tmp)
            self.assertEqual(len(calls), 2, calls)
            self.assertTrue(calls[0].startswith("srun "))
            self.assertEqual(calls[1], "scontrol requeue 91")
        with tempfile.TemporaryDirectory() as tmp:  # REQUEUE=0, or the requeue budget spent: exit 4
            for extra in ({"REQUEUE": "0"}, {"SLURM_RESTART_COUNT": "3", "MAX_REQUEUES": "3"}):
                open(os.path.join(tmp, "calls"), "w").close()
                out = self._run(["--deck", "D.cfg"], **self._fake_slurm(tmp, 4), **extra)
                self.assertEqual(out.returncode, 4, extra)
                self.assertEqual([c for c in self._calls(tmp) if c.startswith("scontrol")], [], extra)
        for rc in (0, 1, 3):  # finished, failed, out of memory: no requeue, the status passes through
            with tempfile.TemporaryDirectory() as tmp:
                out = self._run(["--deck", "D.cfg"], **self._fake_slurm(tmp, rc))
                self.assertEqual(out.returncode, rc)
                self.assertEqual([c for c in self._calls(tmp) if c.startswith("scontrol")], [])
