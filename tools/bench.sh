#!/usr/bin/env bash
# `make bench`: the speed suite of peft.h, with ratios measured in the same run.
#   1. GEMM at the training shapes of stories15m and smollm-135m, against
#      OpenBLAS when libopenblas is installed ($PEFT_OPENBLAS names another
#      one; numpy's bundled OpenBLAS is used when it is the only one), and
#      against the measured FMA peak; no ratio when OpenBLAS runs a generic
#      kernel or one for an older CPU (the kernel is printed)
#   2. LoRA training steps (r 8, q,v): stories15m b8 x s256 on 1 and 2 threads,
#      smollm-135m b4 x s256 on 2 threads
#   3. the same steps in PyTorch + PEFT (tools/ref/bench_torch.py) when $PYTHON
#      has torch, transformers and peft; ratios of tokens/s and peak RSS
#   4. a busy machine: stories15m on 1 and 2 threads, and PyTorch + PEFT on 2,
#      while one CPU-bound process of this script's own runs beside them
#   5. LoRA over GGUF bases; LoRA on the real SmolLM2-135M-Instruct folder (made
#      from the GGUF by tools/ref/smollm2_folder.py) with an Alpaca batch against
#      PyTorch + PEFT; bf16 against fp32 (speed, and the loss after 100 steps of
#      the demo's LoRA, build/bf16_loss); a LLaMA-4 MoE LoRA step against the
#      dense model of equal active parameters
# Every figure is the median of REPEATS runs (default 3), each the median of
# STEPS steps (default 5); the load average at the start is printed, and
# every line goes to $BENCH_JSON (default bench.json) with its values.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/peft}
DEMO=${DEMO:-build/demo}
BF16_LOSS=${BF16_LOSS:-build/bf16_loss}
BF16_SEEDS=${BF16_SEEDS:-10}
STEPS=${STEPS:-5}
THREADS=${THREADS:-2}
REPEATS=${REPEATS:-3}
PYTHON=${PYTHON:-python3}
JSON=${BENCH_JSON:-bench.json}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- peft.h tools 2>/dev/null || COMMIT="$COMMIT+changes"
div() {
    awk -v a="$1" -v b="$2" \
        'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else printf "nan" }'
}
field() { awk -v k="$1" 'index($0, k) == 1 { sub(k, ""); print $1; exit }'; }
median() { printf "%s\n" "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
jlist() { local out="" v; for v in "$@"; do out="$out${out:+, }${v:-null}"; done; printf "[%s]" "$out"; }

# ---- the busy process of the busy-machine line: bounded (timeout), and killed
# at the end of that line, at exit and on Ctrl-C
BUSY_PID=""
LOAD=""
busy_start() {
    timeout 1800 sh -c 'while :; do :; done' &
    BUSY_PID=$!
}
busy_stop() {
    if [ -n "$BUSY_PID" ]; then kill "$BUSY_PID" 2>/dev/null; wait "$BUSY_PID" 2>/dev/null; fi
    BUSY_PID=""
}

# ---- bench.json: one object per line of the report
LINES=()
add_line() {   # name unit threads "values" baseline_median "baseline values"
    local med bmed ratio
    med=$(median $4)
    bmed=${5:-}
    ratio=$(div "$med" "$bmed")
    [ "$ratio" = nan ] && ratio=null
    local fmt='{"name": "%s", "unit": "%s", "threads": %s, "median": %s, "values": %s, '
    fmt+='"baseline": %s, "baseline_values": %s, "ratio": %s, "commit": "%s"}'
    LINES+=("$(printf "$fmt" "$1" "$2" "$3" "${med:-null}" "$(jlist $4)" "${bmed:-null}" "$(jlist ${6:-})" \
        "$ratio" "$COMMIT")")
}
write_json() {
    local i
    {
        printf '{"commit": "%s", "date": "%s", "load_average_start": [%s], "cpus": %s, ' "$COMMIT" \
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$LOAD" "$(nproc 2>/dev/null || echo null)"
        printf '"steps": %s, "repeats": %s,\n "lines": [\n' "$STEPS" "$REPEATS"
        for i in "${!LINES[@]}"; do
            printf '  %s%s\n' "${LINES[$i]}" "$([ "$i" -lt $((${#LINES[@]} - 1)) ] && echo ,)"
        done
        printf ' ]}\n'
    } > "$JSON"
}
finish() { busy_stop; write_json; }
trap finish EXIT
trap 'echo "(interrupted: $JSON has the lines so far)"; exit 130' INT TERM

LOAD=$(awk '{ printf "%s, %s, %s", $1, $2, $3 }' /proc/loadavg 2>/dev/null || echo "")
echo "load average at the start: ${LOAD:-unknown} on $(nproc 2>/dev/null || echo '?') cores" \
     "(a busy machine makes every figure lower)"
echo "medians of $REPEATS runs (each the median of $STEPS steps); commit $COMMIT; lines also in $JSON"

# ---- 1. GEMM
if [ -z "${PEFT_OPENBLAS:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so'; then
    OB=$($PYTHON -c 'import numpy, glob, os
print((glob.glob(os.path.dirname(numpy.__file__) + ".libs/*openblas*.so*") or [""])[0])' 2>/dev/null)
    if [ -n "$OB" ]; then
        export PEFT_OPENBLAS=$OB
        echo "(no libopenblas installed: comparing with numpy's $OB)"
    fi
fi
echo "== GEMM (peft bench --gemm), GFLOP/s over all shapes"
gemm_line() {   # preset batch seq
    local out ours=() blas=() core="" i r
    for ((i = 0; i < REPEATS; i++)); do
        out=$($BIN bench --gemm --preset "$1" --batch "$2" --seq "$3" --threads "$THREADS")
        [ -z "$core" ] && core=$(echo "$out" | grep -m1 '^OpenBLAS kernel' || true)
        [ $i = 0 ] && echo "$out" | grep -m1 '^warning' || true
        r=$(echo "$out" | tail -1)
        ours+=("$(echo "$r" | sed -n 's/.*peft\.h \([0-9.]*\) GFLOP.*/\1/p')")
        if echo "$r" | grep -q 'time ratio'; then
            blas+=("$(echo "$r" | sed -n 's/.*OpenBLAS \([0-9.]*\) GFLOP.*/\1/p')")
        fi
    done
    local m b
    m=$(median "${ours[@]}")
    b=$(median "${blas[@]}")
    printf "%-12s M %-5s t%s  peft.h %7.1f GFLOP/s  (%s)" "$1" $(($2 * $3)) "$THREADS" "$m" "${ours[*]}"
    if [ -n "$b" ]; then printf "  | OpenBLAS %7.1f (%s) | %sx" "$b" "${blas[*]}" "$(div "$m" "$b")";
    elif [ -n "$core" ]; then printf "  | %s: no ratio" "$core";
    else printf "  | no OpenBLAS: no ratio"; fi
    printf "\n"
    add_line "gemm-$1" "GFLOP/s" "$THREADS" "${ours[*]}" "$b" "${blas[*]}"
}
gemm_line stories15m 8 256
gemm_line smollm-135m 4 256

have_torch=0
if command -v "$PYTHON" >/dev/null && "$PYTHON" -c "import torch, transformers, peft" >/dev/null 2>&1; then
    have_torch=1
fi

peft_run() {   # preset batch seq threads -> "tokens/s rss"
    local out
    out=$($BIN bench --preset "$1" --method lora --lora-r 8 --lora-alpha 16 --batch "$2" --seq "$3" \
          --steps "$STEPS" --threads "$4")
    echo "$(echo "$out" | field "tokens/s") $(echo "$out" | field "peak RSS MB")" \
         "$(echo "$out" | field "MFU" | tr -d %)"
}
torch_run() {  # preset batch seq threads -> "tokens/s rss"
    local out
    out=$("$PYTHON" tools/ref/bench_torch.py --preset "$1" --method lora --batch "$2" --seq "$3" \
          --steps "$STEPS" --threads "$4" 2>/dev/null)
    echo "$(echo "$out" | field "tokens/s") $(echo "$out" | field "peak RSS MB")"
}

# ---- 2 and 3. LoRA steps
run_case() {   # name preset batch seq threads
    local i r tps=() rss=() mfu=() ttps=() trss=() m tm
    for ((i = 0; i < REPEATS; i++)); do     # the two interleaved: drift in the load hits both
        r=($(peft_run "$2" "$3" "$4" "$5")); tps+=("${r[0]:-}"); rss+=("${r[1]:-}"); mfu+=("${r[2]:-}")
        if [ $have_torch = 1 ]; then
            r=($(torch_run "$2" "$3" "$4" "$5")); ttps+=("${r[0]:-}"); trss+=("${r[1]:-}")
        fi
    done
    m=$(median "${tps[@]}")
    printf "%-12s b%-2s s%-4s t%s  peft.h %8.1f tok/s (%s)  MFU %s%%  RSS %7.1f MB" "$2" "$3" "$4" "$5" "$m" \
        "${tps[*]}" "$(median "${mfu[@]}")" "$(median "${rss[@]}")"
    if [ $have_torch = 1 ]; then
        tm=$(median "${ttps[@]}")
        printf "  | PyTorch+PEFT %8.1f tok/s (%s)  RSS %7.1f MB | speed %sx  memory %sx" "$tm" "${ttps[*]}" \
            "$(median "${trss[@]}")" "$(div "$m" "$tm")" \
            "$(div "$(median "${rss[@]}")" "$(median "${trss[@]}")")"
    fi
    printf "\n"
    add_line "$1" "tokens/s" "$5" "${tps[*]}" "${tm:-}" "${ttps[*]}"
    add_line "$1-rss" "MB" "$5" "${rss[*]}" "$([ $have_torch = 1 ] && median "${trss[@]}")" "${trss[*]}"
    LAST_TPS=$m
}

echo "== LoRA training steps (r 8, alpha 16, q_proj+v_proj; AdamW)"
[ $have_torch = 1 ] || echo "(PyTorch + PEFT not importable by $PYTHON: the PyTorch columns are skipped)"
run_case lora-stories15m-t1 stories15m 8 256 1; one=$LAST_TPS
run_case lora-stories15m-t2 stories15m 8 256 2; two=$LAST_TPS
run_case lora-smollm-135m-t2 smollm-135m 4 256 2
printf "threads 1 -> 2 (stories15m): %sx\n" "$(div "$two" "$one")"

# ---- 4. a busy machine: one CPU-bound process of ours beside each run
echo "== busy machine: stories15m b8 s256 with one CPU-bound process running beside it"
busy_start
b1=(); b2=(); bt=()
for ((i = 0; i < REPEATS; i++)); do
    r=($(peft_run stories15m 8 256 1)); b1+=("${r[0]:-}")
    r=($(peft_run stories15m 8 256 2)); b2+=("${r[0]:-}")
    if [ $have_torch = 1 ]; then r=($(torch_run stories15m 8 256 2)); bt+=("${r[0]:-}"); fi
done
busy_stop
m1=$(median "${b1[@]}"); m2=$(median "${b2[@]}")
printf "busy         t1  peft.h %8.1f tok/s (%s)\n" "$m1" "${b1[*]}"
printf "busy         t2  peft.h %8.1f tok/s (%s) | 2 threads vs 1: %sx" "$m2" "${b2[*]}" "$(div "$m2" "$m1")"
if [ $have_torch = 1 ]; then
    mt=$(median "${bt[@]}")
    printf " | PyTorch+PEFT t2 %8.1f tok/s (%s) | speed %sx\n" "$mt" "${bt[*]}" "$(div "$m2" "$mt")"
else
    printf " | PyTorch+PEFT: skipped (not importable by %s)\n" "$PYTHON"
fi
add_line busy-stories15m-t1 "tokens/s" 1 "${b1[*]}" "" ""
add_line busy-stories15m-t2-vs-t1 "tokens/s" 2 "${b2[*]}" "$m1" "${b1[*]}"
add_line busy-stories15m-t2-vs-torch "tokens/s" 2 "${b2[*]}" "$([ $have_torch = 1 ] && median "${bt[@]}")" \
    "${bt[*]}"

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
    ft=()
    for ((i = 0; i < REPEATS; i++)); do
        out=$($BIN bench --preset smollm-135m $args); ft+=("$(echo "$out" | field "tokens/s")")
    done
    ftps=$(median "${ft[@]}"); frss=$(echo "$out" | field "peak RSS MB")
    for g in $GS; do
        gt=()
        for ((i = 0; i < REPEATS; i++)); do
            out=$($BIN bench --model "$g" $args); gt+=("$(echo "$out" | field "tokens/s")")
        done
        gtps=$(median "${gt[@]}"); bits=$(echo "$out" | field "bits/frozen lin")
        bbits=$(echo "$out" | field "bits/base weight")
        grss=$(echo "$out" | field "peak RSS MB")
        printf "%-34s b4 s256 t%s %8.1f tok/s (%s)  RSS %7.1f MB  %s bits/frozen weight, %s per base weight" \
            "$(basename "$g")" "$THREADS" "$gtps" "${gt[*]}" "$grss" "$bits" "$bbits"
        printf " | fp32 %8.1f tok/s (%s)  RSS %7.1f MB | speed %sx\n" "$ftps" "${ft[*]}" "$frss" \
            "$(div "$gtps" "$ftps")"
        add_line "gguf-$(basename "$g")" "tokens/s" "$THREADS" "${gt[*]}" "$ftps" "${ft[*]}"
    done
else
    echo "(no $G: the GGUF line is skipped; see .ci/run to download it)"
fi

# ---- the real SmolLM2-135M-Instruct as a model folder (fp32 safetensors + tokenizer.json, made once
# from the GGUF above by tools/ref/smollm2_folder.py), LoRA r 8 alpha 16 on q,v with a batch of
# 4 Alpaca-format records (tools/data/alpaca_bench.json: Stanford template, prompt masked, each
# cut to 256 tokens, so every batch is 4 x 256), against PyTorch + PEFT on the same folder and
# batch (tools/ref/bench_torch.py --model --data); the goals are >= 1.5x and MFU >= 60%
F=build/smollm2/folder
AD=tools/data/alpaca_bench.json
if [ ! -f "$F/model.safetensors" ] && [ -f "$G" ] &&
    "$PYTHON" -c "import torch, transformers, gguf" 2>/dev/null; then
    echo "(making $F from $G: tools/ref/smollm2_folder.py)"
    "$PYTHON" tools/ref/smollm2_folder.py --gguf "$G" --out "$F" >/dev/null 2>&1 || echo "(it failed)"
fi
if [ -f "$F/model.safetensors" ]; then
    echo "== LoRA on the SmolLM2-135M-Instruct folder with an Alpaca batch (b4 s256, $THREADS threads)"
    args="--method lora --lora-r 8 --lora-alpha 16 --batch 4 --seq 256 --steps $STEPS --threads $THREADS"
    st=(); smfu=(); srss=(); tt=(); trss=(); tm=""
    for ((i = 0; i < REPEATS; i++)); do
        out=$($BIN bench --model "$F" --data "$AD" $args 2>/dev/null)
        st+=("$(echo "$out" | field "tokens/s")"); smfu+=("$(echo "$out" | field "MFU" | tr -d %)")
        srss+=("$(echo "$out" | field "peak RSS MB")")
        if [ $have_torch = 1 ]; then
            out=$("$PYTHON" tools/ref/bench_torch.py --model "$F" --data "$AD" --method lora --batch 4 \
                  --seq 256 --steps "$STEPS" --threads "$THREADS" 2>/dev/null)
            tt+=("$(echo "$out" | field "tokens/s")"); trss+=("$(echo "$out" | field "peak RSS MB")")
        fi
    done
    m=$(median "${st[@]}")
    printf "SmolLM2-135M folder, Alpaca b4 s256 t%s  peft.h %8.1f tok/s (%s)  MFU %s%%  RSS %7.1f MB" \
        "$THREADS" "$m" "${st[*]}" "$(median "${smfu[@]}")" "$(median "${srss[@]}")"
    if [ $have_torch = 1 ]; then
        tm=$(median "${tt[@]}")
        printf "  | PyTorch+PEFT %8.1f tok/s (%s)  RSS %7.1f MB | speed %sx  memory %sx\n" "$tm" "${tt[*]}" \
            "$(median "${trss[@]}")" "$(div "$m" "$tm")" \
            "$(div "$(median "${srss[@]}")" "$(median "${trss[@]}")")"
    else
        printf "  | PyTorch+PEFT: skipped (not importable by %s)\n" "$PYTHON"
    fi
    add_line "lora-smollm2-folder-alpaca" "tokens/s" "$THREADS" "${st[*]}" "${tm:-}" "${tt[*]}"
    add_line "lora-smollm2-folder-alpaca-mfu" "%" "$THREADS" "${smfu[*]}" "" ""
else
    echo "(no $F: the SmolLM2 folder line is skipped; it is made from $G by tools/ref/smollm2_folder.py," \
         "which needs torch, transformers and gguf)"
fi

# ---- bf16 (--precision bf16): frozen block linears in bf16, bf16 products with fp32 sums ------
# The GEMM line: the products with frozen weights (x·Wᵀ, dy·W) in bf16 against fp32 peft_gemm
# (goal >= 1.7x); the step line: a LoRA step with --precision bf16 against fp32 (goal >= 1.4x),
# and PyTorch + PEFT under torch.autocast("cpu", dtype=torch.bfloat16) in the same run.
echo "== bf16 (--precision bf16; AVX512-BF16 where the CPU has it)"
$BIN bench --gemm --precision bf16 --preset stories15m --batch 8 --seq 256 --threads 1 | tail -1
bf16_case() {   # preset batch seq threads
    local a f b i fc bc bt ft frss brss tt ttps
    a="--preset $1 --method lora --lora-r 8 --lora-alpha 16 --batch $2 --seq $3 --steps $STEPS --threads $4"
    fc=(); bc=(); bt=(); ft=(); tt=()
    for ((i = 0; i < REPEATS; i++)); do
        f=$($BIN bench $a)
        b=$($BIN bench $a --precision bf16)
        fc+=("$(echo "$f" | field "cpu ms/step")"); ft+=("$(echo "$f" | field "tokens/s")")
        bc+=("$(echo "$b" | field "cpu ms/step")"); bt+=("$(echo "$b" | field "tokens/s")")
    done
    frss=$(echo "$f" | field "peak RSS MB"); brss=$(echo "$b" | field "peak RSS MB")
    # the ratio of CPU time per step (on 1 thread, what a busy machine's other work does not change)
    printf "%-12s b%-2s s%-4s t%s  bf16 %8.1f tok/s  RSS %7.1f MB | fp32 %8.1f tok/s  RSS %7.1f MB" \
        "$1" "$2" "$3" "$4" "$(median "${bt[@]}")" "$brss" "$(median "${ft[@]}")" "$frss"
    printf " | speed %sx (CPU ms/step: bf16 %s, fp32 %s)" "$(div "$(median "${fc[@]}")" "$(median "${bc[@]}")")" \
        "${bc[*]}" "${fc[*]}"
    # bench.json: CPU ms per step, the fp32 run as the baseline (ratio < 1: bf16 faster)
    add_line "bf16-$1-cpu-ms-per-step" "ms" "$4" "${bc[*]}" "$(median "${fc[@]}")" "${fc[*]}"
    if [ $have_torch = 1 ]; then
        for ((i = 0; i < REPEATS; i++)); do
            tt+=("$($PYTHON tools/ref/bench_torch.py --preset "$1" --method lora --batch "$2" --seq "$3" \
                --steps "$STEPS" --threads "$4" --autocast bf16 2>/dev/null | field "tokens/s")")
        done
        ttps=$(median "${tt[@]}")
        printf " | PyTorch+PEFT autocast bf16 %8.1f tok/s | speed %sx" "$ttps" "$(div "$(median "${bt[@]}")" "$ttps")"
        add_line "bf16-$1-vs-torch-autocast" "tokens/s" "$4" "${bt[*]}" "$ttps" "${tt[*]}"
    fi
    printf "\n"
}
bf16_case stories15m 8 256 1
bf16_case smollm-135m 4 256 1
# The loss: 100 steps of the demo's LoRA recipe on its pre-trained base (build/demo makes one
# into build/bench-demo once, ~40 s), fp32 / bf16 / fp32 with a 2^-8 larger lr, BF16_SEEDS seeds
# (10: ~1 minute, standard error ~1.7%; 128: ~12 minutes, ~0.5%), two runs at a time
# (build/bf16_loss). The seeds are fixed, so a repeat gives the same figure. The run is chaotic
# past ~step 20, so the figure
# is the mean over seeds of the paired gap of the loss averaged over steps 91-100, with its
# standard error, beside the same for the lr change (a change the size of bf16's rounding).
BB=build/bench-demo/base
if [ ! -f "$BB/config.json" ] && [ -x "$DEMO" ]; then
    "$DEMO" --out build/bench-demo --methods lora --steps 1 --seeds 1 --threads "$THREADS" >/dev/null 2>&1 ||
        echo "(build/demo could not make the demo's base)"
fi
if [ -x "$BF16_LOSS" ] && [ -f "$BB/config.json" ]; then
    out=$("$BF16_LOSS" --base "$BB" --seeds "$BF16_SEEDS" --jobs "$THREADS" | tail -1)
    echo "$out"
    # JSON numbers have no leading '+'
    g=$(echo "$out" | sed -n 's/.*steps: +\{0,1\}\([-0-9.]*\)%.*/\1/p')
    fl=$(echo "$out" | sed -n 's/.*larger: +\{0,1\}\([-0-9.]*\)%.*/\1/p')
    add_line "bf16-loss-gap-100-demo-steps" "%" 1 "$g" "$fl" "$fl"
else
    echo "(no $BF16_LOSS or demo base: the bf16 loss line is skipped; make build/bf16_loss build/demo)"
fi

# LLaMA-4 mixture of experts: a LoRA step (r 8, q_proj+v_proj) on llama4-tiny (4 experts, top-1,
# shared expert, every layer MoE) against llama4-tiny-dense, the same model with one dense MLP of
# the width of the two active experts (equal active parameters, less the routers): the target is
# >= 0.7x, i.e. routing, sorting tokens by expert and the per-expert GEMMs cost little
echo "== LLaMA-4 MoE LoRA step vs the dense model of equal active parameters"
args="--method lora --lora-r 8 --lora-alpha 16 --batch 4 --seq 256 --steps $STEPS --threads $THREADS"
mt=(); dt=()
for ((i = 0; i < REPEATS; i++)); do
    mt+=("$($BIN bench --preset llama4-tiny $args | field "tokens/s")")
    dt+=("$($BIN bench --preset llama4-tiny-dense $args | field "tokens/s")")
done
printf "llama4-tiny b4 s256 t%s %8.1f tok/s (%s) | llama4-tiny-dense %8.1f tok/s (%s) | speed %sx\n" "$THREADS" \
    "$(median "${mt[@]}")" "${mt[*]}" "$(median "${dt[@]}")" "${dt[*]}" "$(div "$(median "${mt[@]}")" "$(median "${dt[@]}")")"
add_line "moe-llama4-tiny-vs-dense" "tokens/s" "$THREADS" "${mt[*]}" "$(median "${dt[@]}")" "${dt[*]}"
