# issue 7 §2: DNA pretraining throughput on 1 and 2 GPUs at L = 2^16 and 2^20, and the scaling efficiency.
#
# Weak scaling: the per-GPU batch is the same on 1 and 2 GPUs (2^20 tokens per GPU and step: 16 × 2^16, 1 × 2^20,
# as in BENCHMARKS.md's model-level table), so 2 GPUs take twice the global batch per step. The figure is the global
# training tokens/s from what `mba dna pretrain` logs (TokenThroughput: Lightning's ThroughputMonitor, both ranks'
# tokens): over all steps after the first WARM (from the logged cumulative train/lengths and train/time), with the
# median of the logged train/tokens_per_sec (a rate over the last WINDOW steps) beside it as a check;
# speed-up = tokens/s(2 GPUs) / tokens/s(1 GPU), efficiency = speed-up / 2 (target speed-up ≥ 1.8).
# Model and optimizer of the shipped hg38_mamba_6x128_L* presets (6 Mamba blocks, width 128, AdamW lr 2e-3),
# bf16-mixed, DDP (NCCL), no validation, no length warm-up, on a synthetic random genome (GENOME_MB, 4 records,
# 98% of each for training: 192 Mb holds one epoch of up to 88 steps × 2 GPUs × 2^20 tokens, so no epoch boundary
# falls inside the timed steps; raise GENOME_MB with STEPS).
#
# On a machine with 2 GPUs and the project installed (`make bench-ddp`), from the repository root:
#   bash benchmarks/ddp_throughput.sh 16      # part 1: L = 2^16 on 1 then 2 GPUs (~3 min)
#   bash benchmarks/ddp_throughput.sh 20      # part 2: L = 2^20; on a still-warm machine the table has both parts
#   bash benchmarks/ddp_throughput.sh 16 20   # both in one call (~6 min; each call must end within 600 s)
# Writes under $OUT: ddp_throughput.{md,csv} (the table), results.jsonl, logs/*.log (every run's output),
# metrics/*.csv (every run's metrics.csv), smi/*.csv (nvidia-smi samples: memory, utilisation).
#
# Overrides (environment): STEPS (80) WINDOW (20) WARM (20) LOG_EVERY (5) GPUS ("1 2") TOKENS_PER_GPU (1048576)
# GENOME_MB (192) WORKERS (3, DataLoader workers per rank) ACCEL (gpu) PRECISION (bf16-mixed; 32-true on cpu)
# MODEL (JSON) LR (0.002) RUN_TIMEOUT (270 s per run) WORK (/tmp/ddp_throughput) SETUP (a script to source
# first). A CPU check of the whole script (2 gloo processes):
#   ACCEL=cpu STEPS=8 WINDOW=3 WARM=2 LOG_EVERY=1 TOKENS_PER_GPU=1024 GENOME_MB=2 WORKERS=0 \
#     MODEL='{"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4}' OUT=/tmp/tp_out \
#     bash benchmarks/ddp_throughput.sh 6 8
set -u
cd "$(dirname "$0")/.."
# SETUP: a script to source first (the project's device runs install wheels and the project with one)
if [ -n "${SETUP:-}" ]; then source "$SETUP" || exit 1; fi
OUT=${OUT:-/tmp/ddp_throughput_out}
WORK=${WORK:-/tmp/ddp_throughput}
STEPS=${STEPS:-80}; WINDOW=${WINDOW:-20}; WARM=${WARM:-20}; LOG_EVERY=${LOG_EVERY:-5}; GPUS=${GPUS:-"1 2"}
TOKENS_PER_GPU=${TOKENS_PER_GPU:-1048576}; GENOME_MB=${GENOME_MB:-192}; WORKERS=${WORKERS:-3}; ACCEL=${ACCEL:-gpu}
PRECISION=${PRECISION:-$([ "$ACCEL" = cpu ] && echo 32-true || echo bf16-mixed)}
MODEL=${MODEL:-'{"d_model": 128, "n_layer": 6, "vocab_size": 12}'}; LR=${LR:-0.002}; RUN_TIMEOUT=${RUN_TIMEOUT:-270}
HELP=benchmarks/ddp_throughput.py
EXPS=${*:-16 20}
mkdir -p "$OUT/logs" "$OUT/metrics" "$OUT/smi" "$WORK"
python3 -c "import torch, lightning, pysam, jsonargparse; print('torch', torch.__version__, 'lightning', lightning.__version__, 'pysam', pysam.__version__, 'GPUs', torch.cuda.device_count())"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"

GENOME=$WORK/genome.fa
python3 $HELP genome "$GENOME" "$GENOME_MB" 4 || exit 1
mba data index "$GENOME" > /dev/null || exit 1

for exp in $EXPS; do
  L=$((1 << exp))
  BATCH=$((TOKENS_PER_GPU / L)); [ "$BATCH" -lt 1 ] && BATCH=1
  for g in $GPUS; do
    name=L${exp}_g${g}
    run=$WORK/runs/$name
    rm -rf "$run"
    strategy=$([ "$g" -gt 1 ] && echo ddp || echo auto)
    echo "== L=2^$exp ($L) batch/GPU $BATCH, $g device(s), $STEPS steps"
    smi_pid=
    if command -v nvidia-smi > /dev/null; then
      nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 > "$OUT/smi/$name.csv" 2>/dev/null &
      smi_pid=$!
    fi
    start=$(date +%s.%N)
    timeout -k 10 "$RUN_TIMEOUT" mba dna pretrain --fasta "$GENOME" --seq-len "$L" --batch-size "$BATCH" \
      --max-steps "$STEPS" --out "$run" --model.config "$MODEL" --model.lr "$LR" \
      --trainer.accelerator "$ACCEL" --trainer.devices "$g" --trainer.strategy "$strategy" \
      --trainer.precision "$PRECISION" --trainer.limit_val_batches 0 --trainer.num_sanity_val_steps 0 \
      --trainer.log_every_n_steps "$LOG_EVERY" --trainer.enable_progress_bar false \
      --trainer.enable_model_summary false --throughput.window "$WINDOW" --length_warmup.start_len "$L" \
      --data.num_workers "$WORKERS" --data.max_eval_windows 2 --data.split_fractions "[0.98, 0.01, 0.01]" \
      > "$OUT/logs/$name.log" 2>&1
    rc=$?
    wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
    [ -n "$smi_pid" ] && kill "$smi_pid" 2>/dev/null
    cp "$run"/logs/version_0/metrics.csv "$OUT/metrics/$name.csv" 2>/dev/null
    if [ $rc != 0 ]; then echo "exit $rc after ${wall}s:"; tail -25 "$OUT/logs/$name.log"; fi
    python3 $HELP summarise "$run" "$exp" "$g" "$BATCH" "$wall" "$rc" "$WARM" "$WINDOW" "$WORK/results.jsonl" \
      "$OUT/smi/$name.csv"
  done
done
cp "$WORK/results.jsonl" "$OUT/results.jsonl"
echo "global training tokens/s (weak scaling: the same batch per GPU; efficiency = speed-up / GPUs):"
python3 $HELP table "$WORK/results.jsonl" "$OUT/ddp_throughput"
