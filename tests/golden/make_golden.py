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

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, hidden_act="silu",
            attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_batch(vocab):
    """Three rows of lengths 12, 9, 5 (right-padded), row 0 with its first 4 tokens masked."""
    g = torch.Generator().manual_seed(1234)
    B, T = 3, 12
    lengths = [12, 9, 5]
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    labels = ids.clone()
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 0
        labels[b, n:] = -100
    labels[0, :4] = -100  # a prompt that is not trained on
    return ids, mask, labels


def forward_backward(model, ids, mask, labels):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    return out.logits.detach(), out.loss.detach()


def write_grads(group, named_params):
    for name, p in named_params:
        if p.grad is not None:
            group.create_dataset(name, data=p.grad.detach().cpu().numpy(), compression="gzip")


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
    ids, mask, labels = tiny_batch(cfg.vocab_size)
    path = os.path.join(out_dir, "llama_tiny_golden.h5")
    with h5py.File(path + ".tmp", "w") as f:
        f.attrs["torch"] = str(torch.__version__)
        f.attrs["transformers"] = str(transformers.__version__)
        f.create_dataset("input_ids", data=ids.numpy())
        f.create_dataset("attention_mask", data=mask.numpy())
        f.create_dataset("labels", data=labels.numpy())
        logits, loss = forward_backward(model, ids, mask, labels)
        g = f.create_group("full")
        g.create_dataset("logits", data=logits.numpy(), compression="gzip")
        g.attrs["loss"] = float(loss)
        write_grads(g.create_group("grads"), model.named_parameters())

        import peft
        from peft import LoraConfig, get_peft_model
        f.attrs["peft"] = str(peft.__version__)
        lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none",
                          task_type="CAUSAL_LM")
        pmodel = get_peft_model(model, lcfg)
        with torch.no_grad():  # non-zero B so the adapters change the output and get gradients
            gen = torch.Generator().manual_seed(99)
            for name, p in pmodel.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        logits, loss = forward_backward(pmodel, ids, mask, labels)
        g = f.create_group("lora")
        g.attrs["r"] = 4
        g.attrs["alpha"] = 8.0
        g.create_dataset("logits", data=logits.numpy(), compression="gzip")
        g.attrs["loss"] = float(loss)
        wg, gg = g.create_group("weights"), g.create_group("grads")
        for name, p in pmodel.named_parameters():
            if "lora_" not in name:
                continue
            # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
            #   -> model.layers.0.self_attn.q_proj.lora_A
            short = name.replace("base_model.model.", "", 1).replace(".default.weight", "")
            wg.create_dataset(short, data=p.detach().numpy())
            gg.create_dataset(short, data=p.grad.detach().numpy())
        n_base = sum(1 for n, p in pmodel.named_parameters() if "lora_" not in n and p.grad is not None)
        assert n_base == 0, "the base must be frozen under LoRA"
    os.replace(path + ".tmp", path)
    adapter_dir = os.path.join(out_dir, "llama_tiny_lora_adapter")
    pmodel.save_pretrained(adapter_dir)
    # Keep the committed files free of this machine's paths: the base model is named relative to
    # the repository root, and PEFT's generated model card is dropped.
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(cfg_path) as f:
        acfg = json.load(f)
    acfg["base_model_name_or_path"] = "tests/golden/llama_tiny"
    with open(cfg_path, "w") as f:
        json.dump(acfg, f, indent=2)
        f.write("\n")
    readme = os.path.join(adapter_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
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
