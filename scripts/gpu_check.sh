#!/usr/bin/env bash
# The GPU check, one prepared run of at most ~5 minutes on the lent machine (its own python3: torch 2.11 +
# CUDA, Triton 3.6; nothing to install). Phases, each under its own time limit, each writing to $OUT as it
# goes so that a run cut short still reports:
#   1. smoke   versions, one Triton kernel vs its reference, a tiny model on the GPU vs the CPU
#   2. gpu     the `gpu`-marked tests (bf16 kernels, CUDA graphs, pinned inputs, FP8, engine on CUDA)
#   3. bench   random-weight models of real shapes built on the GPU (pagoda.bench.gpu_step)
#   4. kernels every Triton kernel test compiled on CUDA (the interpreter runs them in CI)
# Usage (repo root):  OUT=/some/dir scripts/gpu_check.sh      Dry run here:  scripts/gpu_check.sh --dry-run
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pagoda-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PAGODA_CPU_KERNELS=0  # the CPU references take the portable path: no C++ build on that machine
if ls .whl/*.whl >/dev/null 2>&1; then  # wheels carried for packages the machine lacks (device README)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

phase() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.log"
}

if [ "${1:-}" = "--dry-run" ]; then  # no GPU: what of this script runs on a CPU, under Triton's interpreter
    export TRITON_INTERPRET=1
    phase smoke 300 $PY scripts/gpu_smoke.py
    phase bench 300 $PY -m pagoda.bench.gpu_step --dry-run --out "$OUT/bench.json" --batches 1 3 \
        --prompt-len 20 --gen-len 3
    phase gpu 120 $PY -m pytest -q -m gpu tests/triton tests/test_fp8.py -p no:cacheprovider -rs
    exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1
phase smoke 45 $PY scripts/gpu_smoke.py
phase gpu 90 $PY -m pytest -q -m gpu tests/triton tests/test_fp8.py -p no:cacheprovider -rs --durations=10
phase bench 105 $PY -m pagoda.bench.gpu_step --out "$OUT/bench.json"
phase kernels 55 $PY -m pytest -q -m "not gpu" tests/triton -p no:cacheprovider -x --durations=5
cat "$SUMMARY"
