"""Great-ape species classification (issue 5; the Mamba paper's Table 13 task), on Lightning.

    species_files          a folder of genomes → species → its FASTA files: DIR/<species>.fa[.gz] or
                           DIR/<species>/<chromosome>.fa[.gz] (no file opened).
    find_species           the same folder → species → [(FASTA, record, length)] (files indexed when needed).
    SpeciesWindows         Dataset: sample i draws a species (uniform), a chromosome of it (uniform or by length),
                           a uniform window, redrawing mostly-N windows; a function of (seed, split, epoch, i).
    SpeciesData            LightningDataModule: chromosomes split by name (default the HyenaDNA split), windows per
                           epoch, the length warm-up (`LengthScheduledData`), exact mid-epoch resume.
The model is `dna_classifier.DNAClassifier` (causal with last-position readout, as in the paper, or bidirectional
/ RC-equivariant with mean pooling; accuracy, per-class accuracy, MCC, F1, AUROC and the confusion matrix).
    build_cli              the pipeline's LightningCLI (`mba dna species`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mamba_bio_audio.dna import DNATokenizer
from mamba_bio_audio.dna.windows import GenomeWindows
from mamba_bio_audio.errors import InputError

from .common import (EpochSampler, LengthScheduledData, data_rank, eval_sampler, leave_sigterm_to_the_main_process,
                     resume_point)
from .common import build_cli as _build_cli
from .dna_classifier import DNAClassifier

# HyenaDNA's species split (by hg38 chromosome name; the apes' 2A and 2B count as 2)
HYENADNA_SPLIT = {"train": ["2", "4", "6", "8", *map(str, range(14, 23)), "X", "Y"],
                  "valid": ["1", "3", "12", "13"], "test": ["5", "7", "9", "10", "11"]}
FASTA_SUFFIXES = (".fa", ".fa.gz", ".fasta", ".fasta.gz", ".fna", ".fna.gz")
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}


def chromosome_key(name: str) -> str:
    """The split key of a record name: without a leading 'chr', upper-case, 2A/2B → 2 ("chr2A" → "2")."""
    key = name[3:] if name.lower().startswith("chr") else name
    key = key.upper()
    return "2" if key in ("2A", "2B") else key


def _fasta_stem(path: Path) -> str | None:
    for suffix in FASTA_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[:-len(suffix)]
    return None


def species_files(root: str | Path) -> dict[str, list[Path]]:
    """species → its FASTA files, for DIR/<species>.fa[.gz] (one FASTA per species) or DIR/<species>/<chromosome>.fa
    [.gz] (one folder per species), species sorted by name; the files are not opened."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of genomes")
    files: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            inside = sorted(p for p in entry.iterdir() if _fasta_stem(p))
            if inside:
                files[entry.name] = inside
        elif _fasta_stem(entry):
            files.setdefault(_fasta_stem(entry), []).append(entry)
    if len(files) < 2:
        raise InputError(f"{root}: needs a FASTA (<species>.fa[.gz]) or a folder (<species>/*.fa[.gz]) for at least "
                         f"two species, found {sorted(files) or 'none'}")
    return dict(sorted(files.items()))


def find_species(root: str | Path) -> dict[str, list[tuple[Path, str, int]]]:
    """species → [(FASTA path, record name, length)] of the genome folder `root` (layouts: `species_files`).
    FASTA files are indexed when needed (plain gzip gets the `mba data index` hint)."""
    from mamba_bio_audio.dna.fasta import open_fasta

    species = {}
    for name, paths in species_files(root).items():
        species[name] = []
        for path in paths:
            handle = open_fasta(path)
            species[name] += [(path, ref, length) for ref, length in zip(handle.references, handle.lengths)]
    return species


class SpeciesWindows(torch.utils.data.Dataset):
    """`n_samples` windows of `seq_len` bases; item i is {"input_ids": (seq_len,) int64, "labels": () int64}.

    `chromosomes[c]` lists class c's (FASTA, record, length) entries, all at least seq_len long. Item i draws, from
    a generator seeded by (seed, split, epoch, i), a class uniformly, one of its chromosomes (uniformly, or with
    probability ∝ length when `by_length`) and a uniform start; a window with more than `max_n` N bases is redrawn
    (up to 100 times). With `rc_prob` the window is reverse-complemented with that probability."""

    def __init__(self, chromosomes: list[list[tuple[Path, str, int]]], seq_len: int, n_samples: int, seed: int,
                 split: str, epoch: int = 0, by_length: bool = False, max_n: float = 0.5, rc_prob: float = 0.0):
        self.chromosomes, self.seq_len, self.n_samples = chromosomes, seq_len, n_samples
        self.key = [seed, SPLIT_CODES[split], epoch]
        self.by_length, self.max_n, self.rc_prob = by_length, max_n, rc_prob
        self.readers = {path: GenomeWindows(path, [], seq_len) for entries in chromosomes for path, _, _ in entries}

    def __len__(self) -> int:
        return self.n_samples

    def draw(self, index: int) -> tuple[int, tuple[Path, str, int], int, np.random.Generator]:
        """(class, chromosome entry, start, the item's generator) of item `index`: the window before the N check."""
        rng = np.random.default_rng([*self.key, index])
        label = int(rng.integers(len(self.chromosomes)))
        entries = self.chromosomes[label]
        weights = np.array([e[2] for e in entries], dtype=float) if self.by_length else None
        entry = entries[int(rng.choice(len(entries), p=None if weights is None else weights / weights.sum()))]
        return label, entry, int(rng.integers(0, entry[2] - self.seq_len + 1)), rng

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        label, (path, record, _), start, rng = self.draw(index)
        for _ in range(100):
            ids, _ = self.readers[path].tokens(record, start, self.seq_len)
            if (ids == DNATokenizer.N_ID).float().mean() <= self.max_n:
                break
            path, record, length = self.chromosomes[label][int(rng.integers(len(self.chromosomes[label])))]
            start = int(rng.integers(0, length - self.seq_len + 1))
        if self.rc_prob and rng.random() < self.rc_prob:
            ids = DNATokenizer.reverse_complement(ids)
        return {"input_ids": ids, "labels": torch.tensor(label)}


class SpeciesData(LengthScheduledData):
    """Windows of `seq_len` bases from the genomes in `data_dir` (see `find_species`), labelled by species.

    `species` picks and orders the classes (default: every species found, sorted); `split_names` maps train/valid/
    test to chromosome names as `chromosome_key` gives them (default HYENADNA_SPLIT). An epoch is `samples_per_epoch`
    training windows drawn afresh (seeded by seed and epoch); valid and test are `eval_samples` fixed windows.
    Chromosomes shorter than the window are left out (an error if a species has none left in a split)."""

    def __init__(self, data_dir: str, seq_len: int = 1024, batch_size: int = 64, species: list[str] | None = None,
                 split_names: dict[str, list[str]] | None = None, samples_per_epoch: int = 65536,
                 eval_samples: int = 1024, eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 by_length: bool = False, max_n: float = 0.5, rc_prob: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.seq_len, self.batch_size = seq_len, batch_size
        self.class_names = list(species) if species else list(species_files(data_dir))
        self._chromosomes = None

    def setup(self, stage: str | None = None) -> None:
        if self._chromosomes is not None:
            return
        found = find_species(self.hparams.data_dir)
        missing = [s for s in self.class_names if s not in found]
        if missing:
            raise InputError(f"{self.hparams.data_dir}: no genome for species {missing} (found {sorted(found)})")
        names = self.hparams.split_names or HYENADNA_SPLIT
        self._chromosomes = {split: [[e for e in found[sp] if chromosome_key(e[1]) in set(map(str, keys))]
                                     for sp in self.class_names] for split, keys in names.items()}

    def chromosomes(self, split: str, seq_len: int) -> list[list[tuple[Path, str, int]]]:
        """Per class, the split's chromosomes at least seq_len long."""
        per_class = [[e for e in entries if e[2] >= seq_len] for entries in self._chromosomes[split]]
        for name, entries, every in zip(self.class_names, per_class, self._chromosomes[split]):
            if not entries:
                have = ", ".join(f"{e[1]} ({e[2]:,})" for e in every) or "none"
                raise InputError(f"{self.hparams.data_dir}: species {name!r} has no {split} chromosome of at least "
                                 f"{seq_len:,} bases (its {split} chromosomes: {have})")
        return per_class

    def _dataset(self, split: str, seq_len: int, n_samples: int, epoch: int = 0) -> SpeciesWindows:
        hp = self.hparams
        return SpeciesWindows(self.chromosomes(split, seq_len), seq_len, n_samples, hp.seed, split, epoch,
                              hp.by_length, hp.max_n, hp.rc_prob if split == "train" else 0.0)

    def _loader(self, dataset, batch_size: int, sampler) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                           num_workers=self.hparams.num_workers,
                                           worker_init_fn=leave_sigterm_to_the_main_process)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        seq_len, batch_size = self.current_shape()
        epoch, skip = resume_point(self.trainer, batch_size)
        n = self.hparams.samples_per_epoch // batch_size * batch_size
        dataset = self._dataset("train", seq_len, n, epoch)
        return self._loader(dataset, batch_size, EpochSampler(n, self.hparams.seed, epoch, shuffle=False, skip=skip,
                                                                       **data_rank(self.trainer)))

    def _eval_loader(self, split: str) -> torch.utils.data.DataLoader:
        dataset = self._dataset(split, self.seq_len, self.hparams.eval_samples)
        return self._loader(dataset, self.hparams.eval_batch_size or self.batch_size,
                            eval_sampler(len(dataset), self.trainer))

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._eval_loader("test")


def build_cli(args: list[str], run_dir: str = "runs/species"):
    """LightningCLI over DNAClassifier and SpeciesData (common.build_cli defaults; best checkpoint by validation
    accuracy; the class names linked from the data; length warm-up from 2^14, one epoch per doubling, samples per
    step constant, as in the paper), not run: the caller fits and tests (`mba dna species`)."""
    return _build_cli(DNAClassifier, SpeciesData, args, run_dir, monitor="valid/accuracy", mode="max",
                      links=(("data.class_names", "model.class_names"),),
                      warmup_defaults={"start_len": 2 ** 14, "epochs_per_stage": 1, "keep_tokens": False})


def accuracy_table(metrics: dict[str, float], names: list[str]) -> str:
    """A printable summary of test metrics (overall and per species)."""
    lines = [f"test accuracy {metrics['test/accuracy']:.4f} (chance {1 / len(names):.4f})"]
    lines += [f"  {name:<14} {metrics.get(f'test/accuracy_{name}', math.nan):.4f}" for name in names]
    return "\n".join(lines)
