"""analysis/fp8_quality.py: the corpus split and the judgement (the runs need a GPU)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "analysis"))

import fp8_quality as q  # noqa: E402


class Fp8Quality(unittest.TestCase):
    def test_stories(self):
        self.assertEqual(q.stories("a\nb\n\n\nc\n  \n d \n"), ["a b", "c", "d"])

    def test_compare(self):
        a = [3.0] * 30
        b = [3.0] * 20 + [3.02] * 10  # 0.67% after step 20
        lines, ok = q.compare(a, b, 2.0, 2.009)
        self.assertTrue(ok, "\n".join(lines))
        b[25] = 3.05  # 1.67% at step 26
        lines, ok = q.compare(a, b, 2.0, 2.009)
        self.assertFalse(ok)
        self.assertIn("at step 26", lines[-2])
        b = [9.0] * 20 + [3.0] * 10  # the first 20 steps are not judged
        self.assertTrue(q.compare(a, b, 2.0, 2.0)[1])
        self.assertFalse(q.compare(a, a, 2.0, 2.02)[1])  # validation 1% over 0.5%
        self.assertFalse(q.compare(a, a[:-1], 2.0, 2.0)[1])
        self.assertFalse(q.compare(a, a, None, 2.0)[1])


if __name__ == "__main__":
    unittest.main()
