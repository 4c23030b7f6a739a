#!/usr/bin/env python3
"""Writes tests/fixtures/nf4.safetensors with the real bitsandbytes on CPU.

For several weight tensors (a whole number of 64-blocks, odd sizes with a
partial last block, rows of zeros, more than 256 blocks so that double
quantization has two nested blocks), for nf4 and fp4, with and without
double quantization: the packed bytes, the absmax (fp32, or uint8 when
double-quantized), the nested absmax, the nested 8-bit map, the offset and the
dequantized weights, all from bitsandbytes.functional.quantize_4bit /
dequantize_4bit. Also the signed dynamic 8-bit map (create_dynamic_map) and
the FP4/NF4 code tables.

Run:  python3 tools/ref/make_nf4_fixtures.py
"""
import os
import torch
import bitsandbytes, bitsandbytes.functional as F
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "nf4.safetensors")


def tensors():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(64, 64, generator=g) * 0.05
    b = torch.randn(7, 19, generator=g)
    c = torch.randn(33, 100, generator=g) * 0.3
    c[5:9] = 0.0                     # whole blocks of zeros
    d = torch.randn(257, 64, generator=g) * 0.02   # 257 blocks: two nested blocks
    d[0, :5] = torch.tensor([1.0, -1.0, 0.5, -0.25, 3.0])  # outliers
    return [a, b, c, d]


def main():
    out = {"dynamic_map": F.create_dynamic_map().float(),
           "nf4_code": F.get_4bit_type("nf4", device="cpu").float(),
           "fp4_code": F.get_4bit_type("fp4", device="cpu").float()}
    for i, w in enumerate(tensors()):
        out[f"w{i}"] = w.contiguous()
        for qt in ("nf4", "fp4"):
            for dq in (0, 1):
                p = f"{qt}_{dq}_{i}"
                q, st = F.quantize_4bit(w, blocksize=64, quant_type=qt, compress_statistics=bool(dq))
                out[p + ".packed"] = q.reshape(-1).contiguous()
                out[p + ".absmax"] = st.absmax.contiguous()
                if dq:
                    out[p + ".nested_absmax"] = st.state2.absmax.float().contiguous()
                    out[p + ".nested_code"] = st.state2.code.float().contiguous()
                    out[p + ".offset"] = st.offset.float().reshape(1)
                if w.numel() < 10000:     # keep the fixture small: the big tensor checks the nesting
                    out[p + ".deq"] = F.dequantize_4bit(q, st).float().contiguous()
    # 8-bit blockwise codes (double quantization's and 8-bit optimizers'), signed and unsigned maps
    g = torch.Generator().manual_seed(9)
    x = torch.cat([torch.randn(1500, generator=g), torch.linspace(-1, 1, 548)]).contiguous()
    q, st = F.quantize_blockwise(x, code=F.create_dynamic_map(signed=True), blocksize=256)
    out["b8_x"], out["b8_signed.q"], out["b8_signed.absmax"] = x, q.contiguous(), st.absmax.float().contiguous()
    ux = x.abs().contiguous()
    umap = F.create_dynamic_map(signed=False)
    q, st = F.quantize_blockwise(ux, code=umap, blocksize=256)
    out["b8_unsigned.q"], out["b8_unsigned.absmax"], out["unsigned_map"] = q.contiguous(), st.absmax.float().contiguous(), umap.float()
    save_file(out, OUT, metadata={"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__})
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
