#!/usr/bin/env bash
# `make bench`: the speed suite of peft.h, with ratios measured in the same run.
#   1. GEMM at the training shapes of stories15m and smollm-135m, against
#      OpenBLAS when libopenblas is installed, and against the measured FMA peak
#   2. LoRA training steps (r 8, q,v): stories15m b8 x s256 on 1 and 2 threads,
#      smollm-135m b4 x s256 on 2 threads
#   3. the same steps in PyTorch + PEFT (tools/ref/bench_torch.py) when Python
#      has torch, transformers and peft; ratios of tokens/s and peak RSS
# Medians over STEPS steps (default 5). This machine may be shared: rerun to see the spread.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/peft}
STEPS=${STEPS:-5}
THREADS=${THREADS:-2}
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "nan" }'; }
field() { awk -v k="$1" 'index($0, k) == 1 { sub(k, ""); print $1; exit }'; }

echo "== GEMM (peft bench --gemm)"
$BIN bench --gemm --preset stories15m --batch 8 --seq 256 --threads "$THREADS" | tail -1
$BIN bench --gemm --preset smollm-135m --batch 4 --seq 256 --threads "$THREADS" | tail -1

have_torch=0
if command -v python3 >/dev/null && python3 -c "import torch, transformers, peft" >/dev/null 2>&1; then have_torch=1; fi

run_case() {   # preset batch seq threads
    local out torch_out tps rss ttps trss mfu
    out=$($BIN bench --preset "$1" --method lora --lora-r 8 --lora-alpha 16 --batch "$2" --seq "$3" --steps "$STEPS" --threads "$4")
    tps=$(echo "$out" | field "tokens/s"); rss=$(echo "$out" | field "peak RSS MB"); mfu=$(echo "$out" | field "MFU")
    printf "%-12s b%-2s s%-4s t%s  peft.h %8.1f tok/s  MFU %6s  RSS %7.1f MB" "$1" "$2" "$3" "$4" "$tps" "$mfu" "$rss"
    if [ $have_torch = 1 ]; then
        torch_out=$(python3 tools/ref/bench_torch.py --preset "$1" --method lora --batch "$2" --seq "$3" --steps "$STEPS" --threads "$4" 2>/dev/null)
        ttps=$(echo "$torch_out" | field "tokens/s"); trss=$(echo "$torch_out" | field "peak RSS MB")
        printf "  | PyTorch+PEFT %8.1f tok/s  RSS %7.1f MB | speed %sx  memory %sx" "$ttps" "$trss" \
            "$(div "$tps" "$ttps")" "$(div "$rss" "$trss")"
    fi
    printf "\n"
    LAST_TPS=$tps
}

echo "== LoRA training steps (r 8, alpha 16, q_proj+v_proj; AdamW)"
[ $have_torch = 1 ] || echo "(PyTorch + PEFT not importable: no comparison)"
run_case stories15m 8 256 1; one=$LAST_TPS
run_case stories15m 8 256 2; two=$LAST_TPS
run_case smollm-135m 4 256 2
printf "threads 1 -> 2 (stories15m): %sx\n" "$(div "$two" "$one")"

# GGUF bases kept in their blocks: SmolLM2-135M-Instruct Q4_1 (.ci/run downloads it), and any
# more files named in PEFT_BENCH_GGUF (e.g. the same model requantized to Q8_0 or Q4_K_M), each
# against the fp32 smollm-135m preset of the same shapes; the target is >= 0.8x the fp32 speed
G=build/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GS=""
[ -f "$G" ] && GS="$G"
GS="$GS ${PEFT_BENCH_GGUF:-}"
if [ -n "${GS// /}" ]; then
    echo "== LoRA over GGUF bases (ggml blocks decoded in the GEMM) vs the fp32 base"
    args="--method lora --lora-r 8 --lora-alpha 16 --batch 4 --seq 256 --steps $STEPS --threads $THREADS"
    out=$($BIN bench --preset smollm-135m $args)
    ftps=$(echo "$out" | field "tokens/s"); frss=$(echo "$out" | field "peak RSS MB")
    for g in $GS; do
        out=$($BIN bench --model "$g" $args)
        gtps=$(echo "$out" | field "tokens/s"); bits=$(echo "$out" | field "bits/frozen lin")
        grss=$(echo "$out" | field "peak RSS MB")
        printf "%-34s b4 s256 t%s %8.1f tok/s  RSS %7.1f MB  %s bits/frozen weight" "$(basename "$g")" \
            "$THREADS" "$gtps" "$grss" "$bits"
        printf " | fp32 %8.1f tok/s  RSS %7.1f MB | speed %sx\n" "$ftps" "$frss" "$(div "$gtps" "$ftps")"
    done
else
    echo "(no $G: the GGUF line is skipped; see .ci/run to download it)"
fi

# ---- bf16 (--precision bf16): frozen block linears in bf16, bf16 products with fp32 sums ------
# The GEMM line: the products with frozen weights (x·Wᵀ, dy·W) in bf16 against fp32 peft_gemm
# (goal >= 1.7x); the step line: a LoRA step with --precision bf16 against fp32 (goal >= 1.4x),
# and PyTorch + PEFT under torch.autocast("cpu", dtype=torch.bfloat16) in the same run.
echo "== bf16 (--precision bf16; AVX512-BF16 where the CPU has it)"
$BIN bench --gemm --precision bf16 --preset stories15m --batch 8 --seq 256 --threads 1 | tail -1
bf16_case() {   # preset batch seq threads
    local a f b ftps btps brss frss fcpu bcpu torch_out ttps tcpu
    a="--preset $1 --method lora --lora-r 8 --lora-alpha 16 --batch $2 --seq $3 --steps $STEPS --threads $4"
    f=$($BIN bench $a); b=$($BIN bench $a --precision bf16)
    ftps=$(echo "$f" | field "tokens/s"); frss=$(echo "$f" | field "peak RSS MB")
    btps=$(echo "$b" | field "tokens/s"); brss=$(echo "$b" | field "peak RSS MB")
    fcpu=$(echo "$f" | field "cpu ms/step"); bcpu=$(echo "$b" | field "cpu ms/step")
    # the ratio of CPU time per step (on 1 thread, what a busy machine's other work does not change)
    printf "%-12s b%-2s s%-4s t%s  bf16 %8.1f tok/s  RSS %7.1f MB" "$1" "$2" "$3" "$4" "$btps" "$brss"
    printf " | fp32 %8.1f tok/s  RSS %7.1f MB | speed %sx (CPU time)" "$ftps" "$frss" "$(div "$fcpu" "$bcpu")"
    if [ $have_torch = 1 ]; then
        torch_out=$(python3 tools/ref/bench_torch.py --preset "$1" --method lora --batch "$2" --seq "$3" \
            --steps "$STEPS" --threads "$4" --autocast bf16 2>/dev/null)
        ttps=$(echo "$torch_out" | field "tokens/s"); tcpu=$(echo "$torch_out" | field "cpu ms/step")
        printf " | PyTorch+PEFT autocast bf16 %8.1f tok/s | speed %sx (CPU time)" "$ttps" \
            "$(div "$tcpu" "$bcpu")"
    fi
    printf "\n"
}
bf16_case stories15m 8 256 1
bf16_case smollm-135m 4 256 1
