"""A GGUF LoRA adapter written by `peft export --format gguf` applied by llama.cpp itself.

Not part of the tests (it needs llama-cpp-python built from source, ~12 minutes on 2 cores:
`pip install --no-deps --no-binary :all: llama-cpp-python`). Usage:

    python check_gguf_adapter_llamacpp.py BASE.gguf BASE_F32.gguf ADAPTER_RUN_DIR ADAPTER.gguf

BASE.gguf is the model the adapter was trained on (e.g. SmolLM2-135M-Instruct Q4_1),
BASE_F32.gguf the same model dequantized to F32 (so that llama.cpp's quantized products do not
blur the comparison), ADAPTER_RUN_DIR the `peft train --out` folder and ADAPTER.gguf its export.
Prints, for each base, how far llama.cpp's logits are from peft.h's and how well llama.cpp
reproduces the adapter's effect (adapted minus base logits).
"""
import subprocess
import sys

import numpy as np
from llama_cpp import Llama

TEXT = ("<|im_start|>user\nGive me a fruit and tell me its colour.<|im_end|>\n"
        "<|im_start|>assistant\nBanana. Bananas are yellow")


def peft_logits(model, ids, adapter=None):
    cmd = ["build/peft", "logits", "--model", model, "--tokens", ",".join(map(str, ids)),
           "--out", "/tmp/peft_logits.f32"] + (["--adapter", adapter] if adapter else [])
    subprocess.run(cmd, check=True, capture_output=True)
    return np.fromfile("/tmp/peft_logits.f32", np.float32).reshape(len(ids), -1)


def llama_logits(model, ids, lora=None):
    kw = dict(model_path=model, logits_all=True, n_ctx=128, n_threads=2, verbose=False,
              type_k=0, type_v=0)                       # F32 attention cache
    if lora:
        kw["lora_path"] = lora
    m = Llama(**kw)
    m.eval(ids)
    return np.array(m.scores[:len(ids)], np.float32)


def main():
    base, base_f32, run, adapter = sys.argv[1:5]
    vocab = Llama(model_path=base, vocab_only=True, verbose=False)
    ids = vocab.tokenize(TEXT.encode(), add_bos=False, special=True)
    pb, pa = peft_logits(base, ids), peft_logits(base, ids, run)
    dp = pa - pb
    print("peft.h: the adapter moves the logits by up to %.1f%% of a row's largest; %d of %d "
          "argmaxes change" % (100 * (np.abs(dp).max(1) / np.abs(pb).max(1)).max(),
                               (pa.argmax(1) != pb.argmax(1)).sum(), len(ids)))
    for name, model in (("quantized base", base), ("F32 base", base_f32)):
        lb, la = llama_logits(model, ids), llama_logits(model, ids, adapter)
        dl = la - lb
        rel = (np.abs(la - pa).max(1) / np.abs(pa).max(1)).max()
        corr = np.corrcoef(dl.ravel(), dp.ravel())[0, 1]
        err = np.sqrt(((dl - dp) ** 2).mean() / (dp ** 2).mean())
        print(f"[{name}] adapted logits rel {rel:.2e}; argmax {(la.argmax(1) == pa.argmax(1)).sum()}"
              f"/{len(ids)}; effect correlation {corr:.10f}, rms error {err:.2e} of its size")


if __name__ == "__main__":
    main()
