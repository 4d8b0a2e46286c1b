#!/usr/bin/env bash
# Build the crate with `--features cuda` on a machine without a CUDA toolkit or GPU, from PyPI.
#
# candle's `cuda` feature needs, at build time: nvcc (candle-kernels compiles its .cu files for
# one compute capability), the CUDA headers, and for linking libcuda, libcudart, libcublas,
# libcublasLt, libcurand and libnvrtc. NVIDIA publishes CUDA 13 as Python wheels that hold a
# full nvcc (nvidia-cuda-nvcc; the cu12 wheel has only ptxas) and the libraries; only libcuda,
# the driver, is missing, as it comes with the GPU driver. For linking, this script generates a
# stub libcuda.so.1 with every driver entry point cudarc uses, each returning an error, as the
# CUDA toolkit's own lib/stubs/libcuda.so does; on a GPU machine the driver's real libcuda.so.1
# is loaded instead (same soname).
#
# Usage: scripts/build-cuda.sh [cargo build arguments...]
#   default: --release --examples     (binaries in target/cuda/release/examples/)
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200), CUDA_WHEELS_VENV (default
# target/cuda-toolkit/venv), CUDA_NVCC_VERSION (default 13.5.37), CUDA_TARGET_DIR (default
# target/cuda). Needs python3 with venv and pip, and PyPI; about 1.3 GB of wheels.
# Measured on the project's 2-core machine: wheels about 1 min, then about 6 min for a
# release build of candle-kernels, candle and this crate.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# CUDA 13.5's nvcc; cudarc 0.19.10 knows the bindings up to 13.4, which the 13.5 libraries serve
# (the same major version keeps its ABI), so the bindings are chosen explicitly.
# CUDA_NVCC_VERSION picks another nvcc (scripts/gpu-check.sh builds with 13.0, the GPU machine's
# version: its driver cannot load PTX from a newer nvcc); CUDA_TARGET_DIR another target folder.
NVCC_VERSION="${CUDA_NVCC_VERSION:-13.5.37}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
venv="${CUDA_WHEELS_VENV:-$root/target/cuda-toolkit/venv}"
target_dir="${CUDA_TARGET_DIR:-$root/target/cuda}"

if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv"
fi
# nvcc's own parts (nvvm's cicc writes the PTX, crt its headers) at nvcc's version: a newer nvvm
# beside an older ptxas writes PTX that ptxas rejects. The libraries come at nvcc's minor
# version (CCCL at most that: its numbers run behind), except cuBLAS and cuRAND, whose version
# numbers are their own (any CUDA 13 build).
minor="${NVCC_VERSION%.*}"
"$venv/bin/pip" install -q "nvidia-cuda-nvcc==$NVCC_VERSION" "nvidia-nvvm==$NVCC_VERSION" \
    "nvidia-cuda-crt==$NVCC_VERSION" "nvidia-cuda-runtime==$minor.*" "nvidia-cuda-nvrtc==$minor.*" \
    "nvidia-cuda-cccl<=$minor.9999" nvidia-cublas nvidia-curand
export CUDA_HOME
CUDA_HOME=$(cd "$venv"/lib/python3*/site-packages/nvidia/cu13 && pwd)
export PATH="$CUDA_HOME/bin:$PATH"
nvcc --version | tail -n 2

# The linker wants unversioned names: libcublas.so -> libcublas.so.13, ...
for lib in cudart cublas cublasLt curand nvrtc; do
    real=$(ls "$CUDA_HOME/lib/lib$lib.so."* | head -n 1)
    ln -sf "$(basename "$real")" "$CUDA_HOME/lib/lib$lib.so"
done

# The driver stub: every cu* driver entry point (cuInit, cuMemAlloc_v2, ...: "cu" then a capital)
# that cudarc's bindings for CUDARC_CUDA_VERSION declare, each returning CUDA_ERROR_STUB_LIBRARY.
stubs="$CUDA_HOME/lib/stubs"
if [ ! -f "$stubs/libcuda.so" ]; then
    mkdir -p "$stubs"
    # `|| true`: under pipefail a failed ls would end the script here, silently, before the fetch.
    bindings=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.10/src/driver/sys 2>/dev/null | head -n 1 || true)
    if [ -z "$bindings" ]; then
        cargo fetch --locked
        bindings=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.10/src/driver/sys | head -n 1)
    fi
    grep -rhoE '\bfn cu[A-Z][A-Za-z0-9_]*' "$bindings" | sed 's/^fn //' | sort -u \
        | awk '{ printf "int %s(void) { return 34; }\n", $1 }' >"$stubs/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
    # Only for running the binary here, without a driver, where CUDA then reports itself absent
    # (LD_LIBRARY_PATH=$stubs:$CUDA_HOME/lib); never put stubs/ on a GPU machine's library path.
    ln -sf libcuda.so "$stubs/libcuda.so.1"
    echo "driver stub: $(grep -c . "$stubs/libcuda_stub.c") entry points in $stubs/libcuda.so"
fi

if [ $# -eq 0 ]; then
    set -- --release --examples
fi
cargo build --locked --features cuda --target-dir "$target_dir" "$@"
echo "built with --features cuda (CUDA $NVCC_VERSION, compute capability $CUDA_COMPUTE_CAP) into $target_dir"
