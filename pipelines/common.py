"""Pieces every Lightning pipeline of the toolkit shares.

    EpochSampler           indices in an order fixed by (seed, epoch), skipping those a resumed epoch already used.
    EvalShardSampler       evaluation indices split over the ranks, padded so that every rank runs the same batches.
    eval_sampler           the EvalShardSampler of this process (the trainer's rank and world).
    resume_point           (epoch, samples to skip) of the epoch a data module serves, for exact mid-epoch resume.
    LengthScheduledData    LightningDataModule base: training (length, batch) per epoch from a length schedule.
    SequenceLengthWarmup   Callback: the training length doubles every k epochs up to the target, the batch
                           shrinking so that tokens per step stay constant.
    AtomicCheckpointIO     checkpoints written to a temporary name and renamed.
    LastCheckpoint         Callback: last.ckpt rewritten after every validation, and when SIGTERM or Ctrl+C stops
                           the fit (the state after its last step).
    leave_sigterm_to_the_main_process  DataLoader workers' init: only the parent's SIGTERM stops a worker.
    PeakMemory             Callback: on CUDA, each training epoch's peak allocated memory as train/peak_memory_gib.
    AtomicCSVLogger        Lightning's CSVLogger with metrics.csv and hparams.yaml replaced whole at each flush.
    TokenThroughput        Callback: Lightning's ThroughputMonitor over the toolkit's batches; logs the global
                           training tokens/s (all ranks) as train/tokens_per_sec.
    adamw_cosine           AdamW (no weight decay on A_log, D, norms, biases) with linear warm-up then cosine decay.
    EvaluatedModule        LightningModule base: valid/test steps and epoch ends routed to _eval_step/_eval_end
                           (told how many rows of a batch count), gather_rows over the ranks, the optimizer from
                           adamw_cosine over `self.model`.
    summed_nll             cross-entropy summed in nats over the labels that count (not IGNORE_INDEX), and their number.
    LanguageModelModule    EvaluatedModule base of next-token models: train/valid/test NLL in bits per `unit`.
    sharded_strategy       `--trainer.strategy fsdp`: FSDP with one unit per residual block.
    TRAINER_ALIASES        the short options of every training command (--devices, --num-nodes, --strategy).
    expand_trainer_aliases a command line with those short options written as the --trainer.* options they stand for.
    build_cli              a LightningCLI with the toolkit's defaults (checkpoints, logs, throughput, precision,
                           warm-up); takes the short options.
"""
from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ThroughputMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as CSVExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_only

from mamba_bio_audio.dna.windows import IGNORE_INDEX
from mamba_bio_audio.io import atomic_path
from mamba_bio_audio.optim import parameter_groups, warmup_cosine


class EpochSampler(torch.utils.data.Sampler):
    """Indices 0 … n−1 in an order fixed by (seed, epoch) (or in order without shuffling), starting after the first
    `skip` of them: a resumed epoch continues where the interrupted one stopped.

    Under data parallelism (world_size > 1) every rank draws the same epoch order and takes its own share,
    order[rank::world_size] after the last n mod world_size indices are left out: disjoint shares of one size (every
    rank runs the same number of steps), and `skip` counts this rank's samples already trained on.

    The length stays the whole share when skipping: Lightning restores its count of the epoch's batches from the
    checkpoint and ends the epoch when that count reaches the loader's length, which is then exactly where the
    iterator runs out."""

    def __init__(self, n: int, seed: int, epoch: int, shuffle: bool, skip: int = 0, rank: int = 0,
                 world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: rank {rank} of a world of {world_size}")
        self.n, self.seed, self.epoch, self.shuffle, self.skip = n, seed, epoch, shuffle, skip
        self.rank, self.world_size = rank, world_size

    def _order(self) -> torch.Tensor:
        order = torch.arange(self.n) if not self.shuffle else torch.randperm(
            self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        return order[:self.n - self.n % self.world_size][self.rank::self.world_size]

    def __iter__(self):
        return iter(self._order()[self.skip:].tolist())

    def __len__(self) -> int:
        return self.n // self.world_size


def data_rank(trainer: "L.Trainer | None") -> dict[str, int]:
    """{"rank", "world_size"} of the process serving a loader (rank 0 of 1 without a trainer), for EpochSampler and
    EvalShardSampler."""
    return {"rank": trainer.global_rank, "world_size": trainer.world_size} if trainer is not None else \
        {"rank": 0, "world_size": 1}


class EvalShardSampler(torch.utils.data.Sampler):
    """Evaluation indices 0 … n−1 shared out over the ranks: rank r takes r, r + W, r + 2W, … in order. A rank that
    comes out one short repeats its first index at the end, so that every rank runs the same number of batches of
    the same sizes: data-parallel ranks must run their forwards in step (FSDP gathers parameters in every forward).
    The first `real` indices of the rank count; `kept` says how many rows of a batch those are, and EvaluatedModule
    passes it to `_eval_step`, so each sample is scored exactly once over the ranks."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"EvalShardSampler: rank {rank} of a world of {world_size}")
        self.own = list(range(rank, n, world_size))
        self.real = len(self.own)
        self.padded = self.own + [rank % max(n, 1)] * (-(-n // world_size) - self.real)

    def __iter__(self):
        return iter(self.padded)

    def __len__(self) -> int:
        return len(self.padded)

    def kept(self, batch_idx: int, batch_size: int, rows: int) -> int:
        """How many of the `rows` rows of batch `batch_idx` (batches of `batch_size`) are real samples."""
        return max(0, min(rows, self.real - batch_idx * batch_size))


def eval_sampler(n: int, trainer: "L.Trainer | None") -> EvalShardSampler:
    """The EvalShardSampler of this process over an evaluation set of n samples."""
    return EvalShardSampler(n, **data_rank(trainer))


def resume_point(trainer: "L.Trainer | None", batch_size: int) -> tuple[int, int]:
    """(epoch, skip) of the training epoch a data module is about to serve: the trainer's current epoch and, for a
    run resumed mid-epoch, how many samples of it were already trained on (a checkpoint taken at the end of a batch
    counts it as processed). (0, 0) without a trainer. A trainer that keeps its first training loader for every epoch
    (reload_dataloaders_every_n_epochs ≠ 1) would repeat that epoch's order, so it is refused."""
    if trainer is None:
        return 0, 0
    if trainer.reload_dataloaders_every_n_epochs != 1:
        raise ValueError("the training data are drawn afresh each epoch (order, strand and crops depend on it): "
                         "build the Trainer with reload_dataloaders_every_n_epochs=1 (the mba commands do)")
    loop = trainer.fit_loop
    skip = loop.epoch_loop.batch_progress.current.processed * batch_size if loop.restarting else 0
    return trainer.current_epoch, skip


class LengthScheduledData(L.LightningDataModule):
    """Base of data modules whose training length can follow a `SequenceLengthWarmup` (set as `length_schedule`;
    the Trainer must then rebuild dataloaders every epoch). Subclasses set `seq_len` and `batch_size`."""

    seq_len: int
    batch_size: int
    length_schedule: "SequenceLengthWarmup | None" = None

    def current_shape(self) -> tuple[int, int]:
        """(seq_len, batch_size) of training at the trainer's current epoch."""
        if self.length_schedule is not None and self.trainer is not None:
            return self.length_schedule.stage(self.trainer.current_epoch)
        return self.seq_len, self.batch_size


class SequenceLengthWarmup(L.Callback):
    """Training length start_len·2^⌊epoch / epochs_per_stage⌋, capped at the data module's seq_len; with
    `keep_tokens` the batch is batch_size·seq_len / length (at least 1), so tokens per step stay constant, else the
    batch stays batch_size (samples per step constant). Logs `seq_len` every epoch."""

    def __init__(self, start_len: int = 1024, epochs_per_stage: int = 2, keep_tokens: bool = True):
        if start_len < 1 or epochs_per_stage < 1:
            raise ValueError("start_len and epochs_per_stage must be positive")
        self.start_len, self.epochs_per_stage, self.keep_tokens = start_len, epochs_per_stage, keep_tokens
        self.target_len = self.target_batch = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if not isinstance(data, LengthScheduledData):
            raise TypeError("SequenceLengthWarmup needs a LengthScheduledData data module")
        self.target_len, self.target_batch = data.seq_len, data.batch_size
        data.length_schedule = self

    def stage(self, epoch: int) -> tuple[int, int]:
        length = min(self.target_len, self.start_len * 2 ** (epoch // self.epochs_per_stage))
        if not self.keep_tokens:
            return length, self.target_batch
        return length, max(1, self.target_batch * self.target_len // length)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("seq_len", float(self.stage(trainer.current_epoch)[0]), on_epoch=True, on_step=False)


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


class _AtomicMetricsWriter(CSVExperimentWriter):
    """Lightning's CSV writer, but each flush writes metrics.csv whole under a temporary name and renames it (the
    stock writer appends, and rewrites the file in place when a new metric appears: a crash there loses the log),
    and hparams.yaml likewise. A flush rereads the file: a few hundred kB for a long run, every 100 logged steps."""

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        path, rows = Path(self.metrics_file_path), []
        if path.is_file():
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows + self.metrics)
        self.metrics = []

    def log_hparams(self, params: dict) -> None:
        from lightning.pytorch.core.saving import save_hparams_to_yaml

        self.hparams.update(params)
        with atomic_path(Path(self.log_dir) / self.NAME_HPARAMS_FILE) as tmp:
            save_hparams_to_yaml(tmp, self.hparams)


class AtomicCSVLogger(CSVLogger):
    """CSVLogger (same folders and files) whose metrics.csv and hparams.yaml are always complete: see
    `_AtomicMetricsWriter`. Remote save_dirs (fsspec URLs) keep Lightning's writer."""

    @property
    @rank_zero_experiment
    def experiment(self) -> CSVExperimentWriter:
        if self._experiment is None and "://" not in str(self.root_dir):
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AtomicMetricsWriter(log_dir=self.log_dir)
        return super().experiment


class NonFiniteLossGuard(L.Callback):
    """Never trains on through a NaN or inf: before each optimizer step the gradients are checked (a non-finite loss
    makes them non-finite). action "stop" raises TrainingDiverged naming the step and the last checkpoint saved
    (the weights are not updated by that step); "skip" drops that step's update with a warning naming the step and goes
    on (the count of skipped steps is kept in the checkpoints)."""

    def __init__(self, action: str = "stop"):
        if action not in ("stop", "skip"):
            raise ValueError(f"nonfinite.action must be 'stop' or 'skip', got {action!r}")
        self.action, self.skipped = action, 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            return
        if self.action == "skip":
            from lightning.pytorch.utilities import rank_zero_warn

            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without a gradient untouched
            self.skipped += 1
            rank_zero_warn(f"step {trainer.global_step}: the loss or its gradients are not finite (NaN or inf); the "
                           f"step's update was skipped ({self.skipped} skipped so far)")
            return
        from mamba_bio_audio.errors import TrainingDiverged

        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        saved = f"the last checkpoint is {last}" if last and os.path.exists(last) else "no checkpoint was saved yet"
        raise TrainingDiverged(f"step {trainer.global_step}: the loss or its gradients are not finite (NaN or inf); "
                               f"training stopped before updating the weights; {saved} (--nonfinite.action skip "
                               f"drops such steps instead)")

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict["skipped"]


class LastCheckpoint(Checkpoint):
    """Keeps the run's last checkpoint (RUN/checkpoints/last.ckpt, written atomically) at the latest state worth
    resuming from, for --resume:
    - after every validation during fit (Lightning's ModelCheckpoint rewrites it only when the monitored metric
      improved, so a run killed later would resume from its last improvement);
    - when SIGTERM (a job scheduler's time limit or preemption, `timeout`, `kill`) or Ctrl+C stops the fit: the state
      after the last completed step, so that the resumed run ends exactly where an uninterrupted one would
      (Lightning stops at the end of the step the signal interrupted; inside gradient accumulation the gradients
      accumulated so far are lost). Also when that SIGTERM killed a DataLoader worker that was still starting (before
      `leave_sigterm_to_the_main_process` ran) and PyTorch raised its loss at the next fetch, between two steps.
    Nothing is saved when the run keeps no last checkpoint (checkpoint.save_last off). `saved_on_interrupt`: (step,
    path) once saved so. A Checkpoint, so that Lightning runs it after ModelCheckpoint."""

    saved_on_interrupt: tuple[int, str] | None = None

    def _save(self, trainer: L.Trainer) -> str | None:
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or not checkpoint.save_last or not checkpoint.dirpath:
            return None
        path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
        checkpoint.last_model_path = path  # saved with it: a resumed run's ModelCheckpoint then overwrites that file
        trainer.save_checkpoint(path)
        return path

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if trainer.state.fn != "fit" or trainer.sanity_checking or checkpoint is None:
            return
        if getattr(checkpoint, "_last_global_step_saved", None) != trainer.global_step:  # not saved by it just now
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        worker_lost = trainer.received_sigterm and str(exception).startswith("DataLoader worker")
        if (isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or worker_lost) and trainer.state.fn == "fit":
            path = self._save(trainer)
            if path:
                self.saved_on_interrupt = (trainer.global_step, path)


class PeakMemory(L.Callback):
    """On a CUDA device, logs `train/peak_memory_gib` at the end of every training epoch: the most memory PyTorch held
    allocated during that epoch (torch.cuda.max_memory_allocated, GiB), so that a length warm-up's stages show what
    each length costs (next to `seq_len`). Nothing on other devices."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2 ** 30
            pl_module.log("train/peak_memory_gib", peak, on_step=False, on_epoch=True, sync_dist=True,
                          reduce_fx="max")


def leave_sigterm_to_the_main_process(worker_id: int) -> None:
    """DataLoader `worker_init_fn` of every pipeline: the worker ignores SIGTERM from any process but its parent. A
    job scheduler or `timeout` signals the whole process group (or job); a worker killed by it would make PyTorch
    raise "DataLoader worker … is killed" in the main process in the middle of a step, before LastCheckpoint could
    save. The main process stops after the step and shuts its workers down itself, with SIGTERM when they do not
    stop in time or when it exits (multiprocessing terminates its daemonic children at exit and joins them): that
    SIGTERM comes from the parent and ends the worker at once. SIGTERM is blocked in the worker and taken by one
    thread with sigwaitinfo, which tells the sender. Where there is no sigwaitinfo (macOS, Windows) SIGTERM keeps
    its default action."""
    import signal
    import threading

    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})      # every thread started from here on inherits it

    def take_sigterm() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass                                                     # a scheduler's, timeout's: the parent's to handle
        os._exit(0)         # ends the worker; exit code 0, so PyTorch's SIGCHLD check in the parent raises nothing

    threading.Thread(target=take_sigterm, name="sigterm-from-the-parent", daemon=True).start()


def sequence_batch(batch) -> torch.Tensor:
    """The (batch, length[, ...]) tensor of one of the toolkit's batches: `input_ids` (DNA, audio LM) or `waves`
    (audio classifier, diffusion)."""
    for key in ("input_ids", "waves"):
        if key in batch:
            return batch[key]
    raise KeyError(f"a batch with neither input_ids nor waves (keys: {', '.join(map(str, batch))})")


def batch_samples(batch) -> int:
    """Sequences in a batch (TokenThroughput's samples)."""
    return len(sequence_batch(batch))


def batch_tokens(batch) -> int:
    """Positions in a batch, batch × length (TokenThroughput's tokens)."""
    return sequence_batch(batch).numel()


class TokenThroughput(ThroughputMonitor):
    """Training throughput measured by Lightning's ThroughputMonitor over the toolkit's batches: samples are the rows
    of `input_ids` (or `waves`), tokens their positions (batch × length, padding included). Rank 0 counts them at the
    end of every step, after synchronising CUDA, and a rate is taken between the ends of the first and the last of
    the latest `window` steps (so over window − 1 steps): the first step (compilation, autotuning) never counts, a
    rate first appears once `window` steps are done, and validation time is left out (as Lightning's monitor does).

    Logged every `log_every_n_steps` to the run's loggers (metrics.csv, TensorBoard), under Lightning's names:
    train/device/items_per_sec and train/device/samples_per_sec (one rank), under DDP/FSDP also train/items_per_sec
    and train/samples_per_sec (all ranks: rank 0's rate × world size; the ranks step together, so this is exact when
    every rank's batches have one shape, as in pretraining: EpochSampler's equal shares, whole batches only),
    train/time, train/samples, train/lengths (cumulative on rank 0; tokens = lengths). Plus `train/tokens_per_sec`:
    the global tokens per second for any number of devices (train/items_per_sec under DDP,
    train/device/items_per_sec on one device), in the same row as the training loss and in the progress bar.
    Evaluation throughput is not logged: Lightning would log it at steps that count evaluation batches, which would
    read as training steps in metrics.csv."""

    def __init__(self, window: int = 50):
        if window < 2:
            raise ValueError(f"throughput.window must be at least 2 steps, got {window}")
        super().__init__(batch_size_fn=batch_samples, length_fn=batch_tokens, window_size=window)

    def _compute(self, trainer: L.Trainer, iter_num: int | None = None) -> None:
        # ThroughputMonitor's logging step, for training only (evaluation batches are still counted: validation time
        # is taken out of training's)
        if trainer.state.stage == RunningStage.TRAINING:
            super()._compute(trainer, iter_num)

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        before = trainer.logged_metrics.get("train/time")
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        logged = trainer.logged_metrics
        if logged.get("train/time") == before or "train/device/items_per_sec" not in logged:
            return  # nothing logged at this step, or the window is not full yet
        rate = float(logged["train/device/items_per_sec"]) * trainer.world_size
        pl_module.log("train/tokens_per_sec", rate, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)


def adamw_cosine(module: L.LightningModule, model: torch.nn.Module) -> dict:
    """configure_optimizers for a module with hparams lr, weight_decay, betas, warmup, final_lr_ratio: AdamW over
    `model` (no weight decay on A_log, D, norms and biases), linear warm-up over `warmup` of the steps, cosine decay
    to final_lr_ratio·lr, stepped every optimizer step."""
    hp = module.hparams
    optimizer = torch.optim.AdamW(parameter_groups(model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
    total = max(1, int(module.trainer.estimated_stepping_batches))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(min(step / total, 1.0), hp.warmup, hp.final_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class EvaluatedModule(L.LightningModule):
    """Base of the pipelines' modules: subclasses set `self.model` and define `_eval_step(batch, split, kept)`
    (accumulate; only the first `kept` rows of the batch count: the rest pad this rank's share of an EvalShardSampler,
    but the forward runs on the whole batch, in step with the other ranks) and `_eval_end(split)` (reduce over the
    ranks, e.g. with gather_rows, and log) for split "valid" and "test"."""

    flops_per_batch = None  # read by Lightning's ThroughputMonitor (TokenThroughput): FLOPs are not counted

    def log_train(self, name: str, value: torch.Tensor, prog_bar: bool = False) -> None:
        """Log a training-step value; under data parallelism its mean over the ranks (one scalar all-reduce), so
        that the figure is the global batch's, not rank 0's."""
        distributed = self._trainer is not None and self.trainer.world_size > 1
        self.log(name, value, prog_bar=prog_bar, on_step=True, on_epoch=False, sync_dist=distributed)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip as the Trainer's gradient_clip_val/_algorithm ask. Under FSDP, clipping by norm goes through the
        sharded root module's clip_grad_norm_ (the norm over every rank's shards): Lightning's FSDP precision plugin
        only clips by value and raises for norm."""
        if (gradient_clip_val and gradient_clip_algorithm in (None, "norm")
                and isinstance(self.trainer.strategy, FSDPStrategy)):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _kept(self, batch: dict[str, torch.Tensor], batch_idx: int, loader) -> int:
        """Rows of the batch that count: all of them unless the loader's sampler is an EvalShardSampler."""
        rows = len(next(iter(batch.values())))
        sampler = getattr(loader, "sampler", None)
        return sampler.kept(batch_idx, loader.batch_size, rows) if isinstance(sampler, EvalShardSampler) else rows

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows (n_r, k) → every rank's rows (Σ n_r, k), in rank order (ranks may hold different counts)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return rows
        counts = self.all_gather(torch.tensor(len(rows), device=self.device)).flatten().tolist()
        padded = torch.cat([rows, rows.new_zeros(max(counts) - len(rows), *rows.shape[1:])])
        gathered = self.all_gather(padded)                                          # (world, max n_r, k)
        return torch.cat([gathered[rank, :count] for rank, count in enumerate(counts)])

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "valid", self._kept(batch, batch_idx, self.trainer.val_dataloaders))

    def on_validation_epoch_end(self):
        self._eval_end("valid")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test", self._kept(batch, batch_idx, self.trainer.test_dataloaders))

    def on_test_epoch_end(self):
        self._eval_end("test")

    def configure_optimizers(self):
        return adamw_cosine(self, self.model)


LN2 = math.log(2.0)


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (nats, fp32) over the labels that count, and their number.

    logits (batch, L, vocab) any float dtype; labels (batch, L) int64 with IGNORE_INDEX where nothing is scored (N,
    padding, unmasked positions)."""
    total = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                              ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (labels != IGNORE_INDEX).sum()


class LanguageModelModule(EvaluatedModule):
    """Base of the next-token modules (DNA bases, audio samples): the training loss is the mean NLL of a batch, logged
    with its bits per `unit`; valid/test sum the NLL in float64 over the whole split (all ranks) before dividing."""

    unit = "token"

    def __init__(self):
        super().__init__()
        self._nll_sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # split → (summed nats, targets) so far

    def _train_loss(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Mean NLL of a batch from summed_nll's (total, count); logs it, its bits per unit and the learning rate.

        Under data parallelism the mean is over the targets of the global batch: each rank divides its sum by the
        count of all ranks (times their number, as DDP averages the ranks' gradients), so that ranks with more
        padding or N weigh what they would in one process; the logged loss is averaged over the ranks (one scalar
        all-reduce a step), i.e. the global batch's mean NLL, not rank 0's part of it."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            count = self.trainer.strategy.reduce(count.float(), reduce_op="sum") / world
        loss = total / count.clamp(min=1)
        # logged: the mean over ranks of these per-rank terms, which is the global batch's mean NLL
        self.log_train("train/loss", loss, prog_bar=True)
        self.log_train(f"train/bits_per_{self.unit}", loss / LN2)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _add_eval_nll(self, split: str, total: torch.Tensor, count: torch.Tensor) -> None:
        zero = torch.zeros((), device=self.device, dtype=torch.float64)
        previous = self._nll_sums.get(split, (zero, zero))
        self._nll_sums[split] = (previous[0] + total.double(), previous[1] + count.double())

    def _eval_nll(self, split: str) -> torch.Tensor:
        """Mean NLL (nats, fp32) of the split just evaluated, over every rank; the sums start again."""
        total, count = self._nll_sums.pop(split)
        total, count = self.all_gather(total).sum(), self.all_gather(count).sum()
        return (total / count.clamp(min=1)).float()


def sharded_strategy():
    """`--trainer.strategy fsdp`: Lightning's FSDPStrategy with one FSDP unit per residual block (Mamba's `Block`,
    `TransformerBlock`) and the rest (embedding, tied LM head, final norm, U-Net pooling) in the root unit, so that
    only one block's parameters are gathered at a time (Lightning's default wraps the whole model as one unit)."""
    from mamba_bio_audio.models.transformer import TransformerBlock
    from mamba_bio_audio.modules.block import Block

    return FSDPStrategy(auto_wrap_policy={Block, TransformerBlock})


TRAINER_ALIASES = {  # short option of every training command: the Trainer option it stands for
    "--devices": "--trainer.devices",      # devices per machine: a number, a list of device indices, or auto
    "--num-nodes": "--trainer.num_nodes",  # machines in the run, each running --devices processes (torchrun, SLURM)
    "--strategy": "--trainer.strategy",    # ddp, fsdp (one FSDP unit per residual block), auto, ...
}


def expand_trainer_aliases(args: list[str]) -> list[str]:
    """`args` with each short option of TRAINER_ALIASES (`--devices 2` or `--devices=2`) written as the Trainer option
    it stands for, where it stood: it overrides a --config file as that option does. ValueError when one option is
    given in both forms with different values."""
    full = {target: alias for alias, target in TRAINER_ALIASES.items()}
    expanded, given = [], {}  # given: Trainer option -> {(form, value)}
    position = 0
    while position < len(args):
        name, equals, value = args[position].partition("=")
        if name not in TRAINER_ALIASES and name not in full:
            expanded.append(args[position])
            position += 1
            continue
        if not equals:
            if position + 1 == len(args):
                raise ValueError(f"{name} needs a value")
            value = args[position + 1]
        target = TRAINER_ALIASES.get(name, name)
        given.setdefault(target, set()).add((name, value))
        expanded += [target, value]
        position += 1 if equals else 2
    for target, forms in given.items():
        if len({value for _, value in forms}) > 1 and len({name for name, _ in forms}) > 1:
            raise ValueError(f"{full[target]} is short for {target}; they were given different values: "
                             + ", ".join(f"{name} {value}" for name, value in sorted(forms)))
    return expanded


def build_cli(model_class, data_class, args: list[str], run_dir: str, monitor: str, mode: str,
              links: tuple[tuple[str, str], ...] = (), warmup_defaults: dict | None = None,
              length_warmup: bool = True, callbacks: list[dict] | None = None, defaults: dict | None = None):
    """LightningCLI over `model_class` and `data_class` with the toolkit's defaults, not run: the caller fits and
    tests.

    Defaults (each can be overridden by --trainer.*, --checkpoint.*, --nonfinite.*, --throughput.*, --length_warmup.*
    or the YAML, and all are saved in the run's config.yaml): bf16-mixed on a GPU, fp32 on the CPU; gradient clipping
    1.0; last and best (`monitor`, `mode`) checkpoints in RUN/checkpoints, written atomically (and the last one again
    after every validation and when SIGTERM or Ctrl+C stops the fit: LastCheckpoint); on CUDA each epoch's peak
    memory (PeakMemory); a NaN or inf loss stops training (NonFiniteLossGuard; --nonfinite.action skip skips such
    steps); training throughput (TokenThroughput: train/tokens_per_sec over all ranks, a rate over the last
    --throughput.window steps); CSV and TensorBoard logs in RUN; the length warm-up (`warmup_defaults` for its
    options; a no-op when seq_len ≤ its start length); dataloaders rebuilt every epoch. `links`: (source, target)
    pairs of arguments, the data module's attribute `source` copied into the model's init argument `target` at
    instantiation (e.g. the number of classes). Under DDP/FSDP
    (--trainer.devices, --trainer.num_nodes, --trainer.strategy, or for short --devices, --num-nodes, --strategy:
    TRAINER_ALIASES) each rank trains on its own share of every epoch (EpochSampler with `data_rank`), so Lightning's
    sampler replacement is off. `length_warmup=False` leaves the warm-up out (data modules without a length);
    `callbacks`: default trainer callbacks (class_path dicts); `defaults`: other defaults of the pipeline (e.g.
    {"trainer.gradient_clip_val": 0.1})."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    class ToolkitCLI(LightningCLI):
        def instantiate_trainer(self, **kwargs):
            trainer_config = self._get(self.config_init, "trainer", default={})
            if trainer_config.get("strategy") == "fsdp":
                trainer_config["strategy"] = sharded_strategy()
            return super().instantiate_trainer(**kwargs)

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.add_lightning_class_args(NonFiniteLossGuard, "nonfinite")
            parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
            parser.add_lightning_class_args(PeakMemory, "peak_memory")
            parser.add_lightning_class_args(TokenThroughput, "throughput")
            if length_warmup:
                parser.add_lightning_class_args(SequenceLengthWarmup, "length_warmup")
            for source, target in links:
                parser.link_arguments(source, target, apply_on="instantiate")
            parser.set_defaults({
                "checkpoint.dirpath": os.path.join(run_dir, "checkpoints"), "checkpoint.monitor": monitor,
                "checkpoint.mode": mode, "checkpoint.save_last": True, "checkpoint.filename": "best-{step}",
                "trainer.default_root_dir": run_dir,
                "trainer.precision": "bf16-mixed" if torch.cuda.is_available() else "32-true",
                "trainer.gradient_clip_val": 1.0,
                "trainer.reload_dataloaders_every_n_epochs": 1,
                "trainer.use_distributed_sampler": False,  # EpochSampler shards the training data itself
                "trainer.plugins": [{"class_path": f"{__name__}.AtomicCheckpointIO"}],
                "trainer.logger": [
                    {"class_path": f"{__name__}.AtomicCSVLogger", "init_args": {"save_dir": run_dir, "name": "logs"}},
                    {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                     "init_args": {"save_dir": run_dir, "name": "tensorboard"}}],
                **{f"length_warmup.{k}": v for k, v in (warmup_defaults or {}).items()},
                **({"trainer.callbacks": callbacks} if callbacks else {}),
                **(defaults or {}),
            })

    # `args` holds the whole configuration (the toolkit parsed its command line already); LightningCLI warns when
    # sys.argv holds arguments too, so it sees none while it parses (a DDP launcher reads sys.argv later, at fit)
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return ToolkitCLI(model_class, data_class, run=False, args=expand_trainer_aliases(args),
                          seed_everything_default=0, save_config_kwargs={"overwrite": True})
    finally:
        sys.argv = argv
