#!/usr/bin/env bash
# Builds the framework-free CUDA harness library (no TensorFlow needed).
#
#   bash ops/harness/build.sh [OUT_DIR]        # default OUT_DIR: ops/harness/build/
#
# Full build (nvcc): harness_api.cu.cc + ../kernels/roi_pooling.cu.cc + ../kernels/nms.cu.cc
# (device code, -fmad=false like setup.py) and ../kernels/roi_pooling_cpu.cc +
# ../kernels/nms_cpu.cc (host code, -ffp-contract=off) -> OUT_DIR/libharness.so, with the
# CUDA runtime linked statically.
#
# Environment:
#   NVCC=path              the CUDA compiler (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc)
#   HARNESS_NATIVE=1       compile for the GPU(s) of this machine only (-arch=native): fastest,
#                          use it on the GPU machine
#   HARNESS_ARCHS=80,90    override the SM list (PTX is added for the highest one). Default:
#                          75,80,86,89,90 with CUDA >= 13 (no Volta there), 70,80,86,89,90 before
#   HARNESS_NVCC_THREADS=N pass --threads N to nvcc (parallel per-arch compilation; off by default)
#   HARNESS_CPU_ONLY=1     no CUDA at all: g++ compiles the CPU kernels and the CPU part of the
#                          shim into OUT_DIR/libharness_cpu.so (for `run_harness.py --cpu-only`)
#   CXX=g++                the host compiler of the CPU-only variant
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KERNELS="$(cd "$HERE/../kernels" && pwd)"
OUT="${1:-$HERE/build}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

SHIM="$HERE/harness_api.cu.cc"
CUDA_SOURCES=("$KERNELS/roi_pooling.cu.cc" "$KERNELS/nms.cu.cc")
CPU_SOURCES=("$KERNELS/roi_pooling_cpu.cc" "$KERNELS/nms_cpu.cc")

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "[harness build] $*"; }

T0="$(now)"

if [[ "${HARNESS_CPU_ONLY:-0}" == "1" ]]; then
  CXX="${CXX:-g++}"
  LIB="$OUT/libharness_cpu.so"
  log "CPU-only variant with $CXX -> $LIB"
  "$CXX" -std=c++17 -O3 -fPIC -ffp-contract=off -shared -DHARNESS_CPU_ONLY -I"$KERNELS" \
    -x c++ "$SHIM" -x none "${CPU_SOURCES[@]}" -o "$LIB.tmp"
  mv -f "$LIB.tmp" "$LIB"
  log "done in $(elapsed "$T0") s"
  exit 0
fi

if [[ -z "${NVCC:-}" ]]; then
  NVCC=nvcc
  if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    NVCC=/usr/local/cuda/bin/nvcc
  fi
fi
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "[harness build] error: no CUDA compiler '$NVCC' (set NVCC=/path/to/nvcc, or HARNESS_CPU_ONLY=1)" >&2
  exit 2
fi
VERSION="$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p' | head -n 1)"
if [[ -z "$VERSION" ]]; then
  echo "[harness build] error: cannot read the CUDA version from '$NVCC --version'" >&2
  exit 2
fi
read -r CUDA_MAJOR CUDA_MINOR <<<"$VERSION"

ARCH_FLAGS=()
if [[ "${HARNESS_NATIVE:-0}" == "1" ]]; then
  ARCH_FLAGS=(-arch=native)
  ARCH_TEXT="native"
else
  if [[ -n "${HARNESS_ARCHS:-}" ]]; then
    IFS=', ' read -r -a ARCHS <<<"${HARNESS_ARCHS}"
  elif (( CUDA_MAJOR >= 13 )); then
    ARCHS=(75 80 86 89 90)
  else
    ARCHS=(70 80 86 89 90)
  fi
  MAX=0
  for a in "${ARCHS[@]}"; do
    [[ -z "$a" ]] && continue
    ARCH_FLAGS+=(-gencode "arch=compute_${a},code=sm_${a}")
    (( a > MAX )) && MAX=$a
  done
  ARCH_FLAGS+=(-gencode "arch=compute_${MAX},code=compute_${MAX}")
  ARCH_TEXT="$(printf 'sm_%s ' "${ARCHS[@]}")compute_${MAX}"
fi
THREAD_FLAGS=()
if [[ -n "${HARNESS_NVCC_THREADS:-}" ]]; then
  THREAD_FLAGS=(--threads "${HARNESS_NVCC_THREADS}")
fi

OBJ="$OUT/obj"
mkdir -p "$OBJ"
LIB="$OUT/libharness.so"
log "CUDA ${CUDA_MAJOR}.${CUDA_MINOR} ($NVCC), archs: $ARCH_TEXT -> $LIB"

CU_FLAGS=(-std=c++17 -O3 -fmad=false -Xcompiler -fPIC -I"$KERNELS" "${ARCH_FLAGS[@]}" "${THREAD_FLAGS[@]}")
OBJECTS=()
for src in "$SHIM" "${CUDA_SOURCES[@]}"; do
  obj="$OBJ/$(basename "$src" .cc).o"
  t="$(now)"
  "$NVCC" "${CU_FLAGS[@]}" -x cu -c "$src" -o "$obj"
  log "  $(basename "$src"): $(elapsed "$t") s"
  OBJECTS+=("$obj")
done
for src in "${CPU_SOURCES[@]}"; do
  obj="$OBJ/$(basename "$src" .cc).o"
  t="$(now)"
  "$NVCC" -std=c++17 -O3 -Xcompiler -fPIC -Xcompiler -ffp-contract=off -I"$KERNELS" -c "$src" -o "$obj"
  log "  $(basename "$src"): $(elapsed "$t") s"
  OBJECTS+=("$obj")
done
# --exclude-libs: keep the static CUDA runtime's symbols private to the library, so it cannot
# interpose on (or be interposed by) another CUDA runtime loaded in the same process.
"$NVCC" -shared -cudart static -Xlinker --exclude-libs,ALL "${ARCH_FLAGS[@]}" "${OBJECTS[@]}" -o "$LIB.tmp"
mv -f "$LIB.tmp" "$LIB"
log "done in $(elapsed "$T0") s"
