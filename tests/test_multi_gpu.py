"""Data-parallel strategies on 2 GPUs (skipped with fewer; `make test-gpu` on a 2-GPU machine): `mba dna pretrain`
under DDP and FSDP trains, checkpoints, resumes from its last checkpoint to the later step, and tests; every other
training pipeline trains and tests under FSDP."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

pytest.importorskip("pysam")
pytest.importorskip("lightning")
pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")

from pipeline_runs import PIPELINES, pipeline_args, run_cli  # noqa: E402
from test_dna_data import random_genome, write_fasta  # noqa: E402


def pretrain(fasta, out, strategy: str, max_steps: int, resume=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mamba_bio_audio.cli", "dna", "pretrain", "--fasta", str(fasta), "--seq-len",
               "4096", "--batch-size", "4", "--max-steps", str(max_steps), "--out", str(out), "--model.config",
               '{"d_model": 64, "n_layer": 2, "vocab_size": 12}', "--trainer.devices", "2", "--trainer.strategy",
               strategy, "--trainer.val_check_interval", "10", "--trainer.limit_val_batches", "2",
               "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
               "--trainer.log_every_n_steps", "5", "--checkpoint.every_n_train_steps", "10",
               "--data.max_eval_windows", "8", "--data.split_fractions", "[0.9, 0.05, 0.05]"]
    command += ["--resume", str(resume)] if resume else []
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(1300)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_pretraining_on_two_gpus_checkpoints_and_resumes(tmp_path, strategy):
    fasta = write_fasta(tmp_path / "g.fa", random_genome(5, lengths=(400_000, 300_000)))
    out = tmp_path / strategy
    first = pretrain(fasta, out, strategy, 20)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").exists()
    second = pretrain(fasta, out, strategy, 30, resume=out / "checkpoints" / "last.ckpt")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "test/bits_per_base" in second.stdout
    rows = [r for f in sorted((out / "logs").glob("version_*/metrics.csv")) for r in csv.DictReader(open(f))]
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss")})
    assert steps and steps[-1] >= 25  # the resumed run went on towards step 30
    resumed = [int(r["step"]) for f in sorted((out / "logs").glob("version_*/metrics.csv"))[1:]
               for r in csv.DictReader(open(f)) if r.get("train/loss")]
    assert resumed and min(resumed) >= 19, resumed  # it started from the checkpoint at step 20, not from scratch


@pytest.mark.timeout(900)
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_every_other_training_pipeline_trains_and_tests_under_fsdp(tmp_path, pipeline):
    """The pipelines other than DNA pretraining (above) share build_cli and the fit-then-test step; each trains a few
    steps on 2 GPUs under FSDP and tests its best or last checkpoint (tests/reliability/test_ddp.py runs the same
    commands under DDP on 2 CPU processes)."""
    pytest.importorskip("soundfile")
    out = tmp_path / "run"
    args, expect = pipeline_args(pipeline, tmp_path, out, "fsdp")
    result = run_cli(args, "fsdp")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert expect in result.stdout
    assert (out / "checkpoints" / "last.ckpt").exists()
