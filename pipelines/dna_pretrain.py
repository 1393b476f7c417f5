"""DNA pretraining by next-base prediction on any indexed FASTA (issue 4), on Lightning.

    DNAPretrainData        LightningDataModule: windows from a BED with a split column (the HG38 recipe) or whole
                           chromosomes split by name or position; a shuffled order fixed by (seed, epoch), so a run
                           resumed mid-epoch reads exactly the batches it had not trained on.
    DNALanguageModel       LightningModule: a Mamba or Transformer++ LM; AdamW (β 0.9/0.95, no weight decay on A_log,
                           D, norms, biases), linear warm-up then cosine decay per step; loss, perplexity and bits per
                           base (N and padding ignored).
    SequenceLengthWarmup   Callback: the training length starts at 2^10 and doubles every k epochs up to the target,
                           the batch shrinking so that tokens per step stay constant.
    AtomicCheckpointIO     checkpoints written to a temporary name and renamed.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mamba_bio_audio import MambaLMHeadModel
from mamba_bio_audio.dna.windows import IGNORE_INDEX, GenomeWindows, read_bed, split_chromosomes, tile
from mamba_bio_audio.io import atomic_path
from mamba_bio_audio.models import TransformerLM, dna_mamba_config, dna_transformer_config
from mamba_bio_audio.optim import parameter_groups, warmup_cosine

LN2 = math.log(2.0)


def next_base_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (nats, fp32) over the labels that count, and their number.

    logits (batch, L, vocab) any float dtype; labels (batch, L) int64 with IGNORE_INDEX for N and padding."""
    total = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                              ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (labels != IGNORE_INDEX).sum()


class EpochSampler(torch.utils.data.Sampler):
    """Indices 0 … n−1 in an order fixed by (seed, epoch) (or in order without shuffling), starting after the first
    `skip` of them: a resumed epoch continues where the interrupted one stopped."""

    def __init__(self, n: int, seed: int, epoch: int, shuffle: bool, skip: int = 0):
        self.n, self.seed, self.epoch, self.shuffle, self.skip = n, seed, epoch, shuffle, skip

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))

    def __iter__(self):
        return iter(self._order()[self.skip:].tolist())

    def __len__(self) -> int:
        return max(0, self.n - self.skip)


class DNAPretrainData(L.LightningDataModule):
    """Windows of `seq_len` bases from `fasta` for train/valid/test.

    Splits: a BED file with a split column (`bed`), or chromosomes listed per split (`split_names`, e.g.
    {"train": [...], "valid": [...], "test": [...]}), or consecutive position fractions of every chromosome
    (`split_fractions`, default 0.9/0.05/0.05). A `SequenceLengthWarmup` callback, when present, sets the training
    length and batch per epoch (the Trainer must reload dataloaders every epoch). `max_eval_windows` caps the
    valid/test windows (evenly spaced) to keep evaluation short. `eval_scored_len` scores only the last
    eval_scored_len targets of each valid/test window, the windows ending at the same places whatever seq_len is
    (see `tile`): runs at different lengths are then compared on the same bases. `soft_mask` adds each batch's lowercase-base mask
    (`soft_mask`, bool) for losses or analyses that weigh repeats differently; the LM itself ignores it."""

    def __init__(self, fasta: str, seq_len: int = 1024, batch_size: int = 16, bed: str | None = None,
                 split_names: dict[str, list[str]] | None = None,
                 split_fractions: tuple[float, float, float] | None = (0.9, 0.05, 0.05),
                 eval_batch_size: int | None = None, num_workers: int = 0, rc_prob: float = 0.0, seed: int = 0,
                 max_eval_windows: int | None = None, eval_scored_len: int | None = None, soft_mask: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.fasta = fasta
        self.seq_len, self.batch_size = seq_len, batch_size
        self.length_schedule: SequenceLengthWarmup | None = None
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

    def current_shape(self) -> tuple[int, int]:
        """(seq_len, batch_size) of training at the trainer's current epoch."""
        if self.length_schedule is not None and self.trainer is not None:
            return self.length_schedule.stage(self.trainer.current_epoch)
        return self.seq_len, self.batch_size

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
                                           num_workers=self.hparams.num_workers, drop_last=train)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        seq_len, batch_size = self.current_shape()
        epoch, skip = 0, 0
        if self.trainer is not None:
            epoch = self.trainer.current_epoch
            loop = self.trainer.fit_loop
            if loop.restarting:  # resumed mid-epoch: skip the batches already trained on (a checkpoint taken at the
                # end of a batch counts it as processed, not yet completed)
                skip = loop.epoch_loop.batch_progress.current.processed * batch_size
        dataset = self._dataset("train", seq_len, self.hparams.rc_prob, rc_seed=self.hparams.seed * 100_003 + epoch)
        sampler = EpochSampler(len(dataset), self.hparams.seed, epoch, shuffle=True, skip=skip)
        return self._loader(dataset, batch_size, sampler, train=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        dataset = self._dataset("valid", self.seq_len)
        return self._loader(dataset, self.hparams.eval_batch_size or self.batch_size,
                            EpochSampler(len(dataset), 0, 0, shuffle=False))

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        dataset = self._dataset("test", self.seq_len)
        return self._loader(dataset, self.hparams.eval_batch_size or self.batch_size,
                            EpochSampler(len(dataset), 0, 0, shuffle=False))


class SequenceLengthWarmup(L.Callback):
    """Training length start_len·2^⌊epoch / epochs_per_stage⌋, capped at the data module's seq_len; the batch is
    batch_size·seq_len / length (at least 1), so tokens per step stay constant. Logs `seq_len` every epoch."""

    def __init__(self, start_len: int = 1024, epochs_per_stage: int = 2):
        if start_len < 1 or epochs_per_stage < 1:
            raise ValueError("start_len and epochs_per_stage must be positive")
        self.start_len, self.epochs_per_stage = start_len, epochs_per_stage
        self.target_len = self.target_batch = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if not isinstance(data, DNAPretrainData):
            raise TypeError("SequenceLengthWarmup needs a DNAPretrainData data module")
        if stage == "fit" and trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError("SequenceLengthWarmup needs Trainer(reload_dataloaders_every_n_epochs=1)")
        self.target_len, self.target_batch = data.seq_len, data.batch_size
        data.length_schedule = self

    def stage(self, epoch: int) -> tuple[int, int]:
        length = min(self.target_len, self.start_len * 2 ** (epoch // self.epochs_per_stage))
        return length, max(1, self.target_batch * self.target_len // length)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("seq_len", float(self.stage(trainer.current_epoch)[0]), on_epoch=True, on_step=False)


class DNALanguageModel(L.LightningModule):
    """Next-base LM. `arch` "mamba" or "transformer"; `model_size` one of the paper's sizes (models.DNA_MODEL_SIZES)
    or `config` (a dict of MambaConfig / TransformerConfig fields) for anything else; `gradient_checkpointing`
    recomputes each block in the backward (for the longest contexts)."""

    def __init__(self, arch: str = "mamba", model_size: str | None = "1.4M", config: dict | None = None,
                 lr: float = 8e-3, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                 warmup: float = 0.1, final_lr_ratio: float = 0.1, gradient_checkpointing: bool = False):
        super().__init__()
        self.save_hyperparameters()
        if arch == "mamba":
            from mamba_bio_audio.config import MambaConfig

            cfg = MambaConfig(**config) if config else dna_mamba_config(model_size)
            self.model = MambaLMHeadModel(cfg)
        elif arch == "transformer":
            from mamba_bio_audio.models import TransformerConfig

            cfg = TransformerConfig(**config) if config else dna_transformer_config(model_size)
            self.model = TransformerLM(cfg)
        else:
            raise ValueError(f"arch must be 'mamba' or 'transformer', got {arch!r}")
        (self.model.backbone if arch == "mamba" else self.model).gradient_checkpointing = gradient_checkpointing
        self._eval_sums: dict[str, list[torch.Tensor]] = {}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, count = next_base_loss(self(batch["input_ids"]), batch["labels"])
        loss = total / count.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/bits_per_base", loss / LN2, on_step=True, on_epoch=False)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        total, count = next_base_loss(self(batch["input_ids"]), batch["labels"])
        sums = self._eval_sums.setdefault(split, [torch.zeros((), device=self.device, dtype=torch.float64)] * 2)
        self._eval_sums[split] = [sums[0] + total.double(), sums[1] + count.double()]

    def _eval_end(self, split: str) -> None:
        total, count = self._eval_sums.pop(split)
        total, count = self.all_gather(total).sum(), self.all_gather(count).sum()
        loss = (total / count.clamp(min=1)).float()
        self.log_dict({f"{split}/loss": loss, f"{split}/perplexity": loss.exp(), f"{split}/bits_per_base": loss / LN2},
                      prog_bar=split == "valid")

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "valid")

    def on_validation_epoch_end(self):
        self._eval_end("valid")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_end("test")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(parameter_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(min(step / total, 1.0), hp.warmup, hp.final_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints (local paths) written to a temporary name and renamed: a crash never leaves a truncated
    checkpoint under the final name."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())


def build_cli(args: list[str], run_dir: str = "runs/dna"):
    """LightningCLI over DNALanguageModel and DNAPretrainData with the pipeline's defaults, not run: the caller fits
    and tests (`mba dna pretrain`).

    Defaults (each can be overridden by --trainer.*, --checkpoint.*, --length_warmup.* or the YAML, and all are
    saved in the run's config.yaml): bf16-mixed on a GPU, fp32 on the CPU; gradient clipping 1.0; last and best
    (valid bits per base) checkpoints in RUN/checkpoints, written atomically; CSV and TensorBoard logs in RUN; the
    length warm-up (a no-op when seq_len ≤ 1024); dataloaders rebuilt every epoch."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    class DNAPretrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.add_lightning_class_args(SequenceLengthWarmup, "length_warmup")
            parser.set_defaults({
                "checkpoint.dirpath": os.path.join(run_dir, "checkpoints"), "checkpoint.monitor": "valid/bits_per_base",
                "checkpoint.mode": "min", "checkpoint.save_last": True, "checkpoint.filename": "best-{step}",
                "trainer.default_root_dir": run_dir,
                "trainer.precision": "bf16-mixed" if torch.cuda.is_available() else "32-true",
                "trainer.gradient_clip_val": 1.0,
                "trainer.reload_dataloaders_every_n_epochs": 1,
                "trainer.plugins": [{"class_path": f"{__name__}.AtomicCheckpointIO"}],
                "trainer.logger": [
                    {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": run_dir,
                                                                                         "name": "logs"}},
                    {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                     "init_args": {"save_dir": run_dir, "name": "tensorboard"}}],
            })

    return DNAPretrainCLI(DNALanguageModel, DNAPretrainData, run=False, args=args, seed_everything_default=0,
                          save_config_kwargs={"overwrite": True})
