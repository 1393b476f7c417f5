"""Helpers of ddp_throughput.sh (issue 7 §2): a synthetic genome, and the throughput table from the runs' metrics.csv.

    python3 ddp_throughput.py genome PATH MEGABASES [CHROMOSOMES]
    python3 ddp_throughput.py summarise RUN_DIR EXP GPUS BATCH WALL_S RC WARM WINDOW RESULTS.jsonl [SMI.csv]
    python3 ddp_throughput.py table RESULTS.jsonl OUT_PREFIX
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import sys
from pathlib import Path


def genome(path: str, megabases: float, chromosomes: int = 4) -> None:
    """Uniform random A/C/G/T in `chromosomes` records of equal length (a multiple of 80, the line width), written to
    a temporary name and renamed; kept when it exists with the same size."""
    import numpy as np

    width = 80
    length = int(megabases * 1e6 / chromosomes) // width * width
    path = Path(path)
    expected = sum(len(f">chr{c + 1}\n") + length // width * (width + 1) for c in range(chromosomes))
    if path.exists() and path.stat().st_size == expected:
        print(f"{path}: kept ({chromosomes} × {length:,} bases)")
        return
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        for c in range(chromosomes):
            handle.write(f">chr{c + 1}\n".encode())
            lines = np.full((length // width, width + 1), 10, dtype=np.uint8)
            lines[:, :width] = letters[rng.integers(0, 4, size=(length // width, width), dtype=np.uint8)]
            handle.write(lines.tobytes())
    os.replace(tmp, path)
    print(f"wrote {path} ({chromosomes} × {length:,} bases)")


def _rows(run_dir: Path) -> list[dict]:
    versions = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))
    if not versions:
        return []
    with open(versions[-1], newline="") as handle:
        return list(csv.DictReader(handle))


def _smi(path: str | None) -> dict:
    """Peak memory (MiB) and mean utilisation (%) per GPU index from `nvidia-smi --query-gpu=index,utilization.gpu,
    memory.used --format=csv,noheader,nounits -l 1`, utilisation over the samples where the GPU was in use."""
    if not path or not Path(path).is_file():
        return {}
    memory, busy = {}, {}
    for line in Path(path).read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            continue
        index, util, used = map(int, parts)
        memory[index] = max(memory.get(index, 0), used)
        if used > 1024:
            busy.setdefault(index, []).append(util)
    return {"peak_mib": [memory[i] for i in sorted(memory)],
            "util_pct": [round(statistics.mean(busy[i])) if busy.get(i) else 0 for i in sorted(memory)]}


def summarise(run_dir: str, exp: str, gpus: str, batch: str, wall_s: str, rc: str, warm: str, window: str,
              results: str, smi: str | None = None) -> None:
    """One line of results.jsonl for a run. tokens_per_sec: the global rate over every step after the first `warm`
    (the steady state), from ThroughputMonitor's logged cumulative counts on rank 0: world × Δ train/lengths /
    Δ train/time (stalls included); and the median (min, max) of the logged train/tokens_per_sec whose windows start
    after those steps, as a check (the two differ when a few steps stall)."""
    exp, gpus, batch, warm, window = int(exp), int(gpus), int(batch), int(warm), int(window)
    rows = _rows(Path(run_dir))
    rates = [(int(r["step"]), float(r["train/tokens_per_sec"])) for r in rows if r.get("train/tokens_per_sec")]
    steady = [v for s, v in rates if s >= warm + window - 1] or [v for _, v in rates]
    counts = [(int(r["step"]), float(r["train/time"]), int(float(r["train/lengths"])))
              for r in rows if r.get("train/lengths")]
    late = [c for c in counts if c[0] >= warm - 1]
    mean = None
    if len(late) >= 2 and late[-1][1] > late[0][1]:
        mean = gpus * (late[-1][2] - late[0][2]) / (late[-1][1] - late[0][1])
    line = {"exp": exp, "L": 2 ** exp, "gpus": gpus, "batch_per_gpu": batch,
            "steps": counts[-1][0] + 1 if counts else 0,
            "rc": int(rc), "wall_s": float(wall_s), "windows": len(steady),
            "steady_from_step": late[0][0] + 1 if late else None,
            "tokens_per_sec": mean if mean is not None else (statistics.median(steady) if steady else None),
            "logged_median": statistics.median(steady) if steady else None,
            "logged_min": min(steady) if steady else None, "logged_max": max(steady) if steady else None,
            **_smi(smi)}
    old = [json.loads(x) for x in Path(results).read_text().splitlines()] if Path(results).exists() else []
    old = [x for x in old if (x["exp"], x["gpus"]) != (exp, gpus)]
    Path(results).write_text("".join(json.dumps(x) + "\n" for x in old + [line]))
    print(json.dumps(line))


def table(results: str, prefix: str) -> None:
    """The table (markdown and CSV) of every run in results.jsonl: per L and GPU count, the global tokens/s over the
    steady steps (0-based step numbers), per GPU, the step time, the scaling against 1 GPU at the same L and per-GPU
    batch (weak scaling), and the logged windowed rates."""
    lines = sorted((json.loads(x) for x in Path(results).read_text().splitlines()), key=lambda x: (x["exp"], x["gpus"]))
    one = {x["exp"]: x["tokens_per_sec"] for x in lines if x["gpus"] == 1 and x["tokens_per_sec"]}
    header = ["L", "batch/GPU", "GPUs", "steps timed", "global tokens/s", "per GPU", "step ms", "speed-up vs 1 GPU",
              "efficiency", "logged train/tokens_per_sec: median (min–max, windows)", "peak MiB per GPU",
              "GPU util %", "wall s", "rc"]
    out_rows = []
    for x in lines:
        rate = x["tokens_per_sec"]
        speedup = rate / one[x["exp"]] if rate and x["exp"] in one else None
        step_ms = 1000 * x["gpus"] * x["batch_per_gpu"] * x["L"] / rate if rate else None
        fmt = lambda v, f="{:,.0f}": "–" if v is None else f.format(v)  # noqa: E731
        timed = f"{x['steady_from_step']}–{x['steps'] - 1}" if x.get("steady_from_step") is not None else "–"
        out_rows.append([f"2^{x['exp']}", str(x["batch_per_gpu"]), str(x["gpus"]), timed, fmt(rate),
                         fmt(rate / x["gpus"] if rate else None), fmt(step_ms, "{:.1f}"), fmt(speedup, "{:.3f}×"),
                         fmt(speedup / x["gpus"] if speedup else None, "{:.1%}"),
                         f"{fmt(x['logged_median'])} ({fmt(x['logged_min'])}–{fmt(x['logged_max'])}, "
                         f"{x['windows']})",
                         "/".join(map(str, x.get("peak_mib", []))) or "–",
                         "/".join(map(str, x.get("util_pct", []))) or "–", f"{x['wall_s']:.0f}", str(x["rc"])])
    text = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    text += "".join("| " + " | ".join(r) + " |\n" for r in out_rows)
    Path(prefix + ".md").write_text(text)
    with open(prefix + ".csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header] + out_rows)
    print(text, end="")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"genome": lambda *a: genome(a[0], float(a[1]), *(int(x) for x in a[2:])), "summarise": summarise,
     "table": table}[command](*args)
