"""Unconditional SC09 waveform diffusion (`mba audio train-diffusion`), on Lightning: a DiffWave-style model whose
denoiser is a bidirectional Mamba U-Net (mamba_bio_audio.models.diffusion). Data: the SC09 clips as waveforms
(audio_classifier.LabelledClipData; labels unused). Metric: the denoising MSE on valid/test at steps and noise drawn
from a generator seeded by the batch index, so every evaluation uses the same ones."""
from __future__ import annotations

import torch

from mamba_bio_audio.models.diffusion import DiffusionConfig, WaveDenoiser

from .audio_classifier import LabelledClipData
from .common import EvaluatedModule
from .common import build_cli as _build_cli


class AudioDiffusion(EvaluatedModule):
    """diffusion_steps, beta_start, beta_end: the schedule; unet: AudioUNetConfig fields of the denoiser."""

    def __init__(self, diffusion_steps: int = 200, beta_start: float = 1e-4, beta_end: float = 0.02,
                 unet: dict | None = None, lr: float = 2e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), warmup: float = 0.02, final_lr_ratio: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        config = DiffusionConfig(diffusion_steps, beta_start, beta_end, **({"unet": unet} if unet else {}))
        self.model = WaveDenoiser(config)
        self._eval: dict[str, list[torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):
        loss = self.model.loss(batch["waves"])
        self.log_train("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch, split: str, kept: int) -> None:
        """The denoising loss of the batch's first `kept` clips (of all of them, weighted 0, when none counts: the
        forward still runs, in step with the other ranks)."""
        index = len(self._eval.get(split, []))
        generator = torch.Generator(device=self.device).manual_seed(index)
        waves = batch["waves"][:kept] if kept else batch["waves"]
        loss = self.model.loss(waves, generator)
        self._eval.setdefault(split, []).append(torch.stack([loss.detach() * kept,
                                                             torch.tensor(float(kept), device=self.device)]))

    def _eval_end(self, split: str) -> None:
        total, count = self.gather_rows(torch.stack(self._eval.pop(split))).sum(0)
        self.log(f"{split}/loss", total / count, prog_bar=split == "valid")


def build_cli(args: list[str], run_dir: str = "runs/diffusion"):
    """LightningCLI over AudioDiffusion and LabelledClipData; best checkpoint by validation denoising loss."""
    return _build_cli(AudioDiffusion, LabelledClipData, args, run_dir, monitor="valid/loss", mode="min",
                      length_warmup=False)
