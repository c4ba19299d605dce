#!/usr/bin/env python3
"""PyTorch reference for shardtune's T5/FlanT5 benchmark rows (`make bench`, issue #6).

Trains a randomly initialised Hugging Face T5 (transformers.T5ForConditionalGeneration, bf16)
with full fine-tuning or PEFT LoRA, in a plain PyTorch loop (forward, loss.backward(), gradient
clipping, AdamW step, zero_grad) on uniform random encoder inputs and targets, and prints one
JSON object: median step time, tokens/s, peak GPU memory and MFU against a bf16 GEMM peak.
The same measurement as analysis/peers/hf_llama_reference.py, whose shared parts it imports
(the bf16 GPU build, checkpointing + PEFT, the timed AdamW loop, the memory cap, the GEMM peak,
the JSON and exit statuses); only the model, the data and the FLOPs are T5's.

    python3 analysis/peers/hf_t5_reference.py --d-model 2048 --d-kv 64 --d-ff 5120 --layers 24 \\
        --heads 32 --vocab 32128 --seq 512 --target-len 128 --method lora --lora-r 16 --lora-alpha 32 \\
        --batch 8 --checkpointing --memory-cap-gib 40 --steps 12 --warmup 2 --json ref.json

What it does, precisely:
- Model: T5Config(vocab_size, d_model, d_kv, d_ff, num_layers, num_decoder_layers, num_heads,
  relative_attention_num_buckets=32, relative_attention_max_distance=128,
  feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0, use_cache=False,
  decoder_start_token_id=0, pad 0, eos 1) -- FlanT5 / T5 v1.1's layout -- built directly on the GPU
  in bf16 (nothing materialised on the CPU), transformers' random init. T5's attention is
  transformers' own (scores + relative bias, softmax in fp32); attn_implementation is reported.
  The head stays untied: where transformers ties lm_head to `shared` although the config says
  tie_word_embeddings=False (transformers 5.17 does: it reads the flag only to derive
  scale_decoder_outputs), lm_head gets its own copy, so the model has shardtune's shape
  (JSON: head_tied_by_transformers, scale_decoder_outputs; parameter_check compares the count
  with num_parameters below).
- Full fine-tuning: every parameter in bf16 (pure bf16, AdamW moments in bf16). LoRA: PEFT on
  q, k, v, o (self- and cross-attention) and wi_0, wi_1, wo of every block, r and alpha from the
  arguments, dropout 0, task SEQ_2_SEQ_LM, PEFT's defaults (fp32 adapters). Optional activation
  checkpointing (transformers' gradient_checkpointing_enable). AdamW lr, betas (0.9, 0.999),
  eps 1e-8, no weight decay; clip_grad_norm_ to --grad-clip.
- Data: encoder ids [batch, seq] uniform in [3, vocab) with the last id EOS (1), labels
  [batch, target_len] uniform in [3, vocab) with the last EOS; transformers shifts the labels
  right behind decoder_start_token_id 0 for the decoder input. No padding. A new batch every
  step, all generated on the GPU before the first step.
- Timing and memory as the Llama reference: the median step after --warmup;
  tokens/s = batch * (seq + target_len) / median; peak = torch.cuda.max_memory_allocated() over
  the steps, reset after setup. --memory-cap-gib X caps the process at X GiB
  (torch.cuda.set_per_process_memory_fraction) to reproduce, e.g., a 40 GB GPU; an allocation
  past it is an OOM (outcome "oom", exit 3), a result and not an error.
- MFU: flops_per_token below x tokens/s / the bf16 GEMM peak (measured with the Llama reference's
  measure_gemm_peak unless --gemm-peak gives it).

FLOPs per token (model FLOPs; per encoder + decoder token; the same as shardtune's
t5_flops_per_token). C = d_model, HD = num_heads * d_kv, F = d_ff, nF = 3 gated (2 relu),
V = vocab, Le / Ld encoder / decoder layers, Te / Td encoder / decoder lengths:
    enc_lin  = Le * (4*C*HD + nF*C*F)                 self q, k, v, o + FFN, per encoder token
    dec_lin  = Ld * (4*C*HD + 2*C*HD + nF*C*F)        self q, k, v, o + cross q, o + FFN, per decoder token
    cross_kv = Ld * 2*C*HD                            cross k, v: applied to the encoder output
    head     = V * C
    base     = Te*(enc_lin + cross_kv) + Td*(dec_lin + head)                       per row
    adapter  = the same sum with r*(in+out) for each adapted linear instead of in*out
               (LoRA on q, k, v, o of every attention, cross included, and wi_0, wi_1, wo; not the head)
    matmul   = (6 if full else 4) * base + 6 * adapter
    attn     = 3 * (Le*4*Te*Te*HD + Ld*2*Td*Td*HD + Ld*4*Td*Te*HD)
               (encoder bidirectional, decoder self-attention causal so halved, cross-attention full;
               backward twice the forward)
    flops_per_token = (matmul + attn) / (Te + Td)
The activation-checkpointing recompute is not counted.

Exit status: 0 ok, 3 out of memory (JSON outcome "oom"), 1 any other failure (outcome "error"),
2 bad arguments. torch, transformers and peft are imported only in main() (through the Llama
reference's run_reference), so --help and the pure functions work without them.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hf_llama_reference as common  # noqa: E402  (shared GPU parts; torch is imported only in main)

T5_LORA_MODULES = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
PAD_ID = 0
EOS_ID = 1
DECODER_START_ID = 0
FIRST_RANDOM_ID = common.FIRST_RANDOM_ID  # 0 pad, 1 EOS (T5), 2 reserved as in shardtune's random shards
FEED_FORWARD_PROJ = ("gated-gelu", "relu")

T5_FLOPS_FORMULA = (
    "per encoder + decoder token: ((6 if full else 4)*base + 6*adapter + attention) / (Te + Td); "
    "base = Te*(Le*(4*C*HD + nF*C*F) + Ld*2*C*HD) + Td*(Ld*(6*C*HD + nF*C*F) + V*C) per row "
    "(encoder self-attention and FFN, cross k,v on the encoder output; decoder self-attention, cross q,o, "
    "FFN, head); adapter = the same with r*(in+out) per adapted linear (not the head); "
    "attention = 3*(Le*4*Te^2*HD + Ld*2*Td^2*HD + Ld*4*Td*Te*HD) (encoder bidirectional, decoder causal, "
    "cross full; backward twice the forward); HD = heads*d_kv, nF = 3 gated; "
    "the activation-checkpointing recompute is not counted (model FLOPs)"
)


# ------------------------------------------------------------------------------ pure functions


def block_linears(d_model, d_kv, heads, d_ff, gated=True):
    """(name, in_features, out_features) of one block's linear layers, grouped by the tokens they
    act on: "encoder" (an encoder block: self q, k, v, o and the FFN), "decoder" (a decoder block's
    layers on decoder tokens: self q, k, v, o, cross q, o and the FFN) and "cross_kv" (a decoder
    block's cross k, v, applied to the encoder output, so to encoder tokens)."""
    c, hd = d_model, heads * d_kv
    attention = [("q", c, hd), ("k", c, hd), ("v", c, hd), ("o", hd, c)]
    ffn = ([("wi_0", c, d_ff), ("wi_1", c, d_ff), ("wo", d_ff, c)] if gated
           else [("wi", c, d_ff), ("wo", d_ff, c)])
    return {
        "encoder": attention + ffn,
        "decoder": attention + [("q", c, hd), ("o", hd, c)] + ffn,
        "cross_kv": [("k", c, hd), ("v", c, hd)],
    }


def _weights(layers):
    return sum(i * o for _, i, o in layers)


def _adapters(layers, r, modules):
    return sum(r * (i + o) for name, i, o in layers if name in modules)


def flops_per_token(d_model, d_kv, heads, d_ff, layers, decoder_layers, vocab, seq, target_len, method,
                    lora_r=16, lora_modules=T5_LORA_MODULES, gated=True):
    """Training FLOPs per (encoder + decoder) token of a T5 (model FLOPs; see the module docstring
    and T5_FLOPS_FORMULA), with its parts: base_per_row and adapter_per_row (the weighted weight
    sums), matmul and attention per token, total."""
    if method not in ("full", "lora"):
        raise ValueError(f"method must be full or lora, not {method!r}")
    lin = block_linears(d_model, d_kv, heads, d_ff, gated)
    hd = heads * d_kv
    te, td = seq, target_len
    base = (te * (layers * _weights(lin["encoder"]) + decoder_layers * _weights(lin["cross_kv"]))
            + td * (decoder_layers * _weights(lin["decoder"]) + vocab * d_model))
    adapter = 0
    if method == "lora":
        adapter = (te * (layers * _adapters(lin["encoder"], lora_r, lora_modules)
                         + decoder_layers * _adapters(lin["cross_kv"], lora_r, lora_modules))
                   + td * decoder_layers * _adapters(lin["decoder"], lora_r, lora_modules))
    matmul = (6 if method == "full" else 4) * base + 6 * adapter
    attention = 3 * (layers * 4 * te * te * hd + decoder_layers * 2 * td * td * hd + decoder_layers * 4 * td * te * hd)
    tokens = te + td
    return {
        "tokens_per_row": tokens,
        "base_per_row": base,
        "adapter_per_row": adapter,
        "matmul": matmul / tokens,
        "attention": attention / tokens,
        "total": (matmul + attention) / tokens,
        "formula": T5_FLOPS_FORMULA,
    }


def num_parameters(d_model, d_kv, heads, d_ff, layers, decoder_layers, vocab, gated=True, tied=False,
                   num_buckets=32):
    """All parameters of the T5: shared embedding, encoder blocks (2 norms each), decoder blocks
    (3 norms each), the two final norms, the two relative-attention tables [num_buckets, heads]
    (block 0 of each stack), and lm_head unless tied."""
    lin = block_linears(d_model, d_kv, heads, d_ff, gated)
    n = (vocab * d_model
         + layers * (_weights(lin["encoder"]) + 2 * d_model)
         + decoder_layers * (_weights(lin["decoder"]) + _weights(lin["cross_kv"]) + 3 * d_model)
         + 2 * d_model + 2 * num_buckets * heads)
    return n if tied else n + vocab * d_model


def adapter_parameters(d_model, d_kv, heads, d_ff, layers, decoder_layers, lora_r, lora_modules=T5_LORA_MODULES,
                       gated=True):
    """LoRA parameters: r*(in+out) for every adapted linear of both stacks (cross-attention included)."""
    lin = block_linears(d_model, d_kv, heads, d_ff, gated)
    return (layers * _adapters(lin["encoder"], lora_r, lora_modules)
            + decoder_layers * (_adapters(lin["decoder"], lora_r, lora_modules)
                                + _adapters(lin["cross_kv"], lora_r, lora_modules)))


def lora_modules_for(feed_forward_proj):
    """PEFT target modules: every attention projection and every FFN linear (wi for a relu FFN)."""
    return T5_LORA_MODULES if feed_forward_proj.startswith("gated") else ("q", "k", "v", "o", "wi", "wo")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch + transformers (+ PEFT) reference step time, tokens/s, peak memory and MFU "
        "for a randomly initialised T5 (FlanT5 layout); prints one JSON object.",
        epilog="See the module docstring for exactly what is measured and the FLOPs formula.")
    p.add_argument("--d-model", type=int, default=1024, help="d_model (default 1024, FlanT5-Large)")
    p.add_argument("--d-kv", type=int, default=64, help="per-head size d_kv (default 64)")
    p.add_argument("--d-ff", type=int, default=2816, help="FFN size d_ff (default 2816)")
    p.add_argument("--layers", type=int, default=24, help="encoder blocks (default 24)")
    p.add_argument("--decoder-layers", type=int, default=None, help="decoder blocks (default: --layers)")
    p.add_argument("--heads", type=int, default=16, help="attention heads (default 16)")
    p.add_argument("--relative-attention-num-buckets", type=int, default=32)
    p.add_argument("--relative-attention-max-distance", type=int, default=128)
    p.add_argument("--feed-forward-proj", choices=FEED_FORWARD_PROJ, default="gated-gelu")
    p.add_argument("--seq", type=int, default=512, help="encoder tokens per row, EOS included (default 512)")
    p.add_argument("--target-len", type=int, default=128, help="target tokens per row, EOS included (default 128)")
    common.add_training_arguments(p, vocab_default=32128)
    args = p.parse_args(argv)
    if args.decoder_layers is None:
        args.decoder_layers = args.layers
    common.check_training_arguments(p, args, ("d_model", "d_kv", "d_ff", "layers", "decoder_layers", "heads",
                                              "relative_attention_num_buckets", "relative_attention_max_distance"))
    if args.seq < 2 or args.target_len < 2:
        p.error("--seq and --target-len must be >= 2 (random ids, then EOS)")
    return args


def config_of(args):
    return dict({
        "d_model": args.d_model, "d_kv": args.d_kv, "d_ff": args.d_ff, "layers": args.layers,
        "decoder_layers": args.decoder_layers, "heads": args.heads, "vocab": args.vocab,
        "relative_attention_num_buckets": args.relative_attention_num_buckets,
        "relative_attention_max_distance": args.relative_attention_max_distance,
        "feed_forward_proj": args.feed_forward_proj, "seq": args.seq, "target_len": args.target_len,
    }, **common.training_config_of(args))


def shape_of(args):
    """The keyword arguments of flops_per_token / num_parameters / adapter_parameters common to all three."""
    return dict(d_model=args.d_model, d_kv=args.d_kv, heads=args.heads, d_ff=args.d_ff, layers=args.layers,
                decoder_layers=args.decoder_layers, gated=args.feed_forward_proj.startswith("gated"))


# ------------------------------------------------------------------------------ GPU parts


def untie_head(torch, model, result):
    """Give lm_head its own weight where transformers tied it to `shared` (see the docstring)."""
    head, shared = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head.weight.data_ptr() == shared.weight.data_ptr()
    result["head_tied_by_transformers"] = tied
    result["scale_decoder_outputs"] = getattr(model.config, "scale_decoder_outputs", None)
    if tied:
        head.weight = torch.nn.Parameter(shared.weight.detach().clone())
        try:  # so that nothing ties them again (the output scaling is scale_decoder_outputs' in 5.x)
            model.config.tie_word_embeddings = False
        except (AttributeError, TypeError, ValueError):
            pass


def build_model(torch, args, result):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=args.vocab, d_model=args.d_model, d_kv=args.d_kv, d_ff=args.d_ff, num_layers=args.layers,
        num_decoder_layers=args.decoder_layers, num_heads=args.heads,
        relative_attention_num_buckets=args.relative_attention_num_buckets,
        relative_attention_max_distance=args.relative_attention_max_distance,
        feed_forward_proj=args.feed_forward_proj, tie_word_embeddings=False, dropout_rate=0.0, use_cache=False,
        decoder_start_token_id=DECODER_START_ID, pad_token_id=PAD_ID, eos_token_id=EOS_ID)
    model = common.build_on_gpu(torch, T5ForConditionalGeneration, cfg, result)
    untie_head(torch, model, result)
    return common.finish_model(model, args, result, lora_modules_for(args.feed_forward_proj), "SEQ_2_SEQ_LM")


def train(torch, args, result):
    model = build_model(torch, args, result)

    def make_batches(gen):
        batches = []
        for _ in range(args.steps):
            ids = torch.randint(FIRST_RANDOM_ID, args.vocab, (args.batch, args.seq), device="cuda", generator=gen)
            ids[:, -1] = EOS_ID
            labels = torch.randint(FIRST_RANDOM_ID, args.vocab, (args.batch, args.target_len), device="cuda",
                                   generator=gen)
            labels[:, -1] = EOS_ID
            batches.append({"input_ids": ids, "labels": labels})
        return batches

    shape = shape_of(args)
    expected = num_parameters(vocab=args.vocab, num_buckets=args.relative_attention_num_buckets, **shape)
    adapters = adapter_parameters(lora_r=args.lora_r, lora_modules=lora_modules_for(args.feed_forward_proj), **shape)
    common.train_model(torch, model, args, result, make_batches, expected, adapters, tokens_per_step(args))


def tokens_per_step(args):
    return args.batch * (args.seq + args.target_len)


def main(argv=None):
    args = parse_args(argv)

    def flops_of():
        return flops_per_token(vocab=args.vocab, seq=args.seq, target_len=args.target_len, method=args.method,
                               lora_r=args.lora_r, lora_modules=lora_modules_for(args.feed_forward_proj),
                               **shape_of(args))

    return common.run_reference(args, "hf_t5_reference", config_of(args), flops_of, train, tokens_per_step(args))


if __name__ == "__main__":
    sys.exit(main())
