#!/usr/bin/env python3
"""T5 golden fixtures from transformers (run on the GPU host, which has torch and transformers):
1. the relative-position buckets of transformers.models.t5.modeling_t5.T5Attention for
   relative positions -400..400 in the encoder (bidirectional) and decoder (causal) forms, for the
   bucket/distance settings of T5 checkpoints (32/128) and a small one (8/20);
2. two tiny random T5ForConditionalGeneration models in float32 on the CPU, FlanT5-style
   (gated-gelu, untied head) and original-T5-style (relu, tied head scaled by d_model^-0.5),
   saved with save_pretrained under tests/golden/t5_<name>/, with one batch (a padded encoder
   row, ignored labels), its logits, mean loss and the gradient of every parameter.

Writes tests/golden/t5_golden.h5: /buckets/<name> int32 [801] with attributes bidirectional,
num_buckets, max_distance, first_relative_position; /<name>/{input_ids, attention_mask, labels,
logits, loss, grads/<parameter>}.

  python3 tests/golden/make_t5_golden.py [--out tests/golden]
"""
import argparse
import os

import h5py
import numpy as np
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention


def tiny_model(out_dir, name, gated, tied, f):
    torch.manual_seed(1234 if gated else 4321)
    cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                   layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu" if gated else "relu",
                   tie_word_embeddings=tied, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg).float()
    with torch.no_grad():  # larger weights than the default init, so every path matters
        for n, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() == 2 else 0.2) + (1.0 if p.dim() == 1 else 0.0))
    model.eval()
    model.save_pretrained(os.path.join(out_dir, f"t5_{name}"), safe_serialization=True)
    g = torch.Generator().manual_seed(7)
    input_ids = torch.randint(2, 64, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.long)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = 0
    labels = torch.randint(2, 64, (2, 5), generator=g)
    labels[0, 4] = -100
    labels[1, 3:] = -100
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    out.loss.backward()
    grp = f.create_group(name)
    grp.create_dataset("input_ids", data=input_ids.numpy().astype(np.int32))
    grp.create_dataset("attention_mask", data=attention_mask.numpy().astype(np.int32))
    grp.create_dataset("labels", data=labels.numpy().astype(np.int32))
    grp.create_dataset("logits", data=out.logits.detach().numpy())
    grp.create_dataset("loss", data=np.array([out.loss.item()]))
    gg = grp.create_group("grads")
    for n, p in model.named_parameters():
        gg.create_dataset(n, data=p.grad.numpy())
    print(name, "loss", out.loss.item(), "parameters", sum(1 for _ in model.named_parameters()))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = p.parse_args()
    rel = torch.arange(-400, 401, dtype=torch.long)
    path = os.path.join(args.out, "t5_golden.h5")
    with h5py.File(path, "w") as f:
        g = f.create_group("buckets")
        for bidirectional in (True, False):
            for nb, md in ((32, 128), (8, 20)):
                b = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb,
                                                          max_distance=md)
                name = f"{'bidirectional' if bidirectional else 'causal'}_{nb}_{md}"
                d = g.create_dataset(name, data=b.numpy().astype(np.int32))
                d.attrs["bidirectional"] = int(bidirectional)
                d.attrs["num_buckets"] = nb
                d.attrs["max_distance"] = md
                d.attrs["first_relative_position"] = -400
        tiny_model(args.out, "flan", True, False, f)
        tiny_model(args.out, "t5", False, True, f)
    print("wrote", path)


if __name__ == "__main__":
    main()
