#!/usr/bin/env python3
"""The bf16 loss comparison of build/bf16_loss, in PyTorch + PEFT: the demo's
base folder (transformers LlamaForCausalLM, fp32), LoRA r 8 alpha 16 on q,v,
AdamW (lr 1e-2, betas 0.9/0.999, eps 1e-8, no weight decay), clip 1, the
cosine schedule with 8 warm-up steps (transformers'), on the very batches
build/bf16_loss trains on (its --batches file), per seed:
  fp32          the reference
  fp32+lr2^-8   the learning rate 2^-8 larger (the floor)
  autocast      the forward and loss under torch.autocast("cpu", dtype=torch.bfloat16)
                (PyTorch's mixed precision: every linear, LoRA's too, in bf16)
and the same statistic: per seed the loss averaged over the last 10 steps,
relative to fp32's of that seed, mean ± standard error over the seeds.

Run:  build/bf16_loss --base DIR --seeds 5 --batches /tmp/b.bin
      python3 tools/ref/bf16_loss_torch.py --base DIR --batches /tmp/b.bin
"""
import argparse, math, statistics
import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, get_cosine_schedule_with_warmup


def read_batches(path):
    a = np.fromfile(path, dtype=np.int32)
    n_seeds, steps, B = (int(v) for v in a[:3])
    p, out = 3, []
    for _ in range(n_seeds):
        runs = []
        for _ in range(steps):
            T = int(a[p]); p += 1
            tok = torch.from_numpy(a[p:p + B * T].astype(np.int64).reshape(B, T)); p += B * T
            tgt = torch.from_numpy(a[p:p + B * T].astype(np.int64).reshape(B, T)); p += B * T
            runs.append((tok, tgt))
        out.append(runs)
    return out


def run(base, batches, seed, variant):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.0))
    model.train()
    lr = 1e-2 * (1 + 2 ** -8 if variant == "fp32+lr2^-8" else 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, 8, len(batches))
    curve = []
    for tok, tgt in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "autocast"):
            logits = model(input_ids=tok).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tgt.view(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        curve.append(loss.item())
    return curve


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--batches", required=True)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    runs = read_batches(a.batches)
    variants = ["fp32", "fp32+lr2^-8", "autocast"]
    c = {v: [run(a.base, b, s + 1, v) for s, b in enumerate(runs)] for v in variants}
    tail = lambda x: sum(x[-10:]) / len(x[-10:])
    print(f"PyTorch {torch.__version__} + PEFT, demo LoRA, {len(runs)} seeds x {len(runs[0])} steps")
    for v in variants:
        d = [tail(c[v][s]) / tail(c["fp32"][s]) - 1 for s in range(len(runs))]
        early = max(statistics.mean(abs(c[v][s][t] / c["fp32"][s][t] - 1) for s in range(len(runs)))
                    for t in range(10))
        line = f"{v:12s} " + " ".join(f"{tail(x):.4f}" for x in c[v])
        if v != "fp32":
            se = statistics.stdev(d) / math.sqrt(len(d))
            line += (f"  gap {100 * statistics.mean(d):+.2f}% ± {100 * se:.2f}%"
                     f"  steps 1-10 within {100 * early:.2f}%")
        print(line)
    print("step-1 loss fp32 / autocast per seed:",
          " ".join(f"{c['fp32'][s][0]:.5f}/{c['autocast'][s][0]:.5f}" for s in range(len(runs))))


if __name__ == "__main__":
    main()
