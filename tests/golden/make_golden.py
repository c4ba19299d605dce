#!/usr/bin/env python3
"""Golden fixtures from Hugging Face transformers (+ PEFT), for shardtune's parity tests.

Run where PyTorch, transformers and peft exist (the GPU host); the outputs are small and
committed, so the C++ tests need no Python:

  python3 tests/golden/make_golden.py [--shared ../shared/data] [--out tests/golden]

Writes
  llama_tiny/                  a random tiny Llama (GQA, untied head) in HF format (f32)
  llama_tiny_lora_adapter/     a PEFT LoRA adapter for it with non-zero B (r=4, alpha=8)
  llama_tiny_golden.h5         inputs, and for the base model and the LoRA model: logits, loss
                               and every gradient, computed in float64 (eager attention)
  stories260k_golden.h5        ids of a few sentences (SentencePiece) and the logits of the real
                               stories260K model on them, float64 (only when --shared has it)

Conventions match shardtune's: right padding, attention_mask 0 on pads, labels -100 where a
token is not a target; the loss is the mean over targets (transformers' causal-LM loss).
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from golden_common import save_adapter, tiny_batch, write_full, write_inputs, write_lora

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu",
            attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2)


def store_f64(group, name, tensor):
    """This fixture's tensors as computed (float64)."""
    group.create_dataset(name, data=tensor.detach().cpu().numpy(), compression="gzip")


def make_tiny(out_dir):
    torch.manual_seed(0)
    cfg = LlamaConfig(**TINY)
    model = LlamaForCausalLM(cfg)  # fp32 random init (normal, std 0.02)
    # Larger weights than the 0.02 default, so every path carries a visible signal.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model_dir = os.path.join(out_dir, "llama_tiny")
    model.save_pretrained(model_dir, safe_serialization=True)

    model = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float64)
    model.train()  # no dropout in Llama; train() only for PEFT's lora_dropout (0 here)
    batch = tiny_batch(cfg.vocab_size)
    path = os.path.join(out_dir, "llama_tiny_golden.h5")
    with h5py.File(path + ".tmp", "w") as f:
        write_inputs(f, *batch)
        write_full(f, model, batch, store_f64)
        pmodel, _ = write_lora(f, model, batch, store_f64)
    os.replace(path + ".tmp", path)
    save_adapter(pmodel, os.path.join(out_dir, "llama_tiny_lora_adapter"), "tests/golden/llama_tiny")
    print(f"wrote {model_dir}, {path} (full loss {float(f_loss(path, 'full')):.6f}, "
          f"lora loss {float(f_loss(path, 'lora')):.6f})")


def f_loss(path, group):
    with h5py.File(path, "r") as f:
        return f[group].attrs["loss"]


def make_stories(shared, out_dir):
    mdir = os.path.join(shared, "models", "stories260K")
    if not os.path.isdir(mdir):
        print(f"skip stories260K: {mdir} not found")
        return
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(mdir, "tokenizer.model"))
    sentences = ["Once upon a time, there was a little girl named Lily.",
                 "She loved to play outside in the park with her dog.",
                 "The sun was warm and the sky was blue."]
    rows = [[sp.bos_id()] + sp.encode(s) for s in sentences]
    T = max(len(r) for r in rows)
    ids = np.zeros((len(rows), T), dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = r
        mask[b, :len(r)] = 1
    model = LlamaForCausalLM.from_pretrained(mdir, attn_implementation="eager", dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    # Greedy continuation of the first sentence's first 5 tokens, as a sanity reference.
    prompt = torch.tensor([rows[0][:5]])
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=12, do_sample=False)[0].tolist()
    path = os.path.join(out_dir, "stories260k_golden.h5")
    with h5py.File(path + ".tmp", "w") as f:
        f.attrs["sentences"] = json.dumps(sentences)
        f.attrs["torch"] = str(torch.__version__)
        f.attrs["transformers"] = str(transformers.__version__)
        f.create_dataset("input_ids", data=ids)
        f.create_dataset("attention_mask", data=mask)
        f.create_dataset("logits", data=logits, compression="gzip")
        f.create_dataset("greedy_ids", data=np.array(gen, dtype=np.int64))
    os.replace(path + ".tmp", path)
    print(f"wrote {path}: {len(rows)} sentences, T={T}; greedy: {sp.decode(gen)!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=here)
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "..", "shared", "data"))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    make_tiny(args.out)
    make_stories(args.shared, args.out)


if __name__ == "__main__":
    sys.exit(main())
