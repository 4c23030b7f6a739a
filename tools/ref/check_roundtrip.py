#!/usr/bin/env python3
"""Adapters written by peft.h must load in the real PEFT.

Trains small adapters with build/peft on the llama_gqa fixture (LoRA on every
linear, and LLaMA-Adapter V1 with PEFT's gate), loads each folder with
peft.PeftModel.from_pretrained, and records PEFT's logits for the fixture
tokens next to the adapter (peft_logits.safetensors) plus result.json with the
difference to build/peft's own logits. tests/ then check that peft.h computes
the logits PEFT computed from peft.h's files.

Run (from the repository root, after `make`):  python3 tools/ref/check_roundtrip.py [case ...]
"""
import json, os, shutil, subprocess, sys, tempfile
import numpy as np
import torch, peft, transformers
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
BASE = os.path.join(FIX, "llama_gqa")
PEFT_BIN = os.path.join(ROOT, "build", "peft")

CASES = {
    "roundtrip_lora": ["--method", "lora", "--lora-targets", "all-linear", "--lora-r", "4", "--lora-alpha", "8"],
    "roundtrip_adaption_prompt": ["--method", "adapter-v1", "--adapter-gate", "peft", "--adapter-len", "3",
                                  "--adapter-layers", "2"],
    # adapter_config.json keys: targets that are no layers x sites grid, a trained lm_head copy
    # (modules_to_save), lora_B biases (lora_bias), trained rows of embed_tokens (trainable_token_indices)
    "roundtrip_lora_keys": ["--method", "lora", "--lora-targets",
                            "model.layers.0.self_attn.q_proj,model.layers.1.mlp.down_proj,model.layers.1.self_attn.v_proj",
                            "--modules-to-save", "lm_head", "--lora-bias", "1", "--trainable-tokens", "3,7"],
}


def main():
    tokens = load_file(os.path.join(BASE, "ref.safetensors"))["tokens"].long()
    data = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    data.write(" ".join(str((i * 7) % 64) for i in range(300)))
    data.close()
    for name, flags in CASES.items():
        if len(sys.argv) > 1 and name not in sys.argv[1:]:
            continue
        out = os.path.join(FIX, name)
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([PEFT_BIN, "train", "--model", BASE, "--data", data.name, "--steps", "6", "--batch", "2",
                        "--seq", "8", "--lr", "0.05", "--out", out] + flags, check=True, stdout=subprocess.DEVNULL)
        base = LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32, attn_implementation="eager")
        model = PeftModel.from_pretrained(base, out).eval()
        with torch.no_grad():
            logits = model(input_ids=tokens).logits.float().contiguous()
        save_file({"logits": logits}, os.path.join(out, "peft_logits.safetensors"),
                  metadata={"peft": peft.__version__, "transformers": transformers.__version__})
        ours = os.path.join(tempfile.mkdtemp(), "l.f32")
        ids = ",".join(str(int(t)) for t in tokens[0])
        subprocess.run([PEFT_BIN, "logits", "--model", BASE, "--adapter", out, "--tokens", ids, "--out", ours],
                       check=True, stdout=subprocess.DEVNULL)
        mine = np.fromfile(ours, dtype="<f4").reshape(logits.shape[1], -1)
        ref = logits[0].numpy()
        err = float(np.abs(mine - ref).max() / np.abs(ref).max())
        result = {"adapter": name, "loaded_by": f"peft {peft.__version__}", "transformers": transformers.__version__,
                  "max_rel_err_vs_peft_h": err, "ok": err < 1e-4}
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f, indent=2)
        print(result)
    os.unlink(data.name)


if __name__ == "__main__":
    main()
