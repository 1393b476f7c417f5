"""A NaN or inf loss never trains on silently: it stops the run naming the step and the last checkpoint (weights
untouched), or, with --nonfinite.action skip, the step's update is dropped and training goes on."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("pysam")
pytest.importorskip("lightning")

from mamba_bio_audio.cli import main  # noqa: E402
from mamba_bio_audio.pipelines.common import LanguageModelModule  # noqa: E402
from test_dna_data import random_genome, write_fasta  # noqa: E402


@pytest.fixture
def poisoned(monkeypatch):
    """The training loss of optimizer step 4 (0-based) becomes NaN."""
    real = LanguageModelModule._train_loss

    def train_loss(self, total, count):
        loss = real(self, total, count)
        return loss * math.nan if self.trainer.global_step == 4 else loss

    monkeypatch.setattr(LanguageModelModule, "_train_loss", train_loss)


def pretrain(tmp_path, *extra):
    genome = write_fasta(tmp_path / "g.fa", random_genome(3, lengths=(6000,)))
    return main(["dna", "pretrain", "--fasta", str(genome), "--seq-len", "64", "--batch-size", "4", "--out",
                 str(tmp_path / "run"), "--model.config",
                 '{"d_model": 16, "n_layer": 1, "vocab_size": 12, "d_state": 4}',
                 "--trainer.val_check_interval", "3", "--data.max_eval_windows", "4", "--trainer.enable_progress_bar",
                 "false", "--max-steps", "9", *extra])


def test_a_nan_loss_stops_training_naming_the_step_and_the_last_checkpoint(poisoned, tmp_path, capsys):
    assert pretrain(tmp_path) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step 4: the loss or its gradients are not finite" in err[0]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"the last checkpoint is {last}" in err[0]
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_skip_drops_the_bad_steps_update_and_finishes(poisoned, tmp_path):
    with pytest.warns(UserWarning, match="step 4: the loss or its gradients are not finite.*update was skipped"):
        assert pretrain(tmp_path, "--nonfinite.action", "skip") == 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 9
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert {"skipped": 1} in checkpoint["callbacks"].values()
