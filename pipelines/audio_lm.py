"""Autoregressive raw-audio models (`mba audio train`), on Lightning: 8-bit samples predicted one at a time.

    sc09_split      the SC09 subset of Speech Commands: the ten digit folders, split by the release's
                    validation_list.txt / testing_list.txt (everything else is training).
    AudioClips      Dataset of fixed-length clips (SC09: 1 s): each clip quantised on its own, padded to the length
                    (padding ignored by the loss), inputs = targets shifted right after the start token.
    SC09Data        LightningDataModule over the three clip lists.
    LongAudioData   LightningDataModule over a folder of long recordings (YouTubeMix): files split 88/6/6% in sorted
                    order, each quantised once; training on random crops of `sample_len` (a function of seed, epoch
                    and index; batch = tokens_per_batch / sample_len), evaluation on the held-out files tiled.
    AudioLM         LightningModule: the Mamba U-Net (SaShiMi layout), a flat Mamba LM or a Transformer++; NLL in bits
                    per sample.
Training follows the paper: AdamW (0.9, 0.95), weight decay 0.1, lr 2e-3, 10% warm-up then cosine decay, gradient
clipping 0.1, bf16 on the GPU.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from mamba_bio_audio.audio import DIGITS, SAMPLE_RATE, audio_files
from mamba_bio_audio.audio.codec import N_CLASSES, START_TOKEN, load_audio, quantize, shift_right
from mamba_bio_audio.errors import InputError

from .common import (IGNORE_INDEX, LN2, EpochSampler, LanguageModelModule, data_rank, eval_sampler,
                     leave_sigterm_to_the_main_process, resume_point, summed_nll)
from .common import build_cli as _build_cli



def sc09_split(root: str | Path) -> dict[str, list[Path]]:
    """split → sorted clip paths of ROOT/<digit>/*.wav; ROOT/validation_list.txt and ROOT/testing_list.txt (lines
    `<word>/<file>.wav`, as in the Speech Commands release; other words are ignored) pick valid and test."""
    root = Path(root)
    lists = {}
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (the SC09 layout has {name} next to the digit folders)")
        lists[split] = {line.strip() for line in path.read_text().splitlines() if line.strip()}
    clips = {"train": [], "valid": [], "test": []}
    for digit in DIGITS:
        folder = root / digit
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing (SC09 has one folder per digit: {', '.join(DIGITS)})")
        for path in sorted(folder.glob("*.wav")):
            key = f"{digit}/{path.name}"
            clips["valid" if key in lists["valid"] else "test" if key in lists["test"] else "train"].append(path)
    for split, paths in clips.items():
        if not paths:
            raise InputError(f"{root}: no {split} clips")
    return clips


def model_inputs(codes: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    """codes (T,) int64 → {"input_ids": (length,), "labels": (length,)}: cut or padded to `length` (padded targets are
    IGNORE_INDEX, padded inputs the start token, i.e. silence)."""
    codes = codes[:length]
    padded = torch.full((length,), START_TOKEN, dtype=torch.int64)
    padded[:len(codes)] = codes
    labels = padded.clone()
    labels[len(codes):] = IGNORE_INDEX
    return {"input_ids": shift_right(padded), "labels": labels}


class AudioClips(torch.utils.data.Dataset):
    """Clips read when indexed: item i is {"input_ids": (length,) int64, "labels": (length,) int64}."""

    def __init__(self, paths: list[Path], length: int = SAMPLE_RATE, scheme: str = "mu-law"):
        self.paths, self.length, self.scheme = paths, length, scheme

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return model_inputs(quantize(load_audio(self.paths[i]), self.scheme), self.length)


def _loader(dataset, batch_size: int, sampler, num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available(),
                                       worker_init_fn=leave_sigterm_to_the_main_process)


class SC09Data(L.LightningDataModule):
    """SC09 clips (see `sc09_split`), padded to `clip_len` samples (16000: 1 s), quantised per clip. Subclasses
    serve other items of the same clips by overriding `_dataset`."""

    def __init__(self, root: str, batch_size: int = 16, clip_len: int = SAMPLE_RATE, scheme: str = "mu-law",
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.clips = sc09_split(root)

    def _dataset(self, split: str) -> AudioClips:
        return AudioClips(self.clips[split], self.hparams.clip_len, self.hparams.scheme)

    def train_dataloader(self):
        hp, dataset = self.hparams, self._dataset("train")
        epoch, skip = resume_point(self.trainer, hp.batch_size)
        return _loader(dataset, hp.batch_size, EpochSampler(len(dataset), hp.seed, epoch, True, skip,
                                                                **data_rank(self.trainer)), hp.num_workers)

    def _eval_loader(self, split: str):
        dataset = self._dataset(split)
        return _loader(dataset, self.hparams.batch_size, eval_sampler(len(dataset), self.trainer),
                       self.hparams.num_workers)

    def val_dataloader(self):
        return self._eval_loader("valid")

    def test_dataloader(self):
        return self._eval_loader("test")


class Crops(torch.utils.data.Dataset):
    """`n` windows of `length` codes from `tracks` (list of (T_i,) uint8): random crops (a track drawn by length, a
    uniform start; a function of (seed, index)) or, with `tile`, every whole window of every track in order."""

    def __init__(self, tracks: list[np.ndarray], length: int, n: int | None = None, seed: int = 0,
                 tile: bool = False):
        self.tracks, self.length, self.seed, self.tile = tracks, length, seed, tile
        if tile:
            self.windows = [(i, s) for i, t in enumerate(tracks) for s in range(0, len(t) - length + 1, length)]
            self.n = len(self.windows)
        else:
            starts = [max(len(t) - length + 1, 0) for t in tracks]  # a track is drawn by its number of windows
            self.weights = np.array(starts, dtype=np.float64)
            if self.weights.sum() == 0:
                raise ValueError(f"no track is {length} samples long")
            self.weights /= self.weights.sum()
            self.n = n
        if not self.n:
            raise ValueError(f"no window of {length} samples in {len(tracks)} track(s)")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.tile:
            track, start = self.windows[i]
        else:
            rng = np.random.default_rng([self.seed, i])
            track = int(rng.choice(len(self.tracks), p=self.weights))
            start = int(rng.integers(0, len(self.tracks[track]) - self.length + 1))
        codes = torch.from_numpy(self.tracks[track][start:start + self.length].astype(np.int64))
        return model_inputs(codes, self.length)


def split_files(files: list[Path], fractions: tuple[float, float, float] = (0.88, 0.06, 0.06)) -> dict[str, list]:
    """The sorted files cut into train/valid/test by the fractions (at least one file in each split)."""
    if len(files) < 3:
        raise ValueError(f"need at least 3 audio files for a train/valid/test split, found {len(files)}")
    n_valid = max(1, round(len(files) * fractions[1]))
    n_test = max(1, round(len(files) * fractions[2]))
    n_train = len(files) - n_valid - n_test
    return {"train": files[:n_train], "valid": files[n_train:n_train + n_valid], "test": files[n_train + n_valid:]}


class LongAudioData(L.LightningDataModule):
    """Long recordings in `root` (YouTubeMix layout: a folder of audio files), split 88/6/6% in sorted order; each
    file quantised once (min-max scaled over the whole file). Training: `samples_per_epoch` random crops of
    `sample_len` samples, tokens_per_batch / sample_len crops per batch; valid/test: the held-out files tiled."""

    def __init__(self, root: str, sample_len: int = 65536, tokens_per_batch: int = 65536 * 8,
                 samples_per_epoch: int = 8192, scheme: str = "mu-law", num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        if tokens_per_batch % sample_len:
            raise ValueError(f"tokens_per_batch ({tokens_per_batch}) must be a multiple of sample_len ({sample_len})")
        self.batch_size = tokens_per_batch // sample_len
        self.files = split_files(audio_files(root))
        self._tracks: dict[str, list[np.ndarray]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._tracks is None:
            scheme = self.hparams.scheme
            self._tracks = {split: [quantize(load_audio(p), scheme).to(torch.uint8).numpy() for p in paths]
                            for split, paths in self.files.items()}

    def train_dataloader(self):
        hp = self.hparams
        epoch, skip = resume_point(self.trainer, self.batch_size)
        dataset = Crops(self._tracks["train"], hp.sample_len, hp.samples_per_epoch, seed=hp.seed * 100_003 + epoch)
        sampler = EpochSampler(len(dataset), hp.seed, epoch, False, skip, **data_rank(self.trainer))
        return _loader(dataset, self.batch_size, sampler, hp.num_workers)

    def _eval_loader(self, split: str):
        dataset = Crops(self._tracks[split], self.hparams.sample_len, tile=True)
        return _loader(dataset, self.batch_size, eval_sampler(len(dataset), self.trainer), self.hparams.num_workers)

    def val_dataloader(self):
        return self._eval_loader("valid")

    def test_dataloader(self):
        return self._eval_loader("test")


def build_audio_model(arch: str, preset: str | None, config: dict | None) -> torch.nn.Module:
    """arch "unet" (AudioUNet; `preset` sc09 / youtubemix or `config` fields), "mamba" (a flat Mamba LM; `config`
    MambaConfig fields) or "transformer" (a Transformer++ LM; TransformerConfig fields); vocabulary 256."""
    if arch == "unet":
        from mamba_bio_audio.models.audio_unet import AudioUNet, AudioUNetConfig, audio_unet_config

        return AudioUNet(AudioUNetConfig(**config) if config else audio_unet_config(preset or "sc09"))
    if arch == "mamba":
        from mamba_bio_audio import MambaConfig, MambaLMHeadModel

        return MambaLMHeadModel(MambaConfig(**{"d_model": 256, "n_layer": 8, **(config or {}),
                                               "vocab_size": N_CLASSES}))
    if arch == "transformer":
        from mamba_bio_audio.models import TransformerConfig, TransformerLM

        return TransformerLM(TransformerConfig(**{"d_model": 256, "n_layer": 4, **(config or {}),
                                                  "vocab_size": N_CLASSES}))
    raise ValueError(f"arch must be 'unet', 'mamba' or 'transformer', got {arch!r}")


class AudioLM(LanguageModelModule):
    """Next-sample prediction over 8-bit audio: cross-entropy on the labels (padding ignored), reported in bits per
    sample (train/valid/test)."""

    unit = "sample"

    def __init__(self, arch: str = "unet", preset: str | None = "sc09", config: dict | None = None, lr: float = 2e-3,
                 weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95), warmup: float = 0.1,
                 final_lr_ratio: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_audio_model(arch, preset, config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (b, L) int64 → logits (b, L, 256)."""
        return self.model(input_ids)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._train_loss(*summed_nll(self(batch["input_ids"]), batch["labels"]))

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str, kept: int) -> None:
        self._add_eval_nll(split, *summed_nll(self(batch["input_ids"])[:kept], batch["labels"][:kept]))

    def _eval_end(self, split: str) -> None:
        loss = self._eval_nll(split)
        self.log_dict({f"{split}/loss": loss, f"{split}/bits_per_sample": loss / LN2}, prog_bar=split == "valid")


def build_cli(data_class, args: list[str], run_dir: str = "runs/audio"):
    """LightningCLI over AudioLM and `data_class` (SC09Data or LongAudioData) with the toolkit's defaults and the
    paper's gradient clipping (0.1); best checkpoint by validation bits per sample; not run (`mba audio train`)."""
    return _build_cli(AudioLM, data_class, args, run_dir, monitor="valid/bits_per_sample", mode="min",
                      length_warmup=False, defaults={"trainer.gradient_clip_val": 0.1})
