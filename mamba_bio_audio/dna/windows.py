"""Genome windows for next-base prediction: where they come from (a BED file with a split column, as in the HG38
recipe, or whole chromosomes split by name or by position) and the dataset that reads them from an indexed FASTA.

A window is (chrom, start): the model reads bases start … start + L − 1 and predicts start + 1 … start + L, so a
sample fetches L + 1 bases. Positions off the chromosome are [PAD]; targets that are N or [PAD] are ignored by the
loss (label −100).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import NamedTuple

import torch

from .tokenizer import DNATokenizer

from ..errors import InputError

SPLITS = ("train", "valid", "test")
IGNORE_INDEX = -100


class Interval(NamedTuple):
    chrom: str
    start: int
    end: int


class Window(NamedTuple):
    chrom: str
    start: int  # may be negative or run past the chromosome end: those positions are padding


def read_bed(path: str | Path, chrom_lengths: dict[str, int]) -> dict[str, list[Interval]]:
    """Intervals of a BED file with a split column (chrom, start, end, split; 0-based, end exclusive), by split.

    Track, browser and comment lines are skipped. Raises InputError naming the file and line for a short line,
    non-integer or empty coordinates, a chromosome missing from the FASTA, an interval past the chromosome's end,
    or a split other than train/valid/test (HG38's `sequences_human.bed` uses these), and naming the file for one
    that is not text or holds no interval."""
    path = Path(path)
    by_split: dict[str, list[Interval]] = {split: [] for split in SPLITS}
    number = 0
    try:
        with open(path, encoding="ascii") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip() or line.startswith(("#", "track", "browser")):
                    continue
                fields = line.split()
                where = f"{path}:{number}"
                if len(fields) < 4:
                    raise InputError(f"{where}: expected chrom, start, end, split; got {len(fields)} column(s)")
                chrom, start, end, split = fields[0], fields[1], fields[2], fields[3]
                try:
                    start, end = int(start), int(end)
                except ValueError:
                    raise InputError(f"{where}: start and end must be integers, got {fields[1]!r} {fields[2]!r}"
                                     ) from None
                if chrom not in chrom_lengths:
                    raise InputError(f"{where}: chromosome {chrom!r} is not in the FASTA")
                if not 0 <= start < end:
                    raise InputError(f"{where}: empty or negative interval {start}-{end}")
                if end > chrom_lengths[chrom]:
                    raise InputError(f"{where}: interval {chrom}:{start}-{end} runs past the chromosome's end "
                                     f"({chrom_lengths[chrom]})")
                if split not in by_split:
                    raise InputError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
                by_split[split].append(Interval(chrom, start, end))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text BED file (bytes that are not ASCII after line {number})") from None
    if not any(by_split.values()):
        raise InputError(f"{path}: no intervals")
    return by_split


def split_chromosomes(chrom_lengths: dict[str, int], names: dict[str, list[str]] | None = None,
                      fractions: tuple[float, float, float] | None = None) -> dict[str, list[Interval]]:
    """Whole-FASTA mode: intervals by split, either whole chromosomes listed by name per split (`names`; names not
    in the FASTA raise ValueError), or every chromosome cut by position into consecutive train/valid/test parts of
    the given `fractions`."""
    if (names is None) == (fractions is None):
        raise ValueError("give either chromosome names per split or position fractions, not both or neither")
    if names is not None:
        unknown = sorted({c for chroms in names.values() for c in chroms} - set(chrom_lengths))
        if unknown:
            raise ValueError(f"chromosomes not in the FASTA: {', '.join(unknown)}")
        return {split: [Interval(c, 0, chrom_lengths[c]) for c in names.get(split, [])] for split in SPLITS}
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    by_split: dict[str, list[Interval]] = {split: [] for split in SPLITS}
    for chrom, length in chrom_lengths.items():
        bounds = [0, round(length * fractions[0]), round(length * (fractions[0] + fractions[1])), length]
        for split, start, end in zip(SPLITS, bounds[:-1], bounds[1:]):
            if end > start:
                by_split[split].append(Interval(chrom, start, end))
    return by_split


def tile(intervals: list[Interval], seq_len: int, scored_len: int | None = None) -> list[Window]:
    """Windows of seq_len input bases for a list of intervals.

    An interval at least seq_len long is cut into ⌊length / seq_len⌋ consecutive windows from its start (an epoch
    reads every base of it but a tail shorter than one window); a shorter interval gives one window starting at it
    and one ending at it, both extending along the chromosome (padding where they leave it).

    With `scored_len` (evaluation at a fixed set of targets, see GenomeWindows.scored_len) the interval is cut into
    ⌊length / scored_len⌋ consecutive pieces instead, and each window ends where its piece ends, its first
    seq_len − scored_len bases reaching back along the chromosome as context: every seq_len gives windows whose last
    scored_len positions are the same, so models of different context lengths are scored on the same bases."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if scored_len is not None:
        if not 1 <= scored_len <= seq_len:
            raise ValueError(f"scored_len must be in 1 … seq_len ({seq_len}), got {scored_len}")
        return [Window(chrom, s - (seq_len - scored_len))
                for chrom, start, end in intervals for s in range(start, end - scored_len + 1, scored_len)]
    windows = []
    for chrom, start, end in intervals:
        if end - start >= seq_len:
            windows += [Window(chrom, s) for s in range(start, end - seq_len + 1, seq_len)]
        else:
            windows += [Window(chrom, start), Window(chrom, end - seq_len)]
    return windows


class GenomeWindows(torch.utils.data.Dataset):
    """Next-base prediction samples from an indexed FASTA.

    Item i is a dict of int64 tensors `input_ids` (seq_len,) and `labels` (seq_len,): bases start … start + L − 1
    and their successors, labels −100 where the successor is N or off the chromosome. Lowercase (soft-masked,
    usually repeats) bases are read as their uppercase ids; with `soft_mask=True` the item also holds a bool
    `soft_mask` (seq_len,), True at lowercase input bases. With `rc_prob` > 0 the sample is reverse-complemented
    with that probability, its mask flipped with it; whether item i is flipped is a function of (`rc_seed`, i) alone,
    so it does not depend on worker count or order and a resumed run flips exactly what the interrupted one would
    have (give each epoch its own rc_seed for fresh draws).
    With `scored_len` only the last scored_len labels count (the others are −100): the earlier bases are context
    (windows from `tile(..., scored_len=...)`).
    Each process opens its own FASTA handle on first use, so DataLoader workers do not share one."""

    def __init__(self, fasta: str | Path, windows: list[Window], seq_len: int, rc_prob: float = 0.0,
                 tokenizer: DNATokenizer | None = None, soft_mask: bool = False, scored_len: int | None = None,
                 rc_seed: int = 0):
        if scored_len is not None and not 1 <= scored_len <= seq_len:
            raise ValueError(f"scored_len must be in 1 … seq_len ({seq_len}), got {scored_len}")
        self.fasta = Path(fasta)
        self.windows = windows
        self.seq_len = seq_len
        self.scored_len = scored_len
        self.rc_prob, self.rc_seed = rc_prob, rc_seed
        self.tokenizer = tokenizer or DNATokenizer()
        self.soft_mask = soft_mask
        self._handle, self._handle_pid, self._lengths = None, None, None

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self):  # a pysam handle cannot be pickled into workers: each opens its own
        return {**self.__dict__, "_handle": None, "_handle_pid": None}

    def _fasta(self):
        if self._handle is None or self._handle_pid != os.getpid():
            from .fasta import open_fasta

            self._handle, self._handle_pid = open_fasta(self.fasta), os.getpid()
            self._lengths = dict(zip(self._handle.references, self._handle.lengths))
        return self._handle

    def tokens(self, chrom: str, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(length,) int64 ids of bases start … start + length − 1 of chrom ([PAD] off the chromosome) and the
        (length,) bool soft mask (True at lowercase bases)."""
        fasta = self._fasta()
        if chrom not in self._lengths:
            raise InputError(f"{self.fasta}: no record {chrom!r}")
        lo, hi = max(start, 0), min(start + length, self._lengths[chrom])
        ids = torch.full((length,), DNATokenizer.PAD_ID, dtype=torch.int64)
        mask = torch.zeros(length, dtype=torch.bool)
        if hi > lo:
            name = f"{self.fasta}: {chrom}:{lo}-{hi}"
            text = fasta.fetch(chrom, lo, hi)
            ids[lo - start:hi - start] = self.tokenizer.encode(text, name=name)
            if self.soft_mask:
                mask[lo - start:hi - start] = DNATokenizer.soft_mask(text, name=name)
        return ids, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        chrom, start = self.windows[index]
        ids, mask = self.tokens(chrom, start, self.seq_len + 1)
        if self.rc_prob > 0 and random.Random(self.rc_seed * 2**40 + index).random() < self.rc_prob:
            ids, mask = DNATokenizer.reverse_complement(ids), mask.flip(0)
        labels = ids[1:].clone()
        labels[(labels == DNATokenizer.N_ID) | (labels == DNATokenizer.PAD_ID)] = IGNORE_INDEX
        if self.scored_len is not None:
            labels[:self.seq_len - self.scored_len] = IGNORE_INDEX
        item = {"input_ids": ids[:-1], "labels": labels}
        if self.soft_mask:
            item["soft_mask"] = mask[:-1]
        return item
