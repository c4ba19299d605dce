#!/usr/bin/env python3
"""Golden greedy generations from Hugging Face transformers, for `shardtune generate`'s parity
tests (tests/unit/test_generate.cpp on the CPU, tests/gpu/test_cuda_model.cpp on the GPU).

Run where PyTorch, transformers and peft exist (the GPU host). The computation runs in float64 on
the CPU so that the reference has no rounding of its own; the output is a small JSON file:

  python3 tests/golden/make_generate_golden.py [--shared ../shared/data] [--out tests/golden]

Writes generate_golden.json with, for each case:
  model, adapter      the checkpoint (and PEFT adapter) it decodes with, relative to the repo root
                      or to --shared (stories260K)
  prompt, prompt_ids  the prompt text and its ids (SentencePiece, BOS first), when the case has a
                      tokenizer; otherwise the ids alone
  new_ids, text       greedy continuation (max_new_tokens, stopping at EOS) and its decoded text
  margins             top-1 minus top-2 logit at each generated step (a step whose margin is below
                      the comparing precision's noise may legitimately pick the other token)
  first_logits        the logits of the first generated step (checks the prefill) and
  last_logits         of the last step (checks the KV cache after max_new_tokens steps)

Cases: stories260K from "Once upon a time" and two other prompts (64 new tokens); the tiny golden
Llama (tests/golden/llama_tiny) with and without its PEFT adapter, from fixed ids (24 new tokens).
Greedy decoding uses transformers' generate(do_sample=False) with its KV cache.
"""
import argparse
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

STORIES_PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the park. They"]
TINY_PROMPTS = [[1, 5, 17, 42, 9, 33], [1, 77, 3]]


def greedy(model, ids, max_new, eos):
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=max_new, output_scores=True, output_logits=True,
                             return_dict_in_generate=True, eos_token_id=eos, pad_token_id=0,
                             num_beams=1, temperature=None, top_p=None, top_k=None)
    new = out.sequences[0, len(ids):].tolist()
    logits = [l[0].double() for l in out.logits]
    margins = []
    for l in logits:
        top2 = torch.topk(l, 2).values
        margins.append(float(top2[0] - top2[1]))
    # The same continuation without the cache (a full forward of the whole sequence), to show
    # that the reference's cache changes nothing.
    with torch.no_grad():
        full = model(input_ids=out.sequences[:, :-1]).logits[0, len(ids) - 1:].double()
    drift = float((full - torch.stack(logits)).abs().max())
    return new, margins, logits[0].tolist(), logits[-1].tolist(), drift


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    cases = []

    stories = os.path.join(args.shared, "models", "stories260K")
    if os.path.isdir(stories):
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=os.path.join(stories, "tokenizer.model"))
        model = AutoModelForCausalLM.from_pretrained(stories, dtype=torch.float64, attn_implementation="eager")
        model.eval()
        for p in STORIES_PROMPTS:
            ids = [sp.bos_id()] + sp.encode(p)
            new, margins, first, last, drift = greedy(model, ids, 64, sp.eos_id())
            text = sp.decode(ids[1:] + [t for t in new if t != sp.eos_id()])
            cases.append(dict(name="stories260k", model="stories260K", adapter="", prompt=p, prompt_ids=ids,
                              new_ids=new, text=text, margins=margins, first_logits=first, last_logits=last,
                              cache_drift=drift))
            print(f"stories260K {p!r}: {text!r} (min margin {min(margins):.3g}, cache drift {drift:.2g})")
    else:
        print(f"no {stories}: stories260K cases skipped", file=sys.stderr)

    root = os.path.dirname(os.path.abspath(__file__))
    tiny = os.path.join(root, "llama_tiny")
    adapter = os.path.join(root, "llama_tiny_lora_adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float64, attn_implementation="eager")
    base.eval()
    variants = [("", base)]
    if os.path.isdir(adapter):
        from peft import PeftModel
        # A second copy: PeftModel injects its layers into the model it wraps.
        b2 = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float64, attn_implementation="eager")
        lora = PeftModel.from_pretrained(b2, adapter)
        lora.eval()
        variants.append(("tests/golden/llama_tiny_lora_adapter", lora))
    for ad, m in variants:
        for ids in TINY_PROMPTS:
            new, margins, first, last, drift = greedy(m, ids, 24, 2)
            cases.append(dict(name="llama_tiny", model="tests/golden/llama_tiny", adapter=ad, prompt="",
                              prompt_ids=ids, new_ids=new, text="", margins=margins, first_logits=first,
                              last_logits=last, cache_drift=drift))
            print(f"llama_tiny{' + adapter' if ad else ''} {ids}: {new} (min margin {min(margins):.3g})")

    out = os.path.join(args.out, "generate_golden.json")
    with open(out, "w") as f:
        json.dump(dict(transformers=transformers.__version__, torch=torch.__version__, dtype="float64",
                       cases=cases), f, indent=1)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
