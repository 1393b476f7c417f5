"""DNA pretraining by next-base prediction on any indexed FASTA (issue 4), on Lightning.

    DNAPretrainData        LightningDataModule: windows from a BED with a split column (the HG38 recipe) or whole
                           chromosomes split by name or position; a shuffled order fixed by (seed, epoch), so a run
                           resumed mid-epoch reads exactly the batches it had not trained on.
    DNALanguageModel       LightningModule: a Mamba or Transformer++ LM; AdamW (β 0.9/0.95, no weight decay on A_log,
                           D, norms, biases), linear warm-up then cosine decay per step; loss, perplexity and bits per
                           base (N and padding ignored).
    build_cli              the pipeline's LightningCLI (`mba dna pretrain`).

The length warm-up, atomic checkpoints, the resumable sampler and the optimizer are shared (pipelines/common.py).
"""
from __future__ import annotations


import torch

from mamba_bio_audio import MambaLMHeadModel
from mamba_bio_audio.dna.windows import IGNORE_INDEX, GenomeWindows, read_bed, split_chromosomes, tile
from mamba_bio_audio.models import TransformerLM, dna_mamba_config, dna_transformer_config

from .common import (  # noqa: F401  (AtomicCheckpointIO, SequenceLengthWarmup: part of this pipeline's API)
    LN2, AtomicCheckpointIO, EpochSampler, LanguageModelModule, LengthScheduledData, SequenceLengthWarmup, data_rank,
    eval_sampler, leave_sigterm_to_the_main_process, resume_point, summed_nll)
from .common import build_cli as _build_cli


def mask_bases(ids: torch.Tensor, mask_prob: float, key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of DNA ids (b, L) int64: each A/C/G/T position is chosen with probability `mask_prob`;
    chosen positions become [MASK] (80%), a random base (10%) or stay (10%). Returns (inputs, labels): labels are
    the original ids at chosen positions and IGNORE_INDEX elsewhere (N, padding and specials are never chosen).
    The draw is a function of `key` (a generator on the ids' device)."""
    from mamba_bio_audio.dna import DNATokenizer

    generator = torch.Generator(device=ids.device).manual_seed(key % (2 ** 63))
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    action = torch.rand(ids.shape, generator=generator, device=ids.device)
    random_base = torch.randint(DNATokenizer.A_ID, DNATokenizer.A_ID + 4, ids.shape, generator=generator,
                                device=ids.device)
    chosen = (ids >= DNATokenizer.A_ID) & (ids < DNATokenizer.A_ID + 4) & (draw < mask_prob)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(ids, DNATokenizer.MASK_ID), ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_base, inputs)
    return inputs, torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))


class DNAPretrainData(LengthScheduledData):
    """Windows of `seq_len` bases from `fasta` for train/valid/test.

    Splits: a BED file with a split column (`bed`), or chromosomes listed per split (`split_names`, e.g.
    {"train": [...], "valid": [...], "test": [...]}), or consecutive position fractions of every chromosome
    (`split_fractions`, default 0.9/0.05/0.05). A `SequenceLengthWarmup` callback, when present, sets the training
    length and batch per epoch (the Trainer must reload dataloaders every epoch). `max_eval_windows` caps the
    valid/test windows (evenly spaced) to keep evaluation short. `eval_scored_len` scores only the last
    eval_scored_len targets of each valid/test window, the windows ending at the same places whatever seq_len is
    (see `tile`): runs at different lengths are then compared on the same bases. `soft_mask` adds each batch's
    lowercase-base mask (`soft_mask`, bool) for losses or analyses that weigh repeats differently; the LM itself
    ignores it."""

    def __init__(self, fasta: str, seq_len: int = 1024, batch_size: int = 16, bed: str | None = None,
                 split_names: dict[str, list[str]] | None = None,
                 split_fractions: tuple[float, float, float] | None = (0.9, 0.05, 0.05),
                 eval_batch_size: int | None = None, num_workers: int = 0, rc_prob: float = 0.0, seed: int = 0,
                 max_eval_windows: int | None = None, eval_scored_len: int | None = None, soft_mask: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.fasta = fasta
        self.seq_len, self.batch_size = seq_len, batch_size
        self._intervals = None

    def setup(self, stage: str | None = None) -> None:
        if self._intervals is not None:
            return
        from mamba_bio_audio.dna.fasta import open_fasta

        handle = open_fasta(self.fasta)
        self.chrom_lengths = lengths = dict(zip(handle.references, handle.lengths))
        hp = self.hparams
        if hp.bed:
            self._intervals = read_bed(hp.bed, lengths)
        elif hp.split_names:
            self._intervals = split_chromosomes(lengths, names=hp.split_names)
        else:
            self._intervals = split_chromosomes(lengths, fractions=tuple(hp.split_fractions))

    def intervals(self, split: str) -> list:
        """The intervals of a split (after `setup`)."""
        return list(self._intervals[split])

    def select(self, intervals: dict) -> None:
        """Replace the intervals of the given splits (e.g. evaluate on one region as the test split)."""
        self._intervals = {**self._intervals, **intervals}

    def _dataset(self, split: str, seq_len: int, rc_prob: float = 0.0, rc_seed: int = 0) -> GenomeWindows:
        scored_len = None if split == "train" else self.hparams.eval_scored_len
        windows = tile(self._intervals[split], seq_len, scored_len)
        if not windows:
            raise ValueError(f"{self.fasta}: the {split} split has no sequence")
        if split != "train" and self.hparams.max_eval_windows and len(windows) > self.hparams.max_eval_windows:
            step = len(windows) / self.hparams.max_eval_windows
            windows = [windows[int(i * step)] for i in range(self.hparams.max_eval_windows)]
        return GenomeWindows(self.fasta, windows, seq_len, rc_prob=rc_prob, soft_mask=self.hparams.soft_mask,
                             scored_len=scored_len, rc_seed=rc_seed)

    def _loader(self, dataset, batch_size: int, sampler, train: bool = False) -> torch.utils.data.DataLoader:
        """Training drops the last partial batch (every step has the same tokens); evaluation keeps it."""
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                           num_workers=self.hparams.num_workers, drop_last=train,
                                           worker_init_fn=leave_sigterm_to_the_main_process)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        seq_len, batch_size = self.current_shape()
        epoch, skip = resume_point(self.trainer, batch_size)
        dataset = self._dataset("train", seq_len, self.hparams.rc_prob, rc_seed=self.hparams.seed * 100_003 + epoch)
        sampler = EpochSampler(len(dataset), self.hparams.seed, epoch, shuffle=True, skip=skip,
                               **data_rank(self.trainer))
        return self._loader(dataset, batch_size, sampler, train=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        dataset = self._dataset("valid", self.seq_len)
        return self._loader(dataset, self.hparams.eval_batch_size or self.batch_size,
                            eval_sampler(len(dataset), self.trainer))

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        dataset = self._dataset("test", self.seq_len)
        return self._loader(dataset, self.hparams.eval_batch_size or self.batch_size,
                            eval_sampler(len(dataset), self.trainer))


class DNALanguageModel(LanguageModelModule):
    """DNA LM. `arch` "mamba" or "transformer"; `model_size` one of the paper's sizes (models.DNA_MODEL_SIZES) or
    `config` (a dict of MambaConfig / TransformerConfig fields) for anything else; `gradient_checkpointing`
    recomputes each block in the backward (for the longest contexts).

    `objective` "next" (next-base prediction, causal models) or "mlm" (masked-LM for bidirectional Mamba configs,
    e.g. config {"bidirectional": true[, "rc_equivariant": true]}: `mask_prob` of the bases are chosen, 80% of them
    replaced by [MASK], 10% by a random base, 10% kept, and predicted; the choice is a function of (mask_seed, step) in
    training and of the batch index in evaluation, so runs and resumes are reproducible). Metrics are bits per
    predicted base either way."""

    unit = "base"

    def __init__(self, arch: str = "mamba", model_size: str | None = "1.4M", config: dict | None = None,
                 objective: str = "next", mask_prob: float = 0.15, mask_seed: int = 0, lr: float = 8e-3,
                 weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95), warmup: float = 0.1,
                 final_lr_ratio: float = 0.1, gradient_checkpointing: bool = False):
        super().__init__()
        self.save_hyperparameters()
        if objective not in ("next", "mlm"):
            raise ValueError(f"objective must be 'next' or 'mlm', got {objective!r}")
        if arch == "mamba":
            from mamba_bio_audio.config import MambaConfig

            cfg = MambaConfig(**config) if config else dna_mamba_config(model_size)
            if (objective == "mlm") != cfg.bidirectional:
                raise ValueError("the masked-LM objective goes with a bidirectional Mamba (config bidirectional: true) "
                                 "and next-base prediction with a causal one")
            self.model = MambaLMHeadModel(cfg)
        elif arch == "transformer":
            from mamba_bio_audio.models import TransformerConfig

            if objective == "mlm":
                raise ValueError("the Transformer++ baseline is causal: use objective 'next'")
            cfg = TransformerConfig(**config) if config else dna_transformer_config(model_size)
            self.model = TransformerLM(cfg)
        else:
            raise ValueError(f"arch must be 'mamba' or 'transformer', got {arch!r}")
        (self.model.backbone if arch == "mamba" else self.model).gradient_checkpointing = gradient_checkpointing
        self._eval_batches: dict[str, int] = {}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def _inputs_and_labels(self, batch: dict[str, torch.Tensor], key: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hparams.objective == "next":
            return batch["input_ids"], batch["labels"]
        return mask_bases(batch["input_ids"], self.hparams.mask_prob, key)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, labels = self._inputs_and_labels(batch, self.hparams.mask_seed * 1_000_003 + self.global_step)
        return self._train_loss(*summed_nll(self(inputs), labels))

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str, kept: int) -> None:
        index = self._eval_batches[split] = self._eval_batches.get(split, 0) + 1  # the same masks every evaluation
        inputs, labels = self._inputs_and_labels(batch, -index)
        self._add_eval_nll(split, *summed_nll(self(inputs)[:kept], labels[:kept]))

    def _eval_end(self, split: str) -> None:
        self._eval_batches.pop(split, None)
        loss = self._eval_nll(split)
        self.log_dict({f"{split}/loss": loss, f"{split}/perplexity": loss.exp(), f"{split}/bits_per_base": loss / LN2},
                      prog_bar=split == "valid")


def build_cli(args: list[str], run_dir: str = "runs/dna"):
    """LightningCLI over DNALanguageModel and DNAPretrainData with the toolkit's defaults (common.build_cli), best
    checkpoint by validation bits per base, not run: the caller fits and tests (`mba dna pretrain`)."""
    return _build_cli(DNALanguageModel, DNAPretrainData, args, run_dir, monitor="valid/bits_per_base", mode="min")


