"""DNA pretraining pipeline on the CPU: metrics, the length warm-up, atomic checkpoints and exact resume mid-epoch."""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("pysam")
L = pytest.importorskip("lightning")

from mamba_bio_audio.pipelines.dna_pretrain import (  # noqa: E402
    AtomicCheckpointIO, DNALanguageModel, DNAPretrainData, EpochSampler, SequenceLengthWarmup, summed_nll)
from test_dna_data import random_genome, write_fasta  # noqa: E402

TINY = {"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4}


@pytest.fixture
def genome(tmp_path):
    return write_fasta(tmp_path / "g.fa", random_genome(7, lengths=(6000, 3000)))


class Recorder(L.Callback):
    """First input id sums of every training batch, with the step and shape."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append((trainer.global_step, tuple(batch["input_ids"].shape), int(batch["input_ids"].sum())))


def trainer(tmp_path, max_steps, callbacks=(), **kw):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, deterministic=True,
                     plugins=[AtomicCheckpointIO()], callbacks=list(callbacks), default_root_dir=tmp_path,
                     reload_dataloaders_every_n_epochs=1, **kw)


def test_summed_nll_ignores_n_and_padding():
    logits = torch.randn(2, 5, 12)
    labels = torch.tensor([[7, 8, -100, 9, 10], [-100, -100, 7, 7, 8]])
    total, count = summed_nll(logits, labels)
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")
    assert count == 7 and torch.allclose(total, expected)


def test_epoch_sampler_order_depends_on_seed_and_epoch_and_skips():
    full = list(EpochSampler(50, seed=1, epoch=3, shuffle=True))
    assert sorted(full) == list(range(50))
    assert list(EpochSampler(50, seed=1, epoch=3, shuffle=True, skip=20)) == full[20:]
    assert full != list(EpochSampler(50, seed=1, epoch=4, shuffle=True))


@pytest.mark.parametrize("n,world,batch", [(7, 3, 2), (12, 4, 3), (2, 3, 1), (9, 2, 4)])
def test_eval_shard_sampler_scores_every_sample_once_in_equal_batches(n, world, batch):
    """Every rank runs the same number of batches of the same sizes; the rows that `kept` counts are all n samples,
    each once; the padding is a valid index."""
    from mamba_bio_audio.pipelines.common import EvalShardSampler

    samplers = [EvalShardSampler(n, rank, world) for rank in range(world)]
    assert len({len(s) for s in samplers}) == 1 and all(0 <= i < n for s in samplers for i in s)
    counted = []
    for sampler in samplers:
        order = list(sampler)
        for b, first in enumerate(range(0, len(order), batch)):
            rows = order[first:first + batch]
            counted += rows[:sampler.kept(b, batch, len(rows))]
    assert sorted(counted) == list(range(n))
    with pytest.raises(ValueError, match="rank 3 of a world of 3"):
        EvalShardSampler(5, 3, 3)


def test_a_trainer_that_keeps_its_first_loader_is_refused(genome, tmp_path):
    data = DNAPretrainData(str(genome), seq_len=64, batch_size=4, split_fractions=(0.8, 0.1, 0.1))
    plain = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                      default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        plain.fit(DNALanguageModel(config=TINY), datamodule=data)


def test_epoch_sampler_shards_an_epoch_between_ranks_and_each_rank_resumes_its_share():
    full = list(EpochSampler(51, seed=2, epoch=1, shuffle=True))
    shares = [list(EpochSampler(51, seed=2, epoch=1, shuffle=True, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shares] == [17, 17, 17] and len(EpochSampler(51, 2, 1, True, rank=0, world_size=3)) == 17
    assert sorted(sum(shares, [])) == sorted(full)  # disjoint, and together the whole epoch
    assert [s[i] for i in range(17) for s in shares] == full  # global batch k = the ranks' batch k interleaved
    two = [list(EpochSampler(51, seed=2, epoch=1, shuffle=True, rank=r, world_size=2)) for r in range(2)]
    assert len(two[0]) == len(two[1]) == 25 and set(full) - set(two[0] + two[1]) == {full[-1]}  # one left out
    assert list(EpochSampler(51, 2, 1, True, skip=5, rank=1, world_size=3)) == shares[1][5:]
    with pytest.raises(ValueError, match="rank 3 of a world of 3"):
        EpochSampler(51, 2, 1, True, rank=3, world_size=3)


def test_validation_and_test_report_bits_per_base(genome, tmp_path):
    data = DNAPretrainData(str(genome), seq_len=64, batch_size=8, split_fractions=(0.8, 0.1, 0.1))
    model = DNALanguageModel(config=TINY, lr=1e-3)
    results = trainer(tmp_path, 2).test(model, datamodule=data, verbose=False)[0]
    assert math.isclose(results["test/bits_per_base"], results["test/loss"] / math.log(2), rel_tol=1e-5)
    assert math.isclose(results["test/perplexity"], math.exp(results["test/loss"]), rel_tol=1e-5)
    assert 3.0 < results["test/bits_per_base"] < 4.0  # an untrained model over 12 tokens: about log2(12) = 3.58


def test_length_warmup_doubles_the_length_and_keeps_tokens_per_step(genome, tmp_path):
    data = DNAPretrainData(str(genome), seq_len=256, batch_size=2, split_fractions=(0.8, 0.1, 0.1))
    recorder = Recorder()
    warmup = SequenceLengthWarmup(start_len=64, epochs_per_stage=1)
    trainer(tmp_path, 40, [warmup, recorder], max_epochs=4).fit(DNALanguageModel(config=TINY), datamodule=data)
    shapes = []
    for _, shape, _ in recorder.batches:
        if not shapes or shapes[-1] != shape:
            shapes.append(shape)
    assert shapes == [(8, 64), (4, 128), (2, 256)]  # every step 512 tokens


def test_resume_mid_epoch_continues_exactly(genome, tmp_path):
    """An interrupted run resumed from a mid-epoch checkpoint trains on the same batches, with the same step and
    learning rate, and ends with the same parameters as the uninterrupted run (reverse-complement augmentation
    included: which windows are flipped does not depend on the RNG state a resumed process starts with)."""
    def data():
        return DNAPretrainData(str(genome), seq_len=128, batch_size=4, split_fractions=(0.8, 0.1, 0.1), rc_prob=0.5)

    torch.manual_seed(0)
    full_recorder = Recorder()
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=7,
                                                      save_top_k=-1, filename="{step}")
    full = DNALanguageModel(config=TINY, lr=3e-3)
    trainer(tmp_path, 20, [full_recorder, checkpoints]).fit(full, datamodule=data())
    steps_per_epoch = (int(0.8 * 6000) // 128 + int(0.8 * 3000) // 128) // 4
    assert 7 % steps_per_epoch != 0  # the checkpoint is mid-epoch
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step=14.ckpt", "step=7.ckpt"]

    torch.manual_seed(123)  # a different initialisation: everything must come from the checkpoint
    resumed_recorder = Recorder()
    resumed = DNALanguageModel(config=TINY, lr=3e-3)
    trainer(tmp_path / "again", 20, [resumed_recorder]).fit(resumed, datamodule=data(),
                                                             ckpt_path=tmp_path / "ckpt" / "step=7.ckpt")
    assert resumed_recorder.batches == full_recorder.batches[7:]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_mba_dna_pretrain_writes_a_run_and_resumes(genome, tmp_path):
    from mamba_bio_audio.cli import main

    run = tmp_path / "run"
    common = ["dna", "pretrain", "--fasta", str(genome), "--seq-len", "64", "--batch-size", "4", "--out", str(run),
              "--model.config", '{"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4}',
              "--trainer.val_check_interval", "3", "--data.max_eval_windows", "8", "--trainer.enable_progress_bar",
              "false", "--throughput.window", "3", "--trainer.log_every_n_steps", "2"]
    assert main(common + ["--max-steps", "6"]) == 0
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("best-step=") for name in checkpoints)
    metrics = (run / "logs" / "version_0" / "metrics.csv").read_text()
    assert "valid/bits_per_base" in metrics and "test/bits_per_base" in metrics
    # training throughput (TokenThroughput): logged every 2 steps once 3 steps are done, at steps 3 and 5 (0-based)
    rows = list(csv.DictReader(metrics.splitlines()))
    rates = {int(r["step"]): float(r["train/tokens_per_sec"]) for r in rows if r.get("train/tokens_per_sec")}
    device = {int(r["step"]): float(r["train/device/items_per_sec"]) for r in rows
              if r.get("train/device/items_per_sec")}
    assert sorted(rates) == sorted(device) == [3, 5] and all(v > 0 for v in rates.values())
    assert all(math.isclose(rates[s], device[s], rel_tol=1e-6) for s in rates)  # one device: global = per device
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    with warnings.catch_warnings(record=True) as caught:  # mid-epoch and exact: no warning that it may be unreliable
        warnings.simplefilter("always")
        assert main(common + ["--max-steps", "9", "--resume", str(run / "checkpoints" / "last.ckpt")]) == 0
    assert not [w for w in caught if "dataloader is not resumable" in str(w.message)]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 9


def test_mba_dna_evaluate_and_generate(genome, tmp_path, capsys):
    from mamba_bio_audio.cli import main

    run = tmp_path / "run"
    assert main(["dna", "pretrain", "--fasta", str(genome), "--seq-len", "64", "--batch-size", "4", "--out", str(run),
                 "--model.config", '{"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4}',
                 "--max-steps", "3", "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "2"]) == 0
    ckpt = str(run / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    assert main(["dna", "evaluate", "--ckpt", ckpt, "--fasta", str(genome)]) == 0
    assert main(["dna", "evaluate", "--ckpt", ckpt, "--fasta", str(genome), "--region", "chr2:100-900"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "bits/base" in line]
    assert "the test split, windows of 64" in lines[0] and "chr2:100-900, windows of 64" in lines[1]
    assert all(3.0 < float(line.split(": ")[1].split()[0]) < 4.0 for line in lines)
    assert main(["dna", "evaluate", "--ckpt", ckpt, "--fasta", str(genome), "--seq-len", "256", "--scored-len",
                 "64"]) == 0
    assert "windows of 256, last 64 scored" in capsys.readouterr().out
    assert main(["dna", "evaluate", "--ckpt", ckpt, "--fasta", str(genome), "--region", "chr2:100-9000"]) == 1
    assert "not within" in capsys.readouterr().err
    out = tmp_path / "gen.fa"
    assert main(["dna", "generate", "--ckpt", ckpt, "--prompt", "acgtNACG", "--length", "100", "--out", str(out)]) == 0
    header, *body = out.read_text().splitlines()
    sequence = "".join(body)
    assert header.startswith(">generated") and len(sequence) == 108 and sequence.startswith("ACGTNACG")
    assert set(sequence[8:]) <= set("ACGT")


def test_mba_dna_export_writes_both_layouts(genome, tmp_path):
    """A training checkpoint exported as our layout and the reference implementation's loads back with the same
    logits."""
    from mamba_bio_audio import MambaLMHeadModel
    from mamba_bio_audio.cli import main

    run = tmp_path / "run"
    assert main(["dna", "pretrain", "--fasta", str(genome), "--seq-len", "64", "--batch-size", "4", "--out", str(run),
                 "--model.config", json.dumps(TINY), "--max-steps", "2", "--trainer.enable_progress_bar", "false",
                 "--trainer.limit_val_batches", "1"]) == 0
    ckpt = str(run / "checkpoints" / "last.ckpt")
    trained = DNALanguageModel.load_from_checkpoint(ckpt, map_location="cpu").model.eval()
    ids = torch.randint(0, 12, (2, 40))
    for layout, weights in (("ours", "model.safetensors"), ("reference", "pytorch_model.bin")):
        out = tmp_path / layout
        assert main(["dna", "export", "--ckpt", ckpt, "--out", str(out), "--layout", layout]) == 0
        assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", weights])
        loaded = MambaLMHeadModel.from_pretrained(out).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids), trained(ids))


def test_mba_dna_context_sweep_scores_every_length_on_the_same_bases(genome, tmp_path, capsys):
    from mamba_bio_audio.cli import main
    from mamba_bio_audio.pipelines.dna_context_sweep import read_run_metrics

    out = tmp_path / "sweep"
    args = ["dna", "context-sweep", "--fasta", str(genome), "--lengths", "32,128", "--seeds", "0,1",
            "--tokens-per-step", "256", "--max-steps", "2", "--scored-len", "32", "--d-model", "16", "--n-layer", "1",
            "--parallel", "2", "--out", str(out), "--data.split_fractions", "[0.8, 0.1, 0.1]",
            "--data.max_eval_windows", "4", "--trainer.val_check_interval", "2"]
    assert main(args) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "seq_len,seed,test_bits_per_base,best_valid_bits_per_base,steps,wall_s" and len(rows) == 5
    assert all(r.split(",")[4] == "2" for r in rows[1:])  # the steps every run took
    assert (out / "context_scaling.png").read_bytes()[:4] == b"\x89PNG"
    config = (out / "L128-seed1" / "logs" / "version_0" / "config.yaml").read_text()
    assert "eval_scored_len: 32" in config and "batch_size: 2" in config and "seed_everything: 1" in config
    first = read_run_metrics(out / "L128-seed1")
    assert 3.0 < first["test_bits_per_base"] < 4.0
    capsys.readouterr()
    before = (out / "L32-seed0" / "result.json").stat().st_mtime_ns
    assert main(args) == 0  # finished runs are reused, not repeated
    assert (out / "L32-seed0" / "result.json").stat().st_mtime_ns == before
    assert "wrote" in capsys.readouterr().out
    assert main(args[:-2] + ["--lengths", "16"]) == 1  # shorter than the scored targets
    assert "at least --scored-len" in capsys.readouterr().err
    assert main(args + ["--max-steps", "3"]) == 1  # the same folder, other settings: not silently reused
    assert "holds a finished run with other settings" in capsys.readouterr().err


def test_context_sweep_plot_title_says_when_a_time_limit_cut_runs_short():
    from mamba_bio_audio.pipelines.dna_context_sweep import _steps_taken

    assert _steps_taken([{"steps": 600}, {"steps": 600}], 600) == "600 steps"
    assert _steps_taken([{"steps": 155}, {"steps": 150}], 600) == "150–155 of 600 steps"
    assert _steps_taken([{"steps": 155}], 600) == "155 of 600 steps"
    assert _steps_taken([{}], 600) == "600 steps"  # results written before runs recorded their steps


def test_context_sweep_plot_title_names_the_model_variant_of_the_runs_resolved_configuration(tmp_path):
    """The variant comes from the run's config.yaml (the newest version's), so direct options (--rc-equivariant),
    --model.* options and a --config file are read alike."""
    import yaml

    from mamba_bio_audio.pipelines.dna_context_sweep import model_variant

    def variant(model: dict, task: str = "species", version: int = 0) -> str:
        run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        for v in range(version + 1):  # older versions say something else: the newest counts
            (run / "logs" / f"version_{v}").mkdir(parents=True)
            (run / "logs" / f"version_{v}" / "config.yaml").write_text(
                yaml.safe_dump({"model": model if v == version else {"rc_equivariant": True}, "data": {}}))
        return model_variant(run, task)

    species = {"config": {"d_model": 16}, "bidirectional": False, "rc_equivariant": False, "pooling": None,
               "rc_conjoin": False, "lr": 1e-3}
    assert variant(species) == "causal, last position"  # a species run's default readout
    assert variant({"arch": "mamba", "config": {"d_model": 16}, "lr": 1e-3}, "pretrain") == "causal"
    assert variant({**species, "rc_equivariant": True, "pooling": "max"}) == "RC-equivariant, max pooling"
    assert variant({**species, "rc_equivariant": True, "bidirectional": True, "pooling": "max"}) == (
        "RC-equivariant, bidirectional, max pooling")  # Caduceus proper: both named
    assert variant({**species, "bidirectional": True}, version=11) == "bidirectional"
    assert variant({**species, "bidirectional": True, "rc_conjoin": True}) == "bidirectional, RC-conjoined"
    assert variant({**species, "config": {"bidirectional": True}}) == "causal, last position"  # the classifier's wins
    assert variant({"config": {"bidirectional": True}, "objective": "mlm"}, "pretrain") == "bidirectional"


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "pipelines" / "configs" /
                                                           "dna_pretrain").glob("*.yaml")))
def test_paper_configs_parse_and_build(name):
    from mamba_bio_audio.pipelines.dna_pretrain import build_cli

    path = Path(__file__).parents[1] / "pipelines" / "configs" / "dna_pretrain" / name
    cli = build_cli(["--config", str(path)], run_dir="/tmp/unused")
    assert cli.datamodule.hparams.fasta.endswith("hg38.ml.fa.gz") and cli.trainer.max_steps > 0
    assert cli.model.hparams.arch in name


def test_shipped_configs_are_found_by_name(tmp_path):
    from mamba_bio_audio.pipelines.cli import shipped_config

    assert shipped_config("dna_pretrain", "hg38_mamba_1.4M_L1024").name == "hg38_mamba_1.4M_L1024.yaml"
    assert shipped_config("dna_pretrain", "hg38_mamba_6x128_L1048576.yaml").is_file()
    own = tmp_path / "mine.yaml"
    own.write_text("data: {}\n")
    assert shipped_config("dna_pretrain", str(own)) == own
    with pytest.raises(ValueError, match=r"no shipped config of that name \(shipped: hg38_mamba_0\.26M_L1024, "):
        shipped_config("dna_pretrain", "hg38_mamba_2M")


def test_mask_bases_chooses_only_bases_in_bert_proportions():
    from mamba_bio_audio.pipelines.dna_pretrain import mask_bases

    ids = torch.randint(7, 11, (64, 500))
    ids[:, :50] = 11  # N
    ids[:, 50:60] = 4  # padding
    inputs, labels = mask_bases(ids, 0.15, key=3)
    chosen = labels != -100
    assert not chosen[:, :60].any() and torch.equal(labels[chosen], ids[chosen])
    assert 0.14 < chosen[:, 60:].float().mean() < 0.16
    masked = (inputs == 3) & chosen
    changed = (inputs != ids) & (inputs != 3)
    assert 0.78 < masked.sum() / chosen.sum() < 0.82
    assert 0.06 < changed.sum() / chosen.sum() < 0.09  # 10% random bases, a quarter of them equal to the original
    assert torch.equal(inputs[~chosen], ids[~chosen])
    again, _ = mask_bases(ids, 0.15, key=3)
    other, _ = mask_bases(ids, 0.15, key=4)
    assert torch.equal(again, inputs) and not torch.equal(other, inputs)


def test_masked_lm_objective_trains_a_bidirectional_rc_equivariant_model(genome, tmp_path):
    config = {**TINY, "bidirectional": True, "rc_equivariant": True}
    data = DNAPretrainData(str(genome), seq_len=64, batch_size=8, split_fractions=(0.8, 0.1, 0.1))
    model = DNALanguageModel(config=config, objective="mlm", lr=1e-2)
    run = trainer(tmp_path, 30, limit_test_batches=4)
    run.fit(model, datamodule=data)
    result = run.test(model, datamodule=data, verbose=False)[0]
    assert 1.5 < result["test/bits_per_base"] < 2.3  # about 2 bits for random bases, and finite
    first = run.test(model, datamodule=data, verbose=False)[0]
    assert first["test/bits_per_base"] == result["test/bits_per_base"]  # the same masks at every evaluation
    with pytest.raises(ValueError, match="masked-LM objective goes with a bidirectional Mamba"):
        DNALanguageModel(config=TINY, objective="mlm")
    with pytest.raises(ValueError, match="Transformer\\+\\+ baseline is causal"):
        DNALanguageModel(arch="transformer", model_size="0.26M", objective="mlm")
