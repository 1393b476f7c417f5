"""Context-length sweep (`mba dna context-sweep`): does a longer context lower held-out bits per base?

One `mba dna pretrain` run per (length, seed), each a separate process (several can share a GPU), all with the same
tokens per step and steps, so every length sees the same number of training tokens. Every run is evaluated on the
same bases: valid/test windows end every `scored_len` bases and only their last `scored_len` targets are scored
(`DNAPretrainData.eval_scored_len`), the rest of a window being context. Without that, a long window scores
different (and far fewer) bases than a short one and the comparison mixes context with which bases are scored.

Out folder:
    L{length}-seed{seed}/     each run's folder (checkpoints, CSV and TensorBoard logs, run.log, result.json)
    results.csv               one row per run: seq_len, seed, test and best valid bits per base, wall seconds
    context_scaling.png       test bits per base against length: every seed, the mean and its standard error

A run whose result.json exists (with the same settings) is not repeated, so an interrupted sweep continues where it
stopped.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from mamba_bio_audio.io import atomic_path


class Task(NamedTuple):
    command: str      # the `mba dna` task each run is (or "audio": `mba audio train --audio-dir`)
    metric: str       # logged name, without the split prefix
    better: str       # "min" or "max"
    ylabel: str
    unit: str = "bases"


TASKS = {"pretrain": Task("pretrain", "bits_per_base", "min", "held-out bits per base"),
         "species": Task("species", "accuracy", "max", "test accuracy"),
         "audio": Task("audio", "bits_per_sample", "min", "test bits per sample", "samples")}


def result_fields(task: Task) -> list[str]:
    return ["seq_len", "seed", f"test_{task.metric}", f"best_valid_{task.metric}", "steps", "wall_s"]


def run_command(task: Task, source: str, seq_len: int, seed: int, batch_size: int, max_steps: int,
                scored_len: int, d_model: int, n_layer: int, out: Path, extra: list[str]) -> list[str]:
    """The `mba dna pretrain` (source: a FASTA), `mba dna species` (source: a genome folder) or `mba audio train`
    (source: a folder of recordings; a Mamba U-Net of the YouTubeMix layout, n_layer blocks per stage) command line
    of one run of the sweep."""
    common = ["--max-steps", str(max_steps), "--out", str(out), "--seed_everything", str(seed), "--data.seed",
              str(seed), "--trainer.enable_progress_bar", "false"]
    if task.command == "audio":
        unet = json.dumps({"d_model": d_model, "n_layers": n_layer, "pools": [16, 16], "complex_ssm": True})
        return [sys.executable, "-m", "mamba_bio_audio.cli", "audio", "train", "--audio-dir", str(source),
                "--sample-len", str(seq_len), "--tokens-per-batch", str(batch_size * seq_len), *common,
                "--model.preset", "null", "--model.config", unet, *extra]
    model = json.dumps({"d_model": d_model, "n_layer": n_layer, "vocab_size": 12})
    data = (["--fasta", str(source), "--data.eval_scored_len", str(scored_len)] if task.command == "pretrain"
            else ["--data-dir", str(source)])
    return [sys.executable, "-m", "mamba_bio_audio.cli", "dna", task.command, *data, "--seq-len", str(seq_len),
            "--batch-size", str(batch_size), *common, "--model.model_size", "null", "--model.config", model, *extra]


def logs_in_order(run_dir: Path, name: str) -> list[Path]:
    """RUN/logs/version_N/name for every version N, oldest first (a resumed run logs into a new version)."""
    versions = sorted((run_dir / "logs").glob(f"version_*/{name}"), key=lambda p: int(p.parent.name[8:]))
    if not versions:
        raise ValueError(f"{run_dir}: no logs/version_*/{name}")
    return versions


def newest_log(run_dir: Path, name: str) -> Path:
    """RUN/logs/version_N/name of the newest version N."""
    return logs_in_order(run_dir, name)[-1]


def logged_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of RUN/logs/version_N/metrics.csv of every version N, oldest first (an interrupted run's, then those
    of its resumptions)."""
    rows = []
    for log in logs_in_order(run_dir, "metrics.csv"):
        with open(log, newline="") as handle:
            rows += csv.DictReader(handle)
    return rows


def read_run_metrics(run_dir: Path, task: Task = TASKS["pretrain"]) -> dict[str, float]:
    """The test metric (the last logged), the best validation value and the optimizer steps taken (the largest logged
    step: fewer than asked when a time limit stopped the run) of a finished run, from the CSV logs of all its
    versions (`logged_rows`)."""
    test, valid, steps = [], [], 0
    for row in logged_rows(run_dir):
        if row.get("step"):
            steps = max(steps, int(row["step"]))
        if row.get(f"test/{task.metric}"):
            test.append(float(row[f"test/{task.metric}"]))
        if row.get(f"valid/{task.metric}"):
            valid.append(float(row[f"valid/{task.metric}"]))
    if not test:
        raise ValueError(f"{newest_log(run_dir, 'metrics.csv')}: no test/{task.metric} (did the run finish?)")
    best = (min if task.better == "min" else max)(valid) if valid else math.nan
    return {f"test_{task.metric}": test[-1], f"best_valid_{task.metric}": best, "steps": steps}


_TERMINATED = threading.Event()  # set by SIGTERM during a sweep: runs not yet started stay so


def _one_run(command: list[str], run_dir: Path, seq_len: int, seed: int, task: Task) -> dict:
    """Run one (length, seed) command in run_dir, or reuse its finished result; an unfinished run there (killed,
    interrupted, out of time) with the same settings continues from its last checkpoint. command.json records the
    settings and the wall seconds of the attempts that ended (a killed sweep's last one is lost); result.json adds
    the metrics and their total."""
    result_path, started_path = run_dir / "result.json", run_dir / "command.json"
    settings = command[3:]  # without the interpreter: the same run from another environment is still the same run
    records = {path: json.loads(path.read_text()) for path in (result_path, started_path) if path.exists()}
    for path, recorded in records.items():
        if recorded.get("command") != settings:
            state = "a finished" if path == result_path else "an unfinished"
            raise ValueError(f"{run_dir} holds {state} run with other settings ({path}); use another --out or "
                             "remove that folder")
    if result_path in records:
        return records[result_path]
    if _TERMINATED.is_set():
        raise RuntimeError(f"run L={seq_len} seed={seed} not started: the sweep was stopped by SIGTERM")
    last = run_dir / "checkpoints" / "last.ckpt"
    if started_path in records and last.exists():
        command = [*command, "--resume", str(last)]
    wall = records.get(started_path, {}).get("wall_s", 0.0)

    def record_start(wall_s: float) -> None:
        with atomic_path(started_path) as tmp:
            tmp.write_text(json.dumps({"command": settings, "wall_s": wall_s}))

    run_dir.mkdir(parents=True, exist_ok=True)
    record_start(wall)
    start = time.perf_counter()
    with open(run_dir / "run.log", "a") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    wall += time.perf_counter() - start
    if code:
        record_start(wall)
        raise RuntimeError(f"run L={seq_len} seed={seed} failed (exit {code}); see {run_dir / 'run.log'}")
    result = {"seq_len": seq_len, "seed": seed, **read_run_metrics(run_dir, task), "wall_s": round(wall, 1),
              "command": settings}
    with atomic_path(result_path) as tmp:
        tmp.write_text(json.dumps(result))
    return result


def summarise(rows: list[dict], task: Task = TASKS["pretrain"]) -> list[dict]:
    """Per length: number of seeds, mean and standard error of the test metric."""
    table = []
    for seq_len in sorted({r["seq_len"] for r in rows}):
        values = [r[f"test_{task.metric}"] for r in rows if r["seq_len"] == seq_len]
        sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        table.append({"seq_len": seq_len, "seeds": len(values), "mean": statistics.fmean(values), "sem": sem})
    return table


def plot_context_scaling(rows: list[dict], path: Path, title: str, task: Task = TASKS["pretrain"],
                         chance: float | None = None) -> None:
    """The test metric against length (log2 axis): one dot per seed, the mean ± standard error; an accuracy with
    its `chance` level drawn, on the whole 0–1 axis (a zoomed axis makes noise at chance look like a trend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarise(rows, task)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=150)
    ax.scatter([r["seq_len"] for r in rows], [r[f"test_{task.metric}"] for r in rows], s=14, color="0.6",
               label="one seed", zorder=2)
    ax.errorbar([t["seq_len"] for t in table], [t["mean"] for t in table],
                yerr=[0 if math.isnan(t["sem"]) else t["sem"] for t in table], marker="o", capsize=3,
                color="tab:blue", label="mean ± s.e.", zorder=3)
    if chance is not None:
        ax.axhline(chance, linestyle="--", color="0.5", linewidth=1, label=f"chance ({chance:.0%})", zorder=1)
        ax.set_ylim(0, 1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"context length ({task.unit})")
    ax.set_ylabel(task.ylabel)
    ax.set_title("\n".join(textwrap.fill(line, 70) for line in title.split("\n")), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_results(rows: list[dict], path: Path, task: Task) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=result_fields(task), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["seq_len"], r["seed"])))


def _steps_taken(rows: list[dict], max_steps: int) -> str:
    """"600 steps", or "150–155 of 600 steps" when a time limit stopped runs early (rows of older results without
    a step count are taken as complete)."""
    taken = [r.get("steps") or max_steps for r in rows]
    low, high = min(taken), max(taken)
    if low >= max_steps:
        return f"{max_steps} steps"
    return f"{low if low == high else f'{low}–{high}'} of {max_steps} steps"


def model_variant(run_dir: Path, task: str) -> str:
    """The backbone variant and readout of a run, for plot titles, from the configuration it resolved (its
    config.yaml, which holds the direct options, the --model.* ones and a --config file's alike): "causal, last
    position" (a species run's default readout), "bidirectional", "RC-equivariant", "RC-equivariant, bidirectional"
    (Caduceus), with ", max pooling" etc. when set and ", RC-conjoined"."""
    import yaml

    model = yaml.safe_load(newest_log(run_dir, "config.yaml").read_text()).get("model") or {}
    fields = {**(model.get("config") or {}), **model}  # a classifier's own options override its backbone config's
    kinds = [name for name, on in (("RC-equivariant", fields.get("rc_equivariant")),
                                   ("bidirectional", fields.get("bidirectional"))) if on] or ["causal"]
    pooling = fields.get("pooling") or ("last position" if kinds == ["causal"] and task == "species" else "")
    parts = kinds + ([pooling if pooling == "last position" else f"{pooling} pooling"] if pooling else [])
    return ", ".join(parts + (["RC-conjoined"] if fields.get("rc_conjoin") else []))


def _run_dir(out: Path, seq_len: int, seed: int) -> Path:
    return out / f"L{seq_len}-seed{seed}"


def sweep(source: str, lengths: list[int], seeds: list[int], max_steps: int, d_model: int, n_layer: int, out: Path,
          task: str = "pretrain", tokens_per_step: int | None = 65536, batch_size: int | None = None,
          scored_len: int = 1024, parallel: int = 1, extra: list[str] = ()) -> list[dict]:
    """Run (or reuse) every (length, seed) run, write results.csv and context_scaling.png; return the rows.

    Each run's batch is `batch_size` when given (samples per step constant), else tokens_per_step / length (tokens
    per step constant). `task` "pretrain" (source: a FASTA; scored on the same bases), "species" (source: a
    folder of genomes) or "audio" (source: a folder of recordings; the held-out files tiled at each length)."""
    from tqdm import tqdm

    spec = TASKS[task]
    if spec.command == "pretrain" and min(lengths) < scored_len:
        raise ValueError(f"every length must be at least --scored-len ({scored_len}), got {min(lengths)}")
    if batch_size is None and any(tokens_per_step % L for L in lengths):
        raise ValueError(f"tokens per step ({tokens_per_step}) must be a multiple of every length {lengths}")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(L, s, _run_dir(out, L, s)) for L in lengths for s in seeds]
    commands = [run_command(spec, source, L, s, batch_size or tokens_per_step // L, max_steps, scored_len, d_model,
                            n_layer, d, list(extra)) for L, s, d in jobs]
    rows, failures = [], []
    # SIGTERM (a scheduler's time limit, `timeout`) reaches the runs too: each saves its last step and exits; the
    # sweep waits for them, starts no more and says how to go on
    _TERMINATED.clear()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _TERMINATED.set())
    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool, tqdm(total=len(jobs), desc="runs") as bar:
            futures = [pool.submit(_one_run, c, d, L, s, spec) for c, (L, s, d) in zip(commands, jobs)]
            for future in futures:
                try:
                    rows.append(future.result())
                except RuntimeError as err:
                    failures.append(str(err))
                    bar.set_postfix_str(f"{len(failures)} not finished")                # failed, or stopped by SIGTERM
                bar.update()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if _TERMINATED.is_set():
        from mamba_bio_audio.errors import TrainingInterrupted

        raise TrainingInterrupted(f"stopped by SIGTERM with {len(rows)} of {len(jobs)} runs finished; the others "
                                  f"saved their last step or did not start: run the same command again to go on")
    if rows:
        write_results(rows, out / "results.csv", spec)
        per_step = f"batch {batch_size}" if batch_size else f"{tokens_per_step} tokens"
        first = _run_dir(out, rows[0]["seq_len"], rows[0]["seed"])
        model = (f"Mamba U-Net D = {d_model}, {n_layer} per stage" if task == "audio"
                 else f"{n_layer} × {d_model} Mamba ({model_variant(first, task)})")
        title = f"{Path(source).name}: {model}, {_steps_taken(rows, max_steps)} × {per_step}"
        if spec.command == "pretrain":
            title += f"\nthe last {scored_len} targets of windows ending at the same places scored"
        chance = None
        if spec.command == "species":  # one over the classes the runs were trained on (their confusion matrix's)
            chance = 1 / (len((first / "confusion_test.csv").read_text().splitlines()[0].split(",")) - 1)
        plot_context_scaling(rows, out / "context_scaling.png", title, spec, chance)
    if failures:
        raise RuntimeError("; ".join(failures))
    return rows
