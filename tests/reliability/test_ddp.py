"""Data-parallel training on the CPU (2 processes, gloo): the ranks train on disjoint halves of each global batch,
end with identical parameters, match a single process that takes the same global batch, log the global training
throughput (both ranks' tokens), and a run resumed from a mid-epoch checkpoint continues each rank exactly where it
stopped, also through the length warm-up; every other training pipeline trains, checkpoints and tests under DDP."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("pysam")
pytest.importorskip("lightning")

from pipeline_runs import PIPELINES, pipeline_args, run_cli  # noqa: E402
from test_dna_data import random_genome, write_fasta  # noqa: E402

SCRIPT = textwrap.dedent('''
    import sys
    import lightning as L
    import torch
    from mamba_bio_audio.pipelines.common import SequenceLengthWarmup, TokenThroughput
    from mamba_bio_audio.pipelines.dna_pretrain import DNALanguageModel, DNAPretrainData

    fasta, out = sys.argv[1], sys.argv[2]
    devices, batch_size, max_steps = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    resume = sys.argv[6] if sys.argv[6] != "-" else None
    warmup_start = int(sys.argv[7])  # 0: no length warm-up

    class Record(L.Callback):
        """Per rank: every training batch's rows and loss, and the parameters at the end."""
        def __init__(self):
            self.rows, self.losses = [], []
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.rows.append((trainer.global_step, batch["input_ids"].tolist()))
            self.losses.append(float(outputs["loss"]))
        def on_train_end(self, trainer, module):
            torch.save({"rows": self.rows, "losses": self.losses,
                        "params": {k: v.detach().clone() for k, v in module.state_dict().items()}},
                       f"{out}/rank{trainer.global_rank}.pt")

    L.seed_everything(0)
    model = DNALanguageModel(config={"d_model": 16, "n_layer": 1, "vocab_size": 12, "d_state": 4}, lr=3e-3)
    data = DNAPretrainData(fasta, seq_len=64, batch_size=batch_size, split_fractions=(0.8, 0.1, 0.1))
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=f"{out}/ckpt", every_n_train_steps=5, save_top_k=-1,
                                                      filename="{step}")
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        max_steps=max_steps, logger=L.pytorch.loggers.CSVLogger(out, name="logs"),
                        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
                        reload_dataloaders_every_n_epochs=1, deterministic=True,
                        callbacks=[Record(), checkpoints, TokenThroughput(window=WINDOW)]
                        + ([SequenceLengthWarmup(start_len=warmup_start, epochs_per_stage=1)] if warmup_start else []))
    trainer.fit(model, datamodule=data, ckpt_path=resume)
    if torch.distributed.is_initialized():  # as `mba` does: gloo left to interpreter exit can abort a finished rank
        torch.distributed.destroy_process_group()
''')


WINDOW = 3  # TokenThroughput's window in these runs (steps)


def run(tmp_path, name, devices, batch_size, fasta, max_steps=6, resume=None, warmup_start=0):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.replace("WINDOW", str(WINDOW)))
    result = subprocess.run([sys.executable, str(script), str(fasta), str(out), str(devices), str(batch_size),
                             str(max_steps), str(resume or "-"), str(warmup_start)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(devices)]


@pytest.mark.timeout(900)
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    fasta = write_fasta(tmp_path / "g.fa", random_genome(11, lengths=(8000,)))
    rank0, rank1 = run(tmp_path, "ddp", 2, 4, fasta)
    (single,) = run(tmp_path, "single", 1, 8, fasta)
    for name, tensor in rank0["params"].items():  # the ranks agree exactly
        assert torch.equal(tensor, rank1["params"][name]), name
    rows0, rows1, rows = ([r for _, r in run_["rows"]] for run_ in (rank0, rank1, single))
    for step, (a, b, both) in enumerate(zip(rows0, rows1, rows)):
        assert len(a) == len(b) == 4 and not set(map(tuple, a)) & set(map(tuple, b)), step  # disjoint halves
        assert sorted(a + b) == sorted(both), step  # together the single process's batch
    # the same loss: exactly the same before the first update; after it only the order of the gradient sums differs
    # (all-reduce against one backward), which Adam's normalisation lets grow slightly over the steps
    losses = torch.tensor([(x + y) / 2 for x, y in zip(rank0["losses"], rank1["losses"])])
    torch.testing.assert_close(losses[0], torch.tensor(single["losses"][0]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(losses, torch.tensor(single["losses"]), rtol=1e-3, atol=1e-4)
    for name, tensor in single["params"].items():
        torch.testing.assert_close(rank0["params"][name], tensor, rtol=1e-3, atol=1e-3)
    # the logged training loss is the global batch's (the mean of the ranks' terms), not rank 0's
    logged = logged_losses(tmp_path / "ddp")
    assert len(logged) == len(losses)
    torch.testing.assert_close(torch.tensor(logged), losses, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(torch.tensor(logged), torch.tensor(rank0["losses"]), rtol=1e-4, atol=0)
    # throughput: the global figure counts both ranks' tokens, so both runs log the same tokens per step (8 × 64)
    assert_throughput(tmp_path / "ddp", world=2, tokens_per_rank_step=4 * 64)
    assert_throughput(tmp_path / "single", world=1, tokens_per_rank_step=8 * 64)


def logged_losses(out) -> list[float]:
    """train/loss as the run's metrics.csv logged it, by step."""
    rows = list(csv.DictReader((out / "logs" / "version_0" / "metrics.csv").read_text().splitlines()))
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"])) if r.get("train/loss")]


def assert_throughput(out, world, tokens_per_rank_step):
    """TokenThroughput's metrics.csv rows: train/tokens_per_sec is positive, is world × rank 0's rate (Lightning's
    global train/items_per_sec under DDP), and times the window's elapsed time gives world × rank 0's tokens over
    the window, i.e. tokens_per_rank_step × world per step."""
    rows = list(csv.DictReader((out / "logs" / "version_0" / "metrics.csv").read_text().splitlines()))
    counts = {int(r["step"]): r for r in rows if r.get("train/lengths")}  # cumulative counts on rank 0, every step
    rates = {int(r["step"]): float(r["train/tokens_per_sec"]) for r in rows if r.get("train/tokens_per_sec")}
    assert sorted(counts) == list(range(6)) and sorted(rates) == list(range(WINDOW - 1, 6)), (counts, rates)
    assert [int(counts[s]["train/lengths"]) for s in range(6)] == [tokens_per_rank_step * (s + 1) for s in range(6)]
    for step, rate in rates.items():
        row, first = counts[step], counts[step - WINDOW + 1]
        device = float(row["train/device/items_per_sec"])
        assert rate > 0 and math.isclose(rate, world * device, rel_tol=1e-6), (step, rate, device)
        assert ("train/items_per_sec" in row and row["train/items_per_sec"] != "") == (world > 1)
        if world > 1:
            assert math.isclose(rate, float(row["train/items_per_sec"]), rel_tol=1e-6)
        elapsed = float(row["train/time"]) - float(first["train/time"])
        assert math.isclose(rate * elapsed, world * tokens_per_rank_step * (WINDOW - 1), rel_tol=1e-5), step


@pytest.mark.timeout(900)
def test_a_ddp_run_resumed_mid_epoch_continues_each_rank_exactly(tmp_path):
    fasta = write_fasta(tmp_path / "g.fa", random_genome(11, lengths=(8000,)))  # 12 steps per epoch on 2 ranks
    full = run(tmp_path, "full", 2, 4, fasta, max_steps=16)
    resumed = run(tmp_path, "resumed", 2, 4, fasta, max_steps=16, resume=tmp_path / "full" / "ckpt" / "step=5.ckpt")
    for rank in range(2):
        assert resumed[rank]["rows"] == full[rank]["rows"][5:]  # steps 5 … 15: no batch repeated or skipped
        for name, tensor in full[rank]["params"].items():
            assert torch.equal(resumed[rank]["params"][name], tensor), (rank, name)


@pytest.mark.timeout(900)
def test_the_length_warm_up_under_ddp_keeps_the_ranks_in_step_and_resumes_in_its_stage(tmp_path):
    """Length warm-up 16 → 32 → 64 bases, one epoch each, tokens per step constant (batch 16 → 8 → 4 per rank): at
    every step both ranks train at the same length on disjoint windows, and a run resumed mid-epoch in the second stage
    goes on at that stage's length and batch with exactly the uninterrupted run's windows and parameters."""
    fasta = write_fasta(tmp_path / "g.fa", random_genome(11, lengths=(8000,)))  # 12 steps per epoch at every stage
    full = run(tmp_path, "full", 2, 4, fasta, max_steps=30, warmup_start=16)
    for step, (a, b) in enumerate(zip(*([rows for _, rows in rank["rows"]] for rank in full))):
        length = 16 * 2 ** min(2, step // 12)
        assert len(a) == len(b) == 4 * 64 // length and {len(row) for row in a + b} == {length}, step
        assert not set(map(tuple, a)) & set(map(tuple, b)), step
    assert len(full[0]["rows"]) == 30
    resumed = run(tmp_path, "resumed", 2, 4, fasta, max_steps=30, warmup_start=16,
                  resume=tmp_path / "full" / "ckpt" / "step=15.ckpt")
    for rank in range(2):
        assert resumed[rank]["rows"] == full[rank]["rows"][15:]  # steps 15 … 29, across the stage change at 24
        for name, tensor in full[rank]["params"].items():
            assert torch.equal(resumed[rank]["params"][name], tensor), (rank, name)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_every_other_training_pipeline_trains_checkpoints_and_tests_under_ddp(tmp_path, pipeline):
    """The species, fine-tuning and audio pipelines run their own `mba` command on 2 CPU processes under DDP (gloo):
    they train (species through its length warm-up, logged by stage), checkpoint and test."""
    pytest.importorskip("soundfile")
    out = tmp_path / "run"
    args, expect = pipeline_args(pipeline, tmp_path, out, "ddp", accelerator="cpu")
    result = run_cli(args, "ddp", accelerator="cpu")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert expect in result.stdout
    assert (out / "checkpoints" / "last.ckpt").exists()
    if pipeline == "dna-species":
        rows = list(csv.DictReader(open(next((out / "logs").glob("version_*/metrics.csv")))))
        assert sorted({float(r["seq_len"]) for r in rows if r.get("seq_len")}) == [32.0, 64.0, 128.0]


VALIDATE = textwrap.dedent('''
    import json, sys
    import lightning as L
    import torch
    from mamba_bio_audio.pipelines.dna_pretrain import DNALanguageModel, DNAPretrainData

    source, out, devices, task = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    L.seed_everything(0)
    config = {"d_model": 16, "n_layer": 1, "vocab_size": 12, "d_state": 4}
    if task == "pretrain":
        model = DNALanguageModel(config=config)
        data = DNAPretrainData(source, seq_len=64, batch_size=4, split_fractions=(0.8, 0.1, 0.1))
    else:  # a classifier: every window's probabilities gathered from the ranks for the metrics
        from mamba_bio_audio.pipelines.dna_classifier import DNAClassifier
        from mamba_bio_audio.pipelines.dna_finetune import LabelledData
        data = LabelledData(train=source, valid=source, batch_size=4)
        model = DNAClassifier(class_names=data.class_names, model_size=None, config=config)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    metrics = trainer.validate(model, datamodule=data)[0]
    if trainer.is_global_zero:
        batches = trainer.num_val_batches[0]
        json.dump({"metrics": metrics, "windows": len(data.val_dataloader().dataset), "batches": batches},
                  open(f"{out}/validate.json", "w"))
    if torch.distributed.is_initialized():  # as `mba` does: gloo left to interpreter exit can abort a finished rank
        torch.distributed.destroy_process_group()
''')


def validate(tmp_path, source, task, devices):
    """Metrics (rank 0's), validation windows and rank 0's batch count of `trainer.validate` on `devices` ranks."""
    import json

    script = tmp_path / "validate.py"
    script.write_text(VALIDATE)
    out = tmp_path / f"{task}{devices}"
    out.mkdir()
    done = subprocess.run([sys.executable, str(script), str(source), str(out), str(devices), task],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "validate.json").read_text())


@pytest.mark.timeout(900)
def test_evaluation_is_shared_out_over_the_ranks_and_scores_each_window_once(tmp_path):
    """2 ranks validate an odd number of windows: each runs half the batches (one rank pads its share with a repeat,
    which is not scored), and the metrics equal one process's over all windows: the language model's summed loss,
    and a classifier's, whose per-window probabilities are gathered from the ranks (accuracy, MCC, AUROC)."""
    from test_dna_finetune import examples, write_csv

    fasta = write_fasta(tmp_path / "g.fa", random_genome(11, lengths=(8640,)))
    table = write_csv(tmp_path / "labelled.csv", examples(13))
    for source, task, names in ((fasta, "pretrain", ["valid/loss"]),
                                (table, "classifier", ["valid/loss", "valid/accuracy", "valid/mcc", "valid/auroc"])):
        one, two = validate(tmp_path, source, task, 1), validate(tmp_path, source, task, 2)
        windows = one["windows"]
        assert windows % 2 == 1 and one["batches"] == math.ceil(windows / 4), task
        assert two["batches"] == math.ceil(math.ceil(windows / 2) / 4), task  # each rank: its half, padded
        for name in names:
            assert math.isclose(one["metrics"][name], two["metrics"][name], rel_tol=1e-6), (task, name, one, two)
