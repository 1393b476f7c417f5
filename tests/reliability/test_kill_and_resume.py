"""A training process killed with SIGKILL mid-epoch resumes from its last checkpoint, repeats no step before that
checkpoint's, and ends with exactly the parameters of an uninterrupted run (CPU, deterministic); the kill never leaves
a truncated checkpoint under its final name."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("pysam")
pytest.importorskip("lightning")

from test_dna_data import random_genome, write_fasta  # noqa: E402

STEPS = 120


def command(genome, run, *extra):
    return [sys.executable, "-m", "mamba_bio_audio.cli", "dna", "pretrain", "--fasta", str(genome), "--seq-len", "64",
            "--batch-size", "4", "--out", str(run), "--max-steps", str(STEPS), "--model.config",
            '{"d_model": 16, "n_layer": 1, "vocab_size": 12, "d_state": 4}', "--checkpoint.every_n_train_steps", "5",
            "--data.max_eval_windows", "4", "--trainer.enable_progress_bar",
            "false", "--trainer.deterministic", "true", *extra]


def env():
    return {k: v for k, v in os.environ.items() if k != "MBA_SCAN_BACKEND"} | {"OMP_NUM_THREADS": "1"}


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    genome = write_fasta(tmp_path / "g.fa", random_genome(5, lengths=(20_000,)))  # 70 steps per epoch
    full = subprocess.run(command(genome, tmp_path / "full"), capture_output=True, text=True, env=env(), timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]

    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(command(genome, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if last.is_file() and torch.load(last, weights_only=False, map_location="cpu")["global_step"] >= 75:
            break  # mid-way through the second epoch
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(last, weights_only=False, map_location="cpu")  # complete, never truncated
    killed_at = saved["global_step"]
    assert process.returncode == -signal.SIGKILL and 75 <= killed_at < STEPS and killed_at % 70 != 0

    resumed = subprocess.run(command(genome, run, "--resume", str(last)), capture_output=True, text=True, env=env(),
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = torch.load(last, weights_only=False, map_location="cpu")
    reference = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert final["global_step"] == reference["global_step"] == STEPS
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name
    # the resumed process took only the steps after the checkpoint: its log starts after killed_at
    versions = sorted((run / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    assert len(versions) == 2  # the killed process's and the resumed one's
    with open(versions[-1] / "metrics.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row["step"]]
    assert steps and min(steps) >= killed_at
