#!/usr/bin/env python3
"""Writes the adapter_config.json key fixtures in tests/fixtures/ak_* with the real `peft`.

Each case attaches a LoraConfig exercising keys of adapter_config.json
(target_modules as a regex string or a list, exclude_modules, layers_to_transform
+ layers_pattern, rank_pattern, alpha_pattern, modules_to_save, lora_bias,
trainable_token_indices) to the tiny fixture models written by
make_llama_fixtures.py, sets every adapter tensor non-zero, saves the adapter
with save_pretrained, reloads it with PeftModel.from_pretrained (so that what
is recorded is what PEFT makes of the files) and records PEFT's logits on the
base fixture's token ids in ref.safetensors, with the loss (labels = the ids)
and the gradient of every trainable tensor, plus the adapted module names.

ak_default_keys is ak_list_patterns with the adapter name kept in the LoRA
tensor keys ("lora_A.default.weight"): PEFT 0.21 loads such keys as they are;
its result.json says whether the logits were the same.

ak_module_names.json: the module names of LlamaForCausalLM.named_modules() for
llama_gqa, which peft.h enumerates to match target_modules.

Run:  python3 tools/ref/make_adapter_key_fixtures.py   (from the repository root)
"""
import json, os, shutil
import torch
import peft, transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file, load_file
from transformers import LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")


def base_model(name):
    m = LlamaForCausalLM.from_pretrained(os.path.join(FIX, name), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def tokens(name):
    return load_file(os.path.join(FIX, name, "ref.safetensors"))["tokens"].long()


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if "lora_B" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "modules_to_save" in n or "trainable_tokens_delta" in n:
                p.add_(0.5 * torch.randn(p.shape, generator=g))


def run(name, base, cfg, seed):
    out = os.path.join(FIX, name)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(seed)                      # lora_A's init
    model = get_peft_model(base_model(base), cfg)
    perturb(model, seed)
    model.save_pretrained(out)
    # what PEFT makes of the saved files
    loaded = PeftModel.from_pretrained(base_model(base), out)
    loaded.eval()
    tok = tokens(base)
    with torch.no_grad():
        logits = loaded(input_ids=tok).logits.float().contiguous()
    # the loss and the gradient of every trainable tensor, on the model that wrote the files
    model.zero_grad()
    res = model(input_ids=tok, labels=tok)
    res.loss.backward()
    assert torch.allclose(logits, res.logits.detach().float(), atol=1e-6), name
    grads = {"grad." + n.replace(".modules_to_save.default", "").replace(".default", ""): p.grad.detach().float().contiguous()
             for n, p in model.named_parameters() if p.requires_grad}
    adapted = sorted(n for n, mod in loaded.base_model.model.named_modules() if hasattr(mod, "lora_A") and len(mod.lora_A))
    save_file({"tokens": tok.float(), "logits": logits, "loss": res.loss.detach().reshape(1), **grads},
              os.path.join(out, "ref.safetensors"),
              metadata={"peft": peft.__version__, "transformers": transformers.__version__,
                        "adapted": json.dumps(adapted)})
    print(f"{name}: {len(adapted)} adapted modules, files {sorted(os.listdir(out))}")
    return out, logits


def main():
    run("ak_regex", "llama_gqa",
        LoraConfig(r=4, lora_alpha=8, target_modules=r".*layers.[0].self_attn.(q|v)_proj|model\.layers\.1\.mlp\.up_proj",
                   task_type="CAUSAL_LM"), 1)
    src, logits = run("ak_list_patterns", "llama_gqa",
                      LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                 exclude_modules=["model.layers.0.self_attn.v_proj"], layers_to_transform=[0, 1],
                                 layers_pattern="layers", rank_pattern={"down_proj": 2, "layers.1.self_attn.q_proj": 6},
                                 alpha_pattern={"v_proj": 3, "model\\.layers\\.0\\..*": 5}, task_type="CAUSAL_LM"), 2)
    run("ak_exclude_regex_rslora", "llama_gqa",
        LoraConfig(r=4, lora_alpha=6, target_modules="all-linear", exclude_modules=r".*\.mlp\.(gate|up)_proj",
                   use_rslora=True, rank_pattern={"o_proj": 2}, task_type="CAUSAL_LM"), 3)
    run("ak_layers_int", "llama_gqa",
        LoraConfig(r=3, lora_alpha=5, target_modules=["k_proj", "o_proj"], layers_to_transform=1, task_type="CAUSAL_LM"), 4)
    run("ak_modules_to_save", "llama_gqa",
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head", "embed_tokens"],
                   task_type="CAUSAL_LM"), 5)
    run("ak_lora_bias", "llama_gqa",
        LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj", "up_proj"], lora_bias=True, task_type="CAUSAL_LM"), 6)
    run("ak_tokens", "llama_gqa",
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], trainable_token_indices=[3, 7, 11],
                   task_type="CAUSAL_LM"), 7)
    run("ak_tokens_tied", "llama_tied",
        LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"], trainable_token_indices={"embed_tokens": [1, 5]},
                   task_type="CAUSAL_LM"), 8)

    # the adapter name kept in the LoRA keys
    out = os.path.join(FIX, "ak_default_keys")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    st = load_file(os.path.join(out, "adapter_model.safetensors"))
    st = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v for k, v in st.items()}
    save_file(st, os.path.join(out, "adapter_model.safetensors"), metadata={"format": "pt"})
    loaded = PeftModel.from_pretrained(base_model("llama_gqa"), out)
    with torch.no_grad():
        again = loaded(input_ids=tokens("llama_gqa")).logits.float()
    ok = bool(torch.allclose(again, logits, atol=1e-6))
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({"peft_loads_default_keys_same_logits": ok}, f)
    print(f"ak_default_keys: PEFT gives the same logits: {ok}")

    names = [n for n, _ in base_model("llama_gqa").named_modules() if n]
    with open(os.path.join(FIX, "ak_module_names.json"), "w") as f:
        json.dump(names, f)


if __name__ == "__main__":
    main()
