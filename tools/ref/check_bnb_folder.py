#!/usr/bin/env python3
"""4-bit folders written by `peft quantize` must load in transformers + bitsandbytes.

Writes a tiny LLaMA whose linears are all multiples of 64 wide
(tests/fixtures/llama_w64, BF16), quantizes it with build/peft (nf4 + double quantization,
and fp4 without), loads each folder with LlamaForCausalLM.from_pretrained
(bitsandbytes on CPU, compute dtype float32), and records in the folder:
transformers' logits for the fixture tokens (bnb_logits.safetensors), and
result.json with the largest difference between every Linear4bit weight as
loaded and bitsandbytes' own dequantization of the bytes peft.h wrote (the
load must not change them), plus the difference between transformers' and
build/peft's logits on the folder (which equal only if both dequantize to
the same weights).

Why a separate base: bitsandbytes 0.50.2's CPU C kernel for dequantize_4bit
mis-decodes tensors whose last dimension is not a multiple of 64 (e.g.
48x48 or 64x96; its own torch fallback disagrees with it by O(1)), so
transformers' CPU forward is wrong on such models whoever quantized them. bnb's
AVX512-bf16 CPU fast path is switched off: it needs out_features % 32 == 0
and computes in bf16.

Run (from the repository root, after `make`):  python3 tools/ref/check_bnb_folder.py
"""
import json, os, shutil, subprocess, tempfile
import numpy as np
import torch, transformers, bitsandbytes
import bitsandbytes.functional as F
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
BASE = os.path.join(FIX, "llama_w64")


def write_base():
    from transformers import LlamaConfig
    torch.manual_seed(64)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, rope_theta=10000.0,
                      tie_word_embeddings=True, attn_implementation="eager")
    m = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_((1.0 + 0.1 * torch.randn_like(p)) if p.ndim == 1 else 0.15 * torch.randn_like(p))
    m.to(torch.bfloat16).save_pretrained(BASE)
    g = torch.Generator().manual_seed(5)
    save_file({"tokens": torch.randint(0, 64, (2, 9), generator=g).to(torch.int32)}, os.path.join(BASE, "ref.safetensors"))
PEFT_BIN = os.path.join(ROOT, "build", "peft")


def main():
    write_base()
    tokens = load_file(os.path.join(BASE, "ref.safetensors"))["tokens"].long()
    for name, flags in (("q4_nf4_dq", ["--quant", "nf4", "--double-quant"]), ("q4_fp4", ["--quant", "fp4"])):
        out = os.path.join(FIX, name)
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([PEFT_BIN, "quantize", "--model", BASE, "--out", out] + flags, check=True, stdout=subprocess.DEVNULL)
        model = LlamaForCausalLM.from_pretrained(out, device_map="cpu", torch_dtype=torch.float32).eval()
        files = load_file(os.path.join(out, "model.safetensors"))
        worst = 0.0
        n4 = 0
        for mname, mod in model.named_modules():
            if isinstance(mod, bitsandbytes.nn.Linear4bit):
                n4 += 1
                # bnb's AVX512-bf16 CPU path needs out_features % 32 == 0 and
                # computes in bf16; the fp32 dequantize-then-matmul path is the reference
                mod.support_avx512bf16_for_cpu = False
                loaded = F.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float()
                # the bytes peft.h wrote, dequantized by bnb from scratch
                key = mname + ".weight"
                qs = F.QuantState.from_dict({k[len(key) + 1:]: v for k, v in files.items() if k.startswith(key + ".")},
                                            device=torch.device("cpu"))
                mine = F.dequantize_4bit(files[key], qs).float()
                worst = max(worst, float((loaded - mine).abs().max()))
        with torch.no_grad():
            logits = model(input_ids=tokens).logits.float().contiguous()
        save_file({"logits": logits}, os.path.join(out, "bnb_logits.safetensors"),
                  metadata={"bitsandbytes": bitsandbytes.__version__, "transformers": transformers.__version__})
        ours = os.path.join(tempfile.mkdtemp(), "l.f32")
        subprocess.run([PEFT_BIN, "logits", "--model", out, "--tokens", ",".join(str(int(t)) for t in tokens[0]),
                        "--out", ours], check=True, stdout=subprocess.DEVNULL)
        mine = np.fromfile(ours, dtype="<f4").reshape(logits.shape[1], -1)
        err = float(np.abs(mine - logits[0].numpy()).max() / np.abs(logits[0].numpy()).max())
        result = {"folder": name, "loaded_by": f"transformers {transformers.__version__} + bitsandbytes {bitsandbytes.__version__}",
                  "linear4bit_modules": n4, "max_abs_weight_diff_after_load": worst,
                  "logits_max_rel_err_vs_peft_h": err, "ok": n4 == 7 and worst == 0.0 and err < 1e-4}
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f, indent=2)
        print(result)


if __name__ == "__main__":
    main()
