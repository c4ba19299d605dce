#!/usr/bin/env python3
"""PEFT interop of shardtune's LoRA adapters, both ways, for Llama, T5 (issue 8) and the decoder
families of issue 18 (Llama 3.x with rotary scaling llama3, Qwen2 with q/k/v biases, Mistral).

Run where PyTorch, transformers and peft exist (the GPU host's torch environment):

  python3 tests/gpu/peft_interop.py --bin build/shardtune --device cuda
  python3 tests/gpu/peft_interop.py --bin build/shardtune --device cpu     # f32 everywhere

For each family (a tiny random LlamaForCausalLM, a tiny gated-GELU T5ForConditionalGeneration, and
with --families llama3,qwen2,mistral (in the default list) a tiny LlamaForCausalLM with
rope_type llama3 and a tied head, a Qwen2ForCausalLM with non-zero q/k/v biases and a tied head,
a MistralForCausalLM with head_dim != hidden / heads and a sliding window longer than the rows):
  (a) transformers builds the model and saves it (f32, safetensors);
  (b) shardtune trains LoRA on it for 10 steps on random-token shards (`prepare --random`)
      with save_adapter = true; PEFT loads <run>/adapter onto the transformers model
      (PeftModel.from_pretrained) and its logits must equal shardtune's for the same inputs
      (`shardtune export --logits-input/--logits-output`, the adapter applied unmerged);
  (c) PEFT writes an adapter of its own (get_peft_model, random non-zero lora_B,
      save_pretrained); shardtune imports it: equal logits again, and `shardtune export --merged`
      loaded by transformers gives PEFT's logits too;
  (d) `shardtune export --merged --tokenizer T` with a SentencePiece model that has no Hugging Face
      files of its own (the synthetic set's): AutoTokenizer loads the merged directory
      (tokenizer.model, tokenizer_config.json, special_tokens_map.json written by shardtune), its
      special tokens are the model's, and it encodes text to SentencePiece's ids (Llama: BOS first;
      T5: EOS last).
Reference logits are computed by transformers in float32 (TF32 off, eager attention). shardtune
computes in bf16 on cuda (tolerance: max |difference| <= 3e-2 * max |reference|, or 2.5x the
model's own bf16 floor, transformers bf16 vs f32, where that is larger: the tiny T5) and in f32
on cpu (1e-4). Only real (unpadded) positions are compared. Exit status 0 when every check passes.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

V = 96
LLAMA = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
             tie_word_embeddings=False, hidden_act="silu", attention_bias=False, mlp_bias=False, bos_token_id=1,
             eos_token_id=2)
T5 = dict(vocab_size=V, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
          layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
LLAMA3 = dict(LLAMA, tie_word_embeddings=True, rope_theta=500000.0,
              rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                original_max_position_embeddings=16))
QWEN2 = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
             tie_word_embeddings=True, hidden_act="silu", use_sliding_window=False, bos_token_id=1, eos_token_id=2)
MISTRAL = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=24, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
               sliding_window=32, tie_word_embeddings=False, hidden_act="silu", bos_token_id=1, eos_token_id=2)
# The decoder families: (transformers class prefix, config).
DECODERS = {"llama": ("Llama", LLAMA), "llama3": ("Llama", LLAMA3), "qwen2": ("Qwen2", QWEN2),
            "mistral": ("Mistral", MISTRAL)}
DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = dict({f: DECODER_TARGETS for f in DECODERS}, t5=["q", "k", "v", "o", "wi_0", "wi_1", "wo"])
TASK = dict({f: "CAUSAL_LM" for f in DECODERS}, t5="SEQ_2_SEQ_LM")


def model_class(fam):
    import transformers
    if fam == "t5":
        return transformers.T5ForConditionalGeneration
    return getattr(transformers, DECODERS[fam][0] + "ForCausalLM")


def make_config(fam):
    """The family's transformers config (transformers 5 takes the rotary scaling as rope_parameters)."""
    import transformers
    if fam == "t5":
        return transformers.T5Config(**T5)
    prefix, kw = DECODERS[fam]
    cls = getattr(transformers, prefix + "Config")
    kw = dict(kw)
    scaling = kw.pop("rope_scaling", None)
    if scaling is None:
        return cls(**kw)
    try:
        return cls(**{k: v for k, v in kw.items() if k != "rope_theta"},
                   rope_parameters=dict(scaling, rope_theta=kw["rope_theta"]))
    except TypeError:
        return cls(**kw, rope_scaling=scaling)

failures = []


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        print(r.stdout)
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}")
    return r.stdout


def check(what, got, ref, mask, tol):
    import numpy as np
    sel = mask.astype(bool)
    g, r = got[sel].astype(np.float64), ref[sel].astype(np.float64)
    err = float(np.max(np.abs(g - r)) / max(np.max(np.abs(r)), 1e-30))
    ok = err <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {what}: max |diff| / max |ref| = {err:.2e} (tolerance {tol:.1e})", flush=True)
    if not ok:
        failures.append(what)


def build_base(fam, out_dir):
    import torch
    torch.manual_seed({"llama": 0, "t5": 1, "llama3": 2, "qwen2": 3, "mistral": 4}[fam])
    model = model_class(fam)(make_config(fam))
    with torch.no_grad():  # larger than the default init, so every path carries signal
        for n, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if p.dim() == 1 else 0.15 * torch.randn_like(p))
    model.float().save_pretrained(out_dir, safe_serialization=True)


def make_inputs(fam, path):
    """Two rows of 12 tokens, the second right-padded after 7; T5 also 6 decoder inputs."""
    import h5py
    import numpy as np
    rng = np.random.default_rng(42)
    ids = rng.integers(3, V, size=(2, 12), dtype=np.int64)
    mask = np.ones((2, 12), dtype=np.int64)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    with h5py.File(path, "w") as f:
        f.create_dataset("input_ids", data=ids)
        f.create_dataset("attention_mask", data=mask)
        if fam == "t5":
            dec = rng.integers(3, V, size=(2, 6), dtype=np.int64)
            dec[:, 0] = T5["decoder_start_token_id"]
            f.create_dataset("decoder_input_ids", data=dec)


def hf_logits(fam, base_dir, adapter_dir, inputs, device, bf16=False):
    """Logits of transformers (+ PEFT adapter when given) in float32 (or bf16) on `device`, and the mask."""
    import h5py
    import torch
    cls = model_class(fam)
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = cls.from_pretrained(base_dir, dtype=dtype, attn_implementation="eager").to(device)
    if adapter_dir:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter_dir).to(device)
    model.eval()
    with h5py.File(inputs, "r") as f:
        ids = torch.tensor(f["input_ids"][()], device=device)
        mask = torch.tensor(f["attention_mask"][()], device=device)
        dec = torch.tensor(f["decoder_input_ids"][()], device=device) if fam == "t5" else None
    with torch.no_grad():
        if fam != "t5":
            out = model(input_ids=ids, attention_mask=mask).logits
            m = mask
        else:
            out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
            m = torch.ones_like(dec)
    return out.float().cpu().numpy(), m.cpu().numpy()


def st_logits(args, base_dir, adapter_dir, inputs, out):
    """shardtune's logits (base + adapter unmerged; the base alone when adapter_dir is None)."""
    import h5py
    run([args.bin, "export", "--model", base_dir, "--device", args.device, "--logits-input", inputs,
         "--logits-output", out] + (["--adapter", adapter_dir] if adapter_dir else []))
    with h5py.File(out, "r") as f:
        return f["logits"][()]


def peft_written_adapter(fam, base_dir, out_dir):
    """An adapter written by PEFT itself: r=4, alpha=8, random non-zero lora_B."""
    import torch
    from peft import LoraConfig, get_peft_model
    model = model_class(fam).from_pretrained(base_dir, dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS[fam],
                                          bias="none", task_type=TASK[fam]))
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    pm.save_pretrained(out_dir, safe_serialization=True)


def family(args, fam, work):
    import numpy as np
    tol = 3e-2 if args.device == "cuda" else 1e-4
    base = os.path.join(work, f"{fam}_base")
    build_base(fam, base)
    data = os.path.join(work, f"{fam}_data")
    run([args.bin, "prepare", "--random", data, "--rows", "64", "--seq-len", "16", "--vocab", str(V)]
        + (["--arch", "seq2seq", "--target-len", "6"] if fam == "t5" else []))
    inputs = os.path.join(work, f"{fam}_inputs.h5")
    make_inputs(fam, inputs)
    base_ref, mask = hf_logits(fam, base, None, inputs, args.device)
    if args.device == "cuda":
        # The bf16 floor of this model: transformers itself in bf16 against its f32 logits. A tiny
        # random T5 is ill-conditioned in bf16 (its relative-bias attention and unscaled logits),
        # so its tolerance is 2.5x its own floor where that exceeds 3e-2 (as the T5 golden GPU test).
        bf16_ref, _ = hf_logits(fam, base, None, inputs, args.device, bf16=True)
        floor = float(np.max(np.abs(bf16_ref - base_ref) * mask[..., None]) / np.max(np.abs(base_ref)))
        tol = max(tol, 2.5 * floor)
        print(f"{fam}: bf16 floor (transformers bf16 vs f32) {floor:.2e}; tolerance {tol:.1e}")
    got = st_logits(args, base, None, inputs, os.path.join(work, f"{fam}_st_base.h5"))
    check(f"{fam} (a) base model: shardtune vs transformers", got, base_ref, mask, tol)

    # (b) shardtune trains the adapter; PEFT loads it.
    run([args.bin, "train", "--model", base, "--data", data, "--val_split", "", "--method", "lora", "--lora_r", "4",
         "--lora_alpha", "8", "--lora_targets", ",".join(["q", "k", "v", "o"] + (["gate", "up", "down"] if fam != "t5"
                                                                                    else ["wi_0", "wi_1", "wo"])),
         "--max_steps", "10", "--micro_batch_size", "4", "--lr", "3e-2", "--warmup_steps", "0", "--device", args.device,
         "--output_dir", os.path.join(work, "runs"), "--run_id", fam, "--save_adapter", "true", "--log_every", "1"])
    adapter = os.path.join(work, "runs", fam, "adapter")
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        cfg = json.load(f)
    print(f"{fam}: shardtune's adapter_config.json: peft_type {cfg['peft_type']}, r {cfg['r']}, "
          f"target_modules {cfg['target_modules']}, task_type {cfg['task_type']}")
    ref, mask = hf_logits(fam, base, adapter, inputs, args.device)
    moved = float(np.max(np.abs(ref - base_ref)) / np.max(np.abs(base_ref)))
    print(f"{fam}: the trained adapter moves the logits by {moved:.2e} (relative)")
    if moved <= tol:
        print(f"FAIL {fam}: the trained adapter barely changes the logits; the comparison would prove nothing")
        failures.append(f"{fam} adapter effect")
    got = st_logits(args, base, adapter, inputs, os.path.join(work, f"{fam}_st_b.h5"))
    check(f"{fam} (b) shardtune-trained adapter loaded by PEFT vs shardtune", got, ref, mask, tol)

    # (c) PEFT writes the adapter; shardtune imports it (and merges it).
    padapter = os.path.join(work, f"{fam}_peft_adapter")
    peft_written_adapter(fam, base, padapter)
    ref, mask = hf_logits(fam, base, padapter, inputs, args.device)
    got = st_logits(args, base, padapter, inputs, os.path.join(work, f"{fam}_st_c.h5"))
    check(f"{fam} (c) PEFT-written adapter imported by shardtune vs PEFT", got, ref, mask, tol)
    merged = os.path.join(work, f"{fam}_merged")
    run([args.bin, "export", "--model", base, "--adapter", padapter, "--merged", merged, "--max-shard-size", "100KB"])
    if not os.path.exists(os.path.join(merged, "model.safetensors.index.json")):
        failures.append(f"{fam} sharded merge")
        print(f"FAIL {fam}: export --max-shard-size 100KB wrote no index")
    got, _ = hf_logits(fam, merged, None, inputs, args.device)
    check(f"{fam} (c) shardtune's merged export loaded by transformers vs PEFT", got, ref, mask, 1e-4)
    tokenizer_check(args, fam, base, padapter, work)


def tokenizer_check(args, fam, base, adapter, work):
    """(d) the merged export's tokenizer files, as transformers reads them."""
    from transformers import AutoTokenizer
    syn = os.path.join(work, "synthetic")
    if not os.path.exists(os.path.join(syn, "tokenizer.model")):
        run([args.bin, "prepare", "--synthetic", syn, "--sentiment-rows", "200", "--instruct-rows", "100"])
    spm_path = os.path.join(syn, "tokenizer.model")
    merged = os.path.join(work, f"{fam}_merged_tok")
    run([args.bin, "export", "--model", base, "--adapter", adapter, "--merged", merged, "--tokenizer", spm_path])
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if not os.path.exists(os.path.join(merged, f)):
            failures.append(f"{fam} tokenizer file {f}")
            print(f"FAIL {fam} (d): export --merged wrote no {f}")
            return
    tok = AutoTokenizer.from_pretrained(merged)
    try:
        import sentencepiece
        sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    except ImportError:
        print(f"SKIP {fam} (d): AutoTokenizer loaded {type(tok).__name__}; no sentencepiece module to compare ids with")
        return
    texts = ["Once upon a time", "Review: a gripping, funny film\nSentiment:", "positive"]
    for text in texts:
        want = sp.encode(text)
        want = (want + [sp.eos_id()]) if fam == "t5" else ([sp.bos_id()] + want)  # decoders: BOS first
        got = tok(text).input_ids
        ok = list(got) == want
        print(f"{'ok  ' if ok else 'FAIL'} {fam} (d) AutoTokenizer ({type(tok).__name__}) on {text!r}: {got} "
              f"{'==' if ok else '!='} SentencePiece {want}", flush=True)
        if not ok:
            failures.append(f"{fam} (d) tokenizer ids for {text!r}")
    special = {"eos_token": sp.id_to_piece(sp.eos_id()), "unk_token": sp.id_to_piece(sp.unk_id())}
    if fam != "t5":
        special["bos_token"] = sp.id_to_piece(sp.bos_id())
    for role, piece in special.items():
        if getattr(tok, role) != piece:
            failures.append(f"{fam} (d) {role}")
            print(f"FAIL {fam} (d): {role} is {getattr(tok, role)!r}, the SentencePiece model's is {piece!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/shardtune", help="the shardtune binary")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--families", default="llama,t5,llama3,qwen2,mistral")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    import torch
    import transformers
    import peft
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"device {args.device}")
    work = args.work or tempfile.mkdtemp(prefix="st_peft_interop_")
    os.makedirs(work, exist_ok=True)
    try:
        for fam in args.families.split(","):
            family(args, fam, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed: {', '.join(failures)}")
        return 1
    print("all PEFT interop checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
