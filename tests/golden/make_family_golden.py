#!/usr/bin/env python3
"""Golden fixtures of the decoder families added in issue 18, from Hugging Face transformers
(+ PEFT), for shardtune's parity tests (tests/unit/test_family_golden.cpp on the CPU,
tests/gpu/test_cuda_model.cpp in bf16).

Run where PyTorch, transformers and peft exist (the GPU host; the computation runs on the CPU in
float64, so any machine with them will do). The outputs are small and committed:

  python3 tests/golden/make_family_golden.py [--out tests/golden] [--families llama3,qwen2,mistral]

Writes, for each family F:
  F_tiny/                 a tiny random checkpoint in HF format (f32), with the family's features on
  F_tiny_lora_adapter/    a PEFT LoRA adapter for it (r=4, alpha=8, non-zero B)
  F_tiny_golden.h5        inputs; for the base model and the LoRA model: logits, loss and every
                          gradient (float64 computation, eager attention, stored as float32);
                          the rotary inv_freq table transformers computed (rope_inv_freq)

The families, each with odd (non-power-of-two) sizes and grouped-query attention:
  llama3   LlamaForCausalLM, rope_type "llama3" (factor 4, low/high frequency factors 1 and 4,
           original_max_position_embeddings 32 of 64, rope_theta 100 so that the head's four
           frequencies fall in all three bands: kept, smoothed, divided), tied head
  qwen2    Qwen2ForCausalLM: q, k, v biases (non-zero), tied head, rope_theta 1e6; saved in shards
           (max_shard_size 20KB) so the sharded loader is exercised on transformers' own index
  mistral  MistralForCausalLM: head_dim 6 (not hidden / heads), a sliding window of 32 (longer than
           the 12-token rows: plain causal attention, which shardtune accepts), untied head

Conventions match make_golden.py (both use golden_common.py): right padding, attention_mask 0 on
pads, labels -100 where a token is not a target; the loss is the mean over targets.
"""
import argparse
import os
import sys

import h5py
import numpy as np
import torch
import transformers

from golden_common import save_adapter, tiny_batch, write_full, write_inputs, write_lora

BASE = dict(vocab_size=48, num_hidden_layers=2, max_position_embeddings=64, rms_norm_eps=1e-5, hidden_act="silu",
            bos_token_id=1, eos_token_id=2)
FAMILIES = {
    "llama3": dict(cls="Llama", config=dict(BASE, hidden_size=24, intermediate_size=40, num_attention_heads=4,
                                            num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
                                            attention_bias=False, mlp_bias=False),
                   rope=dict(rope_type="llama3", rope_theta=100.0, factor=4.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=32)),
    "qwen2": dict(cls="Qwen2", config=dict(BASE, hidden_size=24, intermediate_size=40, num_attention_heads=6,
                                           num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=False),
                  rope=dict(rope_type="default", rope_theta=1000000.0), shard="20KB"),
    "mistral": dict(cls="Mistral", config=dict(BASE, hidden_size=20, intermediate_size=36, num_attention_heads=4,
                                               num_key_value_heads=2, head_dim=6, tie_word_embeddings=False,
                                               sliding_window=32),
                    rope=dict(rope_type="default", rope_theta=10000.0)),
}


def classes(name):
    return getattr(transformers, name + "Config"), getattr(transformers, name + "ForCausalLM")


def make_config(spec):
    """The family's config with its rotary parameters (transformers 5: rope_parameters; older
    versions: rope_theta + rope_scaling)."""
    config_cls, _ = classes(spec["cls"])
    rope = dict(spec["rope"])
    try:
        cfg = config_cls(**spec["config"], rope_parameters=rope)
    except TypeError:
        theta = rope.pop("rope_theta")
        cfg = config_cls(**spec["config"], rope_theta=theta, rope_scaling=rope if rope["rope_type"] != "default" else None)
    return cfg


def f32(group, name, tensor):
    group.create_dataset(name, data=tensor.detach().cpu().numpy().astype(np.float32), compression="gzip", shuffle=True)


def make_family(name, spec, out_dir):
    _, model_cls = classes(spec["cls"])
    torch.manual_seed({"llama3": 3, "qwen2": 4, "mistral": 5}[name])
    cfg = make_config(spec)
    model = model_cls(cfg)
    with torch.no_grad():  # larger than the default init, so every path (the biases too) carries signal
        for pname, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in pname else 0.15 * torch.randn_like(p))
    model_dir = os.path.join(out_dir, f"{name}_tiny")
    kwargs = {"max_shard_size": spec["shard"]} if "shard" in spec else {}
    model.float().save_pretrained(model_dir, safe_serialization=True, **kwargs)

    model = model_cls.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float64)
    model.train()  # no dropout in these models; train() only for PEFT's lora_dropout (0 here)
    batch = tiny_batch(cfg.vocab_size)
    path = os.path.join(out_dir, f"{name}_tiny_golden.h5")
    with h5py.File(path + ".tmp", "w") as f:
        write_inputs(f, *batch)
        f.attrs["family"] = name
        inv = model.model.rotary_emb.inv_freq
        f.create_dataset("rope_inv_freq", data=inv.detach().cpu().numpy().astype(np.float64))
        write_full(f, model, batch, f32)
        pmodel, loss = write_lora(f, model, batch, f32)
    os.replace(path + ".tmp", path)
    adapter_dir = os.path.join(out_dir, f"{name}_tiny_lora_adapter")
    save_adapter(pmodel, adapter_dir, f"tests/golden/{name}_tiny")
    sizes = {p: os.path.getsize(p) for p in [path]}
    print(f"wrote {model_dir}, {adapter_dir}, {path} ({sizes[path] // 1024} KiB): lora loss {float(loss):.6f}, "
          f"inv_freq {inv.tolist()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=here)
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    for name in args.families.split(","):
        make_family(name, FAMILIES[name], args.out)


if __name__ == "__main__":
    sys.exit(main())
