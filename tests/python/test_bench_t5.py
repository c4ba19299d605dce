"""The T5/FlanT5 rows of the benchmark without a GPU or torch: analysis/peers/hf_t5_reference.py
(its FLOPs formula against a hand-computed case, parameter counts against the published FlanT5
sizes, --help and the error/OOM paths without torch, the memory cap), the T5 decks, and
analysis/bench.py's T5 rows (reference arguments, seq2seq shards, tokens counted as input +
target, OOM rows, the 40 GiB "fits where full runs out of memory" check, the table) on synthetic
metrics files, plus one whole driver run with a fake shardtune, mpirun and reference.
Run: python3 -m unittest discover -s tests/python -p 'test_*.py'
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

import h5py

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ANALYSIS = os.path.join(REPO, "analysis")
PEERS = os.path.join(ANALYSIS, "peers")
T5_REFERENCE = os.path.join(PEERS, "hf_t5_reference.py")
sys.path.insert(0, ANALYSIS)
sys.path.insert(0, PEERS)
sys.path.insert(0, HERE)
import bench  # noqa: E402
import hf_t5_reference as t5ref  # noqa: E402
import st_read  # noqa: E402
from test_bench import ok, steps  # noqa: E402  (result and step-table helpers of the Llama tests)
from test_report import write_run  # noqa: E402

GIB = 2 ** 30
LARGE = dict(d_model=1024, d_kv=64, heads=16, d_ff=2816, layers=24, decoder_layers=24)
XL = dict(d_model=2048, d_kv=64, heads=32, d_ff=5120, layers=24, decoder_layers=24)
# A small T5 worked by hand: C=8, HD=2*2=4, F=12, Le=2, Ld=1, V=20, Te=6, Td=4, r=2.
SMALL = dict(d_model=8, d_kv=2, heads=2, d_ff=12, layers=2, decoder_layers=1)


def deck_shape(name):
    path = os.path.join(REPO, bench.CONFIGS[name]["deck"])
    return bench.deck_shape(bench.read_deck(path), path)


def fake_torch_dir(d, body="raise ImportError('no torch here')\n"):
    """A directory to put first on PYTHONPATH holding a stand-in `torch` package."""
    os.makedirs(os.path.join(d, "torch"), exist_ok=True)
    with open(os.path.join(d, "torch", "__init__.py"), "w") as f:
        f.write(body)
    return d


class T5Flops(unittest.TestCase):
    def test_small_case_by_hand(self):
        # Per block: encoder 4*C*HD + 3*C*F = 128 + 288 = 416; decoder 416 + 2*C*HD = 480;
        # cross k,v 2*C*HD = 64; head V*C = 160.
        # base = Te*(2*416 + 64) + Td*(480 + 160) = 6*896 + 4*640 = 7936.
        # attention = 3*(2*4*36*4 + 2*16*4 + 4*4*6*4) = 3*(1152 + 128 + 384) = 4992.
        full = t5ref.flops_per_token(vocab=20, seq=6, target_len=4, method="full", **SMALL)
        self.assertEqual(full["base_per_row"], 7936)
        self.assertEqual(full["adapter_per_row"], 0)
        self.assertEqual(full["attention"] * 10, 4992)
        self.assertAlmostEqual(full["total"], (6 * 7936 + 4992) / 10, places=9)  # 5260.8
        self.assertEqual(full["tokens_per_row"], 10)
        # LoRA r=2: attention linear 2*(8+4) = 24, FFN linear 2*(8+12) = 40.
        # encoder 2*(4*24 + 3*40) = 432, cross k,v 2*24 = 48, decoder 6*24 + 3*40 = 264;
        # adapter = 6*(432 + 48) + 4*264 = 3936.
        lora = t5ref.flops_per_token(vocab=20, seq=6, target_len=4, method="lora", lora_r=2, **SMALL)
        self.assertEqual(lora["adapter_per_row"], 3936)
        self.assertAlmostEqual(lora["total"], (4 * 7936 + 6 * 3936 + 4992) / 10, places=9)  # 6035.2
        self.assertIn("Te + Td", lora["formula"])

    def test_lora_subset_and_relu(self):
        qv = t5ref.flops_per_token(vocab=20, seq=6, target_len=4, method="lora", lora_r=2, lora_modules=("q", "v"),
                                   **SMALL)
        # q, v of the encoder (2 layers), cross v (encoder tokens), self q, v and cross q (decoder tokens).
        self.assertEqual(qv["adapter_per_row"], 6 * (2 * 2 * 24 + 24) + 4 * 3 * 24)
        relu = t5ref.flops_per_token(vocab=20, seq=6, target_len=4, method="full", gated=False, **SMALL)
        self.assertEqual(relu["base_per_row"], 7936 - (6 * 2 + 4) * 8 * 12)  # one C*F less per block
        with self.assertRaises(ValueError):
            t5ref.flops_per_token(vocab=20, seq=6, target_len=4, method="qlora", **SMALL)

    def test_flant5_xl(self):
        c, hd, f, v = 2048, 2048, 5120, 32128
        f_lora = t5ref.flops_per_token(vocab=v, seq=512, target_len=128, method="lora", lora_r=16, **XL)
        base = 512 * (24 * (4 * c * hd + 3 * c * f) + 24 * 2 * c * hd) + 128 * (24 * (6 * c * hd + 3 * c * f) + v * c)
        attn = 3 * (24 * 4 * 512 * 512 * hd + 24 * 2 * 128 * 128 * hd + 24 * 4 * 128 * 512 * hd)
        adapter = 16 * (512 * 24 * (4 * (c + hd) + 3 * (c + f) + 2 * (c + hd)) + 128 * 24 * (6 * (c + hd) + 3 * (c + f)))
        self.assertEqual(f_lora["base_per_row"], base)
        self.assertEqual(f_lora["adapter_per_row"], adapter)
        self.assertAlmostEqual(f_lora["total"], (4 * base + 6 * adapter + attn) / 640, delta=1e-6)

    def test_parameter_counts(self):
        self.assertEqual(t5ref.num_parameters(vocab=32128, **LARGE), 783_150_080)  # google/flan-t5-large
        self.assertEqual(t5ref.num_parameters(vocab=32128, **XL), 2_849_757_184)  # google/flan-t5-xl
        self.assertEqual(t5ref.num_parameters(vocab=32128, tied=True, **LARGE), 783_150_080 - 32128 * 1024)
        # By hand for SMALL: shared 160 + head 160 + enc 2*(416+16) + dec (480+64+24) + 16 + 2*8*2.
        self.assertEqual(t5ref.num_parameters(vocab=20, num_buckets=8, **SMALL), 1800)
        self.assertEqual(t5ref.adapter_parameters(lora_r=2, **SMALL), 432 + 264 + 48)
        self.assertEqual(t5ref.adapter_parameters(lora_r=16, **LARGE), 18_284_544)
        self.assertEqual(t5ref.adapter_parameters(lora_r=16, **XL), 35_389_440)


class T5ReferenceWithoutTorch(unittest.TestCase):
    def run_reference(self, d, args, env_extra=None):
        env = dict(os.environ, PYTHONPATH=d, **(env_extra or {}))
        return subprocess.run([sys.executable, T5_REFERENCE] + args, capture_output=True, text=True, env=env,
                              timeout=60)

    def test_help_and_import_without_torch(self):
        with tempfile.TemporaryDirectory() as d:
            fake_torch_dir(d, "raise ImportError('torch must not be imported here')\n")
            r = self.run_reference(d, ["--help"])
            self.assertEqual(r.returncode, 0, r.stderr)
            for option in ("--d-kv", "--target-len", "--memory-cap-gib", "--checkpointing", "--gemm-peak-only"):
                self.assertIn(option, r.stdout)
            code = f"import sys; sys.path.insert(0, {PEERS!r}); import hf_t5_reference; print('torch' in sys.modules)"
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=d), timeout=60)
            self.assertEqual((r.returncode, r.stdout.strip()), (0, "False"), r.stderr)

    def test_without_torch_it_reports_an_error_as_json(self):
        with tempfile.TemporaryDirectory() as d:
            fake_torch_dir(d)
            out = os.path.join(d, "r.json")
            r = self.run_reference(d, ["--steps", "3", "--json", out])
            self.assertEqual(r.returncode, 1)
            last = json.loads(r.stdout.strip().splitlines()[-1])
            with open(out) as f:
                self.assertEqual(json.load(f), last)
            self.assertEqual((last["outcome"], last["tool"]), ("error", "hf_t5_reference"))
            self.assertIn("no torch here", last["error"])
            self.assertEqual(last["config"]["target_len"], 128)

    def test_oom_while_building_is_outcome_oom_exit_3_under_the_memory_cap(self):
        # A stand-in torch with an 80 GiB device, and a transformers whose T5 runs out of memory:
        # the memory cap is applied first (fraction 40/80), then the OOM becomes outcome "oom".
        torch_body = textwrap.dedent("""
            import contextlib, json, os, types
            __version__ = "0.fake"
            version = types.SimpleNamespace(cuda="12.fake")
            bfloat16 = "bfloat16"
            class OutOfMemoryError(RuntimeError):
                pass
            def _cap(fraction, device=0):
                with open(os.environ["FAKE_CAP"], "w") as f:
                    json.dump([fraction, device], f)
            cuda = types.SimpleNamespace(
                is_available=lambda: True, get_device_name=lambda i: "Fake H100",
                get_device_properties=lambda i: types.SimpleNamespace(total_memory=80 * 2**30),
                set_per_process_memory_fraction=_cap, OutOfMemoryError=OutOfMemoryError,
                max_memory_allocated=lambda: 41 * 2**30)
            def manual_seed(seed):
                pass
            _dtype = ["float32"]
            def get_default_dtype():
                return _dtype[0]
            def set_default_dtype(d):
                _dtype[0] = d
            def device(name):
                return contextlib.nullcontext()
            """)
        transformers_body = textwrap.dedent("""
            import torch
            __version__ = "5.fake"
            class T5Config:
                def __init__(self, **kwargs):
                    self.kwargs = kwargs
            class T5ForConditionalGeneration:
                def __init__(self, cfg):
                    assert cfg.kwargs["tie_word_embeddings"] is False and cfg.kwargs["d_kv"] == 64
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            """)
        with tempfile.TemporaryDirectory() as d:
            fake_torch_dir(d, torch_body)
            with open(os.path.join(d, "transformers.py"), "w") as f:
                f.write(transformers_body)
            out, cap = os.path.join(d, "r.json"), os.path.join(d, "cap.json")
            r = self.run_reference(d, ["--d-model", "2048", "--d-ff", "5120", "--heads", "32", "--memory-cap-gib",
                                       "40", "--gemm-peak", "790", "--json", out], {"FAKE_CAP": cap})
            self.assertEqual(r.returncode, 3, r.stderr)
            with open(out) as f:
                result = json.load(f)
            self.assertEqual(result["outcome"], "oom")
            self.assertEqual(result["phase"], "model")
            self.assertIn("Tried to allocate", result["error"])
            self.assertEqual(result["memory_cap_bytes"], 40 * GIB)
            self.assertEqual(result["memory_cap_fraction"], 0.5)
            self.assertEqual(result["peak_memory_bytes_at_oom"], 41 * GIB)
            self.assertEqual(result["config"]["memory_cap_gib"], 40.0)
            with open(cap) as f:
                self.assertEqual(json.load(f), [0.5, 0])
            # The FLOPs were computed for the row before the model was built.
            self.assertAlmostEqual(result["flops_per_token"]["total"],
                                   t5ref.flops_per_token(vocab=32128, seq=512, target_len=128, method="full",
                                                         **dict(LARGE, d_model=2048, d_ff=5120, heads=32))["total"])

    def test_bad_arguments_exit_2(self):
        for args, word in ((["--target-len", "1"], "--target-len"), (["--memory-cap-gib", "0"], "--memory-cap-gib"),
                           (["--warmup", "12"], "--warmup"), (["--d-kv", "0"], "--d-kv")):
            r = subprocess.run([sys.executable, T5_REFERENCE] + args, capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(word, r.stderr)

    def test_defaults(self):
        a = t5ref.parse_args([])
        self.assertEqual((a.d_model, a.d_kv, a.d_ff, a.layers, a.decoder_layers, a.heads, a.vocab),
                         (1024, 64, 2816, 24, 24, 16, 32128))
        self.assertEqual((a.seq, a.target_len, a.feed_forward_proj, a.memory_cap_gib), (512, 128, "gated-gelu", None))
        self.assertEqual(t5ref.tokens_per_step(a), 8 * 640)
        self.assertEqual(t5ref.lora_modules_for("relu"), ("q", "k", "v", "o", "wi", "wo"))


class T5Decks(unittest.TestCase):
    def test_shapes(self):
        for name, shape, params in (("t5large_full", LARGE, 783_150_080), ("t5xl_lora", XL, 2_849_757_184)):
            s = deck_shape(name)
            self.assertEqual(s["arch"], "t5")
            self.assertEqual(bench.t5_shape_args(s), dict(shape, gated=True))
            self.assertEqual((s["vocab"], s["tied"], s["feed_forward_proj"]), (32128, False, "gated-gelu"))
            self.assertEqual((s["relative_attention_num_buckets"], s["relative_attention_max_distance"]), (32, 128))
            self.assertEqual((s["batch"], s["steps"], s["lr"], s["output_dir"]), (8, 12, 1e-4, "runs/bench"))
            self.assertEqual(s["data"], "data/bench/random-t5-512-128")
            # The parameter count in the deck's header is the formula's.
            with open(os.path.join(REPO, bench.CONFIGS[name]["deck"])) as f:
                self.assertIn(f"{params:,}", f.read())
            self.assertEqual(t5ref.num_parameters(vocab=32128, **shape), params)
        lora = deck_shape("t5xl_lora")
        self.assertEqual((lora["method"], lora["lora_r"], lora["lora_alpha"]), ("lora", 16, 32.0))
        self.assertEqual(bench.lora_modules(lora), t5ref.T5_LORA_MODULES)
        self.assertEqual(deck_shape("t5large_lora")["run_id"], "flant5_large_lora")
        # The 40 GiB pair differs from its whole-GPU rows by the caps only, and from each other by the method.
        full, lora = deck_shape("t5xl_full_40g"), deck_shape("t5xl_lora_40g")
        same = ("checkpointing", "batch", "vocab", "tied", "steps", "lr", "grad_clip", "data")
        self.assertEqual(bench.t5_shape_args(full), bench.t5_shape_args(lora))
        self.assertEqual([full[k] for k in same], [lora[k] for k in same])
        self.assertEqual((full["method"], lora["method"]), ("full", "lora"))
        self.assertEqual(bench.CONFIGS["t5xl_full_40g"]["args"], ["--memory_limit", "40GiB"])
        self.assertEqual(bench.CONFIGS["t5xl_full_40g"]["deck"], bench.CONFIGS["t5xl_full"]["deck"])

    def test_every_deck_key_is_a_shardtune_key(self):
        with open(os.path.join(REPO, "src", "config", "run_config.cpp")) as f:
            known = set(re.findall(r'add(?:_string)?\(\w+, t, "(\w+)"', f.read()))
        self.assertIn("memory_limit", known)
        # Being added with the T5 train path (issue #6).
        known |= {"arch", "num_decoder_layers", "relative_attention_num_buckets", "relative_attention_max_distance",
                  "feed_forward_proj"}
        for name, spec in bench.CONFIGS.items():  # the Llama decks too
            keys = bench.read_deck(os.path.join(REPO, spec["deck"]))
            self.assertEqual(set(keys) - known, set(), name)
            self.assertEqual(keys.get("arch", "llama"), "t5" if name in bench.T5_CONFIGS else "llama")


class T5DriverPieces(unittest.TestCase):
    def test_reference_args_are_accepted_by_the_t5_reference(self):
        for name in bench.T5_CONFIGS:
            shape = deck_shape(name)
            self.assertTrue(bench.reference_script(shape).endswith("hf_t5_reference.py"))
            argv = bench.reference_args(shape, 512, gemm_peak=790.5, target_len=128,
                                        extra=bench.CONFIGS[name].get("ref_args", ()))
            a = t5ref.parse_args(argv)
            self.assertEqual((a.d_model, a.d_kv, a.d_ff, a.layers, a.decoder_layers, a.heads, a.vocab),
                             tuple(bench.t5_shape_args(shape)[k] for k in ("d_model", "d_kv", "d_ff", "layers",
                                                                          "decoder_layers", "heads")) + (32128,))
            self.assertEqual((a.method, a.batch, a.seq, a.target_len, a.steps, a.warmup), (shape["method"], 8, 512,
                                                                                          128, 12, 2))
            self.assertEqual((a.checkpointing, a.lr, a.grad_clip, a.gemm_peak), (shape["checkpointing"], 1e-4, 1.0,
                                                                                 790.5))
            self.assertEqual(a.memory_cap_gib, 40.0 if name.endswith("_40g") else None)
            if a.method == "lora":
                self.assertEqual((a.lora_r, a.lora_alpha), (16, 32.0))
            # The driver's FLOPs for the deck are the reference's for the same arguments.
            self.assertEqual(bench.shape_flops(shape, 512, 128)["total"],
                             t5ref.flops_per_token(vocab=a.vocab, seq=a.seq, target_len=a.target_len, method=a.method,
                                                   lora_r=a.lora_r, **t5ref.shape_of(a))["total"])
        self.assertTrue(bench.reference_script(deck_shape("7b_lora")).endswith("hf_llama_reference.py"))

    def test_data_spec_and_prepare_command(self):
        args = bench.parse_args(["--configs", "t5xl_lora,1b_full"])
        self.assertEqual(args.config_names, ["t5xl_lora", "1b_full"])
        t5 = bench.data_spec(deck_shape("t5xl_lora"), args)
        self.assertEqual(t5, {"dir": "data/bench/random-t5-512-128", "rows": 256, "seq_len": 512, "target_len": 128,
                              "vocab": 32128})
        self.assertEqual(bench.prepare_command("st", t5),
                         ["st", "prepare", "--random", "data/bench/random-t5-512-128", "--arch", "seq2seq", "--rows",
                          "256", "--seq-len", "512", "--target-len", "128", "--vocab", "32128"])
        llama = bench.data_spec(deck_shape("1b_full"), args)
        self.assertEqual(bench.prepare_command("st", llama),
                         ["st", "prepare", "--random", "data/bench/random-1024", "--rows", "256", "--seq-len", "1024",
                          "--vocab", "32000"])
        other = bench.parse_args(["--t5-seq-len", "256", "--t5-target-len", "64"])
        self.assertEqual(other.t5_data_dir, "data/bench/random-t5-256-64")

    def test_seq2seq_shards_match(self):
        with tempfile.TemporaryDirectory() as d:
            for split in ("train", "validation"):
                with h5py.File(os.path.join(d, f"{split}-00000.h5"), "w") as f:
                    f.attrs["task"] = b"random"
                    f.attrs["arch"] = b"seq2seq"
                    f.attrs["num_rows"] = 256
                    f.attrs["max_seq_len"] = 512
                    f.attrs["target_len"] = 128
                    f.attrs["tokenizer_vocab_size"] = 32128
            self.assertTrue(bench.shards_match(d, 256, 512, 32128, 128))
            self.assertFalse(bench.shards_match(d, 256, 512, 32128, 64))
            self.assertFalse(bench.shards_match(d, 256, 512, 32128))  # not causal shards

    def test_shardtune_tokens_are_input_plus_target(self):
        with tempfile.TemporaryDirectory() as d:
            # A tokens column counting the encoder tokens only: tokens/s still counts 8 x (512 + 128).
            times = [4.0, 2.0] + [0.5] * 10
            run = write_run(d, "flant5_xl_lora", {"outcome": "ok", "peak_memory": 20 * GIB}, steps=steps(times, 4096))
            s = bench.summarize_shardtune(st_read.read_run(run), tokens_per_step=5120)
            self.assertEqual((s["tokens_per_step"], s["metrics_tokens_per_step"]), (5120, 4096))
            self.assertEqual(s["tokens_per_s"], 5120 / 0.5)
            oom = write_run(d, "flant5_xl_full", {"outcome": "oom", "peak_memory": 39 * GIB, "oom_bytes": GIB,
                                                  "oom_phase": "optimizer"})
            s = bench.summarize_shardtune(st_read.read_run(oom), tokens_per_step=5120)
            self.assertEqual((s["outcome"], s["oom_phase"]), ("oom", "optimizer"))
            self.assertNotIn("tokens_per_s", s)


def t5_row(name, st, rf, others=None, peak=790.0):
    """One T5 row of the report as bench.main builds it (targets against `others`)."""
    shape = deck_shape(name)
    flops = bench.shape_flops(shape, 512, 128)["total"]
    spec = bench.CONFIGS[name]
    figures = bench.row_figures(st, rf, peak, flops)
    row = {"name": name, "arch": "t5", "shardtune": st, "reference": rf, "issue": spec["issue"], "figures": figures,
           "flops_per_token": flops}
    measured = dict(others or {}, **{name: figures})
    row["targets"] = bench.evaluate_targets(name, st, rf, figures, spec["issue"], peak, "measured", measured,
                                            spec.get("issue_no", 3))
    row["status"] = bench.overall_status(row["targets"])
    return row


def ok640(tokens_per_s, peak_gib):
    return dict(ok(tokens_per_s, peak_gib), median_step_time=5120 / tokens_per_s)


class FitsWhereFullRunsOutOfMemory(unittest.TestCase):
    OOM = {"outcome": "oom"}

    def full40(self, st, rf=None):
        return {"t5xl_full_40g": t5_row("t5xl_full_40g", st, rf or self.OOM)["figures"]}

    def test_met_when_full_is_oom_and_lora_fits(self):
        r = t5_row("t5xl_lora_40g", ok640(9000, 31.0), ok640(6000, 35.0), self.full40(self.OOM))
        self.assertEqual(r["status"], "met")
        value = r["targets"][0]["value"]
        self.assertIn("shardtune t5xl_full_40g OOM, this row ok (31.0 GiB)", value)
        self.assertIn("reference t5xl_full_40g OOM, this row ok (35.0 GiB)", value)
        self.assertAlmostEqual(r["figures"]["ratio"], 1.5)

    def test_not_met_when_full_fits_or_lora_does_not(self):
        self.assertEqual(t5_row("t5xl_lora_40g", ok640(9000, 31.0), self.OOM,
                                self.full40(ok640(5000, 39.0)))["status"], "NOT met")
        r = t5_row("t5xl_lora_40g", self.OOM, self.OOM, self.full40(self.OOM))
        self.assertEqual(r["status"], "NOT met")
        self.assertIn("this row OOM", r["targets"][0]["value"])

    def test_not_applicable_without_a_full_result(self):
        self.assertEqual(t5_row("t5xl_lora_40g", ok640(9000, 31.0), self.OOM, {})["status"], "n/a")
        self.assertEqual(t5_row("t5xl_lora_40g", ok640(9000, 31.0), self.OOM,
                                self.full40({"outcome": "error"}))["status"], "n/a")
        self.assertEqual(t5_row("t5xl_lora_40g", {"outcome": "skipped"}, self.OOM, self.full40(self.OOM))["status"],
                         "n/a")

    def test_other_t5_rows_have_no_target(self):
        r = t5_row("t5large_full", ok640(30000, 20.0), ok640(20000, 30.0))
        self.assertEqual((r["targets"], r["status"]), ([], "-"))
        self.assertAlmostEqual(r["figures"]["ratio"], 1.5)
        self.assertAlmostEqual(r["figures"]["st_mfu"], r["flops_per_token"] * 30000 / 790e12)

    def test_table(self):
        full = t5_row("t5xl_full_40g", self.OOM, ok640(5000, 38.0))
        rows = [t5_row("t5xl_full", ok640(7000, 60.0), ok640(5000, 38.0)), full,
                t5_row("t5xl_lora_40g", ok640(9000, 31.0), ok640(6000, 35.0), {"t5xl_full_40g": full["figures"]})]
        report = {"meta": {"device": "NVIDIA H100 80GB HBM3"}, "gemm_peak_tflops": 790.0, "gemm_peak_source": "m",
                  "results": rows, "notes": []}
        text = bench.format_text(report)
        lines = [line for line in text.splitlines() if line.startswith("  ")]
        header = next(line for line in text.splitlines() if "st tok/s" in line)
        self.assertTrue(all(len(line) == len(header) for line in lines), text)
        self.assertIn("OOM", lines[1])
        self.assertTrue(lines[1].rstrip().endswith("-"))
        self.assertTrue(lines[2].rstrip().endswith("met"))
        self.assertIn("T5 FLOPs per token", text)
        self.assertNotIn("# FLOPs per token", text)  # no Llama row
        md = bench.format_markdown(report)
        self.assertIn("t5xl_lora_40g: shardtune fits where t5xl_full_40g runs out of memory", md)
        self.assertIn("--memory-cap-gib 40", md)


FAKE_SHARDTUNE = '''#!{python}
"""Stand-in for build/shardtune: prepare --random writes attribute-only shards; train writes a
metrics.h5 (full fine-tuning under --memory_limit runs out of memory; tokens column = encoder
tokens only, so the driver's own count shows)."""
import os, sys
import h5py
sys.path[:0] = [{analysis!r}, {tests!r}]
import bench
from test_bench import steps
from test_report import write_run

argv = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(["shardtune"] + argv) + "\\n")
opts = dict(zip(argv[1::2], argv[2::2]))  # "--key value" pairs after the subcommand
if argv[0] == "prepare":
    d = opts["--random"]
    os.makedirs(d, exist_ok=True)
    for split in ("train", "validation"):
        with h5py.File(os.path.join(d, split + "-00000.h5"), "w") as f:
            f.attrs["task"] = b"random"
            f.attrs["arch"] = opts.get("--arch", "causal").encode()
            f.attrs["num_rows"] = int(opts["--rows"])
            f.attrs["max_seq_len"] = int(opts["--seq-len"])
            if "--target-len" in opts:
                f.attrs["target_len"] = int(opts["--target-len"])
            f.attrs["tokenizer_vocab_size"] = int(opts["--vocab"])
    sys.exit(0)
keys = bench.read_deck(opts["--deck"])
keys.update({{k[2:]: v for k, v in opts.items() if k != "--deck"}})
shape = bench.deck_shape(keys, opts["--deck"])
oom = shape["method"] == "full" and keys.get("memory_limit", "0") != "0"
summary = {{"outcome": "oom", "peak_memory": 39 * 2**30}} if oom else {{"outcome": "ok", "peak_memory": 30 * 2**30}}
write_run(shape["output_dir"], shape["run_id"], summary, steps=[] if oom else steps([3.0] + [0.5] * 11, 4096))
sys.exit(3 if oom else 0)
'''

FAKE_MPIRUN = '''#!/bin/sh
# Stand-in for mpirun: drop the launcher's options, run the program.
while [ $# -gt 0 ]; do
  case "$1" in
    -np|-n|--bind-to) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
exec "$@"
'''

FAKE_PYTHON = '''#!{python}
"""Stand-in for the reference's python: checks the arguments with the row's own reference script
and writes its JSON (full fine-tuning under a memory cap runs out of memory)."""
import importlib.util, json, os, sys
script, argv = sys.argv[1], sys.argv[2:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(["python", os.path.basename(script)] + argv) + "\\n")
sys.path.insert(0, os.path.dirname(script))
spec = importlib.util.spec_from_file_location("reference", script)
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)
args = reference.parse_args(argv)
if args.gemm_peak_only:
    result = {{"outcome": "ok", "gemm_peak_tflops": 780.0}}
elif args.method == "full" and args.memory_cap_gib:
    result = {{"outcome": "oom", "error": "CUDA out of memory"}}
else:
    tokens = args.batch * (args.seq + getattr(args, "target_len", 0))
    result = {{"outcome": "ok", "device": "Fake H100", "median_step_time": 1.0, "tokens_per_step": tokens,
              "tokens_per_s": float(tokens), "peak_memory_bytes": 35 * 2**30}}
with open(args.json, "w") as f:
    json.dump(result, f)
sys.exit({{"ok": 0, "oom": 3}}[result["outcome"]])
'''


class WholeDriverRun(unittest.TestCase):
    """bench.main end to end in a copy of the repository (so no real runs/ or data/ is touched),
    with a fake shardtune, mpirun and reference python."""

    def test_t5_and_llama_rows(self):
        with tempfile.TemporaryDirectory() as root:
            repo = os.path.join(root, "repo")
            shutil.copytree(ANALYSIS, os.path.join(repo, "analysis"),
                            ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copytree(os.path.join(REPO, "inputs", "bench"), os.path.join(repo, "inputs", "bench"))
            fakes = {"shardtune": FAKE_SHARDTUNE.format(python=sys.executable, analysis=os.path.join(repo, "analysis"),
                                                         tests=HERE),
                     "mpirun": FAKE_MPIRUN, "python": FAKE_PYTHON.format(python=sys.executable)}
            for name, body in fakes.items():
                path = os.path.join(root, name)
                with open(path, "w") as f:
                    f.write(body)
                os.chmod(path, 0o755)
            log = os.path.join(root, "calls.log")
            env = {k: v for k, v in os.environ.items() if k != "OUT"}
            env["FAKE_LOG"] = log
            r = subprocess.run([sys.executable, os.path.join(repo, "analysis", "bench.py"),
                                "--bin", os.path.join(root, "shardtune"), "--mpirun", os.path.join(root, "mpirun"),
                                "--python", os.path.join(root, "python"), "--quiet",
                                "--configs", "t5xl_lora_40g,t5xl_full_40g,t5large_lora,1b_lora"],
                               capture_output=True, text=True, env=env, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            with open(os.path.join(repo, "runs", "bench", "bench.json")) as f:
                report = json.load(f)
            with open(log) as f:
                calls = f.read().splitlines()

        rows = {row["name"]: row for row in report["results"]}
        # Two kinds of shards, each made once.
        prepares = [c for c in calls if c.startswith("shardtune prepare")]
        self.assertEqual(sorted(prepares), sorted([
            "shardtune prepare --random data/bench/random-t5-512-128 --arch seq2seq --rows 256 --seq-len 512 "
            "--target-len 128 --vocab 32128",
            "shardtune prepare --random data/bench/random-1024 --rows 256 --seq-len 1024 --vocab 32000"]))
        # The 40 GiB rows: capped on both sides, their own run ids; the check is met although the
        # LoRA row ran first.
        trains = [c for c in calls if c.startswith("shardtune train")]
        self.assertIn("shardtune train --deck inputs/bench/flant5_xl_full.cfg --memory_limit 40GiB "
                      "--run_id t5xl_full_40g", trains)
        references = [c for c in calls if c.startswith("python hf_t5_reference.py")]
        self.assertEqual(len(references), 3)
        self.assertTrue(all("--target-len 128" in c for c in references))
        self.assertEqual(sum("--memory-cap-gib 40" in c for c in references), 2)
        # The Llama row: issue #20's two peers (eager, compiled), each with checkpointing on and off.
        llama_refs = [c for c in calls if c.startswith("python hf_llama_reference.py --hidden")]
        self.assertEqual(len(llama_refs), 4)
        self.assertEqual(sum("--compile" in c for c in llama_refs), 2)
        self.assertEqual(sum("--no-checkpointing" in c for c in llama_refs), 2)
        full, lora = rows["t5xl_full_40g"], rows["t5xl_lora_40g"]
        self.assertEqual((full["shardtune"]["outcome"], full["reference"]["outcome"]), ("oom", "oom"))
        self.assertEqual(lora["status"], "met")
        self.assertEqual(lora["targets"][0]["status"], "met")
        # T5 rows count batch x (512 + 128) tokens a step on both sides; FLOPs are the T5 formula's.
        large = rows["t5large_lora"]
        self.assertEqual(large["shardtune"]["tokens_per_step"], 5120)
        self.assertEqual(large["figures"]["ratio"], 5120 / 0.5 / 5120)
        self.assertEqual(large["flops_per_token"], bench.shape_flops(deck_shape("t5large_lora"), 512, 128)["total"])
        self.assertEqual((large["arch"], large["target_len"]), ("t5", 128))
        self.assertTrue(any("tokens column gives 4096" in n for n in report["notes"]))
        # The Llama row is as before.
        self.assertEqual(rows["1b_lora"]["shardtune"]["tokens_per_step"], 4096)
        self.assertEqual(rows["1b_lora"]["arch"], "llama")
        self.assertEqual(report["gemm_peak_tflops"], 780.0)


if __name__ == "__main__":
    unittest.main()
