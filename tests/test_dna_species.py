"""Species classification pipeline on the CPU: genome folders, the HyenaDNA split, deterministic window sampling,
exact resume, post-hoc reverse-complement conjoining, and `mba dna species` end to end."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pysam")
L = pytest.importorskip("lightning")

from mamba_bio_audio.cli import main  # noqa: E402
from mamba_bio_audio.data_recipes.apes import simulate_apes  # noqa: E402
from mamba_bio_audio.dna import DNATokenizer  # noqa: E402
from mamba_bio_audio.pipelines.common import AtomicCheckpointIO  # noqa: E402
from mamba_bio_audio.pipelines.dna_species import (  # noqa: E402
    HYENADNA_SPLIT, SpeciesData, chromosome_key, find_species)
from mamba_bio_audio.pipelines import dna_classifier  # noqa: E402
from mamba_bio_audio.pipelines.dna_classifier import DNAClassifier, save_confusion  # noqa: E402
from test_dna_data import write_fasta  # noqa: E402

TINY = {"d_model": 16, "n_layer": 2, "vocab_size": 12, "d_state": 4}
SPLIT = {"train": ["2"], "valid": ["21"], "test": ["5"]}


@pytest.fixture(scope="module")
def apes_dir(tmp_path_factory):
    dest = tmp_path_factory.mktemp("apes")
    simulate_apes(dest, scale=1000, chromosomes=["2", "5", "21"], progress=False)
    return dest


def test_chromosome_keys_follow_the_hyenadna_split():
    assert [chromosome_key(n) for n in ("chr2A", "chr2B", "chrX", "chr14", "2", "CHR7", "chrUn_x")] == [
        "2", "2", "X", "14", "2", "7", "UN_X"]
    assert set(HYENADNA_SPLIT["train"]) & set(HYENADNA_SPLIT["test"]) == set()
    assert len({k for keys in HYENADNA_SPLIT.values() for k in keys}) == 24


def test_find_species_reads_both_layouts(tmp_path, apes_dir):
    assert sorted(find_species(apes_dir)) == ["bonobo", "chimpanzee", "gorilla", "human", "orangutan"]
    for species in ("cat", "dog"):  # one folder per species, one FASTA per chromosome
        for chrom in ("chr1", "chr2"):
            write_fasta((tmp_path / "per" / species).mkdir(parents=True, exist_ok=True) or
                        tmp_path / "per" / species / f"{chrom}.fa", {chrom: "ACGT" * 50})
    found = find_species(tmp_path / "per")
    assert sorted(found) == ["cat", "dog"] and [e[1] for e in found["cat"]] == ["chr1", "chr2"]
    (tmp_path / "one").mkdir()
    write_fasta(tmp_path / "one" / "x.fa", {"chr1": "ACGT" * 50})
    with pytest.raises(ValueError, match=r"at least two species, found \['x'\]"):
        find_species(tmp_path / "one")


def test_windows_are_a_function_of_seed_epoch_and_index_and_skip_mostly_n(tmp_path):
    write_fasta(tmp_path / "a.fa", {"chr1": "N" * 900 + "ACGT" * 25, "chr2": "ACGT" * 250})
    write_fasta(tmp_path / "b.fa", {"chr1": "TTGCA" * 200, "chr2": "GGCAT" * 200})
    data = SpeciesData(str(tmp_path), seq_len=64, batch_size=4, split_names={"train": ["1", "2"], "valid": ["1"],
                                                                             "test": ["2"]}, samples_per_epoch=200)
    data.setup()
    first = data._dataset("train", 64, 200, epoch=0)
    items = [first[i] for i in range(200)]
    again = data._dataset("train", 64, 200, epoch=0)
    assert all(torch.equal(again[i]["input_ids"], items[i]["input_ids"]) for i in (0, 17, 199))
    other_epoch = data._dataset("train", 64, 200, epoch=1)
    assert not all(torch.equal(other_epoch[i]["input_ids"], items[i]["input_ids"]) for i in range(10))
    labels = torch.stack([it["labels"] for it in items])
    assert 60 < int(labels.sum()) < 140  # both classes drawn, about evenly
    assert all(float((it["input_ids"] == DNATokenizer.N_ID).float().mean()) <= 0.5 for it in items)
    with pytest.raises(ValueError, match=r"species 'a' has no test chromosome of at least 2,000 bases"):
        data.chromosomes("test", 2000)
    with pytest.raises(ValueError, match=r"no genome for species \['c'\]"):
        SpeciesData(str(tmp_path), species=["a", "c"]).setup()


def trainer(root, max_steps, callbacks=()):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, deterministic=True,
                     plugins=[AtomicCheckpointIO()], callbacks=list(callbacks), default_root_dir=root,
                     reload_dataloaders_every_n_epochs=1)


def check_resume_is_exact(tmp_path, data, model):
    """Train 12 steps (5 per epoch) with checkpoints every 7 steps, then resume a differently initialised model from
    step 7 (mid-epoch): both must end with exactly the same parameters. `data`, `model`: factories."""
    torch.manual_seed(0)
    full = model()
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=7,
                                                      save_top_k=-1, filename="{step}")
    trainer(tmp_path, 12, [checkpoints]).fit(full, datamodule=data())  # 5 steps per epoch: step 7 is mid-epoch
    torch.manual_seed(1)
    resumed = model()
    trainer(tmp_path / "again", 12).fit(resumed, datamodule=data(), ckpt_path=tmp_path / "ckpt" / "step=7.ckpt")
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_resume_mid_epoch_reaches_the_same_parameters(apes_dir, tmp_path):
    def data():
        return SpeciesData(str(apes_dir), seq_len=128, batch_size=4, split_names=SPLIT, samples_per_epoch=20,
                           rc_prob=0.5)

    check_resume_is_exact(tmp_path, data, lambda: DNAClassifier(class_names=data().class_names, model_size=None,
                                                                config=TINY, lr=3e-3))


def test_rc_equivariant_classifier_gives_the_same_logits_on_both_strands():
    torch.manual_seed(0)
    model = DNAClassifier(class_names=["a", "b"], model_size=None, config=TINY, bidirectional=True,
                              rc_equivariant=True).eval()
    assert model.model.pooling == "mean"
    ids = torch.randint(7, 12, (3, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(DNATokenizer.reverse_complement(ids)), model(ids), rtol=1e-5, atol=1e-5)


def test_rc_conjoin_is_invariant_to_the_strand():
    model = DNAClassifier(class_names=["a", "b", "c"], model_size=None, config=TINY, rc_conjoin=True).eval()
    ids = torch.randint(7, 11, (3, 50))
    rc = DNATokenizer.reverse_complement(ids)
    with torch.no_grad():
        both, forward_only = model(ids), model.model(ids)
        assert torch.allclose(both, model(rc), atol=1e-5) and not torch.allclose(both, forward_only, atol=1e-3)
        assert torch.allclose(both, (forward_only + model.model(rc)) / 2, atol=1e-6)


@pytest.mark.parametrize("variant", ["causal", "bidirectional", "rc-equivariant-max"])
def test_mba_dna_species_trains_tests_and_plots(apes_dir, tmp_path, capsys, monkeypatch, variant):
    titles = []

    def recording_save_confusion(matrix, names, folder, split, title=""):
        titles.append(title)
        return save_confusion(matrix, names, folder, split, title)

    monkeypatch.setattr(dna_classifier, "save_confusion", recording_save_confusion)
    run = tmp_path / "run"
    args = ["dna", "species", "--data-dir", str(apes_dir), "--seq-len", "128", "--batch-size", "4", "--max-steps",
            "4", "--out", str(run), "--model.model_size", "null", "--model.config", str(TINY).replace("'", '"'),
            "--data.split_names", str(SPLIT).replace("'", '"'), "--data.samples_per_epoch", "8",
            "--data.eval_samples", "10", "--trainer.enable_progress_bar", "false"]
    flags = {"causal": [], "bidirectional": ["--bidirectional"],
             "rc-equivariant-max": ["--rc-equivariant", "--pooling", "max"]}[variant]
    assert main(args + flags) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "(chance 0.2000)" in out and "orangutan" in out
    metrics = csv.DictReader((run / "logs" / "version_0" / "metrics.csv").read_text().splitlines())
    logged = [float(row["valid/accuracy"]) for row in metrics if row.get("valid/accuracy")]
    assert len(logged) == 2  # one validation per epoch (none in the sanity check), each writing confusion_valid
    assert [t.split()[0] for t in titles] == ["valid", "valid", "test"] and titles[1].endswith(", epoch 1")
    for split, accuracy in (("test", float(out.split("test accuracy ")[1].split()[0])), ("valid", logged[-1])):
        header, *rows = (run / f"confusion_{split}.csv").read_text().splitlines()
        assert header == "true\\predicted,bonobo,chimpanzee,gorilla,human,orangutan"
        matrix = np.array([[int(v) for v in line.split(",")[1:]] for line in rows])
        assert matrix.sum() == 10 and np.trace(matrix) / 10 == pytest.approx(accuracy, abs=1e-4)
        assert (run / f"confusion_{split}.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    config = (run / "logs" / "version_0" / "config.yaml").read_text()
    expected = {"causal": ("false", "false", "null"), "bidirectional": ("true", "false", "null"),
                "rc-equivariant-max": ("false", "true", "max")}[variant]
    assert [line.split(": ")[1] for line in config.splitlines()
            if line.strip().split(":")[0] in ("bidirectional", "rc_equivariant", "pooling")] == list(expected)
    assert "start_len: 16384" in config
    assert {"last.ckpt"} <= {p.name for p in (run / "checkpoints").iterdir()}


def test_context_sweep_of_species_accuracy(apes_dir, tmp_path, capsys, monkeypatch):
    from mamba_bio_audio.pipelines import dna_context_sweep

    plotted, plot = {}, dna_context_sweep.plot_context_scaling
    monkeypatch.setattr(dna_context_sweep, "plot_context_scaling", lambda rows, path, title, task, chance=None: (
        plotted.update(title=title, chance=chance), plot(rows, path, title, task, chance)))
    out = tmp_path / "sweep"
    assert main(["dna", "context-sweep", "--task", "species", "--data-dir", str(apes_dir), "--lengths", "64,256",
                 "--seeds", "0", "--batch-size", "4", "--max-steps", "2", "--d-model", "16", "--n-layer", "1",
                 "--parallel", "2", "--out", str(out), "--data.split_names", str(SPLIT).replace("'", '"'),
                 "--data.samples_per_epoch", "8", "--data.eval_samples", "10"]) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "seq_len,seed,test_accuracy,best_valid_accuracy,steps,wall_s" and len(rows) == 3
    assert all(0.0 <= float(row.split(",")[2]) <= 1.0 for row in rows[1:])
    assert "test accuracy" in capsys.readouterr().out and (out / "context_scaling.png").is_file()
    config = (out / "L256-seed0" / "logs" / "version_0" / "config.yaml").read_text()
    assert "batch_size: 4" in config and "seq_len: 256" in config
    assert plotted["chance"] == 1 / 5 and "1 × 16 Mamba (causal, last position), 2 steps" in plotted["title"]


def test_bidirectional_classifier_learns_an_easy_task(tmp_path, capsys):
    """Two 'species' that differ only in GC content (45% vs 55%): a mean-pooled bidirectional model must separate
    them after a few dozen steps (the whole pipeline, from FASTA to test accuracy, can fail this)."""
    import random

    rng = random.Random(0)
    for name, gc in (("at_rich", 0.45), ("gc_rich", 0.55)):
        write_fasta(tmp_path / f"{name}.fa", {c: "".join(rng.choices("GCAT", weights=[gc, gc, 1 - gc, 1 - gc], k=8000))
                                             for c in ("chr1", "chr2", "chr3")})
    assert main(["dna", "species", "--data-dir", str(tmp_path), "--seq-len", "512", "--batch-size", "16",
                 "--max-steps", "60", "--bidirectional", "--out", str(tmp_path / "run"), "--model.model_size", "null",
                 "--model.config", '{"d_model": 32, "n_layer": 2, "vocab_size": 12}', "--model.lr", "3e-3",
                 "--data.split_names", '{"train": ["1"], "valid": ["2"], "test": ["3"]}',
                 "--data.samples_per_epoch", "320", "--data.eval_samples", "64",
                 "--trainer.enable_progress_bar", "false"]) == 0
    accuracy = float(capsys.readouterr().out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.9


def test_mba_dna_classify_and_embed_stream_whole_records(apes_dir, tmp_path, capsys):
    """A causal classifier scores whole chromosomes streamed in small chunks; the probabilities equal those of one
    pass over the record, the embeddings are the pooled features, and outputs are TSV / .npy."""
    from mamba_bio_audio.dna.fasta import open_fasta
    from mamba_bio_audio.pipelines.dna_infer import RecordScorer

    run = tmp_path / "run"
    assert main(["dna", "species", "--data-dir", str(apes_dir), "--seq-len", "128", "--batch-size", "4",
                 "--max-steps", "2", "--out", str(run), "--model.model_size", "null", "--model.config",
                 str(TINY).replace("'", '"'), "--model.pooling", "max", "--data.split_names",
                 str(SPLIT).replace("'", '"'), "--data.samples_per_epoch", "8", "--data.eval_samples", "5",
                 "--trainer.enable_progress_bar", "false"]) == 0
    ckpt, fasta = str(run / "checkpoints" / "last.ckpt"), str(apes_dir / "gorilla.fa.gz")
    capsys.readouterr()
    assert main(["dna", "classify", "--ckpt", ckpt, "--fasta", fasta, "--chunk-len", "5000"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split("\t") == ["record", "length", "p_bonobo", "p_chimpanzee", "p_gorilla", "p_human",
                                  "p_orangutan", "predicted"]
    assert [r.split("\t")[0] for r in rows] == ["chr2A", "chr2B", "chr5", "chr21"]
    assert all(abs(sum(map(float, r.split("\t")[2:7])) - 1) < 1e-4 for r in rows)
    scorer = RecordScorer(ckpt, chunk_len=10 ** 9, device="cpu")  # one chunk: the whole record in one pass
    handle = open_fasta(fasta)
    one_pass = scorer.probabilities(handle, "chr21", fasta)
    streamed = [float(v) for v in rows[-1].split("\t")[2:7]]
    assert np.allclose(streamed, one_pass.numpy(), atol=1e-4)
    out = tmp_path / "emb.npy"
    assert main(["dna", "embed", "--ckpt", ckpt, "--fasta", fasta, "--out", str(out), "--chunk-len", "3000"]) == 0
    embeddings = np.load(out)
    assert embeddings.shape == (4, 16) and (tmp_path / "emb.tsv").read_text().splitlines()[1].startswith("0\tchr2A")
    assert np.allclose(embeddings[-1], scorer.features(handle, "chr21", fasta).numpy(), atol=1e-4)
    assert main(["dna", "embed", "--ckpt", ckpt, "--fasta", fasta, "--out", str(tmp_path / "emb.txt")]) == 1


EMBED_LENGTHS = (50, 120, 7, 333, 120, 50)  # chunk / window 200: 333 is streamed (windowed), the rest batched


def classifier_checkpoint(path, **kwargs):
    """Save an untrained TINY DNAClassifier as a Lightning checkpoint at `path`; returns the model (eval mode)."""
    torch.manual_seed(0)
    model = DNAClassifier(class_names=["a", "b"], model_size=None, config=TINY, **kwargs)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return model.eval()


def embed_records(tmp_path):
    """{name: bases} of records of EMBED_LENGTHS, plus `rc1`, the reverse complement of r1, written to tmp/x.fa. The
    first record's id holds "/" (HDF5's group separator)."""
    import random

    rng = random.Random(0)
    records = {f"r{i}" if i else "r0/1": "".join(rng.choices("ACGT", k=n)) for i, n in enumerate(EMBED_LENGTHS)}
    records["rc1"] = records["r1"][::-1].translate(str.maketrans("ACGT", "TGCA"))
    write_fasta(tmp_path / "x.fa", records)
    return records


EMBED_MODELS = {"causal": {"pooling": "max"}, "causal_last": {}, "bidirectional": {"bidirectional": True},
                "rc_equivariant": {"bidirectional": True, "rc_equivariant": True}}


@pytest.mark.parametrize("kind", ["causal", "bidirectional", "rc_equivariant"])
def test_per_base_h5_holds_each_records_one_pass_hidden_states(tmp_path, kind):
    """`--per-base` to .h5: per_base/<record> is the backbone's hidden states over the whole record in one pass
    (causal; streamed in chunks of 200 for the long records) or window by window (bidirectional), for records
    batched with others of other lengths (causal) or of the same length; the pooled rows are the classifier's
    features. A reverse-complement-equivariant model's per-base embeddings of RC(x) are those of x in reverse order:
    a base pair gets the same vector read on either strand."""
    h5py = pytest.importorskip("h5py")
    from mamba_bio_audio.pipelines.dna_infer import embed_fasta, h5_key

    model = classifier_checkpoint(tmp_path / "m.ckpt", **EMBED_MODELS[kind])
    records = embed_records(tmp_path)
    out = tmp_path / "emb.h5"
    assert embed_fasta(str(tmp_path / "m.ckpt"), str(tmp_path / "x.fa"), str(out), chunk_len=200, window=200,
                       per_base=True, batch_size=3) == [out]
    with h5py.File(out) as f, torch.no_grad():
        assert list(f["ids"].asstr()[:]) == list(records)
        assert list(f["lengths"][:]) == [len(s) for s in records.values()]
        for row, (name, bases) in enumerate(records.items()):
            ids = DNATokenizer().encode(bases)[None]
            pieces = [ids] if kind == "causal" else list(ids.split(200, dim=1))
            hidden = torch.cat([model.model.backbone(piece) for piece in pieces], 1)[0]
            if kind == "rc_equivariant":
                forward, reverse = hidden.chunk(2, dim=-1)
                hidden = forward + reverse.flip(-1)
            assert f["per_base"][h5_key(name)].dtype == np.float32
            np.testing.assert_allclose(f["per_base"][h5_key(name)][:], hidden.numpy(), rtol=1e-4, atol=1e-5)
            pooled = torch.cat([model.model.features(piece) for piece in pieces]).mean(0)
            np.testing.assert_allclose(f["embeddings"][row], pooled.numpy(), rtol=1e-4, atol=1e-5)
        if kind == "rc_equivariant":
            np.testing.assert_allclose(f["per_base"]["rc1"][:], f["per_base"]["r1"][:][::-1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["causal", "causal_last", "bidirectional"])
def test_batched_embeddings_equal_one_record_at_a_time_in_every_format(tmp_path, kind):
    """Pooled embeddings in batches of 4 (.h5, .npz; right-padded records of different lengths for a causal model,
    max-pooled or read out at the last real base; padding nowhere for the bidirectional one) equal those of batches
    of one (.npy + .tsv), with the same ids and lengths read back; per-base .npz arrays equal the .h5 ones."""
    h5py = pytest.importorskip("h5py")
    from mamba_bio_audio.pipelines.dna_infer import embed_fasta, h5_key

    classifier_checkpoint(tmp_path / "m.ckpt", **EMBED_MODELS[kind])
    records = embed_records(tmp_path)
    ckpt, fasta = str(tmp_path / "m.ckpt"), str(tmp_path / "x.fa")
    assert main(["dna", "embed", "--ckpt", ckpt, "--fasta", fasta, "--out", str(tmp_path / "one.npy"), "--batch-size",
                 "1", "--chunk-len", "200", "--window", "200"]) == 0
    one = np.load(tmp_path / "one.npy")
    index = [line.split("\t") for line in (tmp_path / "one.tsv").read_text().splitlines()[1:]]
    assert index == [[str(i), name, str(len(bases))] for i, (name, bases) in enumerate(records.items())]
    for suffix in (".h5", ".npz"):
        embed_fasta(ckpt, fasta, str(tmp_path / f"b{suffix}"), chunk_len=200, window=200, batch_size=4,
                    per_base=True)
    with h5py.File(tmp_path / "b.h5") as f, np.load(tmp_path / "b.npz") as z:
        for ids, lengths, embeddings in ((f["ids"].asstr()[:], f["lengths"][:], f["embeddings"][:]),
                                         (z["ids"], z["lengths"], z["embeddings"])):
            assert list(ids) == list(records) and list(lengths) == [len(s) for s in records.values()]
            assert embeddings.dtype == np.float32 and embeddings.shape == (len(records), 16)
            np.testing.assert_allclose(embeddings, one, rtol=1e-5, atol=1e-6)
        assert sorted(f["per_base"]) == sorted(h5_key(name) for name in records)
        for name in records:
            np.testing.assert_array_equal(z[f"per_base/{name}"], f["per_base"][h5_key(name)][:])
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_embed_output_errors_come_before_any_work(tmp_path, monkeypatch):
    """An output embed cannot write is refused, with the fix, before the checkpoint is even read."""
    import sys

    from mamba_bio_audio.errors import MbaError
    from mamba_bio_audio.pipelines.dna_infer import embed_fasta

    with pytest.raises(ValueError, match=r"emb\.npy: per-base .* write .*emb\.h5 or .*emb\.npz"):
        embed_fasta("missing.ckpt", "missing.fa", str(tmp_path / "emb.npy"), per_base=True)
    with pytest.raises(ValueError, match=r"emb\.txt: embeddings are written as \.npy, \.npz or \.h5"):
        embed_fasta("missing.ckpt", "missing.fa", str(tmp_path / "emb.txt"))
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if not installed
    with pytest.raises(MbaError, match=r"needs h5py: pip install h5py"):
        embed_fasta("missing.ckpt", "missing.fa", str(tmp_path / "emb.h5"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "pipelines" / "configs" /
                                                           "dna_species").glob("*.yaml")))
def test_shipped_species_configs_parse_and_build(name):
    from mamba_bio_audio.pipelines.dna_species import build_cli

    path = Path(__file__).parents[1] / "pipelines" / "configs" / "dna_species" / name
    cli = build_cli(["--config", str(path)], run_dir="/tmp/unused")
    length = int(name.split("_L")[1].split(".")[0])
    assert cli.datamodule.seq_len == length and cli.datamodule.hparams.batch_size == 64
    assert cli.trainer.max_steps == 10240 and cli.model.hparams.lr == 1e-4 and not cli.model.hparams.bidirectional
    assert cli.model.hparams.class_names == ["bonobo", "chimpanzee", "gorilla", "human", "orangutan"]


def test_running_out_of_memory_at_a_longer_stage_names_the_shape_and_resumes(apes_dir, tmp_path, monkeypatch,
                                                                             capsys):
    """The length warm-up's second stage (128 bases) runs out of accelerator memory (simulated): `mba` stops with
    one line naming the step, the batch's shape, the kept checkpoint and the ways on, and a resume from that
    checkpoint with gradient checkpointing added finishes the run."""
    run = tmp_path / "run"
    args = ["dna", "species", "--data-dir", str(apes_dir), "--seq-len", "128", "--batch-size", "4",
            "--max-steps", "4", "--out", str(run), "--model.model_size", "null", "--model.config",
            str(TINY).replace("'", '"'), "--model.pooling", "max", "--data.split_names", str(SPLIT).replace("'", '"'),
            "--data.samples_per_epoch", "8", "--data.eval_samples", "5", "--length_warmup.start_len", "64",
            "--trainer.enable_progress_bar", "false"]
    training_step = DNAClassifier.training_step

    def out_of_memory_at_128(self, batch, batch_idx):
        if batch["input_ids"].shape[1] == 128:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                         "capacity of 79.18 GiB of which 160.12 MiB is free.")
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(DNAClassifier, "training_step", out_of_memory_at_128)
    capsys.readouterr()
    assert main(args) == 1
    error = capsys.readouterr().err
    last = run / "checkpoints" / "last.ckpt"
    assert "out of accelerator memory at step 2 (epoch 1), training on batches of 4 × 128 tokens" in error
    assert f"--resume {last}" in error and "--model.gradient_checkpointing true" in error
    assert "Tried to allocate 2.00 GiB" in error and "79.18" not in error
    assert torch.load(last, weights_only=False)["global_step"] == 2

    monkeypatch.setattr(DNAClassifier, "training_step", training_step)
    assert main([*args, "--resume", str(last), "--model.gradient_checkpointing", "true"]) == 0
    assert torch.load(last, weights_only=False)["global_step"] == 4
    header = next((run / "logs").glob("version_*/metrics.csv")).read_text().splitlines()[0]
    assert "train/peak_memory_gib" not in header  # logged on CUDA devices only


@pytest.mark.parametrize("loader_worker_killed", [False, True])
def test_sigterm_saves_the_last_step_and_a_resume_ends_where_an_uninterrupted_run_does(apes_dir, tmp_path,
                                                                                       monkeypatch, capsys,
                                                                                       loader_worker_killed):
    """SIGTERM in the middle of an epoch (a scheduler's time limit): the run saves its state after that step as
    last.ckpt and stops with one line naming it; resuming from it ends with exactly the parameters of a run that
    was never interrupted. The same when the signal also killed a DataLoader worker (one that was still starting,
    before its worker_init_fn could block SIGTERM) and PyTorch raised that in the next fetch: the state after the
    last completed step is saved all the same."""
    import signal

    def args(out):
        return ["dna", "species", "--data-dir", str(apes_dir), "--seq-len", "128", "--batch-size", "4",
                "--max-steps", "6", "--out", str(out), "--model.model_size", "null", "--model.config",
                str(TINY).replace("'", '"'), "--model.lr", "3e-3", "--data.split_names",
                str(SPLIT).replace("'", '"'), "--data.samples_per_epoch", "40", "--data.eval_samples", "5",
                "--trainer.enable_progress_bar", "false"]

    assert main(args(tmp_path / "whole")) == 0
    training_step = DNAClassifier.training_step

    def terminated_at_step_3(self, batch, batch_idx):
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler: stop once this step is done
            if loader_worker_killed:              # before the step: as PyTorch raises it when fetching the batch
                raise RuntimeError("DataLoader worker (pid 12345) is killed by signal: Terminated. ")
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(DNAClassifier, "training_step", terminated_at_step_3)
    capsys.readouterr()
    assert main(args(tmp_path / "cut")) == 1
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    step = 2 if loader_worker_killed else 3
    assert f"interrupted after step {step}; its state is saved in {last}" in capsys.readouterr().err
    assert torch.load(last, weights_only=False)["global_step"] == step
    monkeypatch.setattr(DNAClassifier, "training_step", training_step)
    assert main([*args(tmp_path / "cut"), "--resume", str(last)]) == 0
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(last, weights_only=False)
    assert whole["global_step"] == resumed["global_step"] == 6
    for name, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name


def test_context_sweep_continues_an_unfinished_run_from_its_last_checkpoint(tmp_path):
    """A sweep's run killed midway (its last checkpoint kept) continues with --resume when the sweep is run again;
    its result reads every log version (the best validation from before the kill); other settings are refused."""
    import json
    import sys

    from mamba_bio_audio.pipelines.dna_context_sweep import TASKS, _one_run

    fake_run = """import sys, pathlib, time
time.sleep(0.3)
run = pathlib.Path(sys.argv[1])
resumed = "--resume" in sys.argv
log = run / "logs" / f"version_{int(resumed)}"
log.mkdir(parents=True)
if resumed:
    assert sys.argv[sys.argv.index("--resume") + 1] == str(run / "checkpoints" / "last.ckpt")
    (log / "metrics.csv").write_text("step,valid/accuracy,test/accuracy\\n10,0.5,\\n10,,0.8\\n")
else:
    (log / "metrics.csv").write_text("step,valid/accuracy,test/accuracy\\n5,0.9,\\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_text("state")
    sys.exit("killed")
"""
    run_dir = tmp_path / "L64-seed0"
    command = [sys.executable, "-c", fake_run, str(run_dir), "--max-steps", "10"]
    with pytest.raises(RuntimeError, match="failed"):
        _one_run(command, run_dir, 64, 0, TASKS["species"])
    started = json.loads((run_dir / "command.json").read_text())
    assert started["command"] == command[3:] and started["wall_s"] >= 0.3
    with pytest.raises(ValueError, match="holds an unfinished run with other settings"):
        _one_run([*command[:-1], "20"], run_dir, 64, 0, TASKS["species"])
    result = _one_run(command, run_dir, 64, 0, TASKS["species"])
    assert (result["test_accuracy"], result["best_valid_accuracy"], result["steps"]) == (0.8, 0.9, 10)
    assert result["wall_s"] >= 0.6  # both attempts' time
    assert "killed" in (run_dir / "run.log").read_text()  # the log of both attempts
