"""What the decoder fixture scripts share (make_golden.py: llama_tiny; make_family_golden.py: the
decoder families): the tiny batch, one forward and backward, the fixture's inputs, the base
model's and the LoRA model's groups, and the adapter directory without machine paths.

Conventions match shardtune's: right padding, attention_mask 0 on pads, labels -100 where a token
is not a target; the loss is the mean over targets (transformers' causal-LM loss). A `store`
argument writes one tensor into a group (each script keeps its fixtures' dtype).
"""
import json
import os

import torch
import transformers

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_batch(vocab):
    """Three rows of lengths 12, 9, 5 (right-padded), row 0 with its first 4 tokens masked."""
    g = torch.Generator().manual_seed(1234)
    B, T = 3, 12
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.long)
    labels = ids.clone()
    for b, n in enumerate([12, 9, 5]):
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


def write_inputs(f, ids, mask, labels):
    """The versions that made the file, and the batch."""
    f.attrs["torch"] = str(torch.__version__)
    f.attrs["transformers"] = str(transformers.__version__)
    f.create_dataset("input_ids", data=ids.numpy())
    f.create_dataset("attention_mask", data=mask.numpy())
    f.create_dataset("labels", data=labels.numpy())


def write_run(f, group, model, batch, store):
    """Group `group` of f with the logits and loss of one forward and backward of `model` on batch
    (ids, mask, labels); returns the group and the loss."""
    logits, loss = forward_backward(model, *batch)
    g = f.create_group(group)
    store(g, "logits", logits)
    g.attrs["loss"] = float(loss)
    return g, loss


def write_full(f, model, batch, store):
    """/full: the base model's logits, loss and the gradient of every parameter."""
    g, loss = write_run(f, "full", model, batch, store)
    gg = g.create_group("grads")
    for name, p in model.named_parameters():
        if p.grad is not None:
            store(gg, name, p.grad)
    return loss


def write_lora(f, model, batch, store):
    """/lora: PEFT LoRA (r=4, alpha=8) on every linear of `model`, B made non-zero; logits, loss,
    the adapters' values (float64) and gradients. Returns the PEFT model and the loss."""
    import peft
    from peft import LoraConfig, get_peft_model
    f.attrs["peft"] = str(peft.__version__)
    pmodel = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                              bias="none", task_type="CAUSAL_LM"))
    with torch.no_grad():  # non-zero B so the adapters change the output and get gradients
        gen = torch.Generator().manual_seed(99)
        for name, p in pmodel.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    g, loss = write_run(f, "lora", pmodel, batch, store)
    g.attrs["r"] = 4
    g.attrs["alpha"] = 8.0
    wg, gg = g.create_group("weights"), g.create_group("grads")
    for name, p in pmodel.named_parameters():
        if "lora_" not in name:
            continue
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
        #   -> model.layers.0.self_attn.q_proj.lora_A
        short = name.replace("base_model.model.", "", 1).replace(".default.weight", "")
        wg.create_dataset(short, data=p.detach().numpy())  # float64: the adapter's exact values
        store(gg, short, p.grad)
    frozen = [n for n, p in pmodel.named_parameters() if "lora_" not in n and p.grad is not None]
    assert not frozen, f"the base (biases included) must be frozen under LoRA: {frozen}"
    return pmodel, loss


def save_adapter(pmodel, adapter_dir, base_rel):
    """The PEFT adapter, its base model named relative to the repository root (no machine paths)
    and without PEFT's generated model card."""
    pmodel.save_pretrained(adapter_dir)
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(cfg_path) as f:
        acfg = json.load(f)
    acfg["base_model_name_or_path"] = base_rel
    with open(cfg_path, "w") as f:
        json.dump(acfg, f, indent=2)
        f.write("\n")
    readme = os.path.join(adapter_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
