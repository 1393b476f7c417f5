#!/usr/bin/env bash
# Long generation on the GPU (issue 7 §4: "generation runs for long outputs (audio ≥ 60 s, DNA ≥ 1 Mb) without the
# state drifting to NaN"). Random-weight models at realistic sizes, generated through the public CLI with its
# finiteness checks on (every position's logits on the device, the recurrent states every 1,024 bases / 8,192
# samples): a NaN or inf anywhere makes `mba` exit 1 with "generation diverged: ... at position P of sequence R".
#
#   OUT=DIR bash benchmarks/long_generation.sh dna      # 1,048,576 bases, Mamba LM d_model 128 × 6 layers, CUDA graphs
#   OUT=DIR bash benchmarks/long_generation.sh audio    # 4 clips × 60 s from the YouTubeMix (piano) Mamba U-Net (3.7M)
#   OUT=DIR bash benchmarks/long_generation.sh          # both, one after the other
#
# Writes under $OUT (default ./longgen-out): env.txt, dna.log / audio.log (the CLI's output: progress, then the
# summary line with bases or samples per second, "logits and states finite throughout" and the largest |state| entry
# at the end), dna_check.txt / audio_check.txt (the outputs re-read: FASTA length and alphabet, per-clip
# log-likelihoods finite), dna.fa.gz, samples.tsv and spectrograms.png of the audio run, gpu_memory.csv (memory used every 5 s:
# it should stay flat), and summary.txt (one line per part: exit code, wall time, the CLI's summary).
#
# Measured on one H100 (BENCHMARKS.md, 2026-11-23): DNA 1,048,576 bases in 207 s (5,061 bases/s, batch 1); audio
# 4 × 60 s in 366 s (11,039 samples/s; the sc09 U-Net steps about 3× slower per sample). Each part is cut at
# PART_TIMEOUT seconds (default 540), its log then showing how far it got and how fast.
# Knobs: DNA_LENGTH (1048576), DNA_D_MODEL (128), DNA_LAYERS (6), AUDIO_PRESET (youtubemix; sc09 is the 1 s digits model),
# AUDIO_CONFIG (a JSON dict of AudioUNetConfig fields instead of a preset), AUDIO_SECONDS (60), AUDIO_N (4),
# AUDIO_PERSISTENT (1: generate in the persistent kernel, `mba audio generate --persistent`; default 0),
# PART_TIMEOUT, DEVICE (default: cuda if there is one).
set -u
OUT=${OUT:-longgen-out}
DNA_LENGTH=${DNA_LENGTH:-1048576}
DNA_D_MODEL=${DNA_D_MODEL:-128}
DNA_LAYERS=${DNA_LAYERS:-6}
AUDIO_PRESET=${AUDIO_PRESET:-youtubemix}
AUDIO_CONFIG=${AUDIO_CONFIG:-}
AUDIO_SECONDS=${AUDIO_SECONDS:-60}
AUDIO_N=${AUDIO_N:-4}
AUDIO_PERSISTENT=${AUDIO_PERSISTENT:-0}
PART_TIMEOUT=${PART_TIMEOUT:-540}
DEVICE_ARGS=()
[ -n "${DEVICE:-}" ] && DEVICE_ARGS=(--device "$DEVICE")
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(dna audio)

mkdir -p "$OUT"
WORK=$(mktemp -d)
{ date; nvidia-smi -L 2>&1; mba info 2>&1; echo "parts: ${PARTS[*]}"; env | grep -E '^(DNA_|AUDIO_|PART_TIMEOUT|DEVICE)' ; } \
    > "$OUT/env.txt"
MONITOR=""
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv -l 5 > "$OUT/gpu_memory.csv" 2>&1 &
    MONITOR=$!
fi

# A Lightning checkpoint of a random-weight model, as `mba dna generate` / `mba audio generate` load them.
write_checkpoint() {  # KIND PATH
    python - "$@" <<'PY'
import json, os, sys

import lightning
import torch

kind, path = sys.argv[1:3]
torch.manual_seed(0)
if kind == "dna":
    from mamba_bio_audio.pipelines.dna_pretrain import DNALanguageModel
    module = DNALanguageModel(model_size=None, config={"d_model": int(os.environ["DNA_D_MODEL"]),
                                                       "n_layer": int(os.environ["DNA_LAYERS"]), "vocab_size": 12})
else:
    from mamba_bio_audio.pipelines.audio_lm import AudioLM
    config = os.environ.get("AUDIO_CONFIG") or None
    module = AudioLM(arch="unet", preset=None if config else os.environ["AUDIO_PRESET"],
                     config=json.loads(config) if config else None)
torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__}, path)
print(f"{kind}: random-weight model, {sum(p.numel() for p in module.parameters()):,} parameters -> {path}")
PY
}
export DNA_D_MODEL DNA_LAYERS AUDIO_PRESET AUDIO_CONFIG

run_part() {  # NAME COMMAND...: run under the timeout, log, and add a line to summary.txt
    local name=$1; shift
    local start end rc
    start=$(date +%s.%N)
    timeout "$PART_TIMEOUT" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    local wall
    wall=$(python -c "print(f'{$end - $start:.1f}')")
    local last
    last=$(tr '\r' '\n' < "$OUT/$name.log" | grep -E "^(wrote|mba )" | tail -n 1)
    [ "$rc" = 124 ] && last="TIMED OUT after ${PART_TIMEOUT} s; last progress: $(tr '\r' '\n' < "$OUT/$name.log" | grep -E '%\|' | tail -n 1)"
    echo "$name: exit $rc, wall ${wall} s: $last" | tee -a "$OUT/summary.txt"
    return $rc
}

for part in "${PARTS[@]}"; do
    case $part in
    dna)
        write_checkpoint dna "$WORK/dna.ckpt" | tee -a "$OUT/summary.txt"
        run_part dna mba dna generate --ckpt "$WORK/dna.ckpt" --prompt ACGTACGTACGTACGT --length "$DNA_LENGTH" \
            --seed 0 --out "$WORK/dna.fa" "${DEVICE_ARGS[@]}"
        [ -f "$WORK/dna.fa" ] && gzip -c "$WORK/dna.fa" > "$OUT/dna.fa.gz"
        [ -f "$WORK/dna.fa" ] && python - "$WORK/dna.fa" "$DNA_LENGTH" <<'PY' | tee "$OUT/dna_check.txt"
import sys
lines = open(sys.argv[1]).read().splitlines()
sequence = "".join(lines[1:])
generated = sequence[16:]
print(f"{lines[0]}: {len(sequence):,} letters ({len(generated):,} generated, {int(sys.argv[2]):,} asked); "
      f"alphabet of the generated part {sorted(set(generated))}; "
      f"GC {sum(generated.count(b) for b in 'GC') / max(len(generated), 1):.3f}")
PY
        ;;
    audio)
        write_checkpoint audio "$WORK/audio.ckpt" | tee -a "$OUT/summary.txt"
        run_part audio mba audio generate --ckpt "$WORK/audio.ckpt" --n "$AUDIO_N" --seconds "$AUDIO_SECONDS" \
            --seed 0 --out "$WORK/audio" "${DEVICE_ARGS[@]}" $([ "$AUDIO_PERSISTENT" = 1 ] && echo --persistent)
        if [ -f "$WORK/audio/samples.tsv" ]; then
            cp "$WORK/audio/samples.tsv" "$WORK/audio/spectrograms.png" "$OUT/" 2>/dev/null
            python - "$WORK/audio" <<'PY' | tee "$OUT/audio_check.txt"
import math, sys
from pathlib import Path

import soundfile

folder = Path(sys.argv[1])
rows = [line.split("\t") for line in (folder / "samples.tsv").read_text().splitlines()[1:]]
finite = all(math.isfinite(float(r[1])) for r in rows)
for name, loglik, bits in rows:
    wave, rate = soundfile.read(folder / name)
    print(f"{name}: {len(wave) / rate:.2f} s at {rate} Hz, log-likelihood {loglik} nats ({bits} bits per sample), "
          f"peak |x| {abs(wave).max():.3f}")
print("all log-likelihoods finite" if finite else "NON-FINITE log-likelihood")
PY
        fi
        ;;
    *)
        echo "unknown part $part (dna or audio)" >&2
        ;;
    esac
done

[ -n "$MONITOR" ] && kill "$MONITOR" 2>/dev/null
rm -rf "$WORK"
echo "logs in $OUT"; cat "$OUT/summary.txt"
