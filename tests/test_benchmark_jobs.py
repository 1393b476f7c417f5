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


def without_block(text: str) -> str:
    """A BENCHMARKS.md with its make-bench block (and the blank line after it) taken out."""
    from mamba_bio_audio.kernels import bench

    start, end = text.index(bench.BEGIN), text.index(bench.END) + len(bench.END)
    assert text[end:end + 2] == "\n\n"
    return text[:start] + text[end + 2:]


def test_make_bench_writes_its_block_into_benchmarks_md_and_replaces_it_on_the_next_run(tmp_path, monkeypatch):
    """`python -m mamba_bio_audio.kernels.bench --write FILE` (make bench): what it prints goes into FILE between its
    markers, after the digest section, with the command, date and commit; a second run replaces that block and
    nothing else; the file is replaced whole (no temporary file left); a file with one marker is refused as it is."""
    import pytest

    from mamba_bio_audio.kernels import bench

    target = tmp_path / "BENCHMARKS.md"
    curated = "# Benchmarks\n\nintro\n\n## Where we stand\n\ndigest\n\n## Older run\n\nkept by hand\n"
    target.write_text(curated)
    tables = iter(["| gpu | run 1 |", "| gpu | run 2 |"])
    monkeypatch.setattr(bench, "run", lambda args: print(next(tables)) or 0)
    assert bench.main(["--write", str(target), "--commit", "abc1234"]) == 0
    first = target.read_text()
    assert first.index("digest") < first.index(bench.BEGIN) < first.index("| gpu | run 1 |") < first.index(bench.END)
    assert first.index(bench.END) < first.index("## Older run")
    assert f"--write {target}" in first and "commit abc1234" in first
    assert without_block(first) == curated
    assert bench.main(["--write", str(target), "--commit", "def5678"]) == 0
    second = target.read_text()
    assert "run 1" not in second and "| gpu | run 2 |" in second and "commit def5678" in second
    assert second.count(bench.BEGIN) == second.count(bench.END) == 1 and without_block(second) == curated
    assert sorted(path.name for path in tmp_path.iterdir()) == ["BENCHMARKS.md"]
    broken = curated + bench.BEGIN + "\n"
    with pytest.raises(ValueError, match="one make-bench marker"):
        bench.with_results(broken, bench.results_block("x", "cmd", "abc", bench.datetime.datetime.now()))
    assert bench.with_results("", "BLOCK\n") == "BLOCK\n"


def test_generation_profile_times_a_kept_sampler_and_lists_where_a_position_goes(capsys):
    """benchmarks/generation_profile.py on the CPU (the PyTorch ops by self time), as on a GPU (the kernels)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import generation_profile
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert generation_profile.main(["--device", "cpu", "--dtype", "fp32", "--batch", "1", "--positions", "16",
                                    "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "sc09 U-Net, fp32, batch 1 on cpu:" in out and "µs per position" in out
    table = [line for line in out.splitlines() if line.startswith("| `")]
    assert len(table) == 3 and "aten::" in table[0]
