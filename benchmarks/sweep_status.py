"""Progress of a context sweep's runs (`mba dna context-sweep`, `mba audio context-sweep`), for the resumable jobs
`species_long.sh` and `piano_curve.sh`: per run, the validation metric by step and the peak memory by epoch read from
every log version (an interrupted run's and its resumptions'), then results.csv once the sweep is done.

    python3 benchmarks/sweep_status.py SWEEP_DIR
"""
import sys
from pathlib import Path

from mamba_bio_audio.pipelines.dna_context_sweep import logged_rows

METRICS = ("valid/accuracy", "valid/bits_per_sample", "valid/bits_per_base")


def run_status(run_dir: Path) -> list[str]:
    """Two lines for one run folder (L<length>-seed<seed>): its validation metric by step, its peak memory by epoch."""
    try:
        rows = logged_rows(run_dir)
    except ValueError:                                                              # started, nothing logged yet
        rows = []
    metric = next((m for m in METRICS if any(row.get(m) for row in rows)), None)
    scores = ", ".join(f"{row['step']}: {float(row[metric]):.3f}" for row in rows if metric and row.get(metric))
    peaks = ", ".join(f"{row['epoch']}: {float(row['train/peak_memory_gib']):.1f}" for row in rows
                      if row.get("train/peak_memory_gib"))
    return [f"  {run_dir.name} {metric or 'validation'} by step: {scores or 'none yet'}",
            f"  {run_dir.name} peak memory (GiB) by epoch: {peaks or 'none logged'}"]


def main(sweep_dir: str) -> None:
    sweep = Path(sweep_dir)
    for run_dir in sorted(sweep.glob("L*-seed*"), key=lambda d: (int(d.name[1:].split("-")[0]), d.name)):
        print("\n".join(run_status(run_dir)))
    if (sweep / "results.csv").is_file():
        print((sweep / "results.csv").read_text().strip())


if __name__ == "__main__":
    main(sys.argv[1])
