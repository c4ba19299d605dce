"""analysis/fp8_quality.py: the corpus split, the judgement, the train commands of both modes and
main's sequence of commands with the runs replaced (the runs need the binary and a GPU)."""
import contextlib
import io
import os
import shutil
import sys
import tempfile
import unittest
from unittest import mock

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

    def flags(self, cmd):
        """{flag: value} of a train command (every flag after 'train' takes one value)."""
        i = cmd.index("train") + 1
        self.assertEqual(len(cmd[i:]) % 2, 0, cmd)
        out = {}
        for k, v in zip(cmd[i::2], cmd[i + 1::2]):
            self.assertTrue(k.startswith("--"), cmd)
            self.assertNotIn(k, out, f"{k} twice")
            out[k[2:]] = v
        return out

    def run_main(self, *argv, corpus_rows=20, losses=None):
        """main with `shardtune` and metrics.h5 replaced: (commands it ran, exit status, output)."""
        cmds = []
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        corpus = os.path.join(tmp, "c.txt")
        with open(corpus, "w") as f:
            f.write("\n\n".join(f"story {i} line one\nline two" for i in range(corpus_rows)))
        fake = losses or {}

        def read(run_dir):
            return fake.get(os.path.basename(run_dir), ([3.0] * 30, [4.0, 2.0]))
        out = io.StringIO()
        with mock.patch.object(q, "run", side_effect=cmds.append), \
                mock.patch.object(q, "read_run_losses", side_effect=read), contextlib.redirect_stdout(out):
            rc = q.main(["--bin", "ST", "--corpus", corpus, "--out", os.path.join(tmp, "o"), "--device", "cpu",
                         *argv])
        return cmds, rc, out.getvalue(), tmp

    def test_default_mode_commands(self):
        cmds, rc, text, tmp = self.run_main("--steps", "30")
        self.assertEqual(rc, 0, text)
        self.assertEqual([c[1] for c in cmds], ["prepare", "prepare", "train", "train"])
        self.assertEqual(cmds[0][cmds[0].index("--split") + 1], "train")
        self.assertEqual(cmds[1][cmds[1].index("--split") + 1], "validation")
        tok = cmds[0][cmds[0].index("--tokenizer") + 1]
        self.assertEqual(tok, os.path.join(q.SHARED, "models", "stories260K", "tokenizer.model"))
        for c, prec in zip(cmds[2:], ("bf16", "fp8")):
            f = self.flags(c)
            self.assertEqual(f, {
                "data": os.path.join(tmp, "o", "data"), "tokenizer": tok, "device": "cpu", "max_steps": "30",
                "epochs": "1000", "micro_batch_size": "16", "lr": "0.001", "log_every": "20", "eval_every": "100",
                "seed": "1", "output_dir": os.path.join(tmp, "o"), "run_id": f"stories260K_lora_{prec}",
                "overwrite": "true", "model": os.path.join(q.SHARED, "models", "stories260K"), "method": "lora",
                "lora_targets": "q,k,v,o", "lora_r": "8", "lora_alpha": "16", "base_precision": prec,
                "warmup_steps": "10", "save_adapter": "false"})
        self.assertIn("fp8 quality: PASS", text)
        with open(os.path.join(tmp, "o", "train.jsonl")) as f:
            self.assertEqual(len(f.readlines()), 18)  # 20 stories, the last 2 validate

    def test_pretrain_mode_commands(self):
        losses = {"pretrain_full": ([6.2, 5.0, 3.1], [6.24, 3.3]),
                  "pretrained_lora_bf16": ([3.0] * 30, [3.2]), "pretrained_lora_fp8": ([3.0] * 25 + [3.05] * 5, [3.2])}
        cmds, rc, text, tmp = self.run_main("--pretrain", "--hidden", "64", "--layers", "2", "--heads", "4",
                                            "--intermediate", "176", "--pretrain-steps", "20", "--steps", "30",
                                            losses=losses)
        self.assertEqual(rc, 1, text)  # 1.67% over at steps 26-30
        self.assertIn("5 step(s) over", text)
        self.assertEqual([c[1] for c in cmds], ["prepare", "prepare", "train", "train", "train"])
        pre = self.flags(cmds[2])
        for k, v in {"method": "full", "arch": "llama", "hidden_size": "64", "num_layers": "2", "num_heads": "4",
                     "intermediate_size": "176", "max_steps": "20", "lr": "0.0006", "lr_schedule": "cosine",
                     "save_model": "true", "run_id": "pretrain_full", "device": "cpu"}.items():
            self.assertEqual(pre[k], v, k)
        self.assertNotIn("model", pre)  # random init
        self.assertIn("pretraining: 3 steps", text)
        self.assertIn("untrained 6.24000, final 3.30000", text)
        model = os.path.join(tmp, "o", "pretrain_full", "model")
        for c, prec in zip(cmds[3:], ("bf16", "fp8")):
            f = self.flags(c)
            self.assertEqual((f["model"], f["method"], f["base_precision"], f["run_id"], f["max_steps"]),
                             (model, "lora", prec, f"pretrained_lora_{prec}", "30"))
            self.assertEqual(f["lora_targets"], "q,k,v,o,gate,up,down")
            self.assertEqual(f["tokenizer"], pre["tokenizer"])
            self.assertEqual(f["data"], pre["data"])
        cmds, rc, text, tmp = self.run_main("--pretrain", "--lora-targets", "q,v")
        self.assertEqual(self.flags(cmds[3])["lora_targets"], "q,v")
        self.assertEqual(self.flags(cmds[2])["hidden_size"], "1024")

    def test_pretrain_shape_checked(self):
        for bad in (["--hidden", "72"], ["--intermediate", "172"], ["--heads", "5"], ["--layers", "0"]):
            with contextlib.redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit):
                self.run_main("--pretrain", *bad)
            self.assertIn(bad[0], err.getvalue())


if __name__ == "__main__":
    unittest.main()
