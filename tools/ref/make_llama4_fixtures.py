#!/usr/bin/env python3
"""Writes the LLaMA-4 (mixture-of-experts) fixtures in tests/fixtures/ with the real transformers.

For each tiny Llama4ForCausalLM: a model folder (config.json + model.safetensors, F32) and
ref.safetensors holding the token ids, labels, the fp32 logits, the loss, the gradient of every
parameter from torch autograd, and the number of tokens routed to each expert of each MoE layer
(moe_counts.N), all computed by transformers' Llama4ForCausalLM (eager attention, float32).

The configurations cover: MoE in every layer with the shared expert; dense and MoE layers
interleaved (intermediate_size_mlp for the dense ones); NoPE layers (with attention temperature
tuning, floor_scale small enough that it changes the numbers); a chunk size smaller than the
sequence; grouped-query heads; top-2 routing; QK-norm off.

Run:  python3 tools/ref/make_llama4_fixtures.py   (from the repository root)
"""
import os, sys
import torch
from safetensors.torch import save_file
from transformers import Llama4TextConfig, Llama4ForCausalLM
import transformers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")

BASE = dict(hidden_size=32, intermediate_size=24, intermediate_size_mlp=40, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, vocab_size=64, rms_norm_eps=1e-5,
            max_position_embeddings=64, tie_word_embeddings=False, attention_chunk_size=64,
            floor_scale=2, attn_scale=0.5, rope_parameters=dict(rope_type="default", rope_theta=500000.0))

CONFIGS = {
    # every layer MoE (+ shared expert), 4 experts, top-1; layer 2 NoPE (interval 3), chunk 4 < T
    "llama4_moe": dict(num_hidden_layers=3, num_local_experts=4, num_experts_per_tok=1,
                       interleave_moe_layer_step=1, no_rope_layer_interval=3, attention_chunk_size=4,
                       use_qk_norm=True, attn_temperature_tuning=True),
    # dense / MoE interleaved (step 2: layers 1 and 3 MoE), top-2 of 3, NoPE layer 3, no QK-norm,
    # no chunking (chunk 64 > T), multi-head kv (4/4), tied embeddings
    "llama4_interleaved": dict(num_hidden_layers=4, num_local_experts=3, num_experts_per_tok=2,
                               interleave_moe_layer_step=2, no_rope_layer_interval=4,
                               num_key_value_heads=4, use_qk_norm=False, attn_temperature_tuning=True,
                               tie_word_embeddings=True),
}
B, T = 2, 9


def make_model(spec, seed):
    torch.manual_seed(seed)
    kw = dict(BASE)
    kw.update(spec)
    cfg = Llama4TextConfig(**kw)
    cfg._attn_implementation = "eager"
    model = Llama4ForCausalLM(cfg).float()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:      # norm weights around 1, so they matter
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "router" in pname:   # spread router logits so the top-k is clear of ties
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def count_hooks(model):
    counts = {}
    def hook(idx):
        def f(mod, inp, out):
            logits = out[1]
            sel = torch.topk(logits, mod.top_k, dim=1).indices
            counts[idx] = torch.bincount(sel.reshape(-1), minlength=mod.num_experts).to(torch.int32)
        return f
    for i, layer in enumerate(model.model.layers):
        if layer.is_moe_layer:
            layer.feed_forward.router.register_forward_hook(hook(i))
    return counts


def main():
    for i, (name, spec) in enumerate(CONFIGS.items()):
        out = os.path.join(FIX, name)
        model = make_model(spec, 4321 + i)
        os.makedirs(out, exist_ok=True)
        model.config.save_pretrained(out)
        state = {k: v.contiguous() for k, v in model.state_dict().items()
                 if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
        save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        counts = count_hooks(model)
        g = torch.Generator().manual_seed(77 + i)
        tokens = torch.randint(0, model.config.vocab_size, (B, T), generator=g)
        labels = tokens.clone()
        labels[0, 3] = -100
        labels[1, 5] = -100
        model.zero_grad()
        res = model(input_ids=tokens, labels=labels)
        res.loss.backward()
        ref = {"tokens": tokens.to(torch.int32), "labels": labels.to(torch.int32),
               "logits": res.logits.detach().float().contiguous(),
               "loss": res.loss.detach().reshape(1).float()}
        for l, c in counts.items():
            ref[f"moe_counts.{l}"] = c
        for pname, p in model.named_parameters():
            ref["grad." + pname] = p.grad.detach().float().contiguous()
        save_file(ref, os.path.join(out, "ref.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__})
        print(f"{name}: loss {res.loss.item():.6f}, {sum(p.numel() for p in model.parameters())} params, "
              f"layer_types {model.config.layer_types}, no_rope {model.config.no_rope_layers}, "
              f"moe {model.config.moe_layers}, counts { {k: v.tolist() for k, v in counts.items()} }")


if __name__ == "__main__" and "--adapter" not in sys.argv:
    main()


def adapter_fixture():
    """llama4_moe_lora/: a PEFT LoRA adapter on the llama4_moe fixture with every MoE site at once:
    q_proj and v_proj (attention), the shared expert's gate/up/down (target_modules), the routed
    experts' gate_up_proj and down_proj and the router's weight (target_parameters), r 2, alpha 3, with random
    lora_B (PEFT initialises it to 0) so that every delta shows; ref.safetensors holds PEFT's logits
    for the llama4_moe tokens and the loss's gradient of every LoRA tensor."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    base = os.path.join(FIX, "llama4_moe")
    out = os.path.join(FIX, "llama4_moe_lora")
    model = Llama4ForCausalLM.from_pretrained(base, attn_implementation="eager")
    # the router through target_parameters: as a target_module PEFT 0.21.2's lora.Linear adds its delta
    # to the router's output, which in transformers 5.24 is a tuple (scores, logits), and fails
    cfg = LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
                     target_parameters=["feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj",
                                        "feed_forward.router.weight"])
    pm = get_peft_model(model, cfg)
    torch.manual_seed(11)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn_like(p))
    pm.save_pretrained(out)
    ref = load_file(os.path.join(base, "ref.safetensors"))
    tokens, labels = ref["tokens"].long(), ref["labels"].long()
    res = pm(input_ids=tokens, labels=labels)
    res.loss.backward()
    out_ref = {"logits": res.logits.detach().float().contiguous(), "loss": res.loss.detach().reshape(1)}
    for n, p in pm.named_parameters():
        if p.requires_grad:
            out_ref["grad." + n.replace(".default", "")] = p.grad.detach().float().contiguous()
    save_file(out_ref, os.path.join(out, "ref.safetensors"))
    print(f"llama4_moe_lora: loss {res.loss.item():.6f}, {sum(p.numel() for p in pm.parameters() if p.requires_grad)} "
          f"trainable")


if __name__ == "__main__" and "--adapter" in sys.argv:
    adapter_fixture()
