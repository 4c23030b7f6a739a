#!/usr/bin/env bash
# tools/gpu_check.sh [REPORT] — everything the CUDA backend needs checked on a GPU,
# in one call and under 8 minutes, into one report file (default
# build/gpu_check/report.txt; a copy goes to $OUT/ when OUT is set).
#
#   1. the machine: nvidia-smi, the toolkit, the compiler
#   2. build: `make cuda` for this GPU only (sm_90 unless CUDA_ARCH says
#      otherwise), with the toolkit at PEFT_CUDA_HOME, else /usr/local/cuda,
#      else nvcc on PATH, else the pinned wheels (which need the network)
#   3. build/test-cuda: every kernel against the CPU ops, forward and every
#      gradient, with the tolerances stated in tests/test_cuda.c, and 20-step
#      LoRA, QLoRA and Adapter-V1 runs on the CUDA backend against the CPU
#      backend's losses; build/test-cuda-ops: the suite's op checks (test_fd*,
#      GEMM shapes, backend tests) with the CUDA backend registered; then
#      test-cuda again under compute-sanitizer's memcheck where supported
#   4. the benchmark: `peft bench --device cuda` on the smollm-135m and
#      llama3.2-1b presets (LoRA r 8 on q,v, batch 4 x seq 256), fp32 and
#      bf16, against PyTorch + PEFT on the same GPU and shapes
#      (tools/ref/bench_torch_cuda.py): tokens/s and peak GPU memory.
#
# Needs: a CUDA GPU and driver, gcc, make, a CUDA toolkit (nvcc + cuBLAS); for
# the PyTorch comparison, python3 with torch (CUDA build), transformers and
# peft. Whatever is missing is said in the report and its step skipped; the
# script itself exits 0 unless the build or test-cuda fails.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
dir=build/gpu_check
mkdir -p "$dir"
report=${1:-$dir/report.txt}
: > "$report"
say() { echo "$*" | tee -a "$report"; }
section() { say ""; say "== $*  (t+$(( $(date +%s) - start ))s)"; }
left() { local s=$(( 470 - ($(date +%s) - start) )); echo $(( s > 1 ? s : 1 )); }   # of 7m50s
cap() { local l; l=$(left); echo $(( l < $1 ? l : $1 )); }                            # min(N, left)
status=0

commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
say "peft.h GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
section "machine"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$report"
else
    say "nvidia-smi: not found"
fi
cc --version 2>/dev/null | head -1 | tee -a "$report"

section "toolkit and build"
if [ -z "${PEFT_CUDA_HOME:-}" ]; then
    if [ -x /usr/local/cuda/bin/nvcc ] && [ -f /usr/local/cuda/include/cublas_v2.h ]; then
        export PEFT_CUDA_HOME=/usr/local/cuda
    elif command -v nvcc >/dev/null; then
        export PEFT_CUDA_HOME=$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)
    fi
fi
say "PEFT_CUDA_HOME=${PEFT_CUDA_HOME:-(unset: the pinned PyPI wheels, which need the network)}"
# build/cuda-sdk (the pinned wheels `make cuda` unpacks, about 1.4 GB) is far over what travels to a GPU
# machine with the working tree (64 MiB of ignored paths): the build here uses this machine's toolkit
say "the build uses the toolkit above (build/cuda-sdk's wheels are not carried to GPU machines)"
# a toolkit with nvcc but without cuBLAS: PyTorch's cuBLAS wheel (nvidia-cublas), linked through a
# folder of plain-named links (the wheel ships only libcublas.so.N)
blas_vars=()
if [ -n "${PEFT_CUDA_HOME:-}" ] && [ ! -f "$PEFT_CUDA_HOME/include/cublas_v2.h" ] &&
   command -v python3 >/dev/null; then
    sp=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
    hdr=$(find $sp -path '*nvidia*' -name cublas_v2.h 2>/dev/null | head -1)
    if [ -n "$hdr" ]; then
        inc=$(dirname "$hdr")
        lib=$(cd "$inc/../lib" && pwd)
        mkdir -p "$dir/cublas-lib"
        for f in "$lib"/libcublas*.so.*; do
            ln -sf "$f" "$dir/cublas-lib/"
            b=$(basename "$f")
            ln -sf "$f" "$dir/cublas-lib/${b%%.so.*}.so"
        done
        blas_vars=(CUBLAS_INC="$inc" CUBLAS_LIB="$(cd "$dir/cublas-lib" && pwd)")
        say "cuBLAS from $inc/.. (the toolkit has none)"
    else
        say "no cuBLAS headers in the toolkit nor in Python's nvidia packages: the build will fail"
    fi
fi
arch=${CUDA_ARCH:--gencode arch=compute_90,code=sm_90}
if ! timeout "$(left)" make cuda BUILD=build-gpu CUDA_SDK="$dir/sdk" CUDA_ARCH="$arch" CUDA_WERROR= "${blas_vars[@]}" -j8 \
        > "$dir/build.log" 2>&1; then
    tail -30 "$dir/build.log" | tee -a "$report"
    say "BUILD FAILED (log: $dir/build.log)"
    [ -n "${OUT:-}" ] && cp "$report" "$dir/build.log" "$OUT/" 2>/dev/null
    exit 1
fi
grep -h "cuda_env\|release" "$dir/build.log" | head -3 | tee -a "$report"
build-gpu/peft-cuda cuda 2>&1 | tee -a "$report"

section "build/test-cuda (kernels vs the CPU ops)"
timeout "$(left)" build-gpu/test-cuda > "$dir/test.log" 2>&1
rc=$?
cat "$dir/test.log" >> "$report"
tail -1 "$dir/test.log"
[ $rc = 0 ] || { say "test-cuda: exit $rc"; status=1; }

# the suite's op checks (fd_run: forward against a double reference, every gradient against finite
# differences) and GEMM shapes, on every registered backend: the CPU one and the CUDA one
section "build/test-cuda-ops (the op checks through the backend table, CPU and CUDA)"
for f in test_fd test_gemm_shapes test_backend; do
    timeout "$(left)" build-gpu/test-cuda-ops "$f" > "$dir/ops-$f.log" 2>&1
    rc=$?
    grep -E "CUDA|FAIL|passed, " "$dir/ops-$f.log" | head -40 | tee -a "$report"
    [ $rc = 0 ] || { say "test-cuda-ops $f: exit $rc (log: $dir/ops-$f.log)"; status=1; }
done

section "benchmark: LoRA r 8 (q,v), batch 4 x seq 256, medians of 10 steps"
field() { awk -v k="$1" 'index($0, k) == 1 { sub(k, ""); print $1; exit }'; }
have_torch=0
if command -v python3 >/dev/null &&
   python3 -c "import torch, transformers, peft; assert torch.cuda.is_available()" >/dev/null 2>&1; then
    have_torch=1
else
    say "PyTorch + PEFT: not importable with CUDA here (needs torch with CUDA, transformers, peft):" \
        "no comparison"
fi
wired=0
if build-gpu/peft-cuda bench --help 2>&1 | grep -q -- "--device"; then wired=1; fi
[ $wired = 1 ] || say "peft bench --device cuda: not available in this build (the CUDA ops are not yet" \
                      "routed through the backend table): PyTorch numbers only"
for preset in smollm-135m llama3.2-1b; do
    for prec in fp32 bf16; do
        line=$(printf "%-12s %-5s" "$preset" "$prec")
        if [ "$(left)" -lt 40 ]; then say "$line  skipped: out of time"; continue; fi
        if [ $wired = 1 ]; then
            out=$(timeout "$(cap 120)" build-gpu/peft-cuda bench --device cuda --precision "$prec" \
                  --preset "$preset" --method lora --lora-r 8 --lora-alpha 16 --batch 4 --seq 256 --steps 10 \
                  2>&1)
            echo "$out" >> "$dir/bench.log"
            tps=$(echo "$out" | field 'tokens/s')
            line="$line  peft.h ${tps:-failed} tok/s, peak $(echo "$out" | field 'peak GPU MB') MB"
            [ -n "$tps" ] || line="$line ($(echo "$out" | tail -1 | cut -c1-200))"
        fi
        if [ $have_torch = 1 ]; then
            tout=$(timeout "$(cap 150)" python3 tools/ref/bench_torch_cuda.py --preset "$preset" \
                   --dtype "$prec" --batch 4 --seq 256 --steps 10 2>&1)
            echo "$tout" >> "$dir/bench.log"
            ttps=$(echo "$tout" | field 'tokens/s')
            line="$line  | PyTorch+PEFT ${ttps:-failed} tok/s, peak $(echo "$tout" | field 'peak GPU MB') MB"
        fi
        [ $wired = 1 ] || [ $have_torch = 1 ] || line="$line  nothing to run"
        say "$line"
    done
done

# the kernels' memory accesses (after the benchmark, in the time left), where compute-sanitizer works
# (Firecracker machines: yes; gVisor: no)
cs=$(command -v compute-sanitizer || true)
[ -n "$cs" ] || [ ! -x "${PEFT_CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] ||
    cs="${PEFT_CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
if [ -n "$cs" ] && [ "$(left)" -gt 60 ]; then
    section "compute-sanitizer memcheck on build/test-cuda"
    timeout "$(( $(left) - 5 ))" "$cs" --tool memcheck --error-exitcode 3 build-gpu/test-cuda \
        > "$dir/memcheck.log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY|Invalid|passed, " "$dir/memcheck.log" | head -20 | tee -a "$report"
    case $rc in
        0) say "memcheck: clean" ;;
        3) say "memcheck: errors (log: $dir/memcheck.log)"; status=1 ;;
        *) say "memcheck: did not complete (exit $rc; the runtime may not support it)" ;;
    esac
fi

section "done in $(( $(date +%s) - start ))s; report: $report"
if [ -n "${OUT:-}" ]; then cp "$report" "$OUT/" 2>/dev/null; cp "$dir"/*.log "$OUT/" 2>/dev/null; fi
exit $status
