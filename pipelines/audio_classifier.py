"""SC09 digit classifier (`mba audio train-classifier`) and sample-quality evaluation (`mba audio evaluate`).

    DigitNet          log-mel frames (80 mels, 10 ms hop) → a bidirectional Mamba U-Net (BiMamba blocks, no causal
                      delay) → mean over time (the penultimate features) → 10 logits.
    LabelledClipData  LightningDataModule: SC09 clips (see audio_lm.sc09_split) as waveforms with their digit.
    DigitClassifier   LightningModule: cross-entropy; accuracy, per-digit accuracy, MCC, F1, AUROC on valid/test.
    score_folders     the classifier's probabilities and features on folders of clips → FID, IS, mIS, AM against
                      the training clips (mamba_bio_audio.audio.metrics).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mamba_bio_audio.audio import DIGITS, SAMPLE_RATE
from mamba_bio_audio.audio.codec import load_audio

from .audio_lm import SC09Data
from .common import EvaluatedModule
from .common import build_cli as _build_cli


class DigitNet(nn.Module):
    """forward: waves (b, T) float at 16 kHz → logits (b, classes); features: → (b, d_model) pooled features."""

    def __init__(self, n_classes: int = 10, d_model: int = 64, pools: tuple[int, ...] = (2, 2), n_layers: int = 2,
                 n_mels: int = 80):
        super().__init__()
        import torchaudio

        from mamba_bio_audio.models.audio_unet import AudioUNet, AudioUNetConfig

        self.mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=n_mels)
        self.project = nn.Linear(n_mels, d_model)
        self.unet = AudioUNet(AudioUNetConfig(d_model=d_model, pools=tuple(pools), n_layers=n_layers,
                                              n_classes=n_classes, bidirectional=True, embed_tokens=False))

    def frames(self, waves: torch.Tensor) -> torch.Tensor:
        """(b, T) → (b, F, n_mels) log-mel frames, normalised per clip, F cut to a multiple of the total pooling."""
        log_mel = torch.log(self.mel(waves.float()) + 1e-6).transpose(1, 2)      # (b, F, n_mels)
        log_mel = (log_mel - log_mel.mean((1, 2), keepdim=True)) / (log_mel.std((1, 2), keepdim=True) + 1e-5)
        keep = log_mel.shape[1] // self.unet.config.total_pool * self.unet.config.total_pool
        return log_mel[:, :keep]

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        return self.unet.features(inputs_embeds=self.project(self.frames(waves))).mean(1)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.unet.head(self.features(waves))


class LabelledClips(torch.utils.data.Dataset):
    """Item i: {"waves": (clip_len,) float32 (zero-padded or cut), "labels": () int64 digit}."""

    def __init__(self, paths: list[Path], clip_len: int = SAMPLE_RATE):
        self.paths, self.clip_len = paths, clip_len

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"waves": padded_wave(self.paths[i], self.clip_len),
                "labels": torch.tensor(DIGITS.index(self.paths[i].parent.name))}


def padded_wave(path: Path, clip_len: int) -> torch.Tensor:
    """(clip_len,) float32: the file's samples, cut or zero-padded."""
    wave = load_audio(path)[:clip_len]
    return nn.functional.pad(wave, (0, clip_len - len(wave)))


class LabelledClipData(SC09Data):
    """SC09 clips as waveforms with their digits (folders, lists and loaders as for `mba audio train --sc09`)."""

    def __init__(self, root: str, batch_size: int = 32, clip_len: int = SAMPLE_RATE, num_workers: int = 0,
                 seed: int = 0):
        super().__init__(root, batch_size, clip_len, num_workers=num_workers, seed=seed)

    def _dataset(self, split: str) -> LabelledClips:
        return LabelledClips(self.clips[split], self.hparams.clip_len)


class DigitClassifier(EvaluatedModule):
    """Cross-entropy training of DigitNet; valid/test accuracy (overall and per digit), MCC, F1 and AUROC."""

    def __init__(self, d_model: int = 64, pools: tuple[int, ...] = (2, 2), n_layers: int = 2, lr: float = 2e-3,
                 weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95), warmup: float = 0.1,
                 final_lr_ratio: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.model = DigitNet(len(DIGITS), d_model, tuple(pools), n_layers)
        self._eval: dict[str, list[torch.Tensor]] = {}

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.model(waves)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch["waves"]).float(), batch["labels"])
        self.log_train("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch, split: str, kept: int) -> None:
        probs = self(batch["waves"]).float().softmax(-1)
        self._eval.setdefault(split, []).append(torch.cat([probs, batch["labels"][:, None].float()], 1)[:kept])

    def _eval_end(self, split: str) -> None:
        from .dna_classifier import classification_metrics

        rows = self.gather_rows(torch.cat(self._eval.pop(split))).cpu().double().numpy()
        metrics = classification_metrics(rows[:, :-1], rows[:, -1].astype(int), list(DIGITS))
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items() if k != "confusion"}, prog_bar=split == "valid")


def build_cli(args: list[str], run_dir: str = "runs/digits"):
    """LightningCLI over DigitClassifier and LabelledClipData; best checkpoint by validation accuracy."""
    return _build_cli(DigitClassifier, LabelledClipData, args, run_dir, monitor="valid/accuracy", mode="max",
                      length_warmup=False)


@torch.inference_mode()
def classify_folder(net: DigitNet, paths: list[Path], batch_size: int = 64, clip_len: int = SAMPLE_RATE
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, 10) float64, features (n, d) float64) of the clips."""
    device = next(net.parameters()).device
    probs, features = [], []
    for first in range(0, len(paths), batch_size):
        waves = torch.stack([padded_wave(p, clip_len) for p in paths[first:first + batch_size]]).to(device)
        f = net.features(waves)
        features.append(f.double().cpu())
        probs.append(net.unet.head(f).double().softmax(-1).cpu())
    return torch.cat(probs).numpy(), torch.cat(features).numpy()


def score_folders(net: DigitNet, train: list[Path], sets: dict[str, list[Path]]) -> dict[str, dict[str, float]]:
    """name → {fid, is, mis, am} for each set of clips, against the training clips (the "train" row scores the
    training clips themselves)."""
    from mamba_bio_audio.audio.metrics import all_scores

    train_probs, train_features = classify_folder(net, train)
    scores = {"train": all_scores(train_probs, train_features, train_probs, train_features)}
    for name, paths in sets.items():
        if not paths:
            raise ValueError(f"{name}: no clips to score")
        probs, features = classify_folder(net, paths)
        scores[name] = all_scores(probs, features, train_probs, train_features)
    return scores
