#!/bin/sh
# Model and method code reach the kernels only through the backend table.
# In peft.h's model and method sections (the banners "LLaMA:" up to "BACKENDS:",
# and "GENERATION" to the end), outside the blocks marked
# PEFT__CPU_KERNEL_BEGIN ... PEFT__CPU_KERNEL_END (CPU kernels that live
# beside their model code), no line may call a CPU kernel: a peft__cpu_*
# function, the GEMM, the thread pool's loops, the attention/RoPE/softmax
# kernels, the 4-bit, 8-bit and ggml decoders, the AdamW update.
# Usage: tools/check_backend.sh [peft.h]; prints each offending line, exits 1.
f=${1:-peft.h}
awk '
/^   LLaMA: configuration/            { model = 1 }
/^   BACKENDS: the table/             { model = 0 }
/^   FILES: numbers/                  { model = 0 }
/^   GENERATION$/                     { model = 1 }
/PEFT__CPU_KERNEL_BEGIN/              { kernel = 1 }
/PEFT__CPU_KERNEL_END/                { kernel = 0; next }
model && !kernel {
    line = $0
    sub(/\/\*.*$/, "", line)                    # the code, not a trailing comment
    if (line ~ /^[ \t]*(\*|\/\/)/) next         # a comment line
    if (line ~ /peft__cpu_[a-z0-9_]*[ \t]*\(/ ||
        line ~ /peft__?gemm(_ref)?[ \t]*\(/ ||
        line ~ /peft__parallel_(for|run)[ \t]*\(/ ||
        line ~ /peft__(attend_row|attend_prompts|rope_apply|softmax_row|dot|exp)[ \t]*\(/ ||
        line ~ /peft__(frozen_product|adam_update|zero_floats)[ \t]*\(/ ||
        line ~ /peft_(q4_dequantize|qmatrix_decode|ggml_dequantize)[ \t]*\(/ ||
        line ~ /peft_(de)?quantize_blockwise8[ \t]*\(/) {
        printf "%s:%d: model code calls a kernel directly: %s\n", FILENAME, NR, $0
        bad = 1
    }
}
END { exit bad }' "$f" || exit 1
# the section banners the check relies on must be there (a renamed banner
# would silently check nothing)
for b in "   LLaMA: configuration" "   BACKENDS: the table" "   GENERATION"; do
    grep -q "^$b" "$f" || { echo "$f: banner \"$b\" not found: the check would see nothing"; exit 1; }
done
