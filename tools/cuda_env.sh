#!/usr/bin/env bash
# tools/cuda_env.sh DIR — a CUDA toolkit for `make cuda`: writes DIR/root, one
# line, the folder holding bin/nvcc, include/cublas_v2.h and the libraries.
#
# PEFT_CUDA_HOME, when set to a toolkit with nvcc and cuBLAS, is used as it is
# (a GPU machine, which has no network: tools/gpu_check.sh sets it).
# Otherwise (CI, developers) the pinned PyPI wheels below are downloaded once
# into DIR/wheels (kept there, and in pip's own cache, so later runs download
# nothing) and unpacked into DIR/site: no GPU and no system CUDA are needed
# to compile and link. The versions go together: the CUDA 13.2 compiler
# (nvcc; its front end cicc is in nvidia-nvvm, its headers in
# nvidia-cuda-crt), runtime and CCCL headers, and cuBLAS 13.4 (the one
# PyTorch 2.15's cu132 build pins beside that runtime).
set -euo pipefail
dir=${1:-build/cuda-sdk}
mkdir -p "$dir"

ok_root() { [ -x "$1/bin/nvcc" ] && [ -f "$1/include/cublas_v2.h" ]; }

if [ -n "${PEFT_CUDA_HOME:-}" ]; then
    if ! [ -x "$PEFT_CUDA_HOME/bin/nvcc" ]; then          # cuBLAS may come from CUBLAS_INC/CUBLAS_LIB
        echo "cuda_env: PEFT_CUDA_HOME=$PEFT_CUDA_HOME has no bin/nvcc" >&2
        exit 1
    fi
    echo "$PEFT_CUDA_HOME" > "$dir/root"
    echo "cuda_env: using the CUDA toolkit at $PEFT_CUDA_HOME"
    exit 0
fi

pins="nvidia-cuda-nvcc==13.2.86 nvidia-nvvm==13.2.86 nvidia-cuda-crt==13.2.86 nvidia-cuda-runtime==13.2.86
      nvidia-cuda-cccl==13.2.86 nvidia-cublas==13.4.1.3"
root="$dir/site/nvidia/cu13"
stamp="$dir/site/.pins"
if ok_root "$root" && [ "$(cat "$stamp" 2>/dev/null)" = "$(echo $pins)" ]; then
    echo "$(cd "$root" && pwd)" > "$dir/root"
    exit 0
fi

py=$(command -v python3 || true)
if [ -z "$py" ] || ! "$py" -m pip --version >/dev/null 2>&1; then
    echo "cuda_env: python3 with pip is needed to fetch nvcc and cuBLAS from PyPI" >&2
    exit 1
fi
mkdir -p "$dir/wheels"
have_all=1
for p in $pins; do
    name=${p%%==*}; ver=${p##*==}
    ls "$dir/wheels/${name//-/_}-$ver-"*.whl >/dev/null 2>&1 || have_all=0
done
if [ $have_all = 0 ]; then
    echo "cuda_env: downloading the CUDA wheels (about 460 MB, once) into $dir/wheels"
    # shellcheck disable=SC2086
    "$py" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
        --platform manylinux2010_x86_64 --python-version 3.11 -d "$dir/wheels" $pins
fi
# a wheel is a zip: unpacked as it is (pip install would refuse an
# externally managed system Python); zip keeps no exec bits, so they are set
rm -rf "$dir/site"
mkdir -p "$dir/site"
for p in $pins; do
    name=${p%%==*}; ver=${p##*==}
    "$py" -m zipfile -e "$(ls "$dir/wheels/${name//-/_}-$ver-"*.whl | head -1)" "$dir/site"
done
chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true
ok_root "$root" || { echo "cuda_env: the wheels did not give $root/bin/nvcc" >&2; exit 1; }
# the wheels ship only the versioned sonames; the linker looks for the plain names
for l in cudart cublas cublasLt; do
    so=$(cd "$root/lib" && ls lib$l.so.* | head -1)
    ln -sf "$so" "$root/lib/lib$l.so"
done
echo $pins > "$stamp"
echo "$(cd "$root" && pwd)" > "$dir/root"
echo "cuda_env: nvcc $("$root/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') in $root"
