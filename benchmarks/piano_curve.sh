#!/usr/bin/env bash
# Piano bits per sample against training window (issue 6 §5) at a budget long enough for the curve to settle, as a
# job that survives time limits: stopped by SIGTERM (LIMIT seconds here, or a scheduler's time limit), every run
# saves the state after its last step; run the script again with the same settings and the runs go on from there,
# until it prints results. The model is the YouTubeMix U-Net (D 64, pools 16 × 16, 3 blocks per stage, complex SSM),
# the same samples per step at every window length, the runs side by side on one GPU.
#
#   WORK=DIR PIANO=RECORDINGS bash benchmarks/piano_curve.sh    # every call until it prints results.csv
#
# RECORDINGS: a folder of long recordings (`mba data piano --dest D` makes D/piano; `mba data youtubemix` the real
# set). Writes under $WORK (default runs/piano-curve): sweep/ (`mba audio context-sweep`'s folder: the runs'
# checkpoints and logs, results.csv and context_scaling.png once done), sweep.log, status.txt (each call: exit code,
# wall time, validation bits per sample by step and peak memory per epoch of every run).
# Knobs: LENGTHS (8192,32768,131072), STEPS (1500), TOKENS (524288 samples per step), SEED (0), VAL_EVERY (250 steps),
# LIMIT (seconds before SIGTERM; default none), WORKERS (2 loader processes per run).
set -u
PIANO=$(realpath "${PIANO:?set PIANO to a folder of recordings, e.g. the piano folder of mba data piano}")
WORK=${WORK:-runs/piano-curve}
LENGTHS=${LENGTHS:-8192,32768,131072}; STEPS=${STEPS:-1500}; TOKENS=${TOKENS:-524288}; SEED=${SEED:-0}
VAL_EVERY=${VAL_EVERY:-250}; LIMIT=${LIMIT:-}; WORKERS=${WORKERS:-2}
source "$(dirname "$0")/limited_sweep.sh"
mkdir -p "$WORK"
cd "$WORK" || exit 1
runs=$(( $(tr -cd , <<< "$LENGTHS" | wc -c) + 1 ))
limited_sweep mba audio context-sweep --audio-dir "$PIANO" --lengths "$LENGTHS" --seeds "$SEED" --max-steps "$STEPS" \
    --tokens-per-step "$TOKENS" --parallel "$runs" --data.num_workers "$WORKERS" \
    --trainer.val_check_interval "$VAL_EVERY" --trainer.check_val_every_n_epoch null --out sweep
