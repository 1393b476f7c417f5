"""Great-ape recipes: the simulation's evolutionary model (divergences, spectra, indels, TEs), `mba data
simulate-apes` end to end, and `mba data great-apes` against a local HTTP server."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

pysam = pytest.importorskip("pysam")

from mamba_bio_audio.cli import main  # noqa: E402
from mamba_bio_audio.data_recipes import apes  # noqa: E402
from mamba_bio_audio.dna.fasta import compression, open_fasta  # noqa: E402
from test_data_recipes import Server  # noqa: E402
from test_dna_data import random_genome, write_fasta  # noqa: E402


def random_bases(n, seed):
    return np.random.default_rng(seed).choice(np.frombuffer(b"ACGT", dtype=np.uint8), size=n)


def test_tree_gives_the_stated_divergences():
    assert apes.pairwise_divergence("human", "chimpanzee") == pytest.approx(0.012)
    assert apes.pairwise_divergence("chimpanzee", "bonobo") == pytest.approx(0.004)
    assert apes.pairwise_divergence("human", "gorilla") == pytest.approx(0.016)
    assert apes.pairwise_divergence("human", "orangutan") == pytest.approx(0.031)
    assert apes.pairwise_divergence("gorilla", "orangutan") == pytest.approx(0.031)  # ultrametric


def test_substitutions_follow_the_spectrum_on_both_strands_and_keep_case():
    seq = random_bases(400_000, 0)
    seq[:1000] |= 0x20  # some lowercase
    before = seq.copy()
    spectrum = np.array([0.05, 0.05, 0.6, 0.1, 0.15, 0.05])
    apes.substitute(seq, 20_000, spectrum, np.random.default_rng(1))
    changed = np.flatnonzero(seq != before)
    assert 19_000 < len(changed) <= 20_000  # a few sites hit twice
    assert ((seq[:1000] >= 97) == (before[:1000] >= 97)).all()
    pairs = {}
    for a, b in zip(before[changed] & 0xDF, seq[changed] & 0xDF):
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
    total = sum(pairs.values())
    c_to_t = (pairs.get((67, 84), 0) + pairs.get((71, 65), 0)) / total  # C>T and its reverse complement G>A
    t_to_g = (pairs.get((84, 71), 0) + pairs.get((65, 67), 0)) / total
    assert c_to_t == pytest.approx(0.6, abs=0.02) and t_to_g == pytest.approx(0.05, abs=0.01)
    assert pairs.get((67, 84), 0) == pytest.approx(pairs.get((71, 65), 0), rel=0.1)  # strand-symmetric


def test_evolved_genomes_differ_as_the_tree_says():
    rng = np.random.default_rng(2)
    spectra = {br.child: apes.HUMAN_SPECTRUM for br in apes.TREE}
    families = {br.child: apes.te_family(rng, None) for br in apes.TREE}
    ancestor = random_bases(500_000, 3)
    seqs = apes.evolve(ancestor, rng, spectra, families, te_rate=0.0, indel_ratio=0.0)  # substitutions only
    for a, b in (("human", "chimpanzee"), ("chimpanzee", "bonobo"), ("human", "gorilla"), ("human", "orangutan")):
        observed = float(np.mean(seqs[a] != seqs[b]))
        assert observed == pytest.approx(apes.pairwise_divergence(a, b), rel=0.1), (a, b)
    with_tes = apes.evolve(ancestor, np.random.default_rng(4), spectra, families, te_rate=20.0)
    human = with_tes["human"]
    lower = float(np.mean(human >= 97))  # TEs are soft-masked: 1.55% of branch × 20 per Mb × ~290 bp
    assert 0.004 < lower < 0.02 and len(human) > len(ancestor)


def test_mba_data_simulate_apes(tmp_path, capsys):
    args = ["data", "simulate-apes", "--dest", str(tmp_path / "a"), "--scale", "1000", "--chromosomes", "2,21"]
    assert main(args) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted([f"{sp}.fa.gz{ext}" for sp in apes.SPECIES for ext in ("", ".fai", ".gzi")]
                           + ["simulation.json"])
    human, chimp = open_fasta(tmp_path / "a" / "human.fa.gz"), open_fasta(tmp_path / "a" / "chimpanzee.fa.gz")
    assert list(human.references) == ["chr2", "chr21"] and list(chimp.references) == ["chr2A", "chr2B", "chr21"]
    assert abs(human.get_reference_length("chr21") - 47_000) < 2_000
    assert compression(tmp_path / "a" / "human.fa.gz") == "bgzf"
    assert main(args[:3] + [str(tmp_path / "b")] + args[4:]) == 0  # same seed, same genomes
    same = open_fasta(tmp_path / "b" / "human.fa.gz")
    assert same.fetch("chr21") == human.fetch("chr21") != chimp.fetch("chr21")
    assert main(["data", "simulate-apes", "--dest", str(tmp_path / "c"), "--chromosomes", "2,23"]) == 1
    assert "unknown chromosome name(s) ['23']" in capsys.readouterr().err


def ucsc_layout(tmp_path, lengths=(700, 300)):
    """(files for Server: a gzip genome and an md5sum.txt per assembly, as UCSC lays them out; {species: records})."""
    files, sequences = {}, {}
    for i, (species, assembly) in enumerate(apes.UCSC_ASSEMBLIES.items()):
        records = random_genome(10 + i, lengths=lengths)
        write_fasta(tmp_path / f"{assembly}.fa.gz", records, compress="gzip")
        payload = (tmp_path / f"{assembly}.fa.gz").read_bytes()
        files[f"{assembly}/bigZips/{assembly}.fa.gz"] = payload
        files[f"{assembly}/bigZips/md5sum.txt"] = (f"{'0' * 32}  {assembly}.fa.out.gz\n"
                                                    f"{hashlib.md5(payload).hexdigest()}  {assembly}.fa.gz\n").encode()
        sequences[species] = records
    return files, sequences


def check_genomes(dest, sequences):
    """Every species' genome in `dest` is bgzip, indexed, and holds exactly its records."""
    for species, records in sequences.items():
        fasta = open_fasta(dest / f"{species}.fa.gz")
        assert compression(dest / f"{species}.fa.gz") == "bgzf"
        assert dict(zip(fasta.references, fasta.lengths)) == {name: len(seq) for name, seq in records.items()}
        assert all(fasta.fetch(name) == seq for name, seq in records.items())


def test_mba_data_great_apes_downloads_checks_md5_and_indexes(tmp_path, capsys):
    files, sequences = ucsc_layout(tmp_path)
    server = Server(files)
    try:
        dest = tmp_path / "apes"
        assert main(["data", "great-apes", "--dest", str(dest), "--base-url", server.url]) == 0
        check_genomes(dest, sequences)
        files["ponAbe3/bigZips/md5sum.txt"] = f"{'f' * 32}  ponAbe3.fa.gz\n".encode()
        (dest / "orangutan.fa.gz").unlink()
        assert main(["data", "great-apes", "--dest", str(dest), "--base-url", server.url]) == 1
        err = capsys.readouterr().err
        assert "ponAbe3/bigZips/ponAbe3.fa.gz: md5" in err and "does not match" in err
        assert not (dest / "orangutan.fa.gz").exists() and not (dest / "orangutan.fa.gz.part").exists()
    finally:
        server.close()


def test_mba_data_great_apes_resumes_interrupted_downloads(tmp_path, capsys):
    """A genome whose connection dropped, and one left as .part by an earlier run, are resumed with Range requests
    by the next run; a .part that does not match the MD5 UCSC lists is removed (an error naming the URL), and the run
    after that completes every genome, verified."""
    files, sequences = ucsc_layout(tmp_path, lengths=(12_000, 3_000))  # about 4 kB gzip each
    dest = tmp_path / "apes"
    dest.mkdir()
    (dest / "orangutan.fa.gz.part").write_bytes(files["ponAbe3/bigZips/ponAbe3.fa.gz"][:1_234])
    (dest / "gorilla.fa.gz.part").write_bytes(bytes(1_000))  # not a prefix of gorGor6.fa.gz
    server = Server(files)
    args = ["data", "great-apes", "--dest", str(dest), "--base-url", server.url]
    try:
        server.truncate = 2_000  # every response stops after 2,000 bytes (md5sum.txt is shorter)
        size = len(files["hg38/bigZips/hg38.fa.gz"])
        with pytest.raises(OSError, match=rf"hg38\.fa\.gz: got 2,000 of {size:,} bytes; run again to resume"):
            apes.great_apes(dest, server.url, progress=False)
        assert (dest / "human.fa.gz.part").stat().st_size == 2_000 and not (dest / "human.fa.gz").exists()
        server.truncate = None
        capsys.readouterr()
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "gorGor6/bigZips/gorGor6.fa.gz: md5" in err and "does not match" in err
        assert not (dest / "gorilla.fa.gz.part").exists() and not (dest / "gorilla.fa.gz").exists()
        assert main(args) == 0
    finally:
        server.close()
    assert [r for r in server.seen_ranges if r] == ["bytes=2000-", "bytes=1000-", "bytes=1234-"]
    check_genomes(dest, sequences)
    assert not list(dest.glob("*.part")) and not list(dest.glob(".*"))
