#!/usr/bin/env python3
"""NF4 golden fixtures from a bitsandbytes-free PyTorch re-implementation of bitsandbytes'
quantize_4bit / dequantize_4bit (quant_type="nf4", with and without compress_statistics).

bitsandbytes cannot be installed on the GPU host, so this follows its CUDA kernels step by step
in torch ops (each op rounds on its own, like the kernels):
  * absmax per block of `block` values of the flattened weight (cast to float), the reciprocal
    1/absmax, x * (1/absmax), and the NF4 code = the number of midpoints between neighbouring
    NF4 values that lie strictly below it (dQuantizeNF4's decision tree; NaN -> 0);
  * two codes per byte, the first value in the high nibble;
  * double quantization: offset = absmax.mean(), torch's f32 mean on the device, exactly as
    bitsandbytes' quantize_4bit(compress_statistics=True) takes it (run with --device cuda, as
    bitsandbytes runs); then blockwise 8-bit (block 256) of absmax - offset with
    create_dynamic_map(signed=True) and dQuantize<0>'s binary search with midpoint rounding;
  * dequantization: code[q] * absmax2 + offset, then nf4[c] * absmax, rounded to bf16.

Writes tests/golden/nf4_golden.h5 with, per case: the bf16 input (as uint16 bits), codes, the
absmax layout, the dequantized bf16 weight, and the dynamic map as torch computes it.

  python3 tests/golden/make_nf4_golden.py [--out tests/golden] [--device cuda]
"""
import argparse
import os

import h5py
import numpy as np
import torch

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes.functional.create_dynamic_map, as published (torch f32 arithmetic)."""
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 2 ** total_bits
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def dquantize(code, x):
    """dQuantize<0>: binary search from pivot 127, then round by the midpoint (vectorised)."""
    pivot = torch.full_like(x, 127, dtype=torch.long)
    upper_pivot = torch.full_like(pivot, 255)
    lower_pivot = torch.zeros_like(pivot)
    lower = torch.full_like(x, -1.0)
    upper = torch.full_like(x, 1.0)
    val = code[pivot]
    i = 64
    while i > 0:
        gt = x > val
        lower_pivot = torch.where(gt, pivot, lower_pivot)
        lower = torch.where(gt, val, lower)
        upper_pivot = torch.where(gt, upper_pivot, pivot)
        upper = torch.where(gt, upper, val)
        pivot = torch.where(gt, pivot + i, pivot - i)
        val = code[pivot]
        i >>= 1
    upper = torch.where(upper_pivot == 255, code[upper_pivot], upper)
    lower = torch.where(lower_pivot == 0, code[lower_pivot], lower)
    gt = x > val
    mid_up = (upper + val) * 0.5
    mid_lo = (lower + val) * 0.5
    return torch.where(gt, torch.where(x > mid_up, upper_pivot, pivot),
                       torch.where(x < mid_lo, lower_pivot, pivot)).to(torch.uint8)


def quantize_nf4(w, block, double_quant, dev):
    nf4 = torch.tensor(NF4, dtype=torch.float32, device=dev)
    mids = ((nf4[:-1].double() + nf4[1:].double()) / 2).float()
    x = w.to(dev).float().reshape(-1)
    n = x.numel()
    nb = (n + block - 1) // block
    xp = torch.zeros(nb * block, dtype=torch.float32, device=dev)
    xp[:n] = x
    blocks = xp.view(nb, block)
    absmax = blocks.abs().amax(dim=1)
    inv = 1.0 / absmax
    normed = blocks * inv[:, None]
    codes = (normed[..., None] > mids).sum(dim=-1)  # midpoints strictly below (NaN -> 0)
    codes = codes.reshape(-1)[:n].to(torch.uint8)
    if n % 2:
        codes = torch.cat([codes, torch.zeros(1, dtype=torch.uint8, device=dev)])
    packed = (codes[0::2] << 4) | codes[1::2]
    out = {"codes": packed.cpu().numpy(), "absmax_raw": absmax.cpu().numpy()}
    if double_quant:
        code = create_dynamic_map().to(dev)
        offset = absmax.mean()  # bitsandbytes: torch.mean of the f32 absmax, on the device
        a = absmax - offset
        nb2 = (nb + 255) // 256
        ap = torch.zeros(nb2 * 256, dtype=torch.float32, device=dev)
        ap[:nb] = a
        absmax2 = ap.view(nb2, 256).abs().amax(dim=1)
        normed2 = ap.view(nb2, 256) * (1.0 / absmax2)[:, None]
        qabsmax = dquantize(code, normed2.reshape(-1))[:nb]
        eff = code[qabsmax.long()] * absmax2.repeat_interleave(256)[:nb]
        eff = eff + offset
        out.update(qabsmax=qabsmax.cpu().numpy(), absmax2=absmax2.cpu().numpy(),
                   offset=np.float32(offset.item()))
    else:
        eff = absmax
        out.update(absmax=absmax.cpu().numpy())
    unpacked = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n].long()
    deq = nf4[unpacked] * eff.repeat_interleave(block)[:n]
    out["dequantized_bf16"] = deq.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return out


def make_weight(rows, cols, seed, dev):
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w *= torch.linspace(0.5, 3.0, rows)[:, None]   # rows of different scales
    w.view(-1)[:64] = 0.0                            # an all-zero block
    nf4 = torch.tensor(NF4)
    w.view(-1)[64:128] = nf4.repeat(4) * 0.03125     # code values times a power of two
    w.view(-1)[200] = 0.5                            # an outlier
    return w.to(torch.bfloat16)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=here)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    cases = [("b64_dq", 96, 200, 64, True, 1), ("b128_plain", 33, 130, 128, False, 2),
             ("b256_dq", 130, 512, 256, True, 3), ("b64_dq_big", 64, 1100, 64, True, 4)]
    path = os.path.join(args.out, "nf4_golden.h5")
    with h5py.File(path + ".tmp", "w") as f:
        f.attrs["torch_version"] = "".join(str(torch.__version__))
        f.attrs["device"] = args.device
        f.create_dataset("dynamic_map", data=create_dynamic_map().numpy())
        for name, rows, cols, block, dq, seed in cases:
            w = make_weight(rows, cols, seed, args.device)
            r = quantize_nf4(w, block, dq, args.device)
            g = f.create_group(name)
            g.attrs["rows"] = rows
            g.attrs["cols"] = cols
            g.attrs["block"] = block
            g.attrs["double_quant"] = int(dq)
            g.create_dataset("w_bf16", data=w.view(torch.int16).numpy().view(np.uint16), compression="gzip")
            for k, v in r.items():
                if k == "absmax_raw":
                    continue
                if np.ndim(v) == 0:
                    g.attrs[k] = v
                else:
                    g.create_dataset(k, data=v, compression="gzip")
    os.replace(path + ".tmp", path)
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
