"""Great-ape genomes: the UCSC assemblies of the species-classification task, and an offline simulation of them.

`mba data great-apes --dest DIR` downloads hg38, panTro6, panPan3, gorGor6 and ponAbe3 from UCSC goldenPath
(resumable, MD5-checked against the server's md5sum.txt), recompresses each with bgzip and indexes it.

`mba data simulate-apes --dest DIR` writes five genomes that behave like them, offline. The model:

* Ancestor. Each chromosome of the common ancestor is a mosaic of segments (2–50 kb, random strand) of a real
  chromosome from a PyPI data package (default D. mauritiana chr 4), so local composition, repeats and N runs are real.
  Chromosomes are named and sized like hg38's (chr1 … chr22, chrX, chrY), `scale` bases per hg38 megabase.
* Tree. An ultrametric great-ape tree whose branch lengths (expected substitutions per base) give the pairwise
  divergences human–chimp 1.2%, chimp–bonobo 0.4%, human–gorilla 1.6%, human–orangutan 3.1%:
  ((((human:0.6, (chimp:0.2, bonobo:0.2):0.4):0.2, gorilla:0.8):0.75, orangutan:1.55) in percent.
* Along every branch, on every chromosome:
  - substitutions, Poisson(length·L) of them, each of one of the six strand-symmetric classes (C>A, C>G, C>T, T>A,
    T>C, T>G) drawn from the branch's own spectrum: a Dirichlet draw (concentration 150) around the human germline
    spectrum (0.11, 0.09, 0.40, 0.08, 0.25, 0.07), applied at a uniformly chosen C/G (or A/T) base, complemented on
    the other strand;
  - small indels, 1 per 10 substitutions, lengths geometric (mean 2, at most 20), half deletions and half
    insertions (a tandem duplication of the preceding bases or random bases);
  - transposable-element insertions of the branch's own family (a ~300 bp element with a poly-A tail, each family
    diverged 10% from its parent branch's family, as Alu subfamilies are), `te_rate` insertions per Mb per 1% of
    branch length, each copy 3% diverged from its family, a third of them 5'-truncated, on either strand, with a
    target-site duplication of 7–20 bp, written in lowercase (soft-masked, as RepeatMasker output is).
* Apes' chromosome 2 is written as chr2A and chr2B (its two halves), as in the real ape assemblies.

Evidence for a species is therefore sparse and local (a lineage's TE copies, its indels, a slight shift of base
composition from its spectrum) and accumulates with window length, as in the real task. Not modelled: CpG
hypermutability, recombination/incomplete lineage sorting, segmental duplications, chromosome rearrangements other
than the 2A/2B split. Everything is written atomically and is a function of `seed`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mamba_bio_audio.errors import DownloadError, InputError
from mamba_bio_audio.io import atomic_path

SPECIES = ("human", "chimpanzee", "bonobo", "gorilla", "orangutan")
UCSC_ASSEMBLIES = {"human": "hg38", "chimpanzee": "panTro6", "bonobo": "panPan3", "gorilla": "gorGor6",
                   "orangutan": "ponAbe3"}
UCSC_BASE_URL = "https://hgdownload.soe.ucsc.edu/goldenPath"

# hg38 chromosome lengths in Mb (rounded): the simulation's chromosomes have these relative sizes
HG38_MB = {"1": 248, "2": 242, "3": 198, "4": 190, "5": 181, "6": 171, "7": 159, "8": 145, "9": 138, "10": 134,
           "11": 135, "12": 133, "13": 114, "14": 107, "15": 102, "16": 90, "17": 83, "18": 80, "19": 59, "20": 64,
           "21": 47, "22": 51, "X": 156, "Y": 57}


class Branch(NamedTuple):
    child: str
    parent: str | None
    length: float  # expected substitutions per base (fraction, not percent)


# ancestors first, so that every parent is evolved before its children
TREE = (Branch("hominidae", None, 0.0), Branch("orangutan", "hominidae", 0.0155),
        Branch("homininae", "hominidae", 0.0075), Branch("gorilla", "homininae", 0.008),
        Branch("hominini", "homininae", 0.002), Branch("human", "hominini", 0.006),
        Branch("pan", "hominini", 0.004), Branch("chimpanzee", "pan", 0.002), Branch("bonobo", "pan", 0.002))

HUMAN_SPECTRUM = np.array([0.11, 0.09, 0.40, 0.08, 0.25, 0.07])  # C>A C>G C>T T>A T>C T>G
_CLASS_TARGETS = np.frombuffer(b"AGTACG", dtype=np.uint8)         # the new base of each class (on the C/T strand)
_COMPLEMENT = np.arange(256, dtype=np.uint8)
for _a, _b in zip(b"ACGTacgt", b"TGCAtgca"):
    _COMPLEMENT[_a] = _b


def pairwise_divergence(a: str, b: str) -> float:
    """Expected substitutions per base between two species of TREE (the sum of branch lengths between them)."""
    parent = {br.child: br for br in TREE}

    def path(x):
        out = {}
        total = 0.0
        while x is not None:
            out[x] = total
            total += parent[x].length
            x = parent[x].parent
        return out

    up_a, up_b = path(a), path(b)
    common = min((n for n in up_a if n in up_b), key=lambda n: up_a[n])
    return up_a[common] + up_b[common]


def _upper(seq: np.ndarray) -> np.ndarray:
    return seq & 0xDF


def substitute(seq: np.ndarray, count: int, spectrum: np.ndarray, rng: np.random.Generator) -> None:
    """In place: `count` substitutions with class frequencies `spectrum` (C>A … T>G); case is kept."""
    upper = _upper(seq)
    classes = rng.choice(6, size=count, p=spectrum)
    for strong, pool in ((True, np.flatnonzero((upper == 67) | (upper == 71))),
                         (False, np.flatnonzero((upper == 65) | (upper == 84)))):
        chosen = classes[(classes < 3) == strong]
        if not len(pool) or not len(chosen):
            continue
        where = rng.choice(pool, size=len(chosen))
        target = _CLASS_TARGETS[chosen]
        on_reverse = np.isin(upper[where], (71, 65))  # G or A: the class applies to the other strand
        target = np.where(on_reverse, _COMPLEMENT[target], target)
        seq[where] = target | (seq[where] & 0x20)


def te_family(rng: np.random.Generator, parent: np.ndarray | None) -> np.ndarray:
    """A transposable-element family (uppercase ASCII): a new ~300 bp element with a poly-A tail, or `parent` with
    10% of its bases changed (a subfamily)."""
    if parent is None:
        body = rng.choice(np.frombuffer(b"ACGT", dtype=np.uint8), size=int(rng.integers(260, 320)),
                          p=[0.22, 0.28, 0.28, 0.22])
        return np.concatenate([body, np.full(int(rng.integers(12, 25)), 65, dtype=np.uint8)])
    family = parent.copy()
    where = rng.random(len(family)) < 0.10
    family[where] = rng.choice(np.frombuffer(b"ACGT", dtype=np.uint8), size=int(where.sum()))
    return family


def _te_copy(family: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    copy = family.copy()
    where = rng.random(len(copy)) < 0.03
    copy[where] = rng.choice(np.frombuffer(b"ACGT", dtype=np.uint8), size=int(where.sum()))
    if rng.random() < 1 / 3:  # 5'-truncated
        copy = copy[int(rng.integers(0, len(copy) - 50)):]
    if rng.random() < 0.5:
        copy = _COMPLEMENT[copy[::-1]]
    return copy | 0x20  # lowercase: soft-masked


def insert_and_delete(seq: np.ndarray, n_indels: int, n_tes: int, family: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """A new sequence with `n_indels` small indels and `n_tes` copies of `family` inserted at random places."""
    length = len(seq)
    events = []  # (position, kind, size)
    for pos in rng.integers(1, length - 25, size=n_indels):
        size = min(int(rng.geometric(0.5)), 20)
        events.append((int(pos), "del" if rng.random() < 0.5 else "ins", size))
    for pos in rng.integers(25, length - 1, size=n_tes):
        events.append((int(pos), "te", 0))
    events.sort()
    pieces, cursor = [], 0
    for pos, kind, size in events:
        if pos < cursor:  # inside a deletion just made
            continue
        pieces.append(seq[cursor:pos])
        cursor = pos
        if kind == "del":
            cursor = pos + size
        elif kind == "ins":
            if rng.random() < 0.5:
                pieces.append(seq[pos - size:pos].copy())  # tandem duplication
            else:
                pieces.append(rng.choice(np.frombuffer(b"ACGT", dtype=np.uint8), size=size) | (seq[pos - 1] & 0x20))
        else:
            tsd = seq[pos - int(rng.integers(7, 21)):pos].copy()  # target-site duplication around the element
            pieces += [_te_copy(family, rng), tsd]
    pieces.append(seq[cursor:])
    return np.concatenate(pieces)


def ancestral_chromosome(source: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """`length` bases (uppercase ASCII) made of 2–50 kb segments of `source` at random places, on random strands."""
    pieces, total = [], 0
    while total < length:
        size = min(int(rng.integers(2_000, 50_001)), length - total, len(source))
        start = int(rng.integers(0, len(source) - size + 1))
        piece = _upper(source[start:start + size])
        pieces.append(_COMPLEMENT[piece[::-1]] if rng.random() < 0.5 else piece)
        total += size
    return np.concatenate(pieces)


def evolve(ancestor: np.ndarray, rng: np.random.Generator, spectra: dict, families: dict, te_rate: float,
           indel_ratio: float = 0.1) -> dict[str, np.ndarray]:
    """The sequence at every node of TREE, starting from `ancestor` at the root."""
    seqs = {}
    for branch in TREE:
        if branch.parent is None:
            seqs[branch.child] = ancestor
            continue
        seq = seqs[branch.parent].copy()
        n_subs = int(rng.poisson(branch.length * len(seq)))
        substitute(seq, n_subs, spectra[branch.child], rng)
        n_tes = int(rng.poisson(te_rate * branch.length * 100 * len(seq) / 1e6))
        seqs[branch.child] = insert_and_delete(seq, int(rng.poisson(indel_ratio * n_subs)), n_tes,
                                               families[branch.child], rng)
    return seqs


def _fasta_record(name: str, seq: np.ndarray, width: int = 60) -> bytes:
    lines = [seq[i:i + width].tobytes() for i in range(0, len(seq), width)]
    return b">" + name.encode() + b"\n" + b"\n".join(lines) + b"\n"


def simulate_apes(dest: str | Path, source: str = "fruitfly", scale: int = 8_000, te_rate: float = 20.0,
                  chromosomes: list[str] | None = None, seed: int = 0, progress: bool = True) -> list[Path]:
    """Write DEST/{human,chimpanzee,bonobo,gorilla,orangutan}.fa.gz (bgzip, indexed) and DEST/simulation.json
    (the parameters, tree and per-branch spectra). `scale`: bases per hg38 megabase (8,000: chr1 ≈ 2 Mb, a genome
    ≈ 25 Mb); `te_rate`: TE insertions per Mb per 1% of branch length; `chromosomes`: hg38 names without "chr"
    (default all 24)."""
    from pysam.libcbgzf import BGZFile
    from tqdm import tqdm

    from mamba_bio_audio.dna.fasta import ensure_index, open_bytes

    from .genomes import PYPI_GENOMES, package_data

    if source not in PYPI_GENOMES:
        raise ValueError(f"unknown source genome {source!r}; choose from {', '.join(PYPI_GENOMES)}")
    names = chromosomes or list(HG38_MB)
    unknown = [n for n in names if n not in HG38_MB]
    if unknown:
        raise ValueError(f"unknown chromosome name(s) {unknown}; use hg38 names without 'chr': {', '.join(HG38_MB)}")
    if scale < 1_000:
        raise ValueError(f"scale must be at least 1000 bases per hg38 Mb, got {scale}")
    genome = PYPI_GENOMES[source]
    with open_bytes(package_data(genome.package, genome.fasta)) as handle:
        text = handle.read()
    source_seq = np.frombuffer(b"".join(line for line in text.split(b"\n") if not line.startswith(b">")),
                               dtype=np.uint8)
    rng = np.random.default_rng(seed)
    spectra = {br.child: rng.dirichlet(150 * HUMAN_SPECTRUM) for br in TREE}
    families = {}
    for br in TREE:
        families[br.child] = te_family(rng, None if br.parent is None else families[br.parent])
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = {sp: dest / f"{sp}.fa.gz" for sp in SPECIES}
    with _AtomicWriters(paths, BGZFile) as writers:
        for name in tqdm(names, desc="chromosomes", disable=not progress):
            chrom_rng = np.random.default_rng([seed, list(HG38_MB).index(name)])
            ancestor = ancestral_chromosome(source_seq, HG38_MB[name] * scale, chrom_rng)
            seqs = evolve(ancestor, chrom_rng, spectra, families, te_rate)
            for sp in SPECIES:
                seq = seqs[sp]
                if name == "2" and sp != "human":
                    half = len(seq) // 2
                    writers[sp].write(_fasta_record("chr2A", seq[:half]) + _fasta_record("chr2B", seq[half:]))
                else:
                    writers[sp].write(_fasta_record(f"chr{name}", seq))
    written = []
    for sp in SPECIES:
        written += [paths[sp], *ensure_index(paths[sp])]
    info = {"source": genome.description, "scale_bases_per_hg38_mb": scale, "te_rate_per_mb_per_percent": te_rate,
            "seed": seed, "chromosomes": names, "tree": [br._asdict() for br in TREE],
            "divergence_from_human": {sp: pairwise_divergence("human", sp) for sp in SPECIES},
            "spectra_C>A_C>G_C>T_T>A_T>C_T>G": {k: [round(float(x), 4) for x in v] for k, v in spectra.items()},
            "te_families": {k: v.tobytes().decode() for k, v in families.items()}}
    with atomic_path(dest / "simulation.json") as tmp:
        tmp.write_text(json.dumps(info, indent=1))
    return [*written, dest / "simulation.json"]


class _AtomicWriters:
    """One writer per path, each on a temporary name renamed into place only when all finished without error."""

    def __init__(self, paths: dict[str, Path], opener):
        self.paths, self.opener = paths, opener

    def __enter__(self) -> dict:
        self.tmps = {k: p.with_name(f".{p.name}.tmp") for k, p in self.paths.items()}
        self.writers = {k: self.opener(str(t), "wb") for k, t in self.tmps.items()}
        return self.writers

    def __exit__(self, kind, value, traceback) -> None:
        for writer in self.writers.values():
            writer.close()
        for key, tmp in self.tmps.items():
            if kind is None:
                tmp.replace(self.paths[key])
            else:
                tmp.unlink(missing_ok=True)


def ucsc_urls(assembly: str, base_url: str = UCSC_BASE_URL) -> tuple[str, str]:
    """The genome's URL (bigZips/ASSEMBLY.fa.gz) and that of the folder's md5sum.txt."""
    return f"{base_url}/{assembly}/bigZips/{assembly}.fa.gz", f"{base_url}/{assembly}/bigZips/md5sum.txt"


def great_apes(dest: str | Path, base_url: str = UCSC_BASE_URL, progress: bool = True) -> list[Path]:
    """`mba data great-apes --dest DIR`: DIR/{human,chimpanzee,bonobo,gorilla,orangutan}.fa.gz from the UCSC
    assemblies (hg38, panTro6, panPan3, gorGor6, ponAbe3): each download resumable and checked against the MD5 that
    UCSC lists in the assembly's md5sum.txt, then rewritten as bgzip under the same name and indexed."""
    import http.client
    import urllib.request

    from mamba_bio_audio.dna.fasta import recompress_and_index

    from .download import download

    dest = Path(dest)
    written = []
    for species, assembly in UCSC_ASSEMBLIES.items():
        url, md5_url = ucsc_urls(assembly, base_url)
        target = dest / f"{species}.fa.gz"
        if not target.is_file():  # after the rename to bgzip the MD5 is that of the rewritten file: check only once
            try:
                with urllib.request.urlopen(md5_url, timeout=60) as response:
                    listing = response.read().decode()
            except (OSError, http.client.HTTPException) as error:  # also a listing cut short (IncompleteRead)
                raise DownloadError(f"{md5_url}: {error!r}") from None
            md5 = next((parts[0] for parts in map(str.split, listing.splitlines())
                        if len(parts) == 2 and parts[1].lstrip("*") == f"{assembly}.fa.gz"), None)
            if md5 is None:
                raise InputError(f"{md5_url}: no checksum listed for {assembly}.fa.gz")
            download(url, target, checksum=("md5", md5), progress=progress)
        written += [target, *recompress_and_index(target)]
    return written

