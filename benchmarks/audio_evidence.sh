#!/usr/bin/env bash
# Issue 6 §5 in one GPU run, on a spoken-digits folder in the SC09 layout (`mba data spoken-digits` or `mba data
# sc09`): the digit classifier, the Mamba U-Net, the flat Mamba and the Transformer++ (about 6.3M parameters each,
# the same steps) trained side by side, then the diffusion model; N_CLIPS one-second clips generated from each model
# as soon as it is trained; every generated set and the real train/test clips scored by the same classifier (FID, IS,
# mIS, AM); optionally the generation-speed table on the then quiet GPU.
#
#   OUT=DIR bash benchmarks/audio_evidence.sh DIGITS_DIR
#
# Takes 25–30 minutes on one H100 80GB (4 trainings share it: about 77 GB, no room for a fifth, so the diffusion model
# trains after the U-Net). Run it in the background and follow DIR/summary.txt. Writes under $OUT (at most 8 files):
# summary.txt (each step's exit code, the optimizer steps each training reached: a MAX_TIME that stops a model short
# of STEPS shows there; the test metrics, generation rates), scores.tsv (`mba audio evaluate`),
# spec_{unet,mamba,transformer,diffusion}.png (spectrograms of generated clips), logs.tgz (every log, metrics.csv and
# samples.tsv), generation.txt (GEN_BENCH=1).
#
# Knobs: STEPS (400, the LMs) CLF_STEPS (1500) DIFF_STEPS (2000; 0 leaves the diffusion model out)
# MAX_TIME (00:00:14:00, each training) N_CLIPS (256)
# GEN_SECONDS (1) TRANSFORMER_GEN_BATCH (64: its KV cache at 256 clips does not fit beside running trainings)
# BATCH (16 clips per step, LMs and diffusion) WORKERS (2) WORK (/tmp/audio_evidence, the runs) GEN_BENCH (0)
# MAMBA_CONFIG, TRANSFORMER_CONFIG (JSON), UNET_ARGS (--preset sc09): the three LMs. A CPU check of the plumbing
# (tiny models, a few minutes):
#   STEPS=2 CLF_STEPS=2 DIFF_STEPS=2 BATCH=2 N_CLIPS=2 GEN_SECONDS=0.01 MAMBA_CONFIG='{"d_model": 16, "n_layer": 1}' \
#   TRANSFORMER_CONFIG='{"d_model": 16, "n_layer": 1, "n_head": 2}' UNET_ARGS='--model.config {"d_model":8,"n_layers":1}' \
#   OUT=/tmp/ae bash benchmarks/audio_evidence.sh DIGITS
set -u
DIGITS=$(realpath "$1")
OUT=$(realpath -m "${OUT:-audio-evidence}")
STEPS=${STEPS:-400}; CLF_STEPS=${CLF_STEPS:-1500}; DIFF_STEPS=${DIFF_STEPS:-2000}; MAX_TIME=${MAX_TIME:-00:00:14:00}
N_CLIPS=${N_CLIPS:-256}; GEN_SECONDS=${GEN_SECONDS:-1}; TRANSFORMER_GEN_BATCH=${TRANSFORMER_GEN_BATCH:-64}
MAMBA_CONFIG=${MAMBA_CONFIG:-'{"d_model": 256, "n_layer": 14}'}
TRANSFORMER_CONFIG=${TRANSFORMER_CONFIG:-'{"d_model": 256, "n_layer": 8, "n_head": 4}'}
UNET_ARGS=${UNET_ARGS:---preset sc09}
BATCH=${BATCH:-16}; WORKERS=${WORKERS:-2}; WORK=${WORK:-/tmp/audio_evidence}; GEN_BENCH=${GEN_BENCH:-0}
mkdir -p "$OUT" "$WORK"
cd "$WORK" || exit 1
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
note() { echo "$(date +%H:%M:%S) $*" | tee -a "$SUMMARY"; }
best() {  # the best checkpoint by validation, else the last (a run too short to validate)
    ls "$1"/checkpoints/best-*.ckpt "$1"/checkpoints/last.ckpt 2> /dev/null | head -n 1
}

steps_reached() {  # NAME: the last optimizer step in the run's metrics (a time cap can stop a run short of its steps)
    python3 -c 'import csv, glob, sys
steps = [int(r["step"]) for f in glob.glob(sys.argv[1] + "/logs/version_*/metrics.csv")
         for r in csv.DictReader(open(f)) if r.get("step")]
print(max(steps) if steps else "no")' "$1"
}

train() {  # NAME COMMAND...: train, then note the exit code, the steps reached and the test lines
    local name=$1; shift
    "$@" --sc09 "$DIGITS" --out "$name" --data.num_workers "$WORKERS" --trainer.max_time "$MAX_TIME" \
        > "$name.log" 2>&1
    local code=$?
    note "$name: training exit $code, $(steps_reached "$name") steps ($(tr '\r' '\n' < "$name.log" | grep -E "^test " \
        | tr '\n' ' '))"
}

generate() {  # NAME BATCH [CKPT]: N_CLIPS clips from the best checkpoint (or CKPT)
    local ckpt=${3:-$(best "$1")}
    if [ -z "$ckpt" ]; then note "$1: no checkpoint to generate from"; return 1; fi
    mba audio generate --ckpt "$ckpt" --n "$N_CLIPS" --batch-size "$2" --seconds "$GEN_SECONDS" --seed 1 \
        --out "gen_$1" > "gen_$1.log" 2>&1
    note "$1: generation exit $? ($(tr '\r' '\n' < "gen_$1.log" | grep -E "^wrote" | tail -n 1))"
}

lm() {  # NAME ARCH-ARGS...: an autoregressive model, then its clips
    local name=$1; shift
    train "$name" mba audio train "$@" --batch-size "$BATCH" --max-steps "$STEPS"
}

note "audio evidence on $DIGITS: $STEPS steps per LM, $N_CLIPS clips of $GEN_SECONDS s per model"
train clf mba audio train-classifier --batch-size 32 --max-steps "$CLF_STEPS" &
(lm mamba --arch mamba --model.config "$MAMBA_CONFIG"; generate mamba "$N_CLIPS") &
(lm transformer --arch transformer --model.config "$TRANSFORMER_CONFIG"
 generate transformer "$TRANSFORMER_GEN_BATCH") &
(lm unet --arch unet ${UNET_ARGS}; generate unet "$N_CLIPS"
 if [ "$DIFF_STEPS" -gt 0 ]; then
     train diffusion mba audio train-diffusion --batch-size "$BATCH" --max-steps "$DIFF_STEPS"
     generate diffusion 128 diffusion/checkpoints/last.ckpt
 fi) &
wait

sets=""
for s in gen_unet gen_mamba gen_transformer gen_diffusion; do
    [ "$(ls "$s"/*.wav 2> /dev/null | wc -l)" -gt 0 ] && sets="$sets $s"
    [ -f "$s/spectrograms.png" ] && cp "$s/spectrograms.png" "$OUT/spec_${s#gen_}.png"
done
# shellcheck disable=SC2086
mba audio evaluate --classifier "$(best clf)" --sc09 "$DIGITS" --generated $sets --out "$OUT/scores.tsv" \
    > evaluate.log 2>&1
note "evaluate: exit $?"
cat "$OUT/scores.tsv" >> "$SUMMARY" 2> /dev/null
tar czf "$OUT/logs.tgz" ./*.log $(find . -name metrics.csv) gen_*/samples.tsv 2> /dev/null
if [ "$GEN_BENCH" = 1 ]; then
    mba bench --generation --gen-seconds 0.5 > "$OUT/generation.txt" 2>&1
    note "generation benchmark: exit $?"
fi
note "done"
