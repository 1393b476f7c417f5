#!/usr/bin/env bash
# Species classification at one long window (issue 5: 2^18 bases and beyond) on the simulated great apes, as a run
# that survives time limits: stopped by SIGTERM (LIMIT seconds here, or a scheduler's time limit), it saves the state
# after its last step; run the script again with the same settings and the run goes on from there, ending exactly
# where one uninterrupted run would. The model is the best one measured at 2^16 (BENCHMARKS.md): RC-equivariant
# Mamba, 4 × 64, max pooling, lr 1e-3, with gradient checkpointing (16 windows of 2^18 bases did not fit in 80 GB
# without it) and the length warm-up one doubling per epoch from START_LEN.
#
#   WORK=DIR bash benchmarks/species_long.sh            # first call, and every call after it until it prints results
#
# Writes under $WORK (default runs/species-long): apes/ (the simulation, made once: `mba data simulate-apes
# --te-rate 100`), sweep/ (`mba dna context-sweep`'s folder: the run's checkpoints, logs with seq_len and
# train/peak_memory_gib per epoch, results.csv and context_scaling.png once it is done), status.txt (each call: exit
# code, wall time, the validation accuracies so far).
# Knobs: LENGTH (262144), BATCH (16), STEPS (2000), START_LEN (8192), SAMPLES_PER_EPOCH (4800: 300 steps per stage
# at batch 16), SEED (0), EVAL (256 windows), VAL_EVERY (300 steps), LIMIT (seconds before SIGTERM; default none),
# WORKERS (2).
set -u
WORK=${WORK:-runs/species-long}
LENGTH=${LENGTH:-262144}; BATCH=${BATCH:-16}; STEPS=${STEPS:-2000}; START_LEN=${START_LEN:-8192}
SAMPLES_PER_EPOCH=${SAMPLES_PER_EPOCH:-4800}; SEED=${SEED:-0}; EVAL=${EVAL:-256}; VAL_EVERY=${VAL_EVERY:-300}
LIMIT=${LIMIT:-}; WORKERS=${WORKERS:-2}
source "$(dirname "$0")/limited_sweep.sh"
mkdir -p "$WORK"
cd "$WORK" || exit 1
if [ ! -f apes/simulation.json ]; then
    mba data simulate-apes --dest apes --te-rate 100 > simulate.log 2>&1 || { tail simulate.log; exit 1; }
fi
SWEEP=(mba dna context-sweep --task species --data-dir apes --lengths "$LENGTH" --seeds "$SEED" --batch-size "$BATCH"
       --max-steps "$STEPS" --d-model 64 --n-layer 4 --model.lr 1e-3 --model.warmup 0.05
       --model.rc_equivariant true --model.pooling max --model.gradient_checkpointing true
       --length_warmup.start_len "$START_LEN" --length_warmup.epochs_per_stage 1
       --data.samples_per_epoch "$SAMPLES_PER_EPOCH" --data.eval_samples "$EVAL" --data.num_workers "$WORKERS"
       --trainer.val_check_interval "$VAL_EVERY" --trainer.check_val_every_n_epoch null --out sweep)
limited_sweep "${SWEEP[@]}"
