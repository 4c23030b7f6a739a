#!/usr/bin/env python3
"""Loads adapter folders that peft.h saved for the llama4_moe fixture into PEFT and checks the logits:
against logits.f32 in the folder (peft.h's own, written by test_llama4_placements), or else against
PEFT's logits on the same weights (tests/fixtures/llama4_moe_lora/ref.safetensors, for the folder
test_llama4_lora_matches_peft writes). That is: PEFT reads peft.h's names, shapes and target lists as
peft.h meant them.

Run:  PEFT_KEEP_TMP=1 build/test_peft llama4_
      python3 tools/ref/check_llama4_adapter.py /tmp/peft-test-XXXX/llama4_*
"""
import os, sys
import numpy as np
import torch
from safetensors.torch import load_file
from transformers import Llama4ForCausalLM
from peft import PeftModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
ref = load_file(os.path.join(FIX, "llama4_moe", "ref.safetensors"))
bad = 0
for folder in sys.argv[1:]:
    if not os.path.exists(os.path.join(folder, "adapter_config.json")):
        continue
    base = Llama4ForCausalLM.from_pretrained(os.path.join(FIX, "llama4_moe"), attn_implementation="eager")
    model = PeftModel.from_pretrained(base, folder)
    lf = os.path.join(folder, "logits.f32")
    if os.path.exists(lf):
        want = torch.from_numpy(np.fromfile(lf, dtype=np.float32)).reshape(ref["tokens"].numel(), -1)
    else:
        want = load_file(os.path.join(FIX, "llama4_moe_lora", "ref.safetensors"))["logits"]
    with torch.no_grad():
        got = model(input_ids=ref["tokens"].long()).logits.reshape(want.shape)
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f"{folder}: PEFT's logits with peft.h's adapter, rel err {err:.3g}")
    bad += err > 1e-5
sys.exit(1 if bad else 0)
