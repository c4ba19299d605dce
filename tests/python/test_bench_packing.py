"""analysis/bench_packing.py without a GPU: its commands, the summary of a run's metrics (real and
computed tokens, padding, projected epoch time), the speedups, the targets and the tables, on
fake runs. (`--tiny` runs the whole driver on the CPU; see the script's docstring.) Run:
python3 -m unittest discover -s tests/python -p 'test_*.py'
"""

import contextlib
import io
import os
import sys
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "analysis"))
import bench_packing as bp  # noqa: E402


def fake_run(tokens, computed, times, steps_per_epoch, outcome="ok", peak=2 * 2 ** 30):
    n = len(tokens)
    return {"summary": {"outcome": outcome, "steps_per_epoch": steps_per_epoch, "peak_memory": peak,
                        "padding_fraction": 1 - sum(tokens) / sum(computed)},
            "steps": {"step": list(range(1, n + 1)), "tokens": tokens, "computed_tokens": computed,
                      "step_time": times}}


class Commands(unittest.TestCase):
    def test_prepare_uses_the_llama2_tokenizer_and_the_dataset_length(self):
        cmd = bp.prepare_command("bin/st", "/s", "/d", "alpaca", limit=50)
        self.assertEqual(cmd[:2], ["bin/st", "prepare"])
        self.assertIn("/s/instruct/alpaca_en_demo.json", cmd)
        self.assertIn("/s/tokenizers/llama2/tokenizer.model", cmd)
        self.assertEqual(cmd[cmd.index("--max-seq-len") + 1], "1024")
        self.assertEqual(cmd[cmd.index("--output") + 1], "/d/alpaca-llama2")
        self.assertEqual(cmd[-2:], ["--limit", "50"])

    def test_modes_differ_only_in_their_keys(self):
        cmds = {m: bp.train_command("mpirun --oversubscribe", "st", "deck.cfg", "data", "r", "out", m, 16, 200,
                                    ["--memory_limit", "40GiB"]) for m in bp.MODES}
        self.assertEqual(cmds["padded"][:4], ["mpirun", "--oversubscribe", "-np", "1"])
        self.assertEqual(os.geteuid() == 0, "--allow-run-as-root" in cmds["padded"])
        for m, c in cmds.items():
            self.assertEqual(c[c.index("--micro_batch_size") + 1], "16")
            self.assertEqual(c[c.index("--max_steps") + 1], "200")
            self.assertEqual(c[-2:], ["--memory_limit", "40GiB"])
        self.assertIn("--packing", cmds["packed"])
        self.assertIn("--group_by_length", cmds["grouped"])
        self.assertNotIn("--packing", cmds["padded"])
        self.assertEqual(bp.train_command("", "st", "d", "x", "r", "o", "padded", 1, 1)[0], "st")


class Summary(unittest.TestCase):
    def test_sums_after_warmup_and_projects_the_epoch(self):
        # Steps 1-2 are warm-up (left out); steps 3-4: 300 real of 400 computed tokens in 2 s.
        run = fake_run([999, 999, 100, 200], [999, 999, 200, 200], [9.0, 9.0, 0.5, 1.5], 1000)
        s = bp.summarize(run)
        self.assertEqual(s["outcome"], "ok")
        self.assertEqual(s["steps_measured"], 2)
        self.assertAlmostEqual(s["real_tokens_per_s"], 150.0)
        self.assertAlmostEqual(s["computed_tokens_per_s"], 200.0)
        self.assertAlmostEqual(s["padding_fraction"], 0.25)
        self.assertAlmostEqual(s["mean_step_time"], 1.0)
        self.assertAlmostEqual(s["epoch_seconds"], 1000.0)
        self.assertEqual(s["steps_per_epoch"], 1000)

    def test_a_run_without_steps_is_an_error(self):
        s = bp.summarize({"summary": {"outcome": "ok"}, "steps": {}})
        self.assertEqual(s["outcome"], "error")
        self.assertEqual(bp.summarize({"summary": {"outcome": "oom"}, "steps": {}})["outcome"], "oom")


class Comparison(unittest.TestCase):
    def rows(self, packed_speed, packed_padding):
        rows = []
        for mode, real, comp in (("padded", 100, 250), ("grouped", 180, 190), ("packed", 100 * packed_speed, None)):
            comp = comp or real / (1 - packed_padding)
            r = bp.summarize(fake_run([0, 0, real, real], [1, 1, comp, comp], [1, 1, 1, 1], 10))
            r.update(dataset="sst2", mode=mode, micro_batch_size=16)
            rows.append(r)
        return bp.compare(rows)

    def test_speedups_against_the_padded_row_and_targets(self):
        rows = self.rows(2.5, 0.02)
        self.assertAlmostEqual(rows[0]["speedup"], 1.0)
        self.assertAlmostEqual(rows[1]["speedup"], 1.8)
        self.assertAlmostEqual(rows[2]["speedup"], 2.5)
        targets = bp.judge_targets(rows)
        self.assertEqual([t[3] for t in targets], [bp.MET, bp.MET])
        missed = bp.judge_targets(self.rows(1.5, 0.08))
        self.assertEqual([t[3] for t in missed], [bp.NOT_MET, bp.NOT_MET])

    def test_a_failed_run_is_not_judged(self):
        rows = self.rows(2.5, 0.02)
        rows[2]["outcome"] = "oom"
        self.assertEqual([t[3] for t in bp.judge_targets(bp.compare(rows))], [bp.NA, bp.NA])

    def test_tables_show_every_row(self):
        rows = self.rows(2.5, 0.02)
        text = bp.text_table(rows)
        self.assertEqual(len(text.splitlines()), 4)
        self.assertIn("2.50x", text)
        md = bp.markdown(rows, bp.judge_targets(rows), {"date": "d", "device": "H100", "notes": ["n"]})
        self.assertIn("| sst2 | packed |", md)
        self.assertIn("| sst2 | packed padding fraction < 5% | 2.0% | met |", md)

    def test_help_needs_no_h5py(self):
        with contextlib.redirect_stdout(io.StringIO()) as out, self.assertRaises(SystemExit) as e:
            bp.main(["--help"])
        self.assertEqual(e.exception.code, 0)
        self.assertIn("--tiny", out.getvalue())


if __name__ == "__main__":
    unittest.main()
