#!/usr/bin/env python3
"""The training step of `peft bench` in PyTorch + PEFT, for `make bench`:
the same LLaMA preset (random init), the same method (LoRA r 8, alpha 16 on
q,v; or full fine-tuning), AdamW, batch B x seq T of random tokens, the same
thread count. Prints the same lines as `build/peft bench`: tokens/s, the
median step time, peak RSS.

Run:  python3 tools/ref/bench_torch.py --preset stories15m --method lora --batch 8 --seq 256 --steps 5 --threads 2
      (--autocast bf16: the forward under torch.autocast("cpu", dtype=torch.bfloat16))
"""
import argparse, resource, statistics, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {   # the same shapes as peft.h's presets
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                 vocab_size=4096, max_position_embeddings=512, tie_word_embeddings=True, rope_theta=500000.0),
    "stories15m": dict(hidden_size=288, intermediate_size=768, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                       vocab_size=32000, max_position_embeddings=256, tie_word_embeddings=True),
    "smollm-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                        vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=10000.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="stories15m")
    ap.add_argument("--method", default="lora", choices=["lora", "full"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none",
                    help='bf16: forward and loss under torch.autocast("cpu", dtype=torch.bfloat16), '
                         "the mixed precision peft's --precision bf16 is compared with")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(**PRESETS[a.preset], rms_norm_eps=1e-5, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    if a.method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1))
    times, cpu = [], []
    for s in range(a.steps + 1):          # the first step warms up (allocations), not counted
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
            out = model(input_ids=x[:, :-1], labels=x[:, :-1])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    print(f"model            {a.preset}, method {a.method}, batch {a.batch} x seq {a.seq}, {a.threads} threads "
          f"(PyTorch {torch.__version__}), autocast {a.autocast}")
    print(f"tokens/s         {a.batch * a.seq / med:.1f}")
    print(f"step ms (median) {med * 1000:.1f}")
    print(f"cpu ms/step      {statistics.median(cpu) * 1000:.1f} "
          "(median CPU time of the process, all threads)")
    print(f"peak RSS MB      {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")


if __name__ == "__main__":
    main()
