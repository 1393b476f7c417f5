"""Indexed FASTA access (plain, bgzip, gzip), `mba data index`, FASTA and BED validation errors, genome windows
and the next-base dataset."""
from __future__ import annotations

import gzip
import random

import pytest
import torch

pysam = pytest.importorskip("pysam")

from mamba_bio_audio.cli import main  # noqa: E402
from mamba_bio_audio.dna import DNATokenizer  # noqa: E402
from mamba_bio_audio.dna.fasta import compression, open_fasta, recompress_and_index, validate_fasta  # noqa: E402
from mamba_bio_audio.dna.windows import (  # noqa: E402
    IGNORE_INDEX, GenomeWindows, Interval, Window, read_bed, split_chromosomes, tile)


def random_genome(seed=0, lengths=(1000, 357, 64)):
    rng = random.Random(seed)
    records = {}
    for i, length in enumerate(lengths):
        seq = "".join(rng.choice("ACGTacgtN") for _ in range(length))
        records[f"chr{i + 1}"] = seq
    return records


def write_fasta(path, records, width=60, compress=None):
    text = "".join(f">{name} some description\n" + "".join(seq[i:i + width] + "\n" for i in range(0, len(seq), width))
                   for name, seq in records.items()).encode()
    if compress == "gzip":
        with gzip.open(path, "wb") as handle:
            handle.write(text)
    elif compress == "bgzf":
        from pysam.libcbgzf import BGZFile

        with BGZFile(str(path), "wb") as handle:
            handle.write(text)
    else:
        path.write_bytes(text)
    return path


@pytest.mark.parametrize("kind", ["plain", "bgzf"])
def test_open_fasta_builds_the_index_and_reads_at_random(tmp_path, kind):
    records = random_genome()
    path = write_fasta(tmp_path / ("g.fa.gz" if kind == "bgzf" else "g.fa"), records, compress=kind)
    assert compression(path) == kind
    fasta = open_fasta(path)
    assert dict(zip(fasta.references, fasta.lengths)) == {k: len(v) for k, v in records.items()}
    for name, seq in records.items():
        for start, end in [(0, 5), (59, 61), (len(seq) - 7, len(seq))]:
            assert fasta.fetch(name, start, end) == seq[start:end]
    names = sorted(p.name for p in tmp_path.iterdir())
    expected = ["g.fa.gz", "g.fa.gz.fai", "g.fa.gz.gzi"] if kind == "bgzf" else ["g.fa", "g.fa.fai"]
    assert names == expected  # no temporary files left


def test_gzip_fasta_gets_the_fix_and_mba_data_index_applies_it(tmp_path, capsys):
    records = random_genome(1)
    path = write_fasta(tmp_path / "g.fa.gz", records, compress="gzip")
    with pytest.raises(ValueError, match=r"gzip, not bgzip.*mba data index .*g\.fa\.gz"):
        open_fasta(path)
    assert main(["data", "index", str(path), "--check"]) == 0
    assert compression(path) == "bgzf"
    out = capsys.readouterr().out
    assert "3 record(s)" in out and "g.fa.gz.gzi" in out
    fasta = open_fasta(path)
    assert all(fasta.fetch(name) == seq for name, seq in records.items())


BAD_FASTA = {
    "sequence before": (b"ACGT\n>chr1\nACGT\n", r"bad\.fa:1: sequence before the first '>' header"),
    "nameless header": (b">chr1\nACGT\n> \nACGT\n", r"bad\.fa:3: header without a record name"),
    "empty record": (b">chr1\n>chr2\nACGT\n", r"bad\.fa:1: record 'chr1' has no sequence"),
    "empty at end": (b">chr1\nACGT\n>chr2\n", r"bad\.fa:3: record 'chr2' has no sequence"),
    "long line": (b">chr1\nACGT\nACGTA\n", r"bad\.fa:3: record 'chr1': line of 5 bases after lines of 4"),
    "short inside": (b">chr1\nACGT\nAC\nACGT\n", r"bad\.fa:4: record 'chr1': line 3 is shorter"),
    "bad character": (b">chr1\nACGT\nAC#T\n", r"bad\.fa:3: record 'chr1': invalid DNA character '#' at position 2"),
    "duplicate": (b">chr1\nACGT\n>chr1\nACGT\n", r"bad\.fa:3: record 'chr1' appears twice"),
}


@pytest.mark.parametrize("case", list(BAD_FASTA))
def test_bad_fasta_errors_name_file_line_and_record(tmp_path, case):
    content, message = BAD_FASTA[case]
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        validate_fasta(path)


def test_unindexable_fasta_reports_the_line_and_leaves_no_index(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_bytes(b">chr1\nACGT\nACGTAA\nAC\n")
    with pytest.raises(ValueError, match=r"bad\.fa:3: record 'chr1': line of 6 bases after lines of 4"):
        open_fasta(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fa"]


def test_fetching_an_unknown_character_names_file_and_region(tmp_path):
    path = tmp_path / "g.fa"
    path.write_bytes(b">chr1\nACGTAC\nGT*ACG\n")
    data = GenomeWindows(path, [Window("chr1", 4)], seq_len=4)
    with pytest.raises(ValueError, match=r"invalid DNA character '\*'.*g\.fa: chr1:4-9"):
        data[0]


def write_bed(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_read_bed_by_split(tmp_path):
    lengths = {"chr1": 1000, "chr2": 500}
    bed = write_bed(tmp_path / "r.bed", ["track name=x", "# comment", "chr1\t0\t300\ttrain", "chr2\t100\t500\tvalid",
                                         "chr1\t300\t1000\ttest\textra"])
    assert read_bed(bed, lengths) == {"train": [Interval("chr1", 0, 300)], "valid": [Interval("chr2", 100, 500)],
                                      "test": [Interval("chr1", 300, 1000)]}


@pytest.mark.parametrize("line, message", [
    ("chr9\t0\t10\ttrain", r"r\.bed:2: chromosome 'chr9' is not in the FASTA"),
    ("chr1\t900\t1001\ttrain", r"r\.bed:2: interval chr1:900-1001 runs past the chromosome's end \(1000\)"),
    ("chr1\t0\t10", r"r\.bed:2: expected chrom, start, end, split; got 3"),
    ("chr1\tx\t10\ttrain", r"r\.bed:2: start and end must be integers"),
    ("chr1\t10\t10\ttrain", r"r\.bed:2: empty or negative interval"),
    ("chr1\t0\t10\ttraining", r"r\.bed:2: split 'training' is not one of"),
])
def test_bad_bed_lines_name_file_and_line(tmp_path, line, message):
    bed = write_bed(tmp_path / "r.bed", ["chr1\t0\t10\ttrain", line])
    with pytest.raises(ValueError, match=message):
        read_bed(bed, {"chr1": 1000})


def test_tile_covers_long_intervals_and_anchors_short_ones():
    windows = tile([Interval("chr1", 100, 420), Interval("chr2", 50, 80)], seq_len=64)
    long_part = [w for w in windows if w.chrom == "chr1"]
    assert long_part == [Window("chr1", s) for s in range(100, 420 - 63, 64)] and len(long_part) == 320 // 64
    assert [w for w in windows if w.chrom == "chr2"] == [Window("chr2", 50), Window("chr2", 80 - 64)]


def test_scored_windows_score_the_same_bases_at_every_length(tmp_path):
    records = random_genome(5, lengths=(3000,))
    path = write_fasta(tmp_path / "g.fa", records)
    region = [Interval("chr1", 1000, 1700)]
    scored = {}
    for seq_len in (32, 256, 1024):  # 1024 reaches back past the chromosome start: padding, never scored
        windows = tile(region, seq_len, scored_len=32)
        data = GenomeWindows(path, windows, seq_len=seq_len, scored_len=32)
        positions, labels = [], []
        for (chrom, start), item in zip(windows, data):
            assert (item["labels"][:seq_len - 32] == IGNORE_INDEX).all()
            positions += range(start + seq_len - 32 + 1, start + seq_len + 1)  # the targets' chromosome positions
            labels.append(item["labels"][seq_len - 32:])
        scored[seq_len] = (positions, torch.cat(labels))
    positions, labels = scored[32]
    assert positions == list(range(1001, 1001 + 700 // 32 * 32))  # consecutive pieces, each target once
    want = DNATokenizer().encode(records["chr1"][1001:1001 + len(positions)].upper())
    want[want == DNATokenizer.N_ID] = IGNORE_INDEX
    assert torch.equal(labels, want)
    assert all(scored[n][0] == positions and torch.equal(scored[n][1], labels) for n in (256, 1024))
    with pytest.raises(ValueError, match="scored_len must be in 1 … seq_len"):
        tile(region, 16, scored_len=32)


def test_split_chromosomes_by_name_and_by_fraction():
    lengths = {"chr1": 1000, "chr2": 500, "chrX": 200}
    by_name = split_chromosomes(lengths, names={"train": ["chr1", "chrX"], "test": ["chr2"]})
    assert by_name == {"train": [Interval("chr1", 0, 1000), Interval("chrX", 0, 200)], "valid": [],
                       "test": [Interval("chr2", 0, 500)]}
    by_fraction = split_chromosomes(lengths, fractions=(0.8, 0.1, 0.1))
    assert by_fraction["valid"] == [Interval("chr1", 800, 900), Interval("chr2", 400, 450), Interval("chrX", 160, 180)]
    for chrom, length in lengths.items():  # every base in exactly one split
        parts = sorted((i.start, i.end) for split in by_fraction.values() for i in split if i.chrom == chrom)
        assert parts[0][0] == 0 and parts[-1][1] == length and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    with pytest.raises(ValueError, match="not in the FASTA: chr7"):
        split_chromosomes(lengths, names={"train": ["chr7"]})
    with pytest.raises(ValueError, match="summing to 1"):
        split_chromosomes(lengths, fractions=(0.5, 0.1, 0.1))


def test_dataset_shifts_pads_and_ignores_n_and_padding(tmp_path):
    records = random_genome(2)
    path = write_fasta(tmp_path / "g.fa", records)
    seq = records["chr3"].upper()  # 64 bases
    data = GenomeWindows(path, [Window("chr3", -5), Window("chr3", 30)], seq_len=40)
    tokenizer = DNATokenizer()
    expected = torch.cat([torch.full((5,), DNATokenizer.PAD_ID), tokenizer.encode(seq[:36])])
    sample = data[0]
    assert torch.equal(sample["input_ids"], expected[:40])
    want = expected[1:].clone()
    want[(want == DNATokenizer.N_ID) | (want == DNATokenizer.PAD_ID)] = IGNORE_INDEX
    assert torch.equal(sample["labels"], want)
    tail = data[1]  # bases 30 … 70 of a 64-base chromosome: the last 6 inputs/labels are off it
    assert torch.equal(tail["input_ids"][:34], tokenizer.encode(seq[30:64]))
    assert (tail["input_ids"][34:] == DNATokenizer.PAD_ID).all() and (tail["labels"][33:] == IGNORE_INDEX).all()


def test_reverse_complement_augmentation(tmp_path):
    path = write_fasta(tmp_path / "g.fa", random_genome(3))
    windows = [Window("chr1", 100)]
    plain = GenomeWindows(path, windows, seq_len=50)
    flipped = GenomeWindows(path, windows, seq_len=50, rc_prob=1.0)
    ids, _ = plain.tokens("chr1", 100, 51)
    rc = DNATokenizer.reverse_complement(ids)
    assert torch.equal(flipped[0]["input_ids"], rc[:-1]) and not torch.equal(rc[:-1], plain[0]["input_ids"])
    windows = [Window("chr1", s) for s in range(0, 900, 50)]

    def flips(rc_seed):
        half = GenomeWindows(path, windows, seq_len=50, rc_prob=0.5, rc_seed=rc_seed)
        return [not torch.equal(half[i]["input_ids"], plain.tokens(*windows[i], 50)[0]) for i in range(len(windows))]

    torch.manual_seed(0)
    first = flips(3)
    torch.manual_seed(1)
    assert flips(3) == first and 0 < sum(first) < len(first)  # a function of (rc_seed, index), not of torch's RNG
    assert flips(4) != first


def test_workers_open_their_own_handles_and_agree(tmp_path):
    path = write_fasta(tmp_path / "g.fa.gz", random_genome(4, lengths=(5000, 3000)), compress="bgzf")
    fasta = open_fasta(path)
    windows = tile(split_chromosomes(dict(zip(fasta.references, fasta.lengths)), fractions=(1, 0, 0))["train"], 128)
    data = GenomeWindows(path, windows, seq_len=128)
    serial = torch.cat([data[i]["input_ids"] for i in range(len(data))])
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2)
    parallel = torch.cat([batch["input_ids"].flatten() for batch in loader])
    assert len(windows) == 5000 // 128 + 3000 // 128 and torch.equal(serial, parallel)


@pytest.mark.parametrize("content, message", [
    (b">chr1\nACGT\n>\nACGT\n", r"bad\.fa:3: header without a record name"),
    (b">chr1\n>chr2\nACGT\n", r"bad\.fa:1: record 'chr1' has no sequence"),
])
def test_open_fasta_refuses_what_faidx_lets_through(tmp_path, content, message):
    """samtools indexes a nameless header (as record '') and silently drops an empty record: open_fasta does not."""
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        open_fasta(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fa"]


def test_header_count_across_block_boundaries(tmp_path):
    from mamba_bio_audio.dna.fasta import _count_headers

    path = write_fasta(tmp_path / "g.fa", random_genome(8, lengths=(70, 5, 130, 61)), width=7)
    assert all(_count_headers(path, block) == 4 for block in (1, 2, 3, 7, 64, 1 << 20))


def test_soft_mask_channel_follows_lowercase_and_reverse_complement(tmp_path):
    records = random_genome(9)
    path = write_fasta(tmp_path / "g.fa", records)
    seq = records["chr1"][200:251]
    expected = torch.tensor([c.islower() for c in seq])
    item = GenomeWindows(path, [Window("chr1", 200)], seq_len=50, soft_mask=True)[0]
    assert torch.equal(item["soft_mask"], expected[:-1]) and expected.any() and not expected.all()
    assert torch.equal(item["input_ids"], DNATokenizer().encode(seq.upper())[:-1])
    flipped = GenomeWindows(path, [Window("chr1", 200)], seq_len=50, soft_mask=True, rc_prob=1.0)[0]
    assert torch.equal(flipped["soft_mask"], expected.flip(0)[:-1])
    assert "soft_mask" not in GenomeWindows(path, [Window("chr1", 200)], seq_len=50)[0]


def test_mba_bench_loading_times_each_worker_count(tmp_path, capsys):
    path = write_fasta(tmp_path / "g.fa.gz", random_genome(6, lengths=(20000,)), compress="bgzf")
    assert main(["bench", "--loading", str(path), "--workers", "0,2", "--batches", "5", "--seq-len", "64",
                 "--batch-size", "4"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["0", "2"] and rows[0][-1] == "1.00x"
    assert all(float(row[2]) > 0 for row in rows)
