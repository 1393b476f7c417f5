"""DiffWave-style unconditional waveform diffusion with a bidirectional Mamba U-Net as the denoiser (the Mamba
paper's "DiffWave + SaShiMi" row, with Mamba blocks).

Forward process over T steps with β_t linear from beta_start to beta_end: x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,
ᾱ_t = Π_{s≤t} (1 − β_s). The network predicts ε from (x_t, t); training minimises ‖ε̂ − ε‖² at a uniform t
(DDPM's simple loss). Sampling runs the T reverse steps from Gaussian noise:
x_{t−1} = (x_t − β_t / √(1 − ᾱ_t) · ε̂) / √(1 − β_t) + σ_t z, with σ_t² = β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .audio_unet import AudioUNet, AudioUNetConfig


@dataclass
class DiffusionConfig:
    """steps, beta_start, beta_end: the noise schedule (DiffWave's unconditional model: 200 steps, β up to 0.02);
    unet: AudioUNetConfig fields of the denoiser (made bidirectional)."""
    steps: int = 200
    beta_start: float = 1e-4
    beta_end: float = 0.02
    unet: dict = field(default_factory=lambda: {"d_model": 64, "pools": (4, 4), "n_layers": 4})


class WaveDenoiser(nn.Module):
    """ε̂(x_t, t): waves (b, L) float and steps (b,) int64 in [0, T) → predicted noise (b, L). Each sample is
    projected to the U-Net width, a sinusoidal embedding of t (through a small MLP) is added at every position, and
    the bidirectional U-Net's features are projected back to one value per sample."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        self.unet = AudioUNet(AudioUNetConfig(**{**config.unet, "bidirectional": True, "embed_tokens": False,
                                                 "n_classes": 0}))
        width = self.unet.config.d_model
        self.project_in = nn.Linear(1, width)
        self.step_mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, width))
        self.project_out = nn.Linear(width, 1)
        nn.init.zeros_(self.project_out.weight)
        nn.init.zeros_(self.project_out.bias)
        betas = torch.linspace(config.beta_start, config.beta_end, config.steps, dtype=torch.float64)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alpha_bars", torch.cumprod(1 - betas, 0), persistent=False)

    def step_embedding(self, steps: torch.Tensor) -> torch.Tensor:
        """(b,) int64 → (b, width) sinusoidal features of t, through the MLP."""
        half = self.unet.config.d_model // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=steps.device) / half)
        angles = steps.float()[:, None] * freqs[None]
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.project_in.weight.dtype)
        return self.step_mlp(features)

    def forward(self, waves: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        x = self.project_in(waves[..., None]) + self.step_embedding(steps)[:, None]     # (b, L, width)
        return self.project_out(self.unet.features(inputs_embeds=x))[..., 0]           # (b, L)

    def noisy(self, clean: torch.Tensor, steps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t of clean (b, L) at steps (b,) with noise (b, L)."""
        alpha_bar = self.alpha_bars[steps].to(clean.dtype)[:, None]
        return alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise

    def loss(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDPM's simple loss: mean squared error of the predicted noise at a uniform step per clip."""
        steps = torch.randint(0, self.config.steps, (clean.shape[0],), device=clean.device, generator=generator)
        noise = torch.randn(clean.shape, device=clean.device, dtype=clean.dtype, generator=generator)
        return nn.functional.mse_loss(self(self.noisy(clean, steps, noise), steps).float(), noise.float())

    @torch.inference_mode()
    def sample(self, n: int, length: int, generator: torch.Generator | None = None, progress: bool = False
               ) -> torch.Tensor:
        """n clips of `length` samples (a multiple of the U-Net's total pooling) by the T reverse steps → (n, length)
        float32, clipped to [−1, 1]."""
        from tqdm import tqdm

        device = self.betas.device
        x = torch.randn(n, length, device=device, generator=generator)
        for t in tqdm(reversed(range(self.config.steps)), total=self.config.steps, desc="diffusion steps",
                      disable=not progress):
            beta, alpha_bar = float(self.betas[t]), float(self.alpha_bars[t])
            eps = self(x, torch.full((n,), t, device=device, dtype=torch.int64)).float()
            x = (x - beta / math.sqrt(1 - alpha_bar) * eps) / math.sqrt(1 - beta)
            if t > 0:
                variance = beta * (1 - float(self.alpha_bars[t - 1])) / (1 - alpha_bar)
                x = x + math.sqrt(variance) * torch.randn(x.shape, device=device, generator=generator)
        return x.clamp(-1, 1)
