#!/usr/bin/env python3
"""shardtune's GPU benchmark against PyTorch + transformers + PEFT, side by side in one run
(`make bench`; issue #3 item 7).

For each configuration (default: 1b_full 1b_lora 7b_lora 13b_lora 7b_qlora 13b_qlora) it
  1. makes the random-token shards once (shardtune prepare --random ...; remade when their
     rows, length or vocabulary do not match),
  2. runs  mpirun -np 1 --bind-to none <bin> train --deck inputs/bench/<deck>.cfg  and reads
     <output_dir>/<run_id>/metrics.h5: median step_time over the steps after the first 2,
     tokens per step (the `tokens` column), tokens/s, peak memory (/summary peak_memory),
     outcome (ok / oom / error),
  3. runs analysis/peers/hf_llama_reference.py with the same shape in its own process (an OOM
     or crash there does not stop the rest, and its GPU memory is freed),
     -- except for QLoRA rows: the reference would need bitsandbytes, which the GPU host does
     not have, so those rows are judged against issue #4's figures (measured there with
     transformers 5.17 + PEFT 0.21 + bitsandbytes 0.50, same shapes) and marked as such,
and, for the T5/FlanT5 rows (issue #6; --configs t5large_full,t5large_lora,t5xl_full,t5xl_lora,
t5xl_full_40g,t5xl_lora_40g; decks with arch = t5), the same with seq2seq random shards
(prepare --random --arch seq2seq, --t5-seq-len 512 / --t5-target-len 128 / --t5-vocab 32128),
analysis/peers/hf_t5_reference.py as the reference, tokens/s counting batch x (input + target)
and the T5 FLOPs; the _40g rows run the XL decks as on a 40 GB GPU (shardtune --memory_limit
40GiB, the reference --memory-cap-gib 40), where an OOM is a result shown as OOM, and a check
that shardtune's LoRA fits where its full fine-tuning runs out of memory;
then prints a fixed-width table (shardtune vs reference tokens/s, ratio, peak memory, MFU,
issue #3's reference figures and targets marked met / NOT met) and writes it as JSON and
Markdown under runs/bench/ (and into $OUT when that variable is set).

Issue #20 (the Llama rows with a same-run reference: 1b_full, 1b_lora, 7b_lora, 13b_lora):
  * two peers, each with activation checkpointing on and off (--peers, --peer-checkpointing):
    "eager" (the plain transformers + PEFT loop above) and "compiled" (the same script with
    --compile: torch.compile on each decoder layer after PEFT, fused AdamW). An OOM is a result
    (a peer without checkpointing is not run where its checkpointed run already ran out of
    memory). The "reference" of the main table and of issue #3's targets is the faster of the
    two at the deck's checkpointing setting; the table shows both.
  * shardtune at each activation_checkpointing value of --st-checkpointing (default true,false;
    any value shardtune takes, e.g. auto or a number of blocks, is passed as is), and with
    --memory_limit set to the faster peer's checkpointed peak (equal memory) at auto (the
    planner's fewest checkpointed blocks that fit: the fastest setting there) and at each of
    those values that recomputes something (a fallback should auto's plan miss; "false" only
    fits where auto checkpoints nothing either, so it is not run there).
  * "fastest setting that fits": each system's fastest ok run; the ratio against the faster
    peer. "Equal memory": shardtune's fastest run under the peer's checkpointed peak against
    that peer's checkpointed tokens/s. Issue #20's targets are judged on these.
  * every table shows MFU against the device's dense bf16 tensor-core peak (DENSE_BF16_PEAKS,
    from NVIDIA's documents; --dense-peak overrides) beside MFU against the measured GEMM peak.

MFU uses one bf16 GEMM peak for every row: measured once at the start by the reference script
(--gemm-peak-only: 8192^3 torch.matmul, median of 10), or --gemm-peak. FLOPs per token: see
analysis/peers/hf_llama_reference.py FLOPS_FORMULA (the same as shardtune's
llama_flops_per_token) and hf_t5_reference.py T5_FLOPS_FORMULA (t5_flops_per_token); the driver
checks shardtune's own figure against them.

    python3 analysis/bench.py --bin build/shardtune [--configs 7b_lora,13b_lora] [--skip-reference]
    python3 analysis/bench.py --bin build/shardtune --configs t5xl_full_40g,t5xl_lora_40g
    python3 analysis/bench.py --bin build/shardtune --configs 7b_lora --st-checkpointing auto,true,false
"""

import argparse
import datetime
import json
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))

import hf_llama_reference as ref  # noqa: E402  (pure functions only; torch is imported in its main)
import hf_t5_reference as t5ref  # noqa: E402  (the same, for the T5 rows)

GIB = 2.0 ** 30
WARMUP_STEPS = 2  # steps left out of the median, for shardtune and the reference alike
ISSUE_GEMM_PEAK_TFLOPS = 797.0  # issue #3: bf16 GEMM peak measured on its H100

# Configurations: deck, and issue #3's reference figures (transformers 5.17, PEFT 0.21, SDPA,
# bf16, plain PyTorch loop, random init, AdamW; H100 80 GB) for context.
CONFIGS = {
    "1b_full": {"deck": "inputs/bench/llama1b_full.cfg", "issue": {"tokens_per_s": 50000, "peak_gib": 24.4}},
    "1b_lora": {"deck": "inputs/bench/llama1b_lora.cfg", "issue": {"tokens_per_s": 31000, "peak_gib": 27.8}},
    "7b_lora": {"deck": "inputs/bench/llama7b_lora.cfg", "issue": {"tokens_per_s": 6300, "peak_gib": 18.6}},
    "13b_lora": {"deck": "inputs/bench/llama13b_lora.cfg", "issue": {"tokens_per_s": 3710, "peak_gib": 32.3}},
    # Issue #4's reference (bitsandbytes 0.50 NF4 + double quantization, bf16 compute,
    # checkpointing, r=16 all-linear, batch 8, seq 1024; same H100). No same-run reference.
    "7b_qlora": {"deck": "inputs/bench/llama7b_qlora.cfg", "issue": {"tokens_per_s": 4620, "peak_gib": 12.6},
                 "issue_no": 4, "reference": "bitsandbytes"},
    "13b_qlora": {"deck": "inputs/bench/llama13b_qlora.cfg", "issue": {"tokens_per_s": 2800, "peak_gib": 19.1},
                  "issue_no": 4, "reference": "bitsandbytes"},
}
# Issue #5: each parallel strategy on one GPU (world size 1): the same deck with `parallel` set,
# so the rows show what each strategy's machinery costs when there is nothing to split (ZeRO-3
# still gathers every unit before it runs and reduce-scatters its gradients, through NCCL).
# No same-run reference: compare with the plain row of the same deck.
for _base, _deck in (("7b_lora", "inputs/bench/llama7b_lora.cfg"), ("1b_full", "inputs/bench/llama1b_full.cfg")):
    for _strategy in ("ddp", "tp", "zero3", "tp+zero3"):
        CONFIGS[f"{_base}_{_strategy.replace('+', '')}"] = {
            "deck": _deck, "issue": CONFIGS[_base]["issue"], "issue_no": 5, "reference": "none",
            "args": ["--parallel", _strategy], "vs": _base}
# Issue #6: FlanT5-Large/XL shapes (decks with arch = t5: seq2seq shards, hf_t5_reference.py, T5
# FLOPs). No issue figures: each row is judged against the same-run reference. The _40g rows run
# the XL decks as on a 40 GB GPU (shardtune --memory_limit 40GiB, the reference
# --memory-cap-gib 40): "plain fine-tuning runs out of memory where LoRA fits"; OOM is a result.
for _size in ("large", "xl"):
    for _method in ("full", "lora"):
        CONFIGS[f"t5{_size}_{_method}"] = {"deck": f"inputs/bench/flant5_{_size}_{_method}.cfg", "issue": {},
                                           "issue_no": 6}
for _method in ("full", "lora"):
    CONFIGS[f"t5xl_{_method}_40g"] = dict(CONFIGS[f"t5xl_{_method}"], args=["--memory_limit", "40GiB"],
                                          ref_args=["--memory-cap-gib", "40"], vs=f"t5xl_{_method}")
# Issue #20: shardtune with its frozen bases in FP8 (base_precision = fp8, once that deck key
# exists), judged against the peers of the plain LoRA row of the same run (reused, not re-run).
# The _fp8_lean rows keep W8 only (fp8_transpose = per_step: 1 byte a base parameter instead of
# 2), which lets FP8 fit under the peer's checkpointed peak with fewer blocks checkpointed.
for _base in ("7b_lora", "13b_lora"):
    CONFIGS[f"{_base}_fp8"] = dict(CONFIGS[_base], args=["--base_precision", "fp8"], peers_from=_base, issue_no=20)
    CONFIGS[f"{_base}_fp8_lean"] = dict(CONFIGS[_base], args=["--base_precision", "fp8", "--fp8_transpose", "per_step"],
                                        peers_from=_base, issue_no=20)
# QLoRA (no same-run peers, so the setting is in the row): the planner's checkpointing choice, and
# the NF4 base dequantized to FP8 instead of bf16 (judged against the LoRA rows of the same run).
CONFIGS["7b_qlora_auto"] = dict(CONFIGS["7b_qlora"], args=["--activation_checkpointing", "auto"], issue_no=20)
CONFIGS["7b_qlora_fp8"] = dict(CONFIGS["7b_qlora"], args=["--activation_checkpointing", "auto", "--base_precision", "fp8"],
                               issue_no=20)
# Issue #20, "1B full": the same deck in pure bf16 (master_weights = none: bf16 gradients and AdamW
# moments, no f32 master, stochastic rounding), as its pure-bf16 peers train; judged against the
# peers of the 1b_full row of the same run (reused, not re-run).
CONFIGS["1b_full_bf16"] = dict(CONFIGS["1b_full"], args=["--master_weights", "none"], peers_from="1b_full", issue_no=20)
DEFAULT_CONFIGS = ("1b_full", "1b_lora", "7b_lora", "13b_lora", "7b_qlora", "13b_qlora")
# `--configs issue20`: issue #20's rows. Run with --st-checkpointing auto,true,false so each LoRA
# row has shardtune at the planner's choice (auto), all and none, each again under memory_limit =
# the faster peer's checkpointed peak (the equal-memory comparison).
CONFIG_GROUPS = {"issue20": ("7b_lora", "13b_lora", "7b_lora_fp8", "13b_lora_fp8", "7b_lora_fp8_lean", "13b_lora_fp8_lean",
                             "7b_qlora", "7b_qlora_auto", "7b_qlora_fp8", "1b_full", "1b_full_bf16")}
T5_CONFIGS = ("t5large_full", "t5large_lora", "t5xl_full", "t5xl_lora", "t5xl_full_40g", "t5xl_lora_40g")

# Issue #3's targets.
TARGETS = {
    "1b_full": [{"kind": "speedup", "min_ratio": 1.2}],
    "7b_lora": [{"kind": "speedup_at_memory", "min_ratio": 2.0, "max_mem_ratio": 1.0},
                {"kind": "mfu", "min_mfu": 0.5}],
    "13b_lora": [{"kind": "speedup_at_memory", "min_ratio": 2.0, "max_mem_ratio": 1.0}],
    # Issue #4: against shardtune's own LoRA row of the same run, and against bitsandbytes.
    "7b_qlora": [{"kind": "vs_row", "row": "7b_lora", "max_mem_ratio": 0.6},
                 {"kind": "vs_row", "row": "7b_lora", "min_speed_ratio": 0.85},
                 {"kind": "speedup_at_memory", "min_ratio": 2.0, "max_mem_ratio": 1.0}],
    "13b_qlora": [{"kind": "speedup_at_memory", "min_ratio": 2.0, "max_mem_ratio": 1.0}],
    # Issue #6 on a 40 GB GPU: shardtune's LoRA fits where its full fine-tuning runs out of memory.
    "t5xl_lora_40g": [{"kind": "fits_where_oom", "row": "t5xl_full_40g"}],
}

# Issue #20's targets, on the rows' "fastest setting that fits" and "equal memory" figures (and,
# for QLoRA, against shardtune's LoRA row of the same run at the same recompute setting).
TARGETS_20 = {
    "7b_lora": [{"kind": "fastest_vs_peer", "min_ratio": 2.0}, {"kind": "equal_memory", "min_ratio": 1.4},
                {"kind": "mfu_dense", "min_mfu": 0.52}],
    "13b_lora": [{"kind": "fastest_vs_peer", "min_ratio": 2.0}, {"kind": "equal_memory", "min_ratio": 1.4}],
    "1b_full": [{"kind": "mfu_dense", "min_mfu": 0.55}],
    "1b_full_bf16": [{"kind": "mfu_dense", "min_mfu": 0.55}],
    "7b_qlora": [{"kind": "vs_row", "row": "7b_lora", "min_speed_ratio": 0.9},
                 {"kind": "vs_row", "row": "7b_lora", "max_mem_ratio": 0.55}],
    "7b_lora_fp8": [{"kind": "fastest_vs_peer", "min_ratio": 2.7}],
    "13b_lora_fp8": [{"kind": "fastest_vs_peer", "min_ratio": 2.7}],
}
PEER_KINDS = ("eager", "compiled")

# Dense (no sparsity) bf16 tensor-core peaks with f32 accumulation, TFLOP/s, by device name as
# torch / nvidia-smi report it (case-insensitive; every word must occur; first match wins). None:
# a variant whose figure is not in this table (pass --dense-peak).
DENSE_BF16_PEAKS = [
    (("H100", "PCIe"), 756.0, "NVIDIA H100 Tensor Core GPU Architecture whitepaper: H100 PCIe, 756 TFLOPS dense BF16"),
    (("H100", "NVL"), None, "H100 NVL: not in this table"),
    (("H200", "NVL"), None, "H200 NVL: not in this table"),
    (("GH200",), 989.4, "NVIDIA GH200 datasheet: its Hopper GPU is the H100 SXM5's, 989.4 TFLOPS dense BF16"),
    (("H100",), 989.4, "NVIDIA H100 Tensor Core GPU Architecture whitepaper: H100 SXM5, 989.4 TFLOPS dense BF16 "
                       "(1,979 with sparsity)"),
    (("H200",), 989.4, "NVIDIA H200 datasheet: H200 SXM, 1,979 TFLOPS BF16 with sparsity = 989.4 dense "
                       "(the H100 SXM5's tensor cores)"),
    (("A100",), 312.0, "NVIDIA A100 datasheet: 312 TFLOPS dense BF16 (624 with sparsity)"),
    (("L40S",), 362.05, "NVIDIA L40S datasheet: 362.05 TFLOPS dense BF16 (733 with sparsity)"),
]


def dense_peak_of(device):
    """(TFLOP/s, source) of a device name from DENSE_BF16_PEAKS; (None, why) when unknown."""
    if not device:
        return None, "device unknown"
    name = device.lower()
    for words, tflops, source in DENSE_BF16_PEAKS:
        if all(w.lower() in name for w in words):
            return tflops, source if tflops else f"{device}: {source} (pass --dense-peak)"
    return None, f"{device}: not in the dense-peak table (pass --dense-peak)"


MET, NOT_MET, NA = "met", "NOT met", "n/a"


# ------------------------------------------------------------------------------ decks


def read_deck(path, _seen=None):
    """The keys of a shardtune deck (key = value, '#' comments, include = base relative to the
    deck; the including deck's keys win), as strings."""
    seen = set() if _seen is None else _seen
    real = os.path.realpath(path)
    if real in seen:
        raise ValueError(f"{path}: include cycle")
    seen.add(real)
    own, include = {}, None
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "=" not in line:
                raise ValueError(f"{path}:{number}: expected 'key = value', got {raw.strip()!r}")
            key, value = (part.strip() for part in line.split("=", 1))
            if key == "include":
                include = value
            else:
                own[key] = value
    keys = {}
    if include:
        base = include if os.path.isabs(include) else os.path.join(os.path.dirname(path), include)
        keys.update(read_deck(base, seen))
    keys.update(own)
    return keys


def deck_bool(value):
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def checkpointing_value(value):
    """A deck's or the command line's activation_checkpointing in one spelling: "true" / "false",
    or what else shardtune takes ("auto", a number of checkpointed blocks: "1" is one block, as
    shardtune reads it), lower-cased."""
    v = str(value).strip().lower()
    if v in ("true", "yes", "on"):
        return "true"
    if v in ("0", "false", "no", "off", ""):
        return "false"
    return v


def checkpointing_on(value):
    """Whether an activation_checkpointing value recomputes anything: true, auto (it may), or a
    positive number of blocks. The peers' counterpart of a deck's setting."""
    v = checkpointing_value(value)
    if v in ("true", "auto"):
        return True
    if v == "false":
        return False
    try:
        return int(v) > 0
    except ValueError:
        return True


def deck_shape(keys, deck_path):
    """Model and run shape of a bench deck, with shardtune's defaults for absent keys. T5 decks
    (arch = t5) add decoder_layers, feed_forward_proj and the relative-attention settings."""
    heads = int(keys.get("num_heads", 4))
    kv = int(keys.get("num_kv_heads", 0)) or heads
    head_dim = int(keys.get("head_dim", 0)) or None
    layers = int(keys.get("num_layers", 4))
    shape = {
        "arch": keys.get("arch", "llama"),
        "hidden": int(keys.get("hidden_size", 256)),
        "layers": layers,
        "intermediate": int(keys.get("intermediate_size", 688)),
        "heads": heads,
        "kv_heads": kv,
        "head_dim": head_dim,
        "vocab": int(keys.get("vocab_size", 0)),
        "method": keys.get("method", "full"),
        "lora_r": int(keys.get("lora_r", 8)),
        "lora_alpha": float(keys.get("lora_alpha", 16)),
        "lora_targets": keys.get("lora_targets", "q,k,v,o,gate,up,down"),
        "batch": int(keys.get("micro_batch_size", 8)) * int(keys.get("grad_accum", 1)),
        "checkpointing": checkpointing_on(keys.get("activation_checkpointing", "false")),
        "checkpointing_value": checkpointing_value(keys.get("activation_checkpointing", "false")),
        "steps": int(keys.get("max_steps", 0)),
        "lr": float(keys.get("lr", 3e-4)),
        "grad_clip": float(keys.get("grad_clip", 1.0)),
        "tied": deck_bool(keys.get("tie_embeddings", "false")),
        "output_dir": keys.get("output_dir", "runs"),
        "run_id": keys.get("run_id") or os.path.splitext(os.path.basename(deck_path))[0],
        "data": keys.get("data", ""),
    }
    if shape["arch"] == "t5":
        shape.update({
            "decoder_layers": int(keys.get("num_decoder_layers", 0)) or layers,
            "feed_forward_proj": keys.get("feed_forward_proj", "gated-gelu"),
            "relative_attention_num_buckets": int(keys.get("relative_attention_num_buckets", 32)),
            "relative_attention_max_distance": int(keys.get("relative_attention_max_distance", 128)),
        })
    return shape


def is_t5(shape):
    return shape.get("arch") == "t5"


def lora_modules(shape):
    """The deck's lora_targets in the reference's module names (Llama: q -> q_proj; T5 as is)."""
    targets = [t.strip() for t in shape["lora_targets"].split(",") if t.strip()]
    return tuple(targets) if is_t5(shape) else tuple(f"{t}_proj" for t in targets)


def t5_shape_args(shape):
    """hf_t5_reference's shape keywords (d_model, ...) of a T5 deck's shape."""
    return dict(d_model=shape["hidden"], d_kv=shape["head_dim"] or shape["hidden"] // shape["heads"],
                heads=shape["heads"], d_ff=shape["intermediate"], layers=shape["layers"],
                decoder_layers=shape["decoder_layers"], gated=shape["feed_forward_proj"].startswith("gated"))


def shape_flops(shape, seq, target_len=None):
    """FLOPs per token of a deck's shape (the reference's formula; QLoRA does LoRA's arithmetic,
    the dequantization is memory traffic, not FLOPs). T5: seq encoder and target_len decoder
    tokens per row, FLOPs per encoder + decoder token."""
    method = "lora" if shape["method"] == "qlora" else shape["method"]
    if is_t5(shape):
        return t5ref.flops_per_token(vocab=shape["vocab"], seq=seq, target_len=target_len, method=method,
                                     lora_r=shape["lora_r"], lora_modules=lora_modules(shape), **t5_shape_args(shape))
    return ref.flops_per_token(shape["hidden"], shape["layers"], shape["intermediate"], shape["heads"],
                               shape["kv_heads"], shape["vocab"], seq, method, shape["lora_r"],
                               shape["head_dim"], lora_modules(shape))


def reference_script(shape):
    """The PyTorch reference that runs a deck's shape."""
    return os.path.join(HERE, "peers", "hf_t5_reference.py" if is_t5(shape) else "hf_llama_reference.py")


def reference_args(shape, seq, warmup=WARMUP_STEPS, gemm_peak=None, target_len=None, extra=(), checkpointing=None,
                   compiled=False):
    """Command-line arguments of the deck's reference script (reference_script) for its shape
    (T5: seq encoder and target_len target tokens per row); `extra` is appended (e.g.
    --memory-cap-gib 40). checkpointing: None for the deck's setting, else True / False
    (--checkpointing / --no-checkpointing); compiled: the compiled peer (--compile; Llama)."""
    if is_t5(shape):
        t5 = t5_shape_args(shape)
        args = ["--d-model", t5["d_model"], "--d-kv", t5["d_kv"], "--d-ff", t5["d_ff"], "--layers", t5["layers"],
                "--decoder-layers", t5["decoder_layers"], "--heads", t5["heads"],
                "--relative-attention-num-buckets", shape["relative_attention_num_buckets"],
                "--relative-attention-max-distance", shape["relative_attention_max_distance"],
                "--feed-forward-proj", shape["feed_forward_proj"], "--target-len", target_len]
    else:
        args = ["--hidden", shape["hidden"], "--layers", shape["layers"], "--intermediate", shape["intermediate"],
                "--heads", shape["heads"], "--kv-heads", shape["kv_heads"]]
        if shape["head_dim"]:
            args += ["--head-dim", shape["head_dim"]]
    args += ["--vocab", shape["vocab"], "--method", shape["method"], "--batch", shape["batch"], "--seq", seq,
             "--steps", shape["steps"], "--warmup", warmup, "--lr", repr(shape["lr"]),
             "--grad-clip", repr(shape["grad_clip"])]
    if shape["method"] == "lora":
        args += ["--lora-r", shape["lora_r"], "--lora-alpha", repr(shape["lora_alpha"])]
    if checkpointing is None:
        args += ["--checkpointing"] if shape["checkpointing"] else []
    else:
        args += ["--checkpointing" if checkpointing else "--no-checkpointing"]
    if compiled:
        args += ["--compile"]
    if gemm_peak is not None:
        args += ["--gemm-peak", repr(float(gemm_peak))]
    return [str(a) for a in list(args) + list(extra)]


def mpirun_command(mpirun, binary, deck, is_root, extra=()):
    """mpirun -np 1 --bind-to none [--allow-run-as-root] BIN train --deck DECK [extra...]; flags
    already in `mpirun` (a command line, e.g. the Makefile's $(MPIRUN) $(MPIRUN_FLAGS)) are not
    repeated."""
    cmd = shlex.split(mpirun)
    if "-np" not in cmd and "-n" not in cmd:
        cmd += ["-np", "1"]
    if not any(a.startswith("--bind-to") for a in cmd):
        cmd += ["--bind-to", "none"]
    if is_root and "--allow-run-as-root" not in cmd:
        cmd += ["--allow-run-as-root"]
    return cmd + [binary, "train", "--deck", deck] + list(extra)


# ------------------------------------------------------------------------------ results


def mfu(flops_per_token, tokens_per_s, peak_tflops):
    if not (flops_per_token and tokens_per_s and peak_tflops):
        return None
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12)


def _finite(x):
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def summarize_shardtune(run, warmup=WARMUP_STEPS, tokens_per_step=None):
    """From st_read.read_run(): outcome, median step time over steps > warmup, tokens per step,
    tokens/s, peak memory, shardtune's flops_per_token. tokens_per_step, where given (T5 rows:
    batch x (input + target), the reference's count), is what tokens/s counts; the `tokens`
    column's own median is kept as metrics_tokens_per_step."""
    summary, steps = run.get("summary", {}), run.get("steps", {})
    out = {"outcome": summary.get("outcome", "error"), "steps_completed": summary.get("steps_completed")}
    if summary.get("error"):
        out["error"] = summary["error"]
    if out["outcome"] == "oom":
        out["oom_bytes"] = summary.get("oom_bytes")
        out["oom_phase"] = summary.get("oom_phase")
    if _finite(summary.get("peak_memory")) and summary.get("peak_memory", 0) > 0:
        out["peak_memory_bytes"] = int(summary["peak_memory"])
    if _finite(summary.get("flops_per_token")):
        out["flops_per_token"] = float(summary["flops_per_token"])
    step_no = list(steps.get("step", []))
    times = list(steps.get("step_time", []))
    tokens = list(steps.get("tokens", []))
    keep = [i for i, s in enumerate(step_no) if s > warmup] or list(range(len(step_no)))
    out["step_times"] = [float(t) for t in times]
    out["losses"] = [float(x) for x in steps.get("loss", [])]
    if keep and times:
        med = statistics.median(float(times[i]) for i in keep)
        tok = statistics.median(float(tokens[i]) for i in keep)
        out["median_step_time"] = med
        if tokens_per_step is not None:
            out["metrics_tokens_per_step"] = int(tok)
            tok = tokens_per_step
        out["tokens_per_step"] = int(tok)
        out["tokens_per_s"] = tok / med if med > 0 else None
        out["median_over_steps"] = [int(step_no[i]) for i in keep]
    if out["outcome"] == "ok" and "tokens_per_s" not in out:
        out["outcome"] = "error"
        out["error"] = "no training steps recorded"
    return out


def ratio(a, b):
    return a / b if _finite(a) and _finite(b) and b > 0 else None


def row_figures(st, rf, peak_tflops, flops, dense_peak=None):
    """Tokens/s, peak GiB, MFU of both sides (st_mfu / ref_mfu against the measured GEMM peak,
    *_mfu_dense against the device's dense bf16 peak), and their ratios (None where unknown)."""
    st_ok, rf_ok = st.get("outcome") == "ok", rf.get("outcome") == "ok"
    st_tps = st.get("tokens_per_s") if st_ok else None
    rf_tps = rf.get("tokens_per_s") if rf_ok else None
    st_mem = st.get("peak_memory_bytes") if st_ok else None
    rf_mem = rf.get("peak_memory_bytes") if rf_ok else None
    return {
        "st_tokens_per_s": st_tps, "ref_tokens_per_s": rf_tps, "ratio": ratio(st_tps, rf_tps),
        "st_step_time": st.get("median_step_time") if st_ok else None,
        "ref_step_time": rf.get("median_step_time") if rf_ok else None,
        "st_peak_gib": st_mem / GIB if st_mem else None, "ref_peak_gib": rf_mem / GIB if rf_mem else None,
        "mem_ratio": ratio(st_mem, rf_mem),
        "st_mfu": mfu(flops, st_tps, peak_tflops), "ref_mfu": mfu(flops, rf_tps, peak_tflops),
        "st_mfu_dense": mfu(flops, st_tps, dense_peak), "ref_mfu_dense": mfu(flops, rf_tps, dense_peak),
        "st_outcome": st.get("outcome", "skipped"), "ref_outcome": rf.get("outcome", "skipped"),
        "ref_peer": rf.get("peer"),
    }


def run_figures(run, flops, peak_tflops, dense_peak):
    """One run's outcome, tokens/s, ms/step, peak GiB and MFU (dense and against the GEMM peak)."""
    ok_ = run.get("outcome") == "ok"
    tps = run.get("tokens_per_s") if ok_ else None
    mem = run.get("peak_memory_bytes") if ok_ else None
    step = run.get("median_step_time") if ok_ else None
    return {"outcome": run.get("outcome", "skipped"), "tokens_per_s": tps, "step_ms": step * 1e3 if _finite(step) else None,
            "peak_gib": mem / GIB if mem else None, "mfu_dense": mfu(flops, tps, dense_peak),
            "mfu_gemm": mfu(flops, tps, peak_tflops), "compile_time_s": run.get("compile_time_s")}


def fastest_ok(runs):
    """(label, run) of the run with the most tokens/s among {label: run} that finished ok;
    (None, None) when none did."""
    best = (None, None)
    for label, run in runs.items():
        if run.get("outcome") == "ok" and _finite(run.get("tokens_per_s")):
            if best[1] is None or run["tokens_per_s"] > best[1]["tokens_per_s"]:
                best = (label, run)
    return best


def summary_outcome(runs):
    """What a system's runs came to when none was ok: "oom" when any ran out of memory, else
    the first outcome (error, timeout, skipped), or "not run"."""
    outcomes = [r.get("outcome", "skipped") for r in runs.values()]
    if not outcomes:
        return "not run"
    return "oom" if "oom" in outcomes else outcomes[0]


def peer_setting(on):
    return "on" if on else "off"


def faster_peer(peers, setting):
    """The faster peer at one checkpointing setting ("on" / "off"): a copy of its run with "peer"
    (its kind) and "checkpointing" added. Where no peer finished ok: the eager one's result (OOM,
    error, ...) if it ran, else the compiled one's, else skipped."""
    at = {kind: runs[setting] for kind, runs in peers.items() if setting in runs}
    kind, run = fastest_ok(at)
    if run is None:
        kind = next((k for k in PEER_KINDS if k in at), None)
        run = at.get(kind, {"outcome": "skipped"})
    return dict(run, peer=kind, checkpointing=setting)


def judge_fastest(row, flops, peak_tflops, dense_peak):
    """Issue #20's "fastest setting that fits": each system's fastest ok run (shardtune over its
    activation_checkpointing values, each peer over checkpointing on / off), and shardtune
    against the faster peer."""
    out = {}
    systems = {"shardtune": row.get("st_runs") or {"deck": row.get("shardtune", {"outcome": "skipped"})}}
    systems.update(row.get("peers", {}))
    for system, runs in systems.items():
        label, run = fastest_ok(runs)
        out[system] = (dict(run_figures(run, flops, peak_tflops, dense_peak), setting=label) if run
                       else {"outcome": summary_outcome(runs), "setting": None})
    peers_ok = {k: out[k] for k in row.get("peers", {}) if out[k].get("tokens_per_s")}
    out["peer"] = max(peers_ok, key=lambda k: peers_ok[k]["tokens_per_s"]) if peers_ok else None
    best = out.get(out["peer"], {}) if out["peer"] else {}
    out["ratio"] = ratio(out["shardtune"].get("tokens_per_s"), best.get("tokens_per_s"))
    out["mem_ratio"] = ratio(out["shardtune"].get("peak_gib"), best.get("peak_gib"))
    return out


def judge_equal_memory(row, flops, peak_tflops, dense_peak):
    """Issue #20's "equal memory": shardtune's fastest run under memory_limit = the faster
    peer's checkpointed peak, against that peer's checkpointed tokens/s. None when not measured."""
    eq = row.get("equal_memory")
    if not eq:
        return None
    peer = run_figures(eq["peer_run"], flops, peak_tflops, dense_peak)
    label, run = fastest_ok(eq["runs"])
    st = (dict(run_figures(run, flops, peak_tflops, dense_peak), setting=label) if run
          else {"outcome": summary_outcome(eq["runs"]), "setting": None})
    return {"limit_gib": eq["limit_bytes"] / GIB, "peer": eq["peer"], "peer_figures": peer, "shardtune": st,
            "ratio": ratio(st.get("tokens_per_s"), peer.get("tokens_per_s"))}


def _ratio_target(entry, st_outcome, ratio_value, peer_missing, min_ratio, value):
    """Status of a "shardtune tokens/s >= min_ratio x a peer's" target."""
    if st_outcome == "skipped":
        return dict(entry, status=NA, value="shardtune skipped")
    if ratio_value is None and st_outcome == "oom":
        return dict(entry, status=NOT_MET, value="shardtune out of memory at every setting")
    if peer_missing == "oom" and st_outcome == "ok":
        return dict(entry, status=MET, value="every peer setting ran out of memory")
    if ratio_value is None:
        return dict(entry, status=NA if st_outcome == "ok" else NOT_MET,
                    value=f"no ratio (shardtune {st_outcome}, peer {peer_missing})")
    return dict(entry, status=MET if ratio_value >= min_ratio else NOT_MET, value=value)


def issue20_target(t, row, peak_source, dense_source):
    """One of issue #20's row-level targets (fastest_vs_peer, equal_memory, mfu_dense) on
    row["fastest"] / row["equal"]."""
    entry = {"kind": t["kind"], "issue": 20, "same_run": True, "basis": "this run"}
    fastest, equal = row.get("fastest"), row.get("equal")
    if t["kind"] == "fastest_vs_peer":
        entry["target"] = (f"#20 each at its fastest setting that fits: tokens/s >= {t['min_ratio']:.1f}x "
                           "the faster peer's")
        if not fastest:
            return dict(entry, status=NA, value="no peer runs in this run")
        st, peer = fastest["shardtune"], fastest.get(fastest["peer"]) if fastest["peer"] else None
        peer_missing = None if peer else ("oom" if all(fastest.get(k, {}).get("outcome") == "oom"
                                                         for k in PEER_KINDS if k in fastest) else "not ok")
        value = (f"{fastest['ratio']:.2f}x (shardtune {st.get('setting')}: {st.get('tokens_per_s', 0):,.0f}; "
                 f"{fastest['peer']} {peer.get('setting') if peer else '?'}: "
                 f"{peer.get('tokens_per_s', 0) if peer else 0:,.0f} tok/s)") if fastest["ratio"] else None
        return _ratio_target(entry, st.get("outcome"), fastest["ratio"], peer_missing, t["min_ratio"], value)
    if t["kind"] == "equal_memory":
        entry["target"] = (f"#20 at equal memory (memory_limit = the faster peer's checkpointed peak): "
                           f"tokens/s >= {t['min_ratio']:.1f}x that peer's")
        if not equal:
            return dict(entry, status=NA,
                        value="not measured (shardtune skipped, --skip-equal-memory or no checkpointed peer)")
        st = equal["shardtune"]
        value = (f"{equal['ratio']:.2f}x under {equal['limit_gib']:.2f} GiB (shardtune {st.get('setting')}: "
                 f"{st.get('tokens_per_s', 0):,.0f}; {equal['peer']}: {equal['peer_figures']['tokens_per_s']:,.0f} tok/s)"
                 if equal["ratio"] else None)
        return _ratio_target(entry, st.get("outcome"), equal["ratio"], None, t["min_ratio"], value)
    # mfu_dense
    entry["target"] = f"#20 model-FLOPs utilisation >= {100 * t['min_mfu']:.0f}% of the dense bf16 peak"
    entry["basis"] = dense_source
    st = (fastest or {}).get("shardtune") or row.get("fastest_st")
    if st is None:  # rows without peers: the deck's own run
        f = row.get("figures", {})
        st = {"outcome": f.get("st_outcome"), "mfu_dense": f.get("st_mfu_dense"), "setting": "deck"}
    if st.get("outcome") == "skipped":
        return dict(entry, status=NA, value="shardtune skipped")
    if st.get("outcome") != "ok" and st.get("mfu_dense") is None:
        return dict(entry, status=NOT_MET, value=f"shardtune {st.get('outcome')}")
    if st.get("mfu_dense") is None:
        return dict(entry, status=NA, value="no dense peak known for this device")
    return dict(entry, status=MET if st["mfu_dense"] >= t["min_mfu"] else NOT_MET,
                value=f"{100 * st['mfu_dense']:.1f}% (checkpointing {st.get('setting')})")


def evaluate_targets(name, st, rf, figures, issue, peak_tflops, peak_source, others=None, issue_no=3, targets=None,
                     row=None, dense_source=""):
    """The issues' targets for one configuration: a list of {target, value, status, basis}.
    `others` maps the names of the rows measured in this run to their figures (for targets
    relative to another row: QLoRA against LoRA, T5 LoRA fitting where full runs out of memory).

    Ratios are against the reference of the same run; where it did not run (skipped, error,
    timeout) against the issue's reference figures (basis says so); a reference that ran out
    of memory while shardtune did not counts as met."""
    out = []
    st_ok = st.get("outcome") == "ok"
    rf_outcome = rf.get("outcome", "skipped")
    for t in TARGETS.get(name, []) if targets is None else targets:
        if t["kind"] in ("fastest_vs_peer", "equal_memory", "mfu_dense"):
            out.append(issue20_target(t, row or {}, peak_source, dense_source))
            continue
        entry = {"kind": t["kind"]}
        if issue_no == 20:
            entry["issue"] = 20
        if t["kind"] in ("speedup", "speedup_at_memory"):
            entry["target"] = f"tokens/s >= {t['min_ratio']:.1f}x reference"
            if t["kind"] == "speedup_at_memory":
                entry["target"] += f" at <= {t['max_mem_ratio']:.1f}x its peak memory"
            entry["same_run"] = rf_outcome in ("ok", "oom")
            if st.get("outcome") == "skipped":
                entry.update(status=NA, value="shardtune skipped", basis="this run")
            elif not st_ok:
                entry.update(status=NOT_MET, value=f"shardtune {st.get('outcome', 'not run')}", basis="this run")
            elif rf_outcome == "oom":
                entry.update(status=MET, value="reference out of memory", basis="this run")
            else:
                if rf_outcome == "ok":
                    r, m, basis = figures["ratio"], figures["mem_ratio"], "this run"
                else:
                    r = ratio(figures["st_tokens_per_s"], issue["tokens_per_s"])
                    m = ratio(figures["st_peak_gib"], issue["peak_gib"])
                    basis = f"issue #{issue_no} figures (reference {rf_outcome})"
                ok = r is not None and r >= t["min_ratio"]
                value = f"{r:.2f}x tokens/s" if r is not None else "?"
                if t["kind"] == "speedup_at_memory":
                    ok = ok and m is not None and m <= t["max_mem_ratio"]
                    value += f", {m:.2f}x memory" if m is not None else ", memory ?"
                entry.update(status=MET if ok else NOT_MET, value=value, basis=basis)
        elif t["kind"] == "vs_row":
            other = (others or {}).get(t["row"])
            entry["same_run"] = True
            if "max_mem_ratio" in t:
                entry["target"] = f"peak memory <= {t['max_mem_ratio']:.2f}x shardtune's {t['row']}"
                mine, theirs, fmt = figures["st_peak_gib"], other and other["st_peak_gib"], "{:.2f}x memory"
                passes = lambda r: r <= t["max_mem_ratio"]  # noqa: E731
            else:
                entry["target"] = f"tokens/s >= {t['min_speed_ratio']:.2f}x shardtune's {t['row']}"
                mine, theirs, fmt = figures["st_tokens_per_s"], other and other["st_tokens_per_s"], "{:.2f}x tokens/s"
                passes = lambda r: r >= t["min_speed_ratio"]  # noqa: E731
            if issue_no == 20:
                entry["target"] = "#20 " + entry["target"] + " (same recompute setting)"
            r = ratio(mine, theirs)
            if st.get("outcome") == "skipped":
                entry.update(status=NA, value="shardtune skipped", basis="this run")
            elif not st_ok:
                entry.update(status=NOT_MET, value=f"shardtune {st.get('outcome', 'not run')}", basis="this run")
            elif r is None:
                entry.update(status=NA, value=f"no {t['row']} result in this run", basis="this run")
            else:
                entry.update(status=MET if passes(r) else NOT_MET, value=fmt.format(r), basis="this run")
        elif t["kind"] == "fits_where_oom":
            entry.update(fits_where_oom(st, figures, (others or {}).get(t["row"]), t["row"]))
        elif t["kind"] == "mfu":
            entry["target"] = f"MFU >= {100 * t['min_mfu']:.0f}% of the bf16 GEMM peak"
            entry["same_run"] = not peak_source.startswith("issue")
            value = figures["st_mfu"]
            if st.get("outcome") == "skipped":
                entry.update(status=NA, value="shardtune skipped", basis=peak_source)
            elif not st_ok or value is None:
                entry.update(status=NOT_MET if not st_ok else NA,
                             value=f"shardtune {st.get('outcome')}" if not st_ok else "no MFU", basis=peak_source)
            else:
                entry.update(status=MET if value >= t["min_mfu"] else NOT_MET,
                             value=f"{100 * value:.1f}% of {peak_tflops:.0f} TFLOP/s", basis=peak_source)
        out.append(entry)
    return out


def _outcome_text(outcome, gib):
    if outcome == "ok":
        return f"ok ({gib:.1f} GiB)" if _finite(gib) else "ok"
    return {"oom": "OOM"}.get(outcome, outcome)


def fits_where_oom(st, figures, other, other_name):
    """Check that shardtune's run of this row fits where its run of `other_name` (the same model,
    full fine-tuning, same memory cap) runs out of memory: met when that one is OOM and this one
    ok. The reference's outcomes of both rows are added to the value, for context."""
    entry = {"target": f"shardtune fits where {other_name} runs out of memory", "same_run": True,
             "basis": "this run"}
    mine = st.get("outcome", "skipped")
    theirs = other["st_outcome"] if other else None
    if other:
        value = (f"shardtune {other_name} {_outcome_text(theirs, other['st_peak_gib'])}, "
                 f"this row {_outcome_text(mine, figures['st_peak_gib'])}; "
                 f"reference {other_name} {_outcome_text(other['ref_outcome'], other['ref_peak_gib'])}, "
                 f"this row {_outcome_text(figures['ref_outcome'], figures['ref_peak_gib'])}")
    else:
        value = f"no {other_name} result in this run"
    if mine == "skipped":
        status = NA
    elif mine != "ok":
        status = NOT_MET
    elif theirs not in ("ok", "oom"):
        status = NA
    else:
        status = MET if theirs == "oom" else NOT_MET
    return dict(entry, status=status, value=value)


def overall_status(targets):
    """met / NOT met / n/a over a configuration's targets ('-' without any); '*' marks a
    verdict that rests on issue #3's figures instead of this run's."""
    if not targets:
        return "-"
    if any(t["status"] == NOT_MET for t in targets):
        status = NOT_MET
    elif all(t["status"] == MET for t in targets):
        status = MET
    else:
        status = NA
    return status + ("*" if not all(t.get("same_run", True) for t in targets) else "")


FOOTNOTE = "* judged against the issue's figures: no reference result or measured GEMM peak in this run"


# ------------------------------------------------------------------------------ formatting

COLUMNS = [
    # (key, header, width). ref = the reference: the faster of issue #20's peers at the deck's
    # checkpointing where they ran (eager and compiled shown too), else the one reference.
    ("config", "config", 9),
    ("st_step", "st ms/step", 10),
    ("st_tps", "st tok/s", 9),
    ("eager_tps", "eager tok/s", 11),
    ("compiled_tps", "compiled tok/s", 14),
    ("ref_step", "ref ms/step", 11),
    ("ref_tps", "ref tok/s", 9),
    ("ratio", "ratio", 6),
    ("st_gib", "st GiB", 7),
    ("ref_gib", "ref GiB", 7),
    ("mem_ratio", "mem ratio", 9),
    ("st_mfu", "st MFU", 6),
    ("st_mfu_gemm", "st MFU/gemm", 11),
    ("ref_mfu", "ref MFU", 7),
    ("ref_mfu_gemm", "ref MFU/gemm", 12),
    ("issue_tps", "issue tok/s", 11),
    ("issue_gib", "issue GiB", 9),
    ("target", "target", 8),
]


def _num(x, fmt):
    return fmt.format(x) if _finite(x) else None


def _pct(x):
    return _num(x and 100 * x, "{:.1f}%") or "-"


def _outcome_cell(run):
    return {"oom": "OOM", "ok": "-"}.get(run.get("outcome", "skipped"), run.get("outcome", "skipped"))


def peer_cell(row, kind):
    """tokens/s of one peer at the deck's checkpointing setting ("-" where it did not run)."""
    run = row.get("peers", {}).get(kind, {}).get(peer_setting(row.get("shape", {}).get("checkpointing")))
    if run is None:
        return "-"
    return _num(run.get("tokens_per_s"), "{:,.0f}") if run.get("outcome") == "ok" else _outcome_cell(run)


def row_cells(row):
    """Text of every column for one configuration's result."""
    f, st, rf, issue = row["figures"], row["shardtune"], row["reference"], row["issue"]

    def outcome_or(value, side):
        if value is not None:
            return value
        o = side.get("outcome", "skipped")
        return {"oom": "OOM", "ok": "-"}.get(o, o)

    return {
        "config": row["name"],
        "st_step": outcome_or(_num(f["st_step_time"] and f["st_step_time"] * 1e3, "{:.1f}"), st),
        "st_tps": outcome_or(_num(f["st_tokens_per_s"], "{:,.0f}"), st),
        "ref_step": outcome_or(_num(f["ref_step_time"] and f["ref_step_time"] * 1e3, "{:.1f}"), rf),
        "ref_tps": outcome_or(_num(f["ref_tokens_per_s"], "{:,.0f}"), rf),
        "ratio": _num(f["ratio"], "{:.2f}x") or "-",
        "st_gib": outcome_or(_num(f["st_peak_gib"], "{:.1f}"), st),
        "ref_gib": outcome_or(_num(f["ref_peak_gib"], "{:.1f}"), rf),
        "mem_ratio": _num(f["mem_ratio"], "{:.2f}x") or "-",
        "eager_tps": peer_cell(row, "eager"),
        "compiled_tps": peer_cell(row, "compiled"),
        "st_mfu": _pct(f.get("st_mfu_dense")),
        "st_mfu_gemm": _pct(f["st_mfu"]),
        "ref_mfu": _pct(f.get("ref_mfu_dense")),
        "ref_mfu_gemm": _pct(f["ref_mfu"]),
        "issue_tps": _num(issue.get("tokens_per_s"), "{:,.0f}") or "-",
        "issue_gib": _num(issue.get("peak_gib"), "{:.1f}") or "-",
        "target": row["status"],
    }


# Issue #20's tables: (key, header) columns; rows only for configurations with peer runs.
FASTEST_COLUMNS = [("config", "config"), ("st", "shardtune tok/s (ckpt, GiB)"), ("eager", "eager tok/s (ckpt, GiB)"),
                   ("compiled", "compiled tok/s (ckpt, GiB)"), ("ratio", "vs faster peer"), ("st_mfu", "st MFU"),
                   ("st_mfu_gemm", "st MFU/gemm"), ("peer_mfu", "peer MFU"), ("peer_mfu_gemm", "peer MFU/gemm")]
EQUAL_COLUMNS = [("config", "config"), ("limit", "limit GiB"), ("peer", "peer (ckpt on) tok/s"),
                 ("st", "shardtune tok/s (ckpt, GiB)"), ("ratio", "ratio"), ("st_mfu", "st MFU"),
                 ("st_mfu_gemm", "st MFU/gemm"), ("peer_mfu", "peer MFU"), ("peer_mfu_gemm", "peer MFU/gemm")]
RUN_COLUMNS = [("config", "config"), ("system", "system"), ("ckpt", "ckpt"), ("limit", "memory limit"),
               ("outcome", "outcome"), ("tps", "tok/s"), ("ms", "ms/step"), ("gib", "peak GiB"), ("mfu", "MFU"),
               ("mfu_gemm", "MFU/gemm"), ("compile", "compile s")]


def _system_cell(fig):
    """ "tok/s (setting, GiB)" of a judged system, or its outcome."""
    if not fig or not fig.get("tokens_per_s"):
        return {"oom": "OOM"}.get((fig or {}).get("outcome"), (fig or {}).get("outcome") or "-")
    return f"{fig['tokens_per_s']:,.0f} ({fig.get('setting')}, {fig['peak_gib']:.1f})"


def fastest_cells(row):
    f = row["fastest"]
    peer = f.get(f["peer"]) if f["peer"] else {}
    return {"config": row["name"], "st": _system_cell(f["shardtune"]), "eager": _system_cell(f.get("eager")),
            "compiled": _system_cell(f.get("compiled")),
            "ratio": f"{f['ratio']:.2f}x ({f['peer']})" if f["ratio"] else "-",
            "st_mfu": _pct(f["shardtune"].get("mfu_dense")), "st_mfu_gemm": _pct(f["shardtune"].get("mfu_gemm")),
            "peer_mfu": _pct(peer.get("mfu_dense")), "peer_mfu_gemm": _pct(peer.get("mfu_gemm"))}


def equal_cells(row):
    e = row["equal"]
    peer = e["peer_figures"]
    return {"config": row["name"], "limit": f"{e['limit_gib']:.2f}",
            "peer": f"{peer['tokens_per_s']:,.0f} ({e['peer']})" if peer.get("tokens_per_s") else "-",
            "st": _system_cell(e["shardtune"]), "ratio": f"{e['ratio']:.2f}x" if e["ratio"] else "-",
            "st_mfu": _pct(e["shardtune"].get("mfu_dense")), "st_mfu_gemm": _pct(e["shardtune"].get("mfu_gemm")),
            "peer_mfu": _pct(peer.get("mfu_dense")), "peer_mfu_gemm": _pct(peer.get("mfu_gemm"))}


def run_rows(row, peak_tflops, dense_peak):
    """Every run of a configuration with peers: shardtune at each setting (and under the memory
    limit), each peer at each setting."""
    flops = row["flops_per_token"]
    runs = [("shardtune", value, "-", run) for value, run in row.get("st_runs", {}).items()]
    eq = row.get("equal_memory")
    if eq:
        runs += [("shardtune", value, f"{eq['limit_bytes'] / GIB:.2f} GiB", run) for value, run in eq["runs"].items()]
    for kind, settings in row.get("peers", {}).items():
        runs += [(kind + (" (reused)" if row.get("peers_from") else ""), setting, "-", run)
                 for setting, run in settings.items()]
    out = []
    for system, setting, limit, run in runs:
        f = run_figures(run, flops, peak_tflops, dense_peak)
        outcome = f["outcome"] + (" (inferred)" if run.get("inferred") else "")
        out.append({"config": row["name"], "system": system, "ckpt": setting, "limit": limit, "outcome": outcome,
                    "tps": _num(f["tokens_per_s"], "{:,.0f}") or "-", "ms": _num(f["step_ms"], "{:.1f}") or "-",
                    "gib": _num(f["peak_gib"], "{:.2f}") or "-", "mfu": _pct(f["mfu_dense"]),
                    "mfu_gemm": _pct(f["mfu_gemm"]), "compile": _num(f["compile_time_s"], "{:.0f}") or "-"})
    return out


def issue20_tables(report):
    """(title, columns, rows of cells) of issue #20's tables, for the configurations that have them."""
    results = report["results"]
    peak, dense = report.get("gemm_peak_tflops"), report.get("dense_peak_tflops")
    tables = []
    fastest = [fastest_cells(r) for r in results if r.get("fastest")]
    if fastest:
        tables.append(("each system at its fastest setting that fits (issue #20)", FASTEST_COLUMNS, fastest))
    equal = [equal_cells(r) for r in results if r.get("equal")]
    if equal:
        tables.append(("at equal memory: shardtune under memory_limit = the faster peer's checkpointed peak "
                       "(issue #20)", EQUAL_COLUMNS, equal))
    runs = [cells for r in results if r.get("peers") for cells in run_rows(r, peak, dense)]
    if runs:
        tables.append(("every run", RUN_COLUMNS, runs))
    return tables


def text_table(columns, rows):
    widths = [max([len(h)] + [len(str(cells[k])) for cells in rows]) for k, h in columns]
    lines = ["# " + "  ".join(h.rjust(w) for (_, h), w in zip(columns, widths))]
    lines += ["  " + "  ".join(str(cells[k]).rjust(w) for (k, _), w in zip(columns, widths)) for cells in rows]
    return lines


def markdown_table(columns, rows):
    out = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    return out + ["| " + " | ".join(str(cells[k]) for k, _ in columns) + " |" for cells in rows]


def peak_lines(report):
    """The two peaks every MFU figure is against."""
    lines = []
    if _finite(report.get("dense_peak_tflops")):
        lines.append(f"MFU: against the dense bf16 peak, {report['dense_peak_tflops']:.1f} TFLOP/s "
                     f"({report.get('dense_peak_source')})")
    else:
        lines.append(f"MFU: no dense bf16 peak known ({report.get('dense_peak_source', 'device unknown')})")
    if _finite(report.get("gemm_peak_tflops")):
        lines.append(f"MFU/gemm: against the bf16 GEMM peak, {report['gemm_peak_tflops']:.1f} TFLOP/s "
                     f"({report['gemm_peak_source']})")
    else:
        lines.append("MFU/gemm: bf16 GEMM peak unknown (not computed)")
    return lines


def target_lines(results):
    lines = []
    for row in results:
        for t in row["targets"]:
            lines.append(f"{row['name']}: {t['target']}: {t['value']} -> {t['status']} ({t['basis']})")
    return lines


def flops_formulas(results):
    """(label, formula) of the FLOPs per token of the model families in the results."""
    archs = {row.get("arch", "llama") for row in results}
    out = [("FLOPs per token", ref.FLOPS_FORMULA)] if archs - {"t5"} or not archs else []
    if "t5" in archs:
        out.append(("T5 FLOPs per token", t5ref.T5_FLOPS_FORMULA))
    return out


TOKENS_LINE = ("tokens/s = batch x tokens per row (T5: input + target) / median step time over steps "
               f"{WARMUP_STEPS + 1} and later")


def shardtune_environment():
    """The SHARDTUNE_* variables of this run (they select opt-in kernels; a table must say so)."""
    return {k: v for k, v in os.environ.items() if k.startswith("SHARDTUNE_")}


def format_text(report):
    """nccl-tests-style fixed-width table with '#' comment lines around it."""
    rows = [row_cells(row) for row in report["results"]]
    widths = [max([w, len(h)] + [len(str(cells[k])) for cells in rows]) for k, h, w in COLUMNS]
    lines = [f"# shardtune benchmark vs PyTorch reference ({report['meta'].get('device') or 'unknown device'})",
             f"# bf16 GEMM peak: {report['gemm_peak_tflops']:.1f} TFLOP/s ({report['gemm_peak_source']})"
             if _finite(report.get("gemm_peak_tflops")) else "# bf16 GEMM peak: unknown (MFU not computed)"]
    lines += [f"# {line}" for line in peak_lines(report)]
    env = report["meta"].get("environment") or {}
    if env:
        lines.append("# environment: " + " ".join(f"{k}={v}" for k, v in sorted(env.items())))
    lines += [f"# {TOKENS_LINE}; peak = training peak incl. weights; st = shardtune, ref = transformers + PEFT "
              "(where eager and compiled peers ran: the faster of the two at the deck's checkpointing)", "#"]
    lines.append("# " + "  ".join(h.rjust(w) for (_, h, _), w in zip(COLUMNS, widths)))
    for cells in rows:
        lines.append("  " + "  ".join(str(cells[k]).rjust(w) for (k, _, _), w in zip(COLUMNS, widths)))
    lines.append("#")
    for title, columns, cells in issue20_tables(report):
        lines += [f"# --- {title}", "#"] + text_table(columns, cells) + ["#"]
    lines += ["# target  " + line for line in target_lines(report["results"])] or ["# no targets evaluated"]
    if any(r["status"].endswith("*") for r in report["results"]):
        lines.append("# " + FOOTNOTE)
    lines += [f"# {label}: {formula}" for label, formula in flops_formulas(report["results"])]
    for note in report.get("notes", []):
        lines.append(f"# note: {note}")
    return "\n".join(lines)


def format_markdown(report):
    meta = report["meta"]
    out = [f"# shardtune benchmark vs PyTorch reference", "",
           f"{meta.get('date', '')}, {meta.get('host', '')}, {meta.get('device') or 'unknown device'}, "
           f"commit {meta.get('commit', '?')}", ""]
    if meta.get("environment"):
        out += ["Environment: " + " ".join(f"`{k}={v}`" for k, v in sorted(meta["environment"].items())) + ".", ""]
    if _finite(report.get("gemm_peak_tflops")):
        out.append(f"bf16 GEMM peak {report['gemm_peak_tflops']:.1f} TFLOP/s ({report['gemm_peak_source']}).")
    out += [""] + [line + "." for line in peak_lines(report)]
    out += ["", "| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in report["results"]:
        cells = row_cells(row)
        out.append("| " + " | ".join(str(cells[k]) for k, _, _ in COLUMNS) + " |")
    for title, columns, cells in issue20_tables(report):
        out += ["", f"{title[0].upper()}{title[1:]}:", ""] + markdown_table(columns, cells)
    out += ["", "Targets and checks (issues #3, #4, #6 and #20; #20's are marked so):", ""]
    out += [f"- {line}" for line in target_lines(report["results"])] or ["- none evaluated"]
    if any(r["status"].endswith("*") for r in report["results"]):
        out += ["", FOOTNOTE.replace("*", "\\*", 1)]
    out += [""] + [f"{label}: {formula}.\n" for label, formula in flops_formulas(report["results"])]
    out += [f"{TOKENS_LINE}; peak memory is the training peak including the resident weights (shardtune: its "
            "allocator's peak after setup; reference: torch.cuda.max_memory_allocated() reset after model and "
            "optimizer creation). Issue columns: the issues' reference figures (#3: transformers + PEFT; #4 QLoRA "
            "rows: + bitsandbytes 0.50, which cannot run on the GPU host), measured earlier on the same kind of H100."]
    if any(r["name"].endswith("_40g") for r in report["results"]):
        out += ["", "_40g rows: as on a 40 GB GPU (shardtune `--memory_limit 40GiB`, the reference "
                "`--memory-cap-gib 40`, i.e. torch.cuda.set_per_process_memory_fraction); OOM there is a result."]
    for note in report.get("notes", []):
        out.append(f"\nNote: {note}")
    commands = ([meta["bench_command"]] if meta.get("bench_command") else []) + list(meta.get("commands", []))
    if commands:
        out += ["", "Commands (the driver, then what it ran):", "", "```"] + commands + ["```"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ running


def run_logged(cmd, log_path, timeout, prefix, echo=True, cwd=None):
    """Run cmd in its own session, output to log_path (and echoed with a prefix); kill the whole
    process group after `timeout` seconds. Returns (exit status or None, timed_out)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True, text=True, errors="replace", bufsize=1)

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if echo:
                    sys.stdout.write(f"[{prefix}] {line}")
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        reader.join(timeout=10)
        if timed_out:
            log.write(f"\n[bench] killed after {timeout} s\n")
    return proc.returncode, timed_out


def last_fatal_line(log_path):
    try:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        if "fatal" in line or "Error" in line or "error" in line:
            return line
    return lines[-1] if lines else None


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def shards_match(data_dir, rows, seq_len, vocab, target_len=None):
    """True when data_dir holds random-token train/validation shards of these dimensions: causal
    ones (no `arch` attribute means causal), or with target_len seq2seq ones of that target length."""
    import h5py

    try:
        with h5py.File(os.path.join(data_dir, "train-00000.h5"), "r") as f:
            a = f.attrs
            arch = _text(a["arch"]) if "arch" in a else "causal"
            ok = (_text(a["task"]) == "random" and int(a["num_rows"]) == rows
                  and int(a["max_seq_len"]) == seq_len and int(a["tokenizer_vocab_size"]) == vocab)
            if target_len is None:
                ok = ok and arch == "causal"
            else:
                ok = ok and arch == "seq2seq" and int(a["target_len"]) == target_len
        return ok and os.path.isfile(os.path.join(data_dir, "validation-00000.h5"))
    except (OSError, KeyError, ValueError):
        return False


def data_spec(shape, args):
    """The random-token shards a deck's rows train on: the driver's --data-dir/--seq-len/--vocab
    (causal) or, for T5 decks, --t5-data-dir/--t5-seq-len/--t5-target-len/--t5-vocab (seq2seq)."""
    if is_t5(shape):
        return {"dir": args.t5_data_dir, "rows": args.rows, "seq_len": args.t5_seq_len,
                "target_len": args.t5_target_len, "vocab": args.t5_vocab}
    return {"dir": args.data_dir, "rows": args.rows, "seq_len": args.seq_len, "target_len": None,
            "vocab": args.vocab}


def prepare_command(binary, spec):
    """shardtune prepare --random DIR ... for a data_spec (seq2seq: --arch seq2seq --target-len)."""
    cmd = [binary, "prepare", "--random", spec["dir"]]
    if spec["target_len"] is not None:
        cmd += ["--arch", "seq2seq"]
    cmd += ["--rows", str(spec["rows"]), "--seq-len", str(spec["seq_len"])]
    if spec["target_len"] is not None:
        cmd += ["--target-len", str(spec["target_len"])]
    return cmd + ["--vocab", str(spec["vocab"])]


def portable(command, repo, python=None):
    """A recorded command without this machine's paths: the repository prefix dropped (commands
    then read as run from the repository root) and the Python interpreter named python3."""
    if python:
        command = command.replace(shlex.quote(python) + " ", "python3 ").replace(python + " ", "python3 ")
    return command.replace(repo.rstrip(os.sep) + os.sep, "")


def git_commit(repo):
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "") if head else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def gpu_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def select_configs(text):
    names = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item in CONFIG_GROUPS:
            names += [n for n in CONFIG_GROUPS[item] if n not in names]
            continue
        key = item[len("llama"):] if item.startswith("llama") and item[len("llama"):] in CONFIGS else item
        if key not in CONFIGS:
            raise ValueError(f"unknown config '{item}' (known: {', '.join(list(CONFIGS) + list(CONFIG_GROUPS))})")
        names.append(key)
    if not names:
        raise ValueError("--configs names no configuration")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="shardtune vs PyTorch + PEFT on one GPU, side by side.")
    p.add_argument("--bin", default="build/shardtune", help="shardtune binary (default build/shardtune)")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma-separated configurations (default {','.join(DEFAULT_CONFIGS)})")
    p.add_argument("--skip-reference", action="store_true", help="do not run the PyTorch reference")
    p.add_argument("--skip-shardtune", action="store_true", help="do not run shardtune (reference only)")
    p.add_argument("--mpirun", default="mpirun", help="launcher command line (default mpirun)")
    p.add_argument("--python", default=sys.executable, help="python with torch for the reference")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run (default 900)")
    p.add_argument("--data-dir", default="data/bench/random-1024", help="random-token shards directory")
    p.add_argument("--rows", type=int, default=256, help="training rows of the shards (default 256)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per row (default 1024)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary of the shards (default 32000)")
    p.add_argument("--t5-data-dir", default=None,
                   help="seq2seq shards of the T5 rows (default data/bench/random-t5-<seq>-<target>)")
    p.add_argument("--t5-seq-len", type=int, default=512, help="T5 rows: encoder tokens per row (default 512)")
    p.add_argument("--t5-target-len", type=int, default=128, help="T5 rows: target tokens per row (default 128)")
    p.add_argument("--t5-vocab", type=int, default=32128, help="T5 rows: vocabulary of the shards (default 32128)")
    p.add_argument("--gemm-peak", type=float, default=None, metavar="TFLOPS",
                   help="bf16 GEMM peak for MFU (default: measured by the reference script)")
    p.add_argument("--dense-peak", type=float, default=None, metavar="TFLOPS",
                   help="the device's dense bf16 peak for MFU (default: from the device name, DENSE_BF16_PEAKS)")
    p.add_argument("--peers", default=",".join(PEER_KINDS),
                   help="issue #20 peers to run for the Llama rows: eager, compiled or both (default eager,compiled)")
    p.add_argument("--peer-checkpointing", default="on,off",
                   help="the peers' activation checkpointing settings (default on,off)")
    p.add_argument("--st-checkpointing", default="true,false",
                   help="shardtune's activation_checkpointing values for the Llama rows with peers, passed as is "
                        "(e.g. auto,true,false or a number of blocks; default true,false); the deck's own is always run")
    p.add_argument("--skip-equal-memory", action="store_true",
                   help="no shardtune runs under the peer's checkpointed peak")
    p.add_argument("--train-args", default="", help="extra options for shardtune train (e.g. '--threads 8')")
    p.add_argument("--out-dir", default="runs/bench", help="where results and logs go (default runs/bench)")
    p.add_argument("--quiet", action="store_true", help="do not echo the runs' output")
    p.add_argument("--require-targets", action="store_true", help="exit 1 when a target is not met")
    args = p.parse_args(argv)
    try:
        args.config_names = select_configs(args.configs)
    except ValueError as e:
        p.error(str(e))
    if args.t5_data_dir is None:
        args.t5_data_dir = f"data/bench/random-t5-{args.t5_seq_len}-{args.t5_target_len}"
    try:
        args.peer_kinds, args.peer_settings, args.st_checkpointing = parse_run_settings(
            args.peers, args.peer_checkpointing, args.st_checkpointing)
    except ValueError as e:
        p.error(str(e))
    return args


def parse_run_settings(peers, peer_checkpointing, st_checkpointing):
    """--peers, --peer-checkpointing, --st-checkpointing as (kinds, [True/False, ...] checkpointing on
    first, [activation_checkpointing values])."""
    kinds = [k.strip() for k in peers.split(",") if k.strip()]
    if not kinds or any(k not in PEER_KINDS for k in kinds):
        raise ValueError(f"--peers: expected some of {', '.join(PEER_KINDS)}, got '{peers}'")
    settings = [s.strip().lower() for s in peer_checkpointing.split(",") if s.strip()]
    if not settings or any(s not in ("on", "off") for s in settings):
        raise ValueError(f"--peer-checkpointing: expected on, off or on,off, got '{peer_checkpointing}'")
    values = [checkpointing_value(v) for v in st_checkpointing.split(",") if v.strip()]
    for v in values:
        if v not in ("true", "false", "auto") and not v.isdigit():
            raise ValueError(f"--st-checkpointing: '{v}' is not true, false, auto or a number of blocks")
    return list(dict.fromkeys(kinds)), [s == "on" for s in ("on", "off") if s in settings], list(dict.fromkeys(values))


def ensure_shards(binary, data, logs, commands, echo):
    """Make the random-token shards of a data_spec unless they already exist; False on failure."""
    if shards_match(data["dir"], data["rows"], data["seq_len"], data["vocab"], data["target_len"]):
        print(f"bench: using the shards in {data['dir']}")
        return True
    cmd = prepare_command(binary, data)
    commands.append(" ".join(cmd))
    log_name = "prepare.log" if data["target_len"] is None else "prepare-seq2seq.log"
    status, _ = run_logged(cmd, os.path.join(logs, log_name), 600, "prepare", echo)
    if status != 0:
        print(f"bench: making the shards failed (exit {status}); see {logs}/{log_name}", file=sys.stderr)
        return False
    return True


def shardtune_variant(name, checkpointing=None, memory_limit=None):
    """(run id suffix, extra train options) of a shardtune run of a row at another
    activation_checkpointing value and / or under a memory limit (bytes)."""
    suffix, extra = "", []
    if memory_limit is not None:
        suffix += "_mem"
        extra += ["--memory_limit", str(int(memory_limit))]
    if checkpointing is not None:
        suffix += f"_ckpt-{checkpointing}"
        extra += ["--activation_checkpointing", checkpointing]
    return suffix, extra


def run_shardtune_row(args, name, spec, shape, data, flops, logs, commands, notes, echo, variant=None):
    """One row's shardtune run (mpirun ... train --deck) and its summary from metrics.h5. variant:
    shardtune_variant()'s (suffix, options) for a run at another setting, with its own run id."""
    extra = shlex.split(args.train_args) + list(spec.get("args", []))
    run_id = shape["run_id"]
    if variant and variant[0]:
        run_id = name + variant[0]
        extra += list(variant[1]) + ["--run_id", run_id]
    elif spec.get("args"):
        extra += ["--run_id", name]
    if os.path.normpath(shape["data"]) != os.path.normpath(data["dir"]):
        extra += ["--data", data["dir"]]
    run_dir = os.path.join(shape["output_dir"], run_id)
    metrics = os.path.join(run_dir, "metrics.h5")
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = mpirun_command(args.mpirun, args.bin, spec["deck"], os.geteuid() == 0, extra)
    commands.append(" ".join(shlex.quote(c) for c in cmd))
    log_path = os.path.join(logs, f"{run_id if variant else name}-shardtune.log")
    status, timed_out = run_logged(cmd, log_path, args.timeout, f"{run_id if variant else name} shardtune", echo)
    # T5: tokens/s counts batch x (input + target), as the reference does, whatever the column says.
    tokens = shape["batch"] * (data["seq_len"] + data["target_len"]) if data["target_len"] is not None else None
    st = {"outcome": "error"}
    if os.path.exists(metrics):
        import st_read

        try:
            st = summarize_shardtune(st_read.read_run(metrics), tokens_per_step=tokens)
        except st_read.MetricsFileError as e:
            st = {"outcome": "error", "error": str(e)}
    if timed_out:
        st["outcome"] = "timeout"
    elif st["outcome"] in ("running", "error") and "error" not in st:
        st["error"] = last_fatal_line(log_path)
    if st["outcome"] == "running":
        st["outcome"] = "error"
    st["exit_status"] = status
    st["log"] = log_path
    st_flops = st.get("flops_per_token")
    if _finite(st_flops) and abs(st_flops - flops) > 1e-9 * flops:
        notes.append(f"{name}: shardtune's flops_per_token {st_flops:.6g} differs from the formula's "
                     f"{flops:.6g}; MFU uses the formula for both")
    if tokens is not None and st.get("metrics_tokens_per_step") not in (None, tokens):
        notes.append(f"{name}: shardtune's tokens column gives {st['metrics_tokens_per_step']} tokens a step; "
                     f"tokens/s counts batch x (input + target) = {tokens}, as the reference")
    return st


def run_reference_row(args, name, spec, shape, data, peak, logs, commands, notes, echo, kind=None, checkpointing=None):
    """One row's PyTorch reference in its own process (or why there is none). kind ("eager" /
    "compiled") and checkpointing (True / False) select one of issue #20's peer runs; without
    them, the deck's reference as issue #3 ran it."""
    if spec.get("reference") == "none":
        return {"outcome": "n/a", "error": f"strategy row: compare with the {spec['vs']} row"}
    if spec.get("reference") == "bitsandbytes":
        note = (f"{name}: no same-run reference (bitsandbytes is not installed here); judged against issue "
                f"#{spec['issue_no']}'s figures measured on this H100 with bitsandbytes 0.50")
        if note not in notes:
            notes.append(note)
        return {"outcome": "n/a (bnb)", "error": "the reference needs bitsandbytes, which this host does not have"}
    if args.skip_reference:
        return {"outcome": "skipped"}
    tag = f"-{kind}-{peer_setting(checkpointing)}" if kind else ""
    out_json = os.path.join(args.out_dir, f"reference-{name}{tag}.json")
    if os.path.exists(out_json):
        os.remove(out_json)
    cmd = ([args.python, reference_script(shape)]
           + reference_args(shape, data["seq_len"], gemm_peak=peak, target_len=data["target_len"],
                            extra=spec.get("ref_args", ()), checkpointing=checkpointing, compiled=kind == "compiled")
           + ["--json", out_json])
    commands.append(" ".join(shlex.quote(c) for c in cmd))
    log_path = os.path.join(logs, f"{name}{tag}-reference.log")
    status, timed_out = run_logged(cmd, log_path, args.timeout, f"{name}{tag} reference", echo)
    try:
        with open(out_json) as f:
            rf = json.load(f)
    except (OSError, ValueError):
        rf = {"outcome": "error", "error": last_fatal_line(log_path)}
    if timed_out:
        rf["outcome"] = "timeout"
    rf["exit_status"] = status
    rf["log"] = log_path
    return rf


def has_peers(spec, shape):
    """Rows measured against issue #20's two peers: Llama decks with a same-run reference."""
    return not is_t5(shape) and spec.get("reference") is None and shape["method"] in ("full", "lora")


def run_peers(args, name, spec, shape, data, peak, logs, commands, notes, echo):
    """Issue #20's peer runs of a row: {kind: {"on": result, "off": result}}. Checkpointing on runs
    first; where it ran out of memory, off (which needs more) is recorded as OOM without running."""
    peers = {}
    for kind in args.peer_kinds:
        runs = peers.setdefault(kind, {})
        for on in args.peer_settings:
            if not on and runs.get("on", {}).get("outcome") == "oom":
                runs["off"] = {"outcome": "oom", "inferred": True,
                               "error": "not run: the checkpointed run already ran out of memory"}
                continue
            runs[peer_setting(on)] = run_reference_row(args, name, spec, shape, data, peak, logs, commands, notes, echo,
                                                       kind=kind, checkpointing=on)
        for setting, run in runs.items():
            late = (run.get("compile") or {}).get("compiled_during_timed_steps")
            if late:
                notes.append(f"{name}: the compiled peer (checkpointing {setting}) compiled {late} graph(s) during "
                             "the timed steps: the warm-up did not cover compilation")
    for kind, runs in peers.items():
        if all(r.get("outcome") not in ("ok", "oom") for r in runs.values()):
            notes.append(f"{name}: the {kind} peer did not run ({', '.join(r.get('outcome', '?') for r in runs.values())}"
                         f"; see its logs): judged against the other peer only")
    return peers


def run_shardtune_settings(args, name, spec, shape, data, flops, logs, commands, notes, echo, deck_run, peers):
    """shardtune at each --st-checkpointing value (the deck's own run reused for its value), then
    at each under memory_limit = the faster peer's checkpointed peak. Returns (st_runs, equal_memory)."""
    deck_value = shape["checkpointing_value"]
    st_runs = {deck_value: deck_run}
    for value in args.st_checkpointing:
        if value not in st_runs:
            st_runs[value] = run_shardtune_row(args, name, spec, shape, data, flops, logs, commands, notes, echo,
                                               variant=shardtune_variant(name, checkpointing=value))
    equal = None
    peer_on = faster_peer(peers, "on")
    if args.skip_equal_memory:
        pass
    elif peer_on.get("outcome") != "ok" or not peer_on.get("peak_memory_bytes"):
        notes.append(f"{name}: no equal-memory comparison (no checkpointed peer finished)")
    else:
        limit = int(peer_on["peak_memory_bytes"])
        runs = {}
        fallbacks = [v for v in [deck_value] + list(args.st_checkpointing) if v != "auto" and checkpointing_on(v)]
        for value in dict.fromkeys(["auto"] + fallbacks):
            runs[value] = run_shardtune_row(args, name, spec, shape, data, flops, logs, commands, notes, echo,
                                            variant=shardtune_variant(name, checkpointing=value, memory_limit=limit))
        equal = {"limit_bytes": limit, "peer": peer_on["peer"], "peer_run": peer_on, "runs": runs}
    return st_runs, equal


def main(argv=None):
    args = parse_args(argv)
    # --bin and --python are relative to where bench.py was started; decks, shards and outputs
    # to the repository root (where the decks' relative paths point).
    args.bin = os.path.abspath(args.bin)
    if os.sep in args.python:
        args.python = os.path.abspath(args.python)
    repo = os.path.dirname(HERE)
    os.chdir(repo)
    logs = os.path.join(args.out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    commands, notes = [], []
    echo = not args.quiet

    if not args.skip_shardtune and not os.access(args.bin, os.X_OK):
        print(f"bench: {args.bin}: no such executable (build it with make)", file=sys.stderr)
        return 1

    # The decks' shapes and the shards each needs (the T5 decks: seq2seq shards of their own).
    plans = []
    for name in args.config_names:
        spec = CONFIGS[name]
        shape = deck_shape(read_deck(spec["deck"]), spec["deck"])
        if spec.get("args"):
            shape["run_id"] = name  # its own metrics file next to the plain row's
        plans.append((name, spec, shape, data_spec(shape, args)))

    # 1. Shards, once per directory.
    if not args.skip_shardtune:
        made = set()
        for *_, data in plans:
            if data["dir"] not in made and not ensure_shards(args.bin, data, logs, commands, echo):
                return 1
            made.add(data["dir"])

    # 2. The GEMM peak every MFU is computed against.
    peak, peak_source = args.gemm_peak, "given (--gemm-peak)"
    ref_script = os.path.join(HERE, "peers", "hf_llama_reference.py")  # measures it for every row
    if peak is None:
        peak_json = os.path.join(args.out_dir, "gemm_peak.json")
        if os.path.exists(peak_json):
            os.remove(peak_json)
        cmd = [args.python, ref_script, "--gemm-peak-only", "--json", peak_json]
        commands.append(" ".join(cmd))
        run_logged(cmd, os.path.join(logs, "gemm_peak.log"), 300, "gemm peak", echo)
        try:
            with open(peak_json) as f:
                measured = json.load(f)
            if measured.get("outcome") == "ok":
                peak = float(measured["gemm_peak_tflops"])
                peak_source = (f"measured: {ref.GEMM_N}^3 bf16 torch.matmul, median of {ref.GEMM_REPEATS}")
                sustained = measured.get("gemm_sustained_tflops")
                if _finite(sustained):
                    peak_source += f"; {sustained:.0f} TFLOP/s sustained over {ref.GEMM_SUSTAINED_S:.0f} s"
        except (OSError, ValueError, KeyError):
            pass
        if peak is None:
            peak, peak_source = ISSUE_GEMM_PEAK_TFLOPS, "issue #3's figure (could not measure here)"
            notes.append("the bf16 GEMM peak could not be measured (no torch/GPU?); MFU uses issue #3's 797 TFLOP/s")

    results, measured, by_name = [], {}, {}
    for name, spec, shape, data in plans:
        flops = shape_flops(shape, data["seq_len"], data["target_len"])
        row = {"name": name, "deck": spec["deck"], "arch": shape["arch"], "shape": shape, "seq": data["seq_len"],
               "issue": spec["issue"], "flops_per_token": flops["total"], "flops": flops}
        if data["target_len"] is not None:
            row["target_len"] = data["target_len"]
        print(f"bench: {name}: {spec['deck']}")
        st = {"outcome": "skipped"}
        if not args.skip_shardtune:
            st = run_shardtune_row(args, name, spec, shape, data, flops["total"], logs, commands, notes, echo)
        row["shardtune"] = st
        if has_peers(spec, shape) and not args.skip_reference:
            source = by_name.get(spec.get("peers_from"))
            if source and "peers" in source:  # the same peers: reused, not re-run
                row["peers"] = source["peers"]
                row["peers_from"] = source["name"]
            else:
                row["peers"] = run_peers(args, name, spec, shape, data, peak, logs, commands, notes, echo)
            row["reference"] = faster_peer(row["peers"], peer_setting(shape["checkpointing"]))
            if not args.skip_shardtune:
                row["st_runs"], equal = run_shardtune_settings(args, name, spec, shape, data, flops["total"], logs,
                                                               commands, notes, echo, st, row["peers"])
                if equal:
                    row["equal_memory"] = equal
        else:
            row["reference"] = run_reference_row(args, name, spec, shape, data, peak, logs, commands, notes, echo)
        results.append(row)
        by_name[name] = row

    device = next((r["reference"].get("device") for r in results if r["reference"].get("device")), None) or gpu_name()
    dense, dense_source = (args.dense_peak, "given (--dense-peak)") if args.dense_peak else dense_peak_of(device)
    if dense is None:
        notes.append(f"no dense bf16 peak for MFU ({dense_source})")
    # Figures, then targets once every row is measured: some compare two rows of the run.
    for row in results:
        flops = row["flops_per_token"]
        row["figures"] = row_figures(row["shardtune"], row["reference"], peak, flops, dense)
        if "peers" in row:
            row["fastest"] = judge_fastest(row, flops, peak, dense)
            row["equal"] = judge_equal_memory(row, flops, peak, dense)
        measured[row["name"]] = row["figures"]
    for row in results:
        spec = CONFIGS[row["name"]]
        row["targets"] = evaluate_targets(row["name"], row["shardtune"], row["reference"], row["figures"],
                                          spec["issue"], peak, peak_source, measured, spec.get("issue_no", 3))
        row["targets"] += evaluate_targets(row["name"], row["shardtune"], row["reference"], row["figures"],
                                           spec["issue"], peak, peak_source, measured, 20,
                                           targets=TARGETS_20.get(row["name"], []), row=row, dense_source=dense_source)
        row["status"] = overall_status(row["targets"])
    report = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": socket.gethostname(), "device": device, "commit": git_commit(repo),
            "bench_command": portable(" ".join(shlex.quote(a) for a in [sys.executable] + sys.argv), repo,
                                      sys.executable),
            "commands": [portable(c, repo, args.python if os.sep in args.python else None) for c in commands], "warmup_steps": WARMUP_STEPS,
            # Opt-in code paths (SHARDTUNE_SKINNY, SHARDTUNE_ATTN_BWD_KEYS, ...) that the rows ran with.
            "environment": shardtune_environment(),
        },
        "gemm_peak_tflops": peak, "gemm_peak_source": peak_source,
        "dense_peak_tflops": dense, "dense_peak_source": dense_source,
        "flops_formula": ref.FLOPS_FORMULA, "t5_flops_formula": t5ref.T5_FLOPS_FORMULA,
        "issue_gemm_peak_tflops": ISSUE_GEMM_PEAK_TFLOPS,
        "results": results, "notes": notes,
    }
    text = format_text(report)
    print()
    print(text)
    written = write_outputs(report, text, args.out_dir, logs)
    print(f"\nbench: wrote {', '.join(written)}")
    if args.require_targets and any(r["status"].startswith(NOT_MET) for r in results):
        return 1
    return 0


def write_outputs(report, text, out_dir, logs):
    os.makedirs(out_dir, exist_ok=True)
    files = {"bench.json": json.dumps(report, indent=1, sort_keys=True, default=str) + "\n",
             "bench.md": format_markdown(report), "bench.txt": text + "\n"}
    written = []
    for name, content in files.items():
        path = os.path.join(out_dir, name)
        with open(path, "w") as f:
            f.write(content)
        written.append(path)
    extra = os.environ.get("OUT")
    if extra:
        os.makedirs(extra, exist_ok=True)
        for name in files:
            shutil.copy(os.path.join(out_dir, name), os.path.join(extra, name))
        if os.path.isdir(logs):
            shutil.copytree(logs, os.path.join(extra, "bench-logs"), dirs_exist_ok=True)
        written.append(f"$OUT ({extra})")
    return written


if __name__ == "__main__":
    sys.exit(main())
