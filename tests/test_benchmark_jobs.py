"""The resumable GPU jobs' shared parts (benchmarks/limited_sweep.sh, benchmarks/sweep_status.py), checked on the CPU
with fabricated run folders; the jobs themselves (species_long.sh, piano_curve.sh) were run end to end on the CPU at
tiny sizes (BENCHMARKS.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def write_log(run: Path, version: int, rows: list[dict]) -> None:
    folder = run / "logs" / f"version_{version}"
    folder.mkdir(parents=True)
    header = ["epoch", "step", "train/peak_memory_gib", "valid/bits_per_sample"]
    lines = [",".join(header)] + [",".join(str(row.get(key, "")) for key in header) for row in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")


def status(sweep: Path) -> str:
    run = subprocess.run([sys.executable, str(BENCHMARKS / "sweep_status.py"), str(sweep)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_sweep_status_reads_every_log_version_in_order_and_runs_without_logs(tmp_path):
    sweep = tmp_path / "sweep"
    long_run, short_run, new_run = sweep / "L131072-seed0", sweep / "L8192-seed0", sweep / "L32768-seed0"
    write_log(long_run, 0, [{"epoch": 0, "step": 249, "valid/bits_per_sample": 5.25}])
    write_log(long_run, 10, [{"epoch": 1, "step": 749, "valid/bits_per_sample": 4.5},
                             {"epoch": 1, "step": 749, "train/peak_memory_gib": 12.34}])
    write_log(long_run, 2, [{"epoch": 0, "step": 499, "valid/bits_per_sample": 4.75}])
    write_log(short_run, 0, [{"epoch": 0, "step": 249, "valid/bits_per_sample": 5.0}])
    new_run.mkdir(parents=True)
    lines = status(sweep).splitlines()
    assert lines == [
        "  L8192-seed0 valid/bits_per_sample by step: 249: 5.000",
        "  L8192-seed0 peak memory (GiB) by epoch: none logged",
        "  L32768-seed0 validation by step: none yet",
        "  L32768-seed0 peak memory (GiB) by epoch: none logged",
        "  L131072-seed0 valid/bits_per_sample by step: 249: 5.250, 499: 4.750, 749: 4.500",  # versions 0, 2, 10
        "  L131072-seed0 peak memory (GiB) by epoch: 1: 12.3"]
    (sweep / "results.csv").write_text("seq_len,seed\n8192,0\n")
    assert status(sweep).splitlines()[-2:] == ["seq_len,seed", "8192,0"]


def test_limited_sweep_stops_the_command_at_the_limit_and_records_each_call(tmp_path):
    def call(limit: str, command: str) -> subprocess.CompletedProcess:
        script = f'source "{BENCHMARKS / "limited_sweep.sh"}"; LIMIT={limit} limited_sweep {command}'
        return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    (tmp_path / "sweep").mkdir()
    stopped = call("1", "sleep 30")
    finished = call("", "echo done")
    assert stopped.returncode == 124 and finished.returncode == 0, stopped.stderr + finished.stderr
    calls = [line for line in (tmp_path / "status.txt").read_text().splitlines() if " exit " in line]
    assert [line.split(" exit ")[1].split()[0] for line in calls] == ["124", "0"]
    assert (tmp_path / "sweep.log").read_text() == "done\n"
