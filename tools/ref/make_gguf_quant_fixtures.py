#!/usr/bin/env python3
"""Writes tests/fixtures/gguf_quant.safetensors with the real gguf package (gguf-py).

For every ggml type peft.h keeps frozen weights in (F32, F16, BF16, Q8_0,
Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K):
  <T>.hand.raw / .deq  hand-made blocks: random bytes whose fp16 scale fields
                       are set to sane values, the extremes (+-65504), fp16
                       subnormals (0x0001, 0x83ff), zero and negative zero, and
                       a block of all-zero bytes; .deq is gguf.quants.dequantize
                       of .raw (float32, compared bit for bit)
  <T>.quant.src / .raw / .deq   where gguf.quants.quantize handles the type (all
                       but the K-quants): float rows (with a zero block and a
                       block of one repeated value), the package's blocks and
                       their dequantization
Run:  python3 tools/ref/make_gguf_quant_fixtures.py   (gguf==0.19.0, numpy)
"""
import os
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize
from gguf.constants import GGML_QUANT_SIZES
from safetensors.numpy import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf_quant.safetensors")

# byte offsets of the fp16 scale fields in each block
SCALES = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
          T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
QUANTIZABLE = [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


def f16_bits(vals):
    return np.array(vals, dtype=np.float16).view(np.uint16)


def hand_blocks(qt, rng):
    bs, ts = GGML_QUANT_SIZES[qt]
    if qt in (T.F32, T.F16, T.BF16):          # raw numbers: random bits without NaN, and specials
        n = 128
        raw = rng.integers(0, 256, size=n * ts, dtype=np.uint8)
        if qt == T.F32:
            v = raw.view(np.uint32)
            v[(v & 0x7F800000) == 0x7F800000] &= 0xBF7FFFFF      # no NaN/Inf from random bits
            v[:6] = [0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x7F800000, 0xFF7FFFFF]
        else:
            v = raw.view(np.uint16)
            if qt == T.F16:
                v[(v & 0x7C00) == 0x7C00] &= 0xBFFF
                v[:7] = [0x0000, 0x8000, 0x0001, 0x83FF, 0x7C00, 0xFC00, 0x7BFF]
            else:
                v[(v & 0x7F80) == 0x7F80] &= 0xBFFF
                v[:6] = [0x0000, 0x8000, 0x0001, 0x807F, 0x7F80, 0xFF7F]
        return raw.view(np.uint8)
    specials = [None, [65504.0, -65504.0], [0x0001, 0x83FF], [-0.0, 6.1e-5], "zero"]
    if bs == 32:                          # small blocks: a few more of each kind
        specials += [None, [0.0, -0.0], None]
    blocks = []
    for k, sp in enumerate(specials):
        b = rng.integers(0, 256, size=ts, dtype=np.uint8)
        if sp == "zero":
            b[:] = 0
        else:
            for i, off in enumerate(SCALES[qt]):
                if sp is None:
                    bits = f16_bits([rng.normal() * (0.01 if i == 0 else 0.005)])[0]
                elif isinstance(sp[0], int):
                    bits = sp[i % 2]
                else:
                    bits = f16_bits([sp[i % 2]])[0]
                b[off] = bits & 0xFF
                b[off + 1] = bits >> 8
        blocks.append(b)
    return np.concatenate(blocks)


def quant_rows(qt, rng):
    x = (rng.normal(size=(3, 64)) * 0.05).astype(np.float32)
    x[0, 32:64] = 0.0                     # a zero block
    x[1, 0:32] = np.float32(0.0173)       # one value repeated
    x[1, 40] = 1.5                        # an outlier
    x[2, 32:64] = np.linspace(-1, 1, 32, dtype=np.float32)
    return x


def main():
    rng = np.random.default_rng(16)
    out = {}
    for qt in TYPES:
        name = qt.name
        raw = hand_blocks(qt, rng)
        out[name + ".hand.raw"] = raw
        out[name + ".hand.deq"] = np.ascontiguousarray(dequantize(raw, qt).reshape(-1).astype(np.float32))
        if qt in QUANTIZABLE:
            x = quant_rows(qt, rng)
            q = quantize(x, qt)
            out[name + ".quant.src"] = np.ascontiguousarray(x.reshape(-1))
            out[name + ".quant.raw"] = np.ascontiguousarray(q.view(np.uint8).reshape(-1))
            deq = dequantize(q.view(np.uint8), qt).reshape(-1).astype(np.float32)
            out[name + ".quant.deq"] = np.ascontiguousarray(deq)
    save_file(out, OUT, metadata={"gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
                                  "numpy": np.__version__})
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
