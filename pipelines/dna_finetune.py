"""Fine-tuning on labelled DNA sequences (`mba dna finetune`), on Lightning.

    read_labelled   (name, sequence, label) triples from a CSV/TSV with `sequence` and `label` columns, a FASTA with
                    `label=...` in each header, or a Genomic Benchmarks split folder (one subfolder per class, one
                    sequence per *.txt file); errors name the file and the line or record.
    LabelledData    LightningDataModule over train/valid/test files: classes from the training labels, batches
                    padded with [PAD] and an attention mask, optional strand augmentation, exact mid-epoch resume.
    build_cli       LightningCLI over DNAClassifier (initialised from a pretrained checkpoint) and LabelledData, with
                    early stopping on validation MCC.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

import lightning as L
import torch

from mamba_bio_audio.dna import DNATokenizer
from mamba_bio_audio.errors import InputError

from .common import EpochSampler, data_rank, eval_sampler, leave_sigterm_to_the_main_process, resume_point
from .common import build_cli as _build_cli
from .dna_classifier import DNAClassifier
from .dna_species import FASTA_SUFFIXES


def _check(sequence: str, label: str, where: str) -> tuple[str, str]:
    sequence, label = sequence.strip(), label.strip()
    if not sequence:
        raise InputError(f"{where}: empty sequence")
    if not label:
        raise InputError(f"{where}: no label")
    try:
        DNATokenizer().encode(sequence)
    except ValueError as error:
        raise InputError(f"{where}: {error}") from None
    return sequence, label


def read_labelled(path: str | Path) -> list[tuple[str, str, str]]:
    """(name, sequence, label) of every example in `path` (see the module docstring for the formats); InputError
    naming the file (and line or record) for an unreadable file, a bad record or no examples at all."""
    examples = _read_labelled(Path(path))
    if not examples:
        raise InputError(f"{path}: no labelled examples")
    return examples


def _read_labelled(path: Path) -> list[tuple[str, str, str]]:
    if path.is_dir():
        classes = sorted(p for p in path.iterdir() if p.is_dir())
        if not classes:
            raise InputError(f"{path}: a Genomic Benchmarks split folder needs one subfolder per class")
        return [(f"{c.name}/{f.name}", *_check(f.read_text(), c.name, str(f)))
                for c in classes for f in sorted(c.glob("*.txt"))]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if any(path.name.endswith(s) for s in FASTA_SUFFIXES):
        import pysam

        examples = []
        try:
            with pysam.FastxFile(str(path)) as reader:
                for record in reader:
                    fields = dict(f.split("=", 1) for f in (record.comment or "").split() if "=" in f)
                    if "label" not in fields:
                        raise InputError(f"{path}: record {record.name!r} has no label=... in its header")
                    examples.append((record.name, *_check(record.sequence or "", fields["label"],
                                                          f"{path}: record {record.name!r}")))
        except InputError:
            raise
        except (OSError, ValueError) as error:  # pysam: truncated or garbled input
            raise InputError(f"{path}: unreadable FASTA ({error})") from None
        return examples
    return _read_table(path)


def _read_table(path: Path) -> list[tuple[str, str, str]]:
    """(name, sequence, label) of each row of a CSV (TSV for .tsv/.tab) whose header names distinct columns including
    'sequence' and 'label' (and optionally 'name'); every row must have the header's number of fields (a row with
    more or fewer is an error naming the line, never silently cut or padded); blank lines are skipped."""
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # sequences may be far longer than 128 kb
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next((row for row in reader if row), None)  # the first line that is not blank
            if header is None or not {"sequence", "label"} <= set(header):
                raise InputError(f"{path}: needs a header with 'sequence' and 'label' columns, got {header}")
            repeated = sorted({c for c in header if header.count(c) > 1})
            if repeated:
                raise InputError(f"{path}:{reader.line_num}: the header names column(s) {repeated} more than once")
            column = {c: i for i, c in enumerate(header)}
            examples = []
            for row in reader:
                if not row:
                    continue
                name = row[column["name"]] if "name" in column and column["name"] < len(row) else ""
                where = f"{path}:{reader.line_num}" + (f" ({name})" if name else "")
                if len(row) != len(header):
                    raise InputError(f"{where}: expected {len(header)} fields ({', '.join(header)}) as in the "
                                     f"header, got {len(row)}")
                examples.append((name or f"line {reader.line_num}",
                                 *_check(row[column["sequence"]], row[column["label"]], where)))
            return examples
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV/TSV (or FASTA with a .fa/.fasta/.fna name)") from None
    except csv.Error as error:
        raise InputError(f"{path}: malformed CSV/TSV ({error})") from None


class LabelledSequences(torch.utils.data.Dataset):
    """Tokenized examples: item i is {"input_ids": (l_i,) int64, "labels": () int64}. With `rc_prob` > 0 item i is
    reverse-complemented with that probability, decided by (rc_seed, i) alone (a resumed epoch sees the same strands):
    augmentation for labels that do not depend on the strand."""

    def __init__(self, examples: list[tuple[str, str, str]], class_names: list[str], source: str,
                 max_len: int | None = None, rc_prob: float = 0.0, rc_seed: int = 0):
        tokenizer, index = DNATokenizer(), {c: i for i, c in enumerate(class_names)}
        self.rc_prob, self.rc_seed = rc_prob, rc_seed
        self.items = []
        for name, sequence, label in examples:
            if label not in index:
                raise InputError(f"{source}: {name}: label {label!r} is not one of the training labels "
                                 f"{class_names}")
            ids = tokenizer.encode(sequence[:max_len] if max_len else sequence, name=f"{source}: {name}")
            self.items.append((ids, index[label]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids, label = self.items[i]
        if self.rc_prob > 0 and random.Random(self.rc_seed * 2**40 + i).random() < self.rc_prob:
            ids = DNATokenizer.reverse_complement(ids)
        return {"input_ids": ids, "labels": torch.tensor(label)}


def pad_batch(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad with [PAD] to the longest sequence: input_ids (b, L), attention_mask (b, L) bool, labels (b,)."""
    length = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), length), DNATokenizer.PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(items), length), dtype=torch.bool)
    for row, item in enumerate(items):
        ids[row, :len(item["input_ids"])] = item["input_ids"]
        mask[row, :len(item["input_ids"])] = True
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([it["labels"] for it in items])}


class LabelledData(L.LightningDataModule):
    """Labelled sequences for fine-tuning: `train`, `valid` and optional `test` (files or folders read by
    `read_labelled`); the classes are the sorted training labels; `max_len` truncates long sequences; `rc_prob`
    reverse-complements training examples with that probability (for labels that do not depend on the strand).
    Training order and strands are functions of (seed, epoch): a run resumed mid-epoch continues it exactly."""

    def __init__(self, train: str, valid: str, test: str | None = None, batch_size: int = 32,
                 max_len: int | None = None, num_workers: int = 0, seed: int = 0, rc_prob: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.examples = {"train": read_labelled(train)}
        self.class_names = sorted({label for _, _, label in self.examples["train"]})
        if len(self.class_names) < 2:
            raise InputError(f"{train}: needs at least two labels, found {self.class_names}")
        self._datasets = None

    def setup(self, stage: str | None = None) -> None:
        if self._datasets is not None:
            return
        hp = self.hparams
        sources = {"train": hp.train, "valid": hp.valid, "test": hp.test}
        self._datasets = {}
        for split, source in sources.items():
            if source is None:
                continue
            examples = self.examples.get(split) or read_labelled(source)
            self._datasets[split] = LabelledSequences(examples, self.class_names, str(source), hp.max_len)

    def _loader(self, split: str, sampler: EpochSampler | None = None) -> torch.utils.data.DataLoader:
        """The split's loader: training with its EpochSampler; evaluation (no sampler given) shared out over the
        ranks."""
        if split not in self._datasets:
            raise ValueError(f"no {split} data: give --{split}")
        dataset = self._datasets[split]
        return torch.utils.data.DataLoader(dataset, batch_size=self.hparams.batch_size,
                                           sampler=sampler or eval_sampler(len(dataset), self.trainer),
                                           collate_fn=pad_batch, num_workers=self.hparams.num_workers,
                                           worker_init_fn=leave_sigterm_to_the_main_process)

    def train_dataloader(self):
        hp, dataset = self.hparams, self._datasets["train"]
        epoch, skip = resume_point(self.trainer, hp.batch_size)
        dataset.rc_prob, dataset.rc_seed = hp.rc_prob, hp.seed * 100_003 + epoch
        return self._loader("train", EpochSampler(len(dataset), hp.seed, epoch, shuffle=True, skip=skip,
                                                         **data_rank(self.trainer)))

    def val_dataloader(self):
        return self._loader("valid")

    def test_dataloader(self):
        return self._loader("test")


def build_cli(args: list[str], run_dir: str = "runs/finetune"):
    """LightningCLI over DNAClassifier and LabelledData (common.build_cli defaults without the length warm-up; best
    checkpoint and early stopping (patience 3 validations) by validation MCC; class names linked from the data),
    not run: the caller fits and tests (`mba dna finetune`)."""
    return _build_cli(DNAClassifier, LabelledData, args, run_dir, monitor="valid/mcc", mode="max",
                      links=(("data.class_names", "model.class_names"),), length_warmup=False,
                      callbacks=[{"class_path": "lightning.pytorch.callbacks.EarlyStopping",
                                  "init_args": {"monitor": "valid/mcc", "mode": "max", "patience": 3}}])
