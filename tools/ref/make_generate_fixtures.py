#!/usr/bin/env python3
"""Writes tests/fixtures/generate_greedy.json: greedy continuations by
transformers' generate() (KV cache, do_sample=False) of the llama_gqa
fixture model, alone and with the PEFT adapters of the fixtures (LoRA on q,v;
AdaptionPrompt), each from two prompts; plus the smallest gap between the
best and second-best logit along each path, so a reader can see how far
from a tie every step was.

Run:  python3 tools/ref/make_generate_fixtures.py
"""
import json, os
import torch
from transformers import LlamaForCausalLM
from peft import PeftModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
PROMPTS = [[1, 7, 23, 5], [1, 40, 41, 42, 43, 12, 9]]
NEW = 24


def run(model):
    out = []
    for p in PROMPTS:
        ids = torch.tensor([p])
        g = model.generate(ids, max_new_tokens=NEW, do_sample=False, num_beams=1, eos_token_id=2, pad_token_id=0,
                           output_scores=True, return_dict_in_generate=True)
        seq = g.sequences[0, len(p):].tolist()
        gaps = [float((s[0].topk(2).values[0] - s[0].topk(2).values[1])) for s in g.scores]
        out.append({"prompt": p, "ids": seq, "min_gap": min(gaps)})
    return out


def main():
    torch.manual_seed(0)
    res = {}
    base = LlamaForCausalLM.from_pretrained(os.path.join(FIX, "llama_gqa"), torch_dtype=torch.float32).eval()
    res["base"] = run(base)
    for name in ("peft_lora_qv", "peft_adaption_prompt"):
        b = LlamaForCausalLM.from_pretrained(os.path.join(FIX, "llama_gqa"), torch_dtype=torch.float32).eval()
        m = PeftModel.from_pretrained(b, os.path.join(FIX, name)).eval()
        res[name] = run(m)
    with open(os.path.join(FIX, "generate_greedy.json"), "w") as f:
        json.dump(res, f, indent=1)
    for k, v in res.items():
        print(k, [(r["ids"][:8], round(r["min_gap"], 5)) for r in v])


if __name__ == "__main__":
    main()
