#!/usr/bin/env python3
"""Writes the LLaMA reference fixtures in tests/fixtures/ with the real transformers.

For each tiny configuration: a model folder (config.json + model.safetensors in
the stated dtype) and ref.safetensors holding the token ids, labels, the fp32
logits, the loss and the gradient of every parameter from torch autograd, all
computed by transformers' LlamaForCausalLM (eager attention, float32) on the
weights exactly as stored in the file.

Also writes adamw.safetensors (torch.optim.AdamW trajectory), clip.safetensors
(clip_grad_norm_) and sched.safetensors (transformers' schedulers).

Run:  python3 tools/ref/make_llama_fixtures.py   (from the repository root)
"""
import json, os, sys
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM
import transformers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")

CONFIGS = {
    # (a) multi-head, theta 1e4, untied, F32 file
    "llama_mha": dict(cfg=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=4, vocab_size=64,
                               rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-6),
                      dtype=torch.float32),
    # (b) grouped-query (6 heads / 2 kv = 3), theta 5e5 with llama3 rope scaling, BF16 file
    "llama_gqa": dict(cfg=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=6, num_key_value_heads=2, vocab_size=64,
                               rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                               rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                 high_freq_factor=4.0,
                                                 original_max_position_embeddings=16)),
                      dtype=torch.bfloat16),
    # (c) tied embeddings, explicit head_dim 12 != 32/4, one kv head, F16 file
    "llama_tied": dict(cfg=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=12,
                                vocab_size=64, rope_theta=10000.0, rms_norm_eps=1e-5,
                                tie_word_embeddings=True),
                       dtype=torch.float16),
}
B, T = 2, 9


def make_model(name, spec, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(max_position_embeddings=64, attn_implementation="eager", **spec["cfg"])
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:      # norm weights around 1, so they matter
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:                # larger than HF's 0.02 init so logits are not flat
                p.copy_(0.15 * torch.randn_like(p))
            p.copy_(p.to(spec["dtype"]).float())  # exactly what the file will hold
    return model


def write_model(model, spec, out):
    os.makedirs(out, exist_ok=True)
    model.config.save_pretrained(out)
    state = {}
    for k, v in model.state_dict().items():
        if model.config.tie_word_embeddings and k == "lm_head.weight":
            continue
        state[k] = v.to(spec["dtype"]).contiguous()
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


def main():
    for i, (name, spec) in enumerate(CONFIGS.items()):
        out = os.path.join(FIX, name)
        model = make_model(name, spec, 1234 + i)
        write_model(model, spec, out)
        g = torch.Generator().manual_seed(99 + i)
        tokens = torch.randint(0, model.config.vocab_size, (B, T), generator=g)
        labels = tokens.clone()
        labels[0, 3] = -100          # ignored targets inside the sequence
        labels[1, 5] = -100
        model.zero_grad()
        res = model(input_ids=tokens, labels=labels)
        res.loss.backward()
        ref = {"tokens": tokens.to(torch.int32), "labels": labels.to(torch.int32),
               "logits": res.logits.detach().float().contiguous(),
               "loss": res.loss.detach().reshape(1).float()}
        for pname, p in model.named_parameters():
            ref["grad." + pname] = p.grad.detach().float().contiguous()
        save_file(ref, os.path.join(out, "ref.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__})
        print(f"{name}: loss {res.loss.item():.6f}, {sum(p.numel() for p in model.parameters())} params")

    # AdamW: 10 steps on one tensor, torch's own implementation
    torch.manual_seed(7)
    p0 = torch.randn(37)
    grads = torch.randn(10, 37)
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    traj = []
    for s in range(10):
        p.grad = grads[s].clone()
        opt.step()
        traj.append(p.detach().clone())
    save_file({"p0": p0, "grads": grads, "traj": torch.stack(traj)},
              os.path.join(FIX, "adamw.safetensors"),
              metadata={"lr": "0.01", "betas": "0.9,0.999", "eps": "1e-8", "weight_decay": "0.1",
                        "torch": torch.__version__})

    # global-norm clipping
    torch.manual_seed(8)
    a, b = torch.nn.Parameter(torch.zeros(13)), torch.nn.Parameter(torch.zeros(4, 5))
    a.grad, b.grad = torch.randn(13), torch.randn(4, 5)
    ga, gb = a.grad.clone(), b.grad.clone()
    norm = torch.nn.utils.clip_grad_norm_([a, b], max_norm=0.5)
    save_file({"a": ga, "b": gb, "a_clipped": a.grad, "b_clipped": b.grad, "norm": norm.reshape(1)},
              os.path.join(FIX, "clip.safetensors"))

    # learning-rate schedules (transformers)
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup
    out = {}
    for kind, fn in (("cosine", get_cosine_schedule_with_warmup), ("linear", get_linear_schedule_with_warmup)):
        q = torch.nn.Parameter(torch.zeros(1))
        o = torch.optim.SGD([q], lr=0.1)
        sch = fn(o, num_warmup_steps=3, num_training_steps=20)
        lrs = []
        for _ in range(22):
            lrs.append(o.param_groups[0]["lr"])
            o.step()
            sch.step()
        out[kind] = torch.tensor(lrs, dtype=torch.float64)
    save_file(out, os.path.join(FIX, "sched.safetensors"))


if __name__ == "__main__":
    main()
