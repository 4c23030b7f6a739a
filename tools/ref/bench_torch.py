#!/usr/bin/env python3
"""The training step of `peft bench` in PyTorch + PEFT, for `make bench`:
the same LLaMA preset (random init), the same method (LoRA r 8, alpha 16 on
q,v; or full fine-tuning), AdamW, batch B x seq T of random tokens, the same
thread count. Prints the same lines as `build/peft bench`: tokens/s, the
median step time, peak RSS.

Run:  python3 tools/ref/bench_torch.py --preset stories15m --method lora --batch 8 --seq 256 --steps 5 --threads 2
      (--autocast bf16: the forward under torch.autocast("cpu", dtype=torch.bfloat16))
      --model DIR: a model folder (from_pretrained, fp32) instead of a preset;
      --data FILE: an Alpaca .json (with --model, whose tokenizer reads it): the
      batches `peft bench --data` makes (Stanford template, prompt masked,
      output + eos, cut to --seq + 1 tokens, padded to the batch's longest,
      examples in file order and over again) instead of random tokens.
"""
import argparse, json, resource, statistics, time
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


# stanford_alpaca's two prompt templates (facts; the same as peft.h's)
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def alpaca_batches(path, tok, B, T, pad):
    """Every example as (ids, masked prompt length), cut to T + 1 ids; batches of B in file
    order (wrapping), each as (input ids [B, L], labels [B, L]) padded to the longest."""
    ex = []
    for r in json.load(open(path, encoding="utf-8")):
        prompt = (ALPACA_INPUT if r.get("input") else ALPACA_NO_INPUT).format(**r)
        p = tok(prompt)["input_ids"]
        ids = tok(prompt + r["output"] + tok.eos_token)["input_ids"][: T + 1]
        if len(ids) > len(p):
            ex.append((ids, len(p)))
    s = 0
    while True:
        rows = [ex[(s * B + b) % len(ex)] for b in range(B)]
        L = min(T, max(len(ids) - 1 for ids, _ in rows))
        x = torch.full((B, L), pad, dtype=torch.long)
        y = torch.full((B, L), -100, dtype=torch.long)
        for b, (ids, m) in enumerate(rows):
            n = min(L, len(ids) - 1)
            x[b, :n] = torch.tensor(ids[:n])
            # transformers shifts labels by one inside the loss: label t is the target of
            # position t - 1, so the targets ids[1..n] (past the prompt) go to labels[0..n)
            # shifted right by one; position 0's label is never a target
            for t in range(max(m, 1), n):
                y[b, t] = ids[t]
        yield x, y
        s += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="stories15m")
    ap.add_argument("--model", help="a model folder (from_pretrained in fp32) instead of --preset")
    ap.add_argument("--data", help="an Alpaca .json: real batches (needs --model for its tokenizer)")
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
    if a.model:
        model = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
        cfg = model.config
    else:
        cfg = LlamaConfig(**PRESETS[a.preset], rms_norm_eps=1e-5, attn_implementation="sdpa")
        model = LlamaForCausalLM(cfg)
    batches = None
    if a.data:
        if not a.model:
            ap.error("--data needs --model (its tokenizer)")
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(a.model)
        pad = tok.eos_token_id if tok.eos_token_id is not None else 0
        batches = alpaca_batches(a.data, tok, a.batch, a.seq, pad)
    if a.method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1))
    times, cpu, lens = [], [], []
    for s in range(a.steps + 1):          # the first step warms up (allocations), not counted
        inp, lab = next(batches) if batches else (x[:, :-1], x[:, :-1])
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
            out = model(input_ids=inp, labels=lab)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            lens.append(inp.shape[1])
    med = statistics.median(times)
    L = lens[times.index(med)] if med in times else a.seq     # the median step's length
    print(f"model            {a.model or a.preset}, method {a.method}, batch {a.batch} x seq {L}, "
          f"{a.threads} threads (PyTorch {torch.__version__}), autocast {a.autocast}")
    if a.data:
        print(f"data             {a.data}: batches in file order, the median step padded to {L} tokens")
    print(f"tokens/s         {a.batch * L / med:.1f}")
    print(f"step ms (median) {med * 1000:.1f}")
    print(f"cpu ms/step      {statistics.median(cpu) * 1000:.1f} "
          "(median CPU time of the process, all threads)")
    print(f"peak RSS MB      {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")


if __name__ == "__main__":
    main()
