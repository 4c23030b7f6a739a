#!/usr/bin/env python3
"""A 4-bit folder saved by transformers + bitsandbytes with bnb_4bit_quant_storage=bfloat16.

FSDP-QLoRA recipes store the packed 4-bit bytes in a BF16 tensor (shape [n/4, 1]: the
same bytes, viewed as bfloat16), so that FSDP can shard them with the other weights.
This quantizes tests/fixtures/llama_w64 (nf4, double quantization) with the real
libraries, saves it to tests/fixtures/q4_nf4_bf16storage, and records transformers'
logits for the fixture tokens (bnb_logits.safetensors). tests/test_q4.c loads the
folder and compares peft.h's logits with these.

Run (from the repository root):  python3 tools/ref/make_bnb_storage_fixture.py
"""
import os, shutil
import torch, transformers, bitsandbytes
from safetensors.torch import load_file, save_file
from transformers import BitsAndBytesConfig, LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")


def main():
    base, out = os.path.join(FIX, "llama_w64"), os.path.join(FIX, "q4_nf4_bf16storage")
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.bfloat16)
    model = LlamaForCausalLM.from_pretrained(base, quantization_config=q, device_map="cpu", torch_dtype=torch.float32)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    # reload from the saved folder, as a user would, and take the reference logits from it
    model = LlamaForCausalLM.from_pretrained(out, device_map="cpu", torch_dtype=torch.float32).eval()
    n4 = 0
    for _, mod in model.named_modules():
        if isinstance(mod, bitsandbytes.nn.Linear4bit):
            n4 += 1
            mod.support_avx512bf16_for_cpu = False     # bnb's bf16 CPU path; fp32 is the reference
            assert mod.weight.dtype == torch.bfloat16
    assert n4 == 7
    tokens = load_file(os.path.join(base, "ref.safetensors"))["tokens"].long()
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.float().contiguous()
    save_file({"tokens": tokens.to(torch.int32), "logits": logits}, os.path.join(out, "bnb_logits.safetensors"),
              metadata={"bitsandbytes": bitsandbytes.__version__, "transformers": transformers.__version__})
    print("wrote", out, "logits", tuple(logits.shape))


if __name__ == "__main__":
    main()
