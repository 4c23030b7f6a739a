#!/usr/bin/env python3
"""Writes the PEFT method fixtures in tests/fixtures/ with the real `peft`.

On the grouped-query fixture model (tests/fixtures/llama_gqa, written by
make_llama_fixtures.py), for each configuration: the adapter folder exactly as
peft's save_pretrained writes it, and ref.safetensors with the logits, the
loss and the gradient of every adapter parameter (torch autograd), on the
same token ids as the base fixture. LoRA B matrices and adapter gates are set
non-zero so that the adapters matter.

Run:  python3 tools/ref/make_peft_fixtures.py   (from the repository root)
"""
import json, os, shutil
import torch
import peft, transformers
from peft import LoraConfig, AdaptionPromptConfig, get_peft_model
from safetensors.torch import save_file, load_file
from transformers import LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
BASE = os.path.join(FIX, "llama_gqa")


def base_model():
    m = LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32, attn_implementation="eager")
    m.eval()  # dropout off (LoRA dropout is 0 anyway)
    return m


def batch():
    ref = load_file(os.path.join(BASE, "ref.safetensors"))
    return ref["tokens"].long(), ref["labels"].long()


def run(name, model, touch):
    torch.manual_seed(hash(name) % 1000)
    with torch.no_grad():
        touch(model)
    out = os.path.join(FIX, name)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tokens, labels = batch()
    model.zero_grad()
    res = model(input_ids=tokens, labels=labels)
    res.loss.backward()
    ref = {"logits": res.logits.detach().float().contiguous(), "loss": res.loss.detach().reshape(1)}
    for pname, p in model.named_parameters():
        if p.requires_grad:
            ref["grad." + pname.replace(".default", "")] = p.grad.detach().float().contiguous()
    save_file(ref, os.path.join(out, "ref.safetensors"),
              metadata={"peft": peft.__version__, "transformers": transformers.__version__})
    print(f"{name}: loss {res.loss.item():.6f}, {len(ref) - 2} gradients, files {sorted(os.listdir(out))}")


def randomize_lora_b(model):
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.copy_(0.2 * torch.randn_like(p))


def randomize_adapter(model):
    for n, p in model.named_parameters():
        if "adaption_gate" in n:
            p.fill_(0.7)
        elif "adaption_prompt" in n:
            p.copy_(torch.randn_like(p))


def main():
    run("peft_lora_qv", get_peft_model(base_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                 lora_dropout=0.0, task_type="CAUSAL_LM")), randomize_lora_b)
    run("peft_lora_all_rslora", get_peft_model(base_model(), LoraConfig(r=6, lora_alpha=12, target_modules="all-linear",
                                                                         use_rslora=True, init_lora_weights="gaussian",
                                                                         task_type="CAUSAL_LM")), randomize_lora_b)
    run("peft_adaption_prompt", get_peft_model(base_model(), AdaptionPromptConfig(adapter_len=4, adapter_layers=1,
                                                                                   task_type="CAUSAL_LM")), randomize_adapter)


if __name__ == "__main__":
    main()
