#!/usr/bin/env python3
"""Exports the PEFT-written LoRA fixtures with `build/peft export --format
gguf` and reads the files back with the `gguf` package (llama.cpp's own
Python reader): keys, tensor names, shapes and values, against the adapter
read with safetensors. lora_b of q/k must carry llama.cpp's Q/K row
permutation (convert_hf_to_gguf.py's LlamaModel.permute, applied by
convert_lora_to_gguf.py to lora_b): reshape(heads, 2, hd/2, r).swapaxes(1, 2).
Writes tests/fixtures/gguf_check.txt with what was checked.

Run:  make && python3 tools/ref/check_gguf.py
"""
import json, os, subprocess, math
import numpy as np
import gguf
from safetensors.numpy import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
SITES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
         "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def permute(w, heads):
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check(adapter, base, lines):
    out = f"/tmp/peft_check_{adapter}.gguf"
    subprocess.run([os.path.join(ROOT, "build", "peft"), "export", "--model", os.path.join(FIX, base), "--adapter",
                    os.path.join(FIX, adapter), "--format", "gguf", "--out", out], check=True)
    cfg = json.load(open(os.path.join(FIX, adapter, "adapter_config.json")))
    mcfg = json.load(open(os.path.join(FIX, base, "config.json")))
    st = load_file(os.path.join(FIX, adapter, "adapter_model.safetensors"))
    r = gguf.GGUFReader(out)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    scale = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
    assert f["general.type"] == "adapter" and f["adapter.type"] == "lora" and f["general.architecture"] == "llama", f
    assert abs(f["adapter.lora.alpha"] - scale * cfg["r"]) < 1e-5, (f["adapter.lora.alpha"], scale * cfg["r"])
    tensors = {t.name: t for t in r.tensors}
    n = 0
    for name, w in st.items():
        # base_model.model.model.layers.L.self_attn.q_proj.lora_A.weight
        parts = name.split(".")
        layer, site, ab = int(parts[4]), parts[6], parts[7][-1].lower()
        g = tensors.pop(f"blk.{layer}.{SITES[site]}.weight.lora_{ab}")
        want = w.astype(np.float32)
        if ab == "b" and site in ("q_proj", "k_proj"):
            want = permute(want, mcfg["num_attention_heads"] if site == "q_proj" else mcfg["num_key_value_heads"])
        assert list(g.shape) == [want.shape[1], want.shape[0]], (name, g.shape, want.shape)   # ne0 first
        assert np.array_equal(np.asarray(g.data).reshape(want.shape), want), name
        n += 1
    assert not tensors, tensors.keys()
    lines.append(f"{adapter}: {n} tensors, names/shapes/values equal, alpha {f['adapter.lora.alpha']:.6g} "
                 f"(= scale {scale:.6g} x r {cfg['r']}), general.type adapter, adapter.type lora")


def main():
    lines = [f"gguf {gguf.__version__ if hasattr(gguf, '__version__') else '0.19.0'} GGUFReader on files from build/peft export --format gguf"]
    check("peft_lora_qv", "llama_gqa", lines)
    check("peft_lora_all_rslora", "llama_gqa", lines)
    open(os.path.join(FIX, "gguf_check.txt"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
