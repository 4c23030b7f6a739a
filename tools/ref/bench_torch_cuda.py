#!/usr/bin/env python3
"""The GPU side of `peft bench --device cuda`, for tools/gpu_check.sh: the same
LLaMA preset (random init), LoRA r 8, alpha 16 on q,v (PEFT), AdamW, batch B x
seq T of random tokens, on one CUDA device, in fp32 or bf16 (weights and
activations in that dtype; TF32 off for fp32). Prints tokens/s (median step
after a warm-up), the median step time and the peak GPU memory
(torch.cuda.max_memory_allocated), one `key value` per line as `peft bench`.

Run:  python3 tools/ref/bench_torch_cuda.py --preset smollm-135m --dtype bf16 --batch 4 --seq 256
"""
import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {  # the shapes of peft.h's presets
    "smollm-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048,
                        tie_word_embeddings=True, rope_theta=10000.0),
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                        tie_word_embeddings=True, rope_theta=500000.0,
                        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_position_embeddings=8192)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="smollm-135m", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script where no GPU is")
    a = ap.parse_args()
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_torch_cuda: no CUDA device visible to PyTorch")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = torch.float32 if a.dtype == "fp32" else torch.bfloat16
    torch.manual_seed(0)
    cfg = LlamaConfig(**PRESETS[a.preset], rms_norm_eps=1e-5, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).to(device=a.device, dtype=dtype)
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.0))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1), device=a.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for s in range(a.steps + 2):  # two warm-up steps (allocator, kernel selection), not counted
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=x[:, :-1], labels=x[:, :-1])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if s >= 2:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"model            {a.preset}, lora r 8 (q,v), {a.dtype}, batch {a.batch} x seq {a.seq} "
          f"(PyTorch {torch.__version__}, {torch.cuda.get_device_name(0) if cuda else 'cpu'})")
    print(f"tokens/s         {a.batch * a.seq / med:.1f}")
    print(f"step ms (median) {med * 1000:.2f}")
    if cuda:
        print(f"peak GPU MB      {torch.cuda.max_memory_allocated() / 2**20:.1f}")
    print(f"loss             {out.loss.item():.6f}")


if __name__ == "__main__":
    main()
