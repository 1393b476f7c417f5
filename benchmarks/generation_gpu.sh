#!/usr/bin/env bash
# Audio generation on one GPU (issue 6 §3), in one go: the persistent U-Net kernel's GPU tests, then
# `mba bench --generation` (one Mamba block's step; the persistent kernel at every launch shape of GEN_VARIANTS;
# the SC09 U-Net, flat Mamba and Transformer++ through `sample_audio`), each part's output in $OUT.
#
#   OUT=DIR bash benchmarks/generation_gpu.sh
#
# Writes under $OUT (default ./generation-out): env.txt, tests.log, bench.log, summary.txt (each part's exit code
# and wall time). Knobs: BATCHES (1,64,256), CLIP_SECONDS (1: clip length), VARIANTS (mba bench's --gen-variants
# default), PART_TIMEOUT (900 s per part).
set -u
OUT=${OUT:-generation-out}
BATCHES=${BATCHES:-1,64,256}
CLIP_SECONDS=${CLIP_SECONDS:-1}
PART_TIMEOUT=${PART_TIMEOUT:-900}
mkdir -p "$OUT"
{ date; nvidia-smi -L 2>&1
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/env.txt" 2>&1
: > "$OUT/summary.txt"
part() {  # name, command...: run with a time limit, log its output, note its exit code and wall time
    local name=$1 start=$SECONDS
    shift
    timeout "$PART_TIMEOUT" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}
part tests python3 -m pytest -q tests/test_unet_generate.py tests/test_cuda.py -k "unet or generation"
BENCH=(python3 -m mamba_bio_audio.cli bench --generation --device cuda --gen-batches "$BATCHES"
       --gen-seconds "$CLIP_SECONDS")
[ -n "${VARIANTS:-}" ] && BENCH+=(--gen-variants "$VARIANTS")
part bench "${BENCH[@]}"
