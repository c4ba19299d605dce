#!/usr/bin/env python3
"""PyTorch reference for shardtune's benchmark (`make bench`, issue #3 item 7).

Trains a randomly initialised Hugging Face Llama (transformers.LlamaForCausalLM, SDPA attention,
bf16) with full fine-tuning or PEFT LoRA, in a plain PyTorch loop (forward, loss.backward(),
gradient clipping, AdamW step, zero_grad) on uniform random tokens, and prints one JSON object:
median step time, tokens/s, peak GPU memory and MFU against a measured bf16 GEMM peak.

    python3 analysis/peers/hf_llama_reference.py --hidden 4096 --layers 32 --intermediate 11008 \\
        --heads 32 --kv-heads 32 --vocab 32000 --method lora --lora-r 16 --lora-alpha 32 \\
        --batch 8 --seq 1024 --checkpointing --steps 12 --warmup 2 --json ref.json
    python3 analysis/peers/hf_llama_reference.py ... --compile --no-checkpointing   # the compiled peer
    python3 analysis/peers/hf_llama_reference.py --gemm-peak-only

What it does, precisely (so that shardtune is compared with what people actually run):
- Model: LlamaConfig(...) with attn_implementation="sdpa", untied head, use_cache off, built
  directly on the GPU in bf16 (default device cuda and default dtype bf16 while the module is
  constructed, which is what `torch_dtype=torch.bfloat16` does inside transformers); nothing of
  the model is ever materialised on the CPU. Random init (transformers' normal, std 0.02).
- Full fine-tuning: every parameter trains in bf16 (pure bf16: no fp32 master copy; AdamW
  moments in bf16, as torch.optim.AdamW keeps them in the parameter's dtype).
- LoRA: peft.get_peft_model(LoraConfig(r, lora_alpha, target_modules = q,k,v,o,gate,up,down
  _proj, lora_dropout=0, bias="none")) with PEFT's defaults. PEFT first gives the adapters the
  base layer's dtype (bf16), then, because get_peft_model's autocast_adapter_dtype defaults to
  True, upcasts them to fp32; in forward PEFT casts the layer input to fp32 for the adapter path
  and the result back to bf16. So adapters, their gradients and AdamW moments are fp32 (the
  JSON field adapter_dtype reports what the run actually had).
- Activation checkpointing (--checkpointing; --no-checkpointing, the default, trains without):
  model.gradient_checkpointing_enable() (transformers' defaults), plus
  enable_input_require_grads() for LoRA (the frozen embedding would otherwise cut the graph).
- Optimizer: torch.optim.AdamW(trainable parameters, lr, betas (0.9, 0.999), eps 1e-8,
  weight_decay 0) with PyTorch's default implementation choice (foreach on CUDA, fused=False);
  torch.nn.utils.clip_grad_norm_ to --grad-clip (1.0, as shardtune's bench decks; 0 = off).
- --compile (issue 20: the stronger peer, what torchtune's recipes and most current users run):
  after PEFT has wrapped the model (and checkpointing is set up), every decoder layer is compiled
  on its own with nn.Module.compile() (torch.compile, inductor, default mode: torchtune's per-layer
  compile), and the optimizer is torch.optim.AdamW(..., fused=True); everything else as above.
  Dynamo's recompile limits are raised above the number of layers so that no layer silently
  falls back to eager. Compilation happens in the first (warm-up) step (forward and backward;
  with checkpointing also the recompute's grad-mode variant): the JSON reports compile_time_s
  (the warm-up steps' time beyond --warmup x the median step) and the graphs Dynamo compiled, and
  compiled_during_timed_steps, which must be 0 (else the warm-up did not cover compilation).
- Data: uniform random ids in [3, vocab) with BOS (1) first, labels = ids (transformers shifts
  them: seq-1 targets per row, as shardtune's loss mask), a new batch every step, all generated
  on the GPU before the first step.
- Timing: torch.cuda.synchronize() and time.perf_counter() around each whole step; the median
  over the steps after --warmup. tokens/s = batch * seq / median.
- Peak memory ("training"): torch.cuda.max_memory_allocated() over the training steps, with the
  counter reset after the model, adapters, optimizer and batches exist and before step 1. It
  includes the resident weights and everything the steps allocate (gradients, AdamW state,
  which PyTorch creates at the first step, activations, the fp32 logits of the loss). The same
  scope as shardtune's peak_memory (its allocator's peak is reset after setup). Reserved bytes
  (the caching allocator's pool) are reported too.
- MFU: model FLOPs per token (flops_per_token below, the same formula as shardtune's
  llama_flops_per_token) x tokens/s / the bf16 GEMM peak measured here: a 8192^3
  torch.matmul in bf16, the median of 10 after 5 warm-ups, timed with CUDA events (770-780
  TFLOP/s on the H100 tried, near issue #3's 797). The rate sustained over 1 s of back-to-back matmuls (lower: the H100 clocks
  down at its power limit) is reported as gemm_sustained_tflops, for context.
- Memory cap (--memory-cap-gib X, optional): torch.cuda.set_per_process_memory_fraction(X GiB /
  the device's total) before anything is allocated, so a run can reproduce a smaller GPU (a 40 GB
  one on an 80 GB H100): the caching allocator then raises OutOfMemoryError where that GPU would
  (its reserved bytes count, as on the real device; the CUDA context does not).

The GPU parts other references share (build in bf16 on the GPU, checkpointing + PEFT LoRA, the
timed AdamW loop, the memory cap, the GEMM peak, the JSON and exit statuses) are the functions
build_on_gpu, finish_model, train_model, run_reference (analysis/peers/hf_t5_reference.py uses them).

Exit status: 0 ok, 3 out of memory (JSON outcome "oom"; also when the allocation failure surfaces
wrapped in a compiler error), 1 any other failure (outcome "error"), 2 bad arguments. torch,
transformers and peft are imported only in main(), so --help and the
pure functions work without them.
"""

import argparse
import json
import os
import statistics
import sys
import time
import traceback

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GEMM_N = 8192
GEMM_REPEATS = 10
GEMM_WARMUP = 5
GEMM_SUSTAINED_S = 1.0
BOS_ID = 1
FIRST_RANDOM_ID = 3  # as `shardtune prepare --random`: 0 pad, 1 BOS, 2 EOS

FLOPS_FORMULA = (
    "full: 6*N_matmul + attention; lora: 4*N_matmul + 6*N_adapter + attention; "
    "N_matmul = weights of every linear layer (q, k, v, o, gate, up, down of each block, and lm_head; "
    "not the embedding lookup); N_adapter = r*(in+out) per adapted layer; "
    "attention = 6*seq*num_heads*head_dim*layers (QK^T and PV: 4*seq*H*D per token per layer forward "
    "without a mask, halved by the causal mask, backward twice the forward); "
    "the activation-checkpointing recompute is not counted (model FLOPs)"
)


# ------------------------------------------------------------------------------ pure functions


def linear_layers(hidden, layers, intermediate, heads, kv_heads, vocab, head_dim=None):
    """(name, in_features, out_features) of every linear layer of one block, and the lm_head.

    Returns (block_layers, lm_head): block_layers is the list for one block (the same in every
    block), lm_head is ("lm_head", hidden, vocab).
    """
    d = head_dim or hidden // heads
    block = [
        ("q_proj", hidden, heads * d),
        ("k_proj", hidden, kv_heads * d),
        ("v_proj", hidden, kv_heads * d),
        ("o_proj", heads * d, hidden),
        ("gate_proj", hidden, intermediate),
        ("up_proj", hidden, intermediate),
        ("down_proj", intermediate, hidden),
    ]
    return block, ("lm_head", hidden, vocab)


def flops_per_token(hidden, layers, intermediate, heads, kv_heads, vocab, seq, method, lora_r=16,
                    head_dim=None, lora_modules=LORA_MODULES):
    """Training FLOPs per token (model FLOPs; see FLOPS_FORMULA), with its parts."""
    if method not in ("full", "lora"):
        raise ValueError(f"method must be full or lora, not {method!r}")
    d = head_dim or hidden // heads
    block, head = linear_layers(hidden, layers, intermediate, heads, kv_heads, vocab, head_dim)
    n_matmul = layers * sum(i * o for _, i, o in block) + head[1] * head[2]
    n_adapter = 0
    if method == "lora":
        n_adapter = layers * sum(lora_r * (i + o) for name, i, o in block if name in lora_modules)
    matmul = (6.0 if method == "full" else 4.0) * n_matmul + 6.0 * n_adapter
    attention = 6.0 * seq * heads * d * layers
    return {
        "n_matmul": n_matmul,
        "n_adapter": n_adapter,
        "matmul": matmul,
        "attention": attention,
        "total": matmul + attention,
        "formula": FLOPS_FORMULA,
    }


def num_parameters(hidden, layers, intermediate, heads, kv_heads, vocab, head_dim=None, tied=False):
    """All parameters of the Llama (embedding, blocks with their two norms, final norm, head)."""
    block, head = linear_layers(hidden, layers, intermediate, heads, kv_heads, vocab, head_dim)
    n = vocab * hidden + layers * (sum(i * o for _, i, o in block) + 2 * hidden) + hidden
    return n if tied else n + head[1] * head[2]


def median_after_warmup(step_times, warmup):
    """Median of the step times after the first `warmup` steps (all of them if none is left)."""
    rest = list(step_times[warmup:]) or list(step_times)
    return statistics.median(rest) if rest else float("nan")


def warmup_excess(step_times, warmup, median):
    """Time of the first `warmup` steps beyond warmup x the median step: what compilation (and the
    first step's allocations) cost, reported as the compiled peer's compile time."""
    return max(0.0, sum(step_times[:warmup]) - warmup * median)


def add_training_arguments(p, vocab_default):
    """Options every reference script shares (what is trained and how, not the model's shape):
    vocabulary, method, LoRA, batch, checkpointing, steps, optimizer, GEMM peak, memory cap, output."""
    p.add_argument("--vocab", type=int, default=vocab_default, help=f"vocabulary (default {vocab_default})")
    p.add_argument("--method", choices=("full", "lora"), default="full")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--batch", type=int, default=8, help="rows per step (default 8)")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="activation (gradient) checkpointing (default: off)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps (default 12)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the median (default 2)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm (0: off; default 1.0)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--memory-cap-gib", type=float, default=None, metavar="GIB",
                   help="cap this process's GPU memory at GIB GiB (torch.cuda.set_per_process_memory_fraction "
                   "of GIB / the device's total), to reproduce a smaller GPU; going over it is an OOM")
    p.add_argument("--gemm-peak", type=float, default=None, metavar="TFLOPS",
                   help="use this bf16 GEMM peak for MFU instead of measuring it")
    p.add_argument("--gemm-peak-only", action="store_true", help="only measure the bf16 GEMM peak")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the JSON object to OUT")


def check_training_arguments(p, args, positive):
    """p.error (exit 2) unless the `positive` options (dest names) are >= 1 and the shared ones
    are consistent."""
    for name in tuple(positive) + ("vocab", "batch", "steps", "lora_r"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.vocab <= FIRST_RANDOM_ID:
        p.error(f"--vocab must be > {FIRST_RANDOM_ID}")
    if args.warmup < 0 or args.warmup >= args.steps:
        p.error("--warmup must be in [0, --steps)")
    if args.memory_cap_gib is not None and not args.memory_cap_gib > 0:
        p.error("--memory-cap-gib must be > 0")


def training_config_of(args):
    """The JSON config fields of the shared options."""
    return {
        "method": args.method,
        "lora_r": args.lora_r if args.method == "lora" else None,
        "lora_alpha": args.lora_alpha if args.method == "lora" else None,
        "batch": args.batch, "checkpointing": args.checkpointing, "steps": args.steps, "warmup": args.warmup,
        "lr": args.lr, "grad_clip": args.grad_clip, "seed": args.seed, "memory_cap_gib": args.memory_cap_gib,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch + transformers (+ PEFT) reference step time, tokens/s, peak memory and MFU "
        "for a randomly initialised Llama; prints one JSON object.",
        epilog="See the module docstring for exactly what is measured.")
    p.add_argument("--hidden", type=int, default=2048, help="hidden size (default 2048)")
    p.add_argument("--layers", type=int, default=22, help="decoder blocks (default 22)")
    p.add_argument("--intermediate", type=int, default=5632, help="MLP size (default 5632)")
    p.add_argument("--heads", type=int, default=32, help="query heads (default 32)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    p.add_argument("--head-dim", type=int, default=None, help="head dimension (default hidden/heads)")
    p.add_argument("--max-position-embeddings", type=int, default=2048)
    p.add_argument("--seq", type=int, default=1024, help="tokens per row (default 1024)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each decoder layer (after PEFT) and use fused AdamW: the compiled peer")
    add_training_arguments(p, vocab_default=32000)
    args = p.parse_args(argv)
    if args.kv_heads is None:
        args.kv_heads = args.heads
    check_training_arguments(p, args, ("hidden", "layers", "intermediate", "heads", "kv_heads"))
    if args.seq < 2:
        p.error("--seq must be >= 2")
    if args.head_dim is None and args.hidden % args.heads:
        p.error("--hidden must be a multiple of --heads (or give --head-dim)")
    if args.heads % args.kv_heads:
        p.error("--heads must be a multiple of --kv-heads")
    if args.compile and args.warmup < 1:
        p.error("--compile needs --warmup >= 1 (the first step compiles)")
    return args


def config_of(args):
    return dict({
        "hidden": args.hidden, "layers": args.layers, "intermediate": args.intermediate,
        "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim or args.hidden // args.heads,
        "vocab": args.vocab, "seq": args.seq, "compile": args.compile,
    }, **training_config_of(args))


def is_out_of_memory(torch, error):
    """torch.cuda.OutOfMemoryError, or an allocation failure PyTorch reports as RuntimeError
    (cuBLAS workspace, for example), here or anywhere in the exception's chain (__cause__,
    __context__): torch.compile re-raises an OOM met while compiling or autotuning wrapped in its
    own error types."""
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if oom_type is not None and isinstance(error, oom_type):
            return True
        text = str(error)
        if isinstance(error, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text):
            return True
        error = error.__cause__ or error.__context__
    return False


def log(*parts, tool="hf_llama_reference"):
    print(f"[{tool}]", *parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ GPU parts


def measure_gemm_peak(torch, n=GEMM_N, repeats=GEMM_REPEATS, warmup=GEMM_WARMUP, sustained_s=GEMM_SUSTAINED_S):
    """bf16 GEMM throughput of an n^3 torch.matmul, in TFLOP/s.

    peak: the median of `repeats` single matmuls, each timed with CUDA events, after `warmup`
    untimed ones (770-780 TFLOP/s on an H100 80GB HBM3, near issue #3's 797). sustained: the median
    per-matmul rate over `sustained_s` seconds of back-to-back matmuls, where an H100 at its
    700 W limit clocks down (measured ~660 vs ~770 TFLOP/s); reported for context, MFU uses
    the peak. Returns (peak, single times in ms, sustained)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(warmup):
        torch.matmul(a, b, out=c)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b, out=c)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))  # ms
    groups, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < sustained_s:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            torch.matmul(a, b, out=c)
        end.record()
        end.synchronize()
        groups.append(start.elapsed_time(end) / 10)
    del a, b, c
    torch.cuda.empty_cache()
    flop = 2.0 * n ** 3
    return flop / (statistics.median(times) / 1e3) / 1e12, times, flop / (statistics.median(groups) / 1e3) / 1e12


def build_on_gpu(torch, model_class, cfg, result):
    """model_class(cfg) built in place on the GPU in bf16: the default device and dtype apply to
    every parameter the constructor creates (what torch_dtype=torch.bfloat16 does inside
    transformers); nothing is materialised on the CPU. Records the dtypes in result."""
    import transformers

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = model_class(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.train()
    result["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    result["base_dtypes"] = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    devices = sorted({p.device.type for p in model.parameters()})
    if devices != ["cuda"]:
        raise RuntimeError(f"model parameters on {devices}, expected cuda only")
    result["versions"]["transformers"] = transformers.__version__
    return model


def finish_model(model, args, result, target_modules, task_type):
    """Activation checkpointing (transformers' defaults; enable_input_require_grads for LoRA, as
    the frozen embedding would otherwise cut the graph), then PEFT LoRA on target_modules
    (dropout 0, no bias, PEFT's defaults: autocast_adapter_dtype=True)."""
    if args.checkpointing:
        model.gradient_checkpointing_enable()
        if args.method == "lora":
            model.enable_input_require_grads()
    if args.method == "lora":
        import peft
        from peft import LoraConfig, get_peft_model

        result["versions"]["peft"] = peft.__version__
        lcfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=list(target_modules),
                          lora_dropout=0.0, bias="none", task_type=task_type)
        model = get_peft_model(model, lcfg)
        model.train()
    return model


def decoder_layers(model):
    """The decoder-layer modules of a LlamaForCausalLM, PEFT-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(base.model.layers)


def dynamo_graph_count(torch):
    """Graphs Dynamo has compiled so far in this process (its unique_graphs counter)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return int(counters["stats"]["unique_graphs"])


def compile_layers(torch, model, result):
    """torchtune's per-layer compile: nn.Module.compile() on every decoder layer, in place (so the
    checkpointing wrapper and PEFT's modules stay as they are). Dynamo's recompile limits are raised
    above the layer count so that no layer falls back to eager after the cache fills."""
    import torch._dynamo

    layers = decoder_layers(model)
    cfg = torch._dynamo.config
    for name, floor in (("recompile_limit", 8 * len(layers)), ("cache_size_limit", 8 * len(layers)),
                        ("accumulated_recompile_limit", 64 * len(layers)),
                        ("accumulated_cache_size_limit", 64 * len(layers))):
        try:  # the names changed across torch versions (cache_size_limit -> recompile_limit)
            if hasattr(cfg, name):
                setattr(cfg, name, max(int(getattr(cfg, name)), floor))
        except (AttributeError, TypeError, ValueError) as e:
            log(f"could not raise torch._dynamo.config.{name}: {e}", tool=result["tool"])
    for layer in layers:
        layer.compile()
    result["compile"] = {"what": "nn.Module.compile() on each decoder layer, after PEFT", "layers": len(layers),
                         "backend": "inductor", "mode": "default"}


def build_model(torch, args, result):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim or args.hidden // args.heads,
        max_position_embeddings=args.max_position_embeddings, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, attention_dropout=0.0, use_cache=False, bos_token_id=BOS_ID, eos_token_id=2,
        pad_token_id=0, initializer_range=0.02, attn_implementation="sdpa")
    model = build_on_gpu(torch, LlamaForCausalLM, cfg, result)
    model = finish_model(model, args, result, LORA_MODULES, "CAUSAL_LM")
    if args.compile:
        compile_layers(torch, model, result)
    return model


def train_model(torch, model, args, result, make_batches, base_expected, adapter_expected, tokens_per_step):
    """The timed loop every reference shares: AdamW over the trainable parameters, batches from
    make_batches(generator) (a list of keyword dicts for model(...), all on the GPU before step 1),
    the peak-memory counter reset after setup, then per step forward (.loss), backward, clipping,
    AdamW step, zero_grad, each step timed whole between two synchronizations."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    result["num_parameters"] = sum(p.numel() for p in model.parameters())
    result["trainable_parameters"] = sum(p.numel() for p in trainable)
    result["trainable_dtypes"] = sorted({str(p.dtype).replace("torch.", "") for p in trainable})
    if args.method == "lora":
        result["adapter_dtype"] = ",".join(result["trainable_dtypes"])
    # Cross-check the analytic counts that the FLOPs use against the model.
    result["parameter_check"] = {
        "base_expected": base_expected,
        "base_actual": result["num_parameters"] - (result["trainable_parameters"] if args.method == "lora" else 0),
        "adapter_expected": adapter_expected if args.method == "lora" else 0,
        "adapter_actual": result["trainable_parameters"] if args.method == "lora" else 0,
    }

    fused = bool(getattr(args, "compile", False))
    opt = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            **({"fused": True} if fused else {}))
    result["optimizer"] = "torch.optim.AdamW(fused=True)" if fused else "torch.optim.AdamW (default: foreach)"
    gen = torch.Generator(device="cuda")
    gen.manual_seed(args.seed)
    batches = make_batches(gen)
    torch.cuda.synchronize()
    result["memory_after_setup_bytes"] = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()

    result["phase"] = "train"
    step_times, losses = [], []
    graphs_after_warmup = None
    for step, batch in enumerate(batches, 1):
        if step == args.warmup + 1:
            graphs_after_warmup = dynamo_graph_count(torch)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        step_times.append(dt)
        losses.append(float(loss.item()))
        log(f"step {step}/{args.steps} loss {losses[-1]:.4f} {dt * 1e3:.1f} ms "
            f"{tokens_per_step / dt:,.0f} tok/s peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB",
            tool=result["tool"])
    result["step_times"] = step_times
    result["losses"] = losses
    if getattr(args, "compile", False):
        graphs = dynamo_graph_count(torch)
        result["compile"]["graphs"] = graphs
        result["compile"]["compiled_during_timed_steps"] = (
            graphs - graphs_after_warmup if graphs is not None and graphs_after_warmup is not None else None)
        try:
            from torch._dynamo.utils import counters
            result["compile"]["graph_breaks"] = int(sum(counters["graph_break"].values()))
        except ImportError:
            pass


def train(torch, args, result):
    model = build_model(torch, args, result)

    def make_batches(gen):
        batches = []
        for _ in range(args.steps):
            ids = torch.randint(FIRST_RANDOM_ID, args.vocab, (args.batch, args.seq), device="cuda", generator=gen)
            ids[:, 0] = BOS_ID
            batches.append({"input_ids": ids, "labels": ids})
        return batches

    expected = num_parameters(args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads, args.vocab,
                              args.head_dim)
    train_model(torch, model, args, result, make_batches, expected, result["flops_per_token"]["n_adapter"],
                args.batch * args.seq)


def apply_memory_cap(torch, args, result):
    """--memory-cap-gib: torch.cuda.set_per_process_memory_fraction(cap / total) before anything
    is allocated, so the caching allocator raises OutOfMemoryError where a GPU of that size would."""
    if args.memory_cap_gib is None:
        return
    total = torch.cuda.get_device_properties(0).total_memory
    cap = int(args.memory_cap_gib * 2 ** 30)
    fraction = min(1.0, cap / total)
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    result["memory_cap_bytes"] = min(cap, total)
    result["memory_cap_fraction"] = fraction
    log(f"memory capped at {args.memory_cap_gib:g} GiB ({100 * fraction:.1f}% of {total / 2**30:.1f} GiB)",
        tool=result["tool"])


def run_reference(args, tool, config, flops_of, train_fn, tokens_per_step):
    """main() of every reference script: import torch, measure (or take) the GEMM peak, apply the
    memory cap, compute the FLOPs (flops_of()), train (train_fn(torch, args, result)) and print
    one JSON object (also to --json). Returns the exit status: 0 ok, 3 out of memory, 1 error."""
    result = {
        "tool": tool,
        "outcome": "error",
        "config": config,
        "versions": {"python": sys.version.split()[0]},
        "phase": "import",
    }
    status = 1
    torch = None
    try:
        import torch  # noqa: F811  (imported here so --help works without it)

        result["versions"]["torch"] = torch.__version__
        result["versions"]["cuda"] = torch.version.cuda
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible to PyTorch")
        torch.manual_seed(args.seed)
        result["device"] = torch.cuda.get_device_name(0)
        result["device_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        apply_memory_cap(torch, args, result)

        result["phase"] = "gemm_peak"
        if args.gemm_peak is not None:
            result["gemm_peak_tflops"], result["gemm_peak_source"] = args.gemm_peak, "given"
        else:
            peak, times, sustained = measure_gemm_peak(torch)
            result["gemm_peak_tflops"], result["gemm_peak_source"] = peak, "measured"
            result["gemm_times_ms"] = times
            result["gemm_sustained_tflops"] = sustained
            result["gemm_shape"] = [GEMM_N, GEMM_N, GEMM_N]
            log(f"bf16 GEMM {GEMM_N}^3: median {statistics.median(times):.3f} ms = {peak:.1f} TFLOP/s; "
                f"sustained over {GEMM_SUSTAINED_S:.0f} s: {sustained:.1f} TFLOP/s", tool=tool)
        if args.gemm_peak_only:
            result["outcome"], status = "ok", 0
            result.pop("config")
            return status
        result["flops_per_token"] = flops_of()
        result["phase"] = "model"
        train_fn(torch, args, result)
        med = median_after_warmup(result["step_times"], args.warmup)
        result["median_step_time"] = med
        if "compile" in result:
            result["compile_time_s"] = warmup_excess(result["step_times"], args.warmup, med)
        result["tokens_per_step"] = tokens_per_step
        result["tokens_per_s"] = tokens_per_step / med
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        result["peak_memory_reserved_bytes"] = torch.cuda.max_memory_reserved()
        result["peak_memory_scope"] = ("torch.cuda.max_memory_allocated() over the training steps; counter reset "
                                       "after model, adapters, optimizer and batches were created (weights "
                                       "included, AdamW state created at step 1 included)")
        tflops = result["flops_per_token"]["total"] * result["tokens_per_s"] / 1e12
        result["model_tflops"] = tflops
        result["mfu"] = tflops / result["gemm_peak_tflops"] if result["gemm_peak_tflops"] else None
        result["outcome"], status = "ok", 0
        result.pop("phase", None)
    except Exception as e:  # noqa: BLE001  (every failure becomes a JSON outcome)
        if is_out_of_memory(torch, e):
            result["outcome"], status = "oom", 3
            result["error"] = str(e).splitlines()[0] if str(e) else "CUDA out of memory"
            try:
                result["peak_memory_bytes_at_oom"] = torch.cuda.max_memory_allocated()
            except Exception:  # noqa: BLE001
                pass
        else:
            result["outcome"], status = "error", 1
            result["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
    finally:
        text = json.dumps(result, sort_keys=True)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                f.write(text + "\n")
        print(text, flush=True)
    return status


def main(argv=None):
    args = parse_args(argv)

    def flops_of():
        return flops_per_token(args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads, args.vocab,
                               args.seq, args.method, args.lora_r, args.head_dim)

    return run_reference(args, "hf_llama_reference", config_of(args), flops_of, train, args.batch * args.seq)


if __name__ == "__main__":
    sys.exit(main())
