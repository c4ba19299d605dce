#!/usr/bin/env python3
"""T5 golden fixtures from transformers (run on the GPU host, which has torch and transformers):
the relative-position buckets of transformers.models.t5.modeling_t5.T5Attention for
relative positions -400..400 in the encoder (bidirectional) and decoder (causal) forms, for the
bucket/distance settings of T5 checkpoints (32/128) and a small one (8/20).

Writes tests/golden/t5_golden.h5: /buckets/<name> int32 [801] with attributes bidirectional,
num_buckets, max_distance, first_relative_position.

  python3 tests/golden/make_t5_golden.py [--out tests/golden]
"""
import argparse
import os

import h5py
import numpy as np
import torch
from transformers.models.t5.modeling_t5 import T5Attention


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
    print("wrote", path)


if __name__ == "__main__":
    main()
