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
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULT_FIELDS = ["seq_len", "seed", "test_bits_per_base", "best_valid_bits_per_base", "wall_s"]


def run_command(fasta: str, seq_len: int, seed: int, tokens_per_step: int, max_steps: int, scored_len: int,
                d_model: int, n_layer: int, out: Path, extra: list[str]) -> list[str]:
    """The `mba dna pretrain` command line of one run of the sweep."""
    if tokens_per_step % seq_len:
        raise ValueError(f"tokens per step ({tokens_per_step}) must be a multiple of every length (got {seq_len})")
    model = json.dumps({"d_model": d_model, "n_layer": n_layer, "vocab_size": 12})
    return [sys.executable, "-m", "mamba_bio_audio.cli", "dna", "pretrain", "--fasta", str(fasta),
            "--seq-len", str(seq_len), "--batch-size", str(tokens_per_step // seq_len), "--max-steps", str(max_steps),
            "--out", str(out), "--seed_everything", str(seed), "--data.seed", str(seed),
            "--data.eval_scored_len", str(scored_len), "--model.model_size", "null", "--model.config", model,
            "--trainer.enable_progress_bar", "false", *extra]


def read_run_metrics(run_dir: Path) -> dict[str, float]:
    """Test bits per base (the last logged) and the best validation bits per base of a finished run, from the CSV
    log of its newest version."""
    versions = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))
    if not versions:
        raise ValueError(f"{run_dir}: no CSV log (logs/version_*/metrics.csv)")
    test, valid = [], []
    with open(versions[-1], newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("test/bits_per_base"):
                test.append(float(row["test/bits_per_base"]))
            if row.get("valid/bits_per_base"):
                valid.append(float(row["valid/bits_per_base"]))
    if not test:
        raise ValueError(f"{versions[-1]}: no test/bits_per_base (did the run finish?)")
    return {"test_bits_per_base": test[-1], "best_valid_bits_per_base": min(valid) if valid else math.nan}


def _one_run(command: list[str], run_dir: Path, seq_len: int, seed: int) -> dict:
    result_path = run_dir / "result.json"
    settings = command[3:]  # without the interpreter: the same run from another environment is still the same run
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if result.get("command") != settings:
            raise ValueError(f"{run_dir} holds a finished run with other settings ({result_path}); use another --out "
                             "or remove that folder")
        return result
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir / "run.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code:
        raise RuntimeError(f"run L={seq_len} seed={seed} failed (exit {code}); see {run_dir / 'run.log'}")
    result = {"seq_len": seq_len, "seed": seed, **read_run_metrics(run_dir),
              "wall_s": round(time.perf_counter() - start, 1), "command": settings}
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return result


def summarise(rows: list[dict]) -> list[dict]:
    """Per length: number of seeds, mean and standard error of the test bits per base."""
    table = []
    for seq_len in sorted({r["seq_len"] for r in rows}):
        values = [r["test_bits_per_base"] for r in rows if r["seq_len"] == seq_len]
        sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        table.append({"seq_len": seq_len, "seeds": len(values), "mean": statistics.fmean(values), "sem": sem})
    return table


def plot_context_scaling(rows: list[dict], path: Path, title: str) -> None:
    """Test bits per base against training length (log2 axis): one dot per seed, the mean ± standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarise(rows)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=150)
    ax.scatter([r["seq_len"] for r in rows], [r["test_bits_per_base"] for r in rows], s=14, color="0.6",
               label="one seed", zorder=2)
    ax.errorbar([t["seq_len"] for t in table], [t["mean"] for t in table],
                yerr=[0 if math.isnan(t["sem"]) else t["sem"] for t in table], marker="o", capsize=3,
                color="tab:blue", label="mean ± s.e.", zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training context length (bases)")
    ax.set_ylabel("held-out bits per base")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_results(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["seq_len"], r["seed"])))
    tmp.replace(path)


def sweep(fasta: str, lengths: list[int], seeds: list[int], tokens_per_step: int, max_steps: int, scored_len: int,
          d_model: int, n_layer: int, out: Path, parallel: int = 1, extra: list[str] = ()) -> list[dict]:
    """Run (or reuse) every (length, seed) run, write results.csv and context_scaling.png; return the rows."""
    from tqdm import tqdm

    if min(lengths) < scored_len:
        raise ValueError(f"every length must be at least --scored-len ({scored_len}), got {min(lengths)}")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(L, s, out / f"L{L}-seed{s}") for L in lengths for s in seeds]
    commands = [run_command(fasta, L, s, tokens_per_step, max_steps, scored_len, d_model, n_layer, d, list(extra))
                for L, s, d in jobs]
    rows, failures = [], []
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool, tqdm(total=len(jobs), desc="runs") as bar:
        futures = [pool.submit(_one_run, c, d, L, s) for c, (L, s, d) in zip(commands, jobs)]
        for future in futures:
            try:
                rows.append(future.result())
            except RuntimeError as err:
                failures.append(str(err))
            bar.update()
    if rows:
        write_results(rows, out / "results.csv")
        title = (f"{Path(fasta).name}: {n_layer} × {d_model} Mamba, {max_steps} steps × {tokens_per_step} tokens\n"
                 f"the last {scored_len} targets of windows ending at the same places scored")
        plot_context_scaling(rows, out / "context_scaling.png", title)
    if failures:
        raise RuntimeError("; ".join(failures))
    return rows
