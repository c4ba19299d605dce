"""st_read: a run whose rank 0 never recorded the end takes the outcome another rank left."""

import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "analysis"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_read  # noqa: E402
from test_report import write_run  # noqa: E402


class RankOutcomeTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def _rank_file(self, run_dir, rank, **rec):
        with open(os.path.join(run_dir, f"outcome-rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, **rec}, f)

    def test_running_run_takes_the_oom_of_another_rank(self):
        d = write_run(self.root, "r", {"outcome": "running"})
        self._rank_file(d, 3, outcome="oom", error="out of memory on cuda", oom_phase="backward", oom_bytes=1234)
        s = st_read.read_run(d)["summary"]
        self.assertEqual(s["outcome"], "oom")
        self.assertEqual(s["oom_phase"], "backward")
        self.assertEqual(s["oom_bytes"], 1234)
        self.assertEqual(s["failed_rank"], 3)
        self.assertIn("rank 3", s["error"])

    def test_a_recorded_outcome_wins_and_bad_files_are_ignored(self):
        d = write_run(self.root, "ok", {"outcome": "ok"})
        self._rank_file(d, 1, outcome="oom", error="stale")
        self.assertEqual(st_read.read_run(d)["summary"]["outcome"], "ok")
        d2 = write_run(self.root, "r2", {"outcome": "running"})
        with open(os.path.join(d2, "outcome-rank1.json"), "w") as f:
            f.write("{not json")
        self.assertEqual(st_read.read_run(d2)["summary"]["outcome"], "running")


if __name__ == "__main__":
    unittest.main()
